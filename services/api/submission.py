"""The rows ``POST /v1/jobs`` writes: which media are known, what the new job and media rows are.

It is the API's hot path, so it speaks SQLAlchemy Core; ``submitter`` writes the rows and enqueues.
Status changes after creation belong to ``shared.jobs``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select

from services.api.errors import NotFound, ValidationFailed
from services.api.idempotency import KeyedRequest
from services.api.schemas import InputRef, JobPublic, JobSpec
from shared.db.models import Job, Media, Upload, utcnow
from shared.ids import new_id
from shared.jobs import JobStatus, JobTask
from shared.media import PendingUrl, StoredMedia
from shared.storage import tenant_prefix, upload_key

media_table = Media.__table__
jobs_table = Job.__table__
uploads_table = Upload.__table__
_MEDIA_FIELDS = ("object_key", "content_type", "size_bytes", "sha256", "width", "height", "duration_s", "fps")


def check_media_fits_task(spec: JobSpec, media: list[StoredMedia | PendingUrl]) -> None:
    """What can be told before the job runs. A URL's kind is known only once it is fetched: the
    worker checks again then (``workers.inference.media``)."""
    images = [item for item in media if item.is_image is True]
    videos = [item for item in media if item.is_image is False]
    if spec.task.is_video:
        if len(media) != 1 or images:
            raise ValidationFailed(f"task {spec.task.value} needs exactly one video", code="invalid_input")
    elif videos:
        raise ValidationFailed(f"task {spec.task.value} takes images, not video", code="invalid_input")
    elif not media and spec.task is not JobTask.chat:
        raise ValidationFailed(f"task {spec.task.value} needs at least one image", code="invalid_input")


def object_keys_for(connection: Connection, tenant_id: str, refs: list[InputRef]) -> list[str | None]:
    """The storage keys refs name (None for a URL); uploads and keys of other tenants do not exist
    for this one."""
    prefix = tenant_prefix(tenant_id)
    keys: list[str | None] = []
    for ref in refs:
        if ref.url is not None:
            keys.append(None)
        elif ref.upload_id is not None:
            owner = connection.scalar(select(uploads_table.c.tenant_id).where(uploads_table.c.id == ref.upload_id))
            if owner != tenant_id:
                raise NotFound(f"no upload {ref.upload_id}", code="upload_not_found")
            keys.append(upload_key(tenant_id, ref.upload_id))
        elif not ref.object_key.startswith(prefix):
            raise NotFound(f"no object {ref.object_key!r} in your storage", code="object_not_found")
        else:
            keys.append(ref.object_key)
    return keys


def known_media(connection: Connection, tenant_id: str, object_keys: list[str | None]) -> dict[str, StoredMedia]:
    """What the media table already knows of these keys, in one query."""
    object_keys = [key for key in object_keys if key is not None]
    if not object_keys:
        return {}
    columns = [media_table.c[name] for name in _MEDIA_FIELDS]
    rows = connection.execute(
        select(*columns).where(media_table.c.tenant_id == tenant_id, media_table.c.object_key.in_(object_keys))
    )
    return {row.object_key: StoredMedia(*row, recorded=True) for row in rows}


def job_rows(
    *, tenant_id: str, spec: JobSpec, model_id: str, media: list[StoredMedia | PendingUrl],
    keyed: KeyedRequest | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The job row and the media rows not yet recorded, for one transaction (``JobSubmitter``)."""
    now = utcnow()
    new_media = [{"tenant_id": tenant_id, "created_at": now, **item.as_media_row()} for item in media if not item.recorded]
    job = {
        "id": new_id("job"),
        "tenant_id": tenant_id,
        "status": JobStatus.queued.value,
        "task": spec.task.value,
        "model": model_id,
        "prompt": spec.prompt,
        "history": [turn.model_dump() for turn in spec.history] if spec.history else None,
        "options": spec.options.model_dump(),
        "metadata": spec.metadata,
        "input": {"items": [item.as_input_item() for item in media]},
        "webhook": spec.webhook.model_dump(mode="json") if spec.webhook else None,
        "stream": spec.stream,
        "error": None,
        "attempts": 0,
        "created_at": now,
        "enqueued_at": now,  # published right after the insert; the reaper re-publishes if lost
        "started_at": None,
        "finished_at": None,
        "idempotency_key": keyed.key if keyed else None,
        "request_sha256": keyed.request_sha256 if keyed else None,
    }
    return job, new_media


def public_from_row(row: dict[str, Any]) -> JobPublic:
    return JobPublic.model_validate({**row, "result": None})
