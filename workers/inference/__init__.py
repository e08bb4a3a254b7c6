"""The inference worker: a Celery process that owns the GPUs and runs InternVL jobs."""
