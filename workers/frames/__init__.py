"""The frames worker: a CPU Celery process that decodes video jobs' frames ahead of the GPU worker."""
