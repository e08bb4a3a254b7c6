"""Job statuses, tasks and the allowed transitions between statuses."""

from __future__ import annotations

import enum


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"

    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.canceled})

ALLOWED_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.queued: frozenset({JobStatus.running, JobStatus.failed, JobStatus.canceled}),
    # running → queued: the lease lapsed (the worker died) or a transient failure is retried.
    JobStatus.running: frozenset({JobStatus.queued, JobStatus.succeeded, JobStatus.failed, JobStatus.canceled}),
    JobStatus.succeeded: frozenset(),
    JobStatus.failed: frozenset(),
    JobStatus.canceled: frozenset(),
}


class JobTask(enum.StrEnum):
    caption = "caption"
    vqa = "vqa"
    grounding = "grounding"
    chat = "chat"
    video_caption = "video_caption"
    video_qa = "video_qa"

    @property
    def is_video(self) -> bool:
        return self in (JobTask.video_caption, JobTask.video_qa)


# What the inference worker can run; a task outside it fails with unsupported_task.
RUNNABLE_TASKS = frozenset(JobTask)
