"""Celery app factory, queue names and task names. Messages carry job ids, never payloads."""

from shared.queue.app import create_celery, redis_url_of, resolve_broker_url
from shared.queue.names import (
    CAPTION_SEGMENTS_TASK,
    DELIVER_TASK,
    EXPAND_BATCH_TASK,
    FRAMES_QUEUE,
    INDEX_VIDEO_TASK,
    INFERENCE_QUEUE,
    NOTIFY_QUEUE,
    PREPARE_FRAMES_TASK,
    SETTLE_BATCH_TASK,
    queue_for,
    route_for,
    task_name_for,
)

__all__ = [
    "CAPTION_SEGMENTS_TASK",
    "DELIVER_TASK",
    "EXPAND_BATCH_TASK",
    "FRAMES_QUEUE",
    "INDEX_VIDEO_TASK",
    "INFERENCE_QUEUE",
    "NOTIFY_QUEUE",
    "PREPARE_FRAMES_TASK",
    "SETTLE_BATCH_TASK",
    "create_celery",
    "queue_for",
    "redis_url_of",
    "resolve_broker_url",
    "route_for",
    "task_name_for",
]
