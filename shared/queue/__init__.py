"""Celery app factory, queue names and task names. Messages carry job ids, never payloads."""

from shared.queue.app import create_celery, redis_url_of, resolve_broker_url
from shared.queue.names import (
    DELIVER_TASK,
    CAPTION_SEGMENTS_TASK,
    FRAMES_QUEUE,
    INDEX_VIDEO_TASK,
    INFERENCE_QUEUE,
    NOTIFY_QUEUE,
    PREPARE_FRAMES_TASK,
    queue_for,
    route_for,
    task_name_for,
)

__all__ = [
    "DELIVER_TASK",
    "CAPTION_SEGMENTS_TASK",
    "FRAMES_QUEUE",
    "INDEX_VIDEO_TASK",
    "INFERENCE_QUEUE",
    "NOTIFY_QUEUE",
    "PREPARE_FRAMES_TASK",
    "create_celery",
    "queue_for",
    "redis_url_of",
    "resolve_broker_url",
    "route_for",
    "task_name_for",
]
