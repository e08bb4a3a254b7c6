"""The job object of API.md from a job row: one field mapping for the API's responses and the
webhook payloads, so the two never drift apart."""

from __future__ import annotations

from typing import Any

from shared.db.models import Job, VideoIndex


def job_fields(job: Job, result: dict[str, Any] | None) -> dict[str, Any]:
    """API.md's job object; timestamps stay datetimes (callers serialise them)."""
    return {
        "id": job.id,
        "status": job.status,
        "task": job.task,
        "model": job.model,
        "prompt": job.prompt,
        "history": job.history,
        "system": job.system,
        "batch": {"id": job.batch_id, "custom_id": job.custom_id, "line": job.batch_line} if job.batch_id else None,
        "options": job.options,
        "metadata": job.metadata_,
        "input": job.input,
        "result": result,
        "error": job.error,
        "attempts": job.attempts,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }


def index_document(index: VideoIndex) -> dict[str, Any]:
    """API.md's index object (timestamps as datetimes; callers serialise them)."""
    return {
        "id": index.id,
        "name": index.name,
        "status": index.status,
        "model": index.model,
        "prompt": index.prompt,
        "segment_s": index.segment_s,
        "frames_per_segment": index.frames_per_segment,
        "metadata": index.metadata_,
        "counts": {
            "videos_total": index.videos_total,
            "videos_done": index.videos_done,
            "videos_failed": index.videos_failed,
            "segments_done": index.segments_done,
        },
        "created_at": index.created_at,
        "started_at": index.started_at,
        "finished_at": index.finished_at,
    }
