"""Queue and task names, shared by the producers (API) and the consumers (workers)."""

from __future__ import annotations

from shared.jobs.states import JobTask

INFERENCE_QUEUE = "vlmq.inference"
# Webhook deliveries have a queue and a process of their own (services/notifier).
NOTIFY_QUEUE = "vlmq.notify"
DELIVER_TASK = "vlmq.notify.deliver"


def queue_for(model_id: str) -> str:
    """Each model has its own queue, so a worker consumes only the jobs of the models it loaded."""
    return f"{INFERENCE_QUEUE}.{model_id}"


def task_name_for(task: JobTask | str) -> str:
    """The Celery task that runs one kind of job, e.g. ``vlmq.inference.caption``."""
    return f"vlmq.inference.{JobTask(task).value}"
