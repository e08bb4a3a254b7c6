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
from shared.db.media_rows import media_rows
from shared.db.models import Job, Media, Upload, utcnow
from shared.ids import new_id
from shared.jobs import JobStatus, JobTask
from shared.media import MEDIA_FIELDS, PendingUrl, StoredMedia
from shared.net import OutboundRefused, check_url_form
from shared.storage import is_tenant_key, upload_key

media_table = Media.__table__
jobs_table = Job.__table__
uploads_table = Upload.__table__


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


def refuse_unfetchable_url(url: str, *, allow_private: bool) -> None:
    """400 ``url_refused`` for what can be refused without DNS; the fetch checks the rest."""
    try:
        check_url_form(url, allow_private=allow_private)
    except OutboundRefused as refusal:
        raise ValidationFailed(str(refusal), code="url_refused", details={"url": url}) from None


def refuse_unreachable_webhook(webhook: Any, *, allow_private: bool) -> None:
    """The same refusal for the webhook a job, index or batch names (anything with a ``url``): an
    internal address written literally is refused when it is given, not at its first delivery;
    each attempt checks the resolved addresses."""
    if webhook is None:
        return
    url = str(webhook.url)
    try:
        check_url_form(url, allow_private=allow_private)
    except OutboundRefused as refusal:
        raise ValidationFailed(f"webhook.url: {refusal}", code="url_refused",
                               details={"url": url, "field": "webhook.url"}) from None


def object_key_for(connection: Connection, tenant_id: str, ref: InputRef) -> str | None:
    """The storage key a ref names (None for a URL); uploads and keys of other tenants do not exist
    for this one."""
    if ref.url is not None:
        return None
    if ref.upload_id is not None:
        owner = connection.scalar(select(uploads_table.c.tenant_id).where(uploads_table.c.id == ref.upload_id))
        if owner != tenant_id:
            raise NotFound(f"no upload {ref.upload_id}", code="upload_not_found")
        return upload_key(tenant_id, ref.upload_id)
    # By segments, on the canonical key, and before any storage is touched: another tenant's key
    # gets the same 404 whether or not it exists.
    if not is_tenant_key(tenant_id, ref.object_key):
        raise NotFound(f"no object {ref.object_key!r} in your storage", code="object_not_found")
    return ref.object_key


def object_keys_for(connection: Connection, tenant_id: str, refs: list[InputRef]) -> list[str | None]:
    return [object_key_for(connection, tenant_id, ref) for ref in refs]


def known_media(connection: Connection, tenant_id: str, object_keys: list[str | None]) -> dict[str, StoredMedia]:
    """What the media table already knows of these keys, in one query."""
    object_keys = [key for key in object_keys if key is not None]
    if not object_keys:
        return {}
    columns = [media_table.c[name] for name in MEDIA_FIELDS]
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
    new_media = media_rows(tenant_id, [item for item in media if not item.recorded], now=now)
    job = {
        "id": new_id("job"),
        "tenant_id": tenant_id,
        "status": JobStatus.queued.value,
        "task": spec.task.value,
        "model": model_id,
        "prompt": spec.prompt,
        "history": [turn.model_dump() for turn in spec.history] if spec.history else None,
        "system": spec.system,
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
