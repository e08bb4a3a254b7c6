"""Celery app factory, queue names and task names. Messages carry job ids, never payloads."""

from shared.queue.app import create_celery, resolve_broker_url
from shared.queue.names import DELIVER_TASK, INFERENCE_QUEUE, NOTIFY_QUEUE, queue_for, task_name_for

__all__ = ["DELIVER_TASK", "INFERENCE_QUEUE", "NOTIFY_QUEUE", "queue_for", "create_celery", "resolve_broker_url", "task_name_for"]
