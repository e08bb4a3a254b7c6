"""Video indexes in the API: reading a create request (JSON, or a JSONL manifest), writing the index
and its videos in one transaction, publishing one frames task per video, and the read side."""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Iterator
from typing import Any

from celery import Celery
from fastapi import Request
from pydantic import ValidationError
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from services.api.errors import UnsupportedMedia, ValidationFailed
from services.api.ownership import owned_or_404
from services.api.request_body import MAX_JSON_BODY, parse_body, read_capped_body
from services.api.schemas import (
    MAX_INDEX_VIDEOS,
    IndexVideoRef,
    VideoIndexCreate,
    VideoIndexSpec,
)
from services.api.submission import (
    object_key_for,
    refuse_unfetchable_url,
    refuse_unreachable_webhook,
)
from shared.db.models import IndexSegment, IndexVideo, VideoIndex, utcnow
from shared.ids import new_id
from shared.queue import FRAMES_QUEUE, INDEX_VIDEO_TASK

log = logging.getLogger("vlmq.api")
MAX_MANIFEST_BYTES = 16 * 1024 * 1024


def _problems(error: ValidationError, prefix: list[str]) -> list[dict]:
    return [{"loc": prefix + [str(part) for part in item["loc"]], "message": item["msg"]} for item in error.errors()]


async def read_index_request(request: Request) -> VideoIndexCreate:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        return await _read_manifest_form(request)
    if content_type not in ("application/json", ""):
        raise UnsupportedMedia("send application/json or multipart/form-data", code="unsupported_content_type")
    body = await read_capped_body(request, MAX_MANIFEST_BYTES, "bodies are limited to {limit} bytes")
    try:
        return await parse_body(VideoIndexCreate.model_validate_json, body or b"{}")
    except ValidationError as error:
        problems = _problems(error, [])
        raise ValidationFailed(_summary(problems), details={"errors": problems[:50]}) from None


def _summary(problems: list[dict]) -> str:
    text = "; ".join(f"{'.'.join(p['loc']) or 'body'}: {p['message']}" for p in problems[:5])
    return text + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")


async def _read_manifest_form(request: Request) -> VideoIndexCreate:
    """Part ``request``: the other fields as JSON; part ``manifest``: one video object per line."""
    form = await request.form(max_files=1, max_fields=4, max_part_size=MAX_JSON_BODY)
    try:
        manifest, request_part = form.get("manifest"), form.get("request")
        if manifest is None or isinstance(manifest, str):
            raise ValidationFailed("the multipart body needs a 'manifest' file part (JSON Lines)")
        try:
            spec = VideoIndexSpec.model_validate_json(request_part or "{}")
        except ValidationError as error:
            problems = _problems(error, ["request"])
            raise ValidationFailed(_summary(problems), details={"errors": problems}) from None
        videos, problems = [], []
        for number, line in enumerate(_lines(manifest.file), start=1):
            if not line.strip():
                continue
            if len(videos) >= MAX_INDEX_VIDEOS:
                raise ValidationFailed(f"a manifest holds at most {MAX_INDEX_VIDEOS} videos")
            try:
                videos.append(IndexVideoRef.model_validate_json(line))
            except ValidationError as error:
                problems += _problems(error, [f"manifest line {number}"])
        if problems:
            raise ValidationFailed(_summary(problems), details={"errors": problems[:50]})
        if not videos:
            raise ValidationFailed("the manifest names no videos")
        return VideoIndexCreate(**spec.model_dump(), videos=videos)
    finally:
        await form.close()


def _lines(file) -> Iterator[str]:
    file.seek(0)
    for raw in file:
        yield raw.decode("utf-8", errors="replace")


def _source_and_key(session: Session, tenant_id: str, ref: IndexVideoRef, *, allow_private: bool) -> tuple[dict, str | None]:
    """What the video is as given, and its storage key when it is already stored."""
    if ref.url is not None:
        refuse_unfetchable_url(str(ref.url), allow_private=allow_private)
    source = ref.model_dump(mode="json", include={"url", "object_key", "upload_id"}, exclude_none=True)
    return source, object_key_for(session.connection(), tenant_id, ref)


def create_index(session: Session, celery: Celery, *, tenant_id: str, body: VideoIndexCreate, model_id: str,
                 allow_private: bool) -> VideoIndex:
    refuse_unreachable_webhook(body.webhook, allow_private=allow_private)
    now = utcnow()
    index = VideoIndex(
        id=new_id("vix"), tenant_id=tenant_id, name=body.name, status="queued", model=model_id, prompt=body.prompt,
        segment_s=body.segment_s, frames_per_segment=body.frames_per_segment, max_new_tokens=body.max_new_tokens,
        webhook=body.webhook.model_dump(mode="json") if body.webhook else None, metadata_=body.metadata,
        videos_total=len(body.videos), videos_done=0, videos_failed=0, segments_done=0, created_at=now,
    )
    rows = []
    for position, ref in enumerate(body.videos):
        source, key = _source_and_key(session, tenant_id, ref, allow_private=allow_private)
        rows.append({
            "id": new_id("ivd"), "index_id": index.id, "tenant_id": tenant_id, "position": position,
            "external_id": ref.external_id or next(iter(source.values())), "source": source, "object_key": key,
            "status": "queued", "error": None, "duration_s": None, "segments_total": None, "segments_done": 0,
            "attempts": 0, "lease_expires_at": None, "created_at": now, "finished_at": None,
        })
    session.add(index)
    session.flush()
    session.execute(insert(IndexVideo), rows)
    session.commit()
    # After the commit: a frames worker must find the rows. A message lost here is published again
    # by the reaper (queued videos of an index that waited too long).
    try:
        with celery.producer_or_acquire() as producer:
            for row in rows:
                celery.send_task(INDEX_VIDEO_TASK, args=[row["id"]], queue=FRAMES_QUEUE, producer=producer, retry=False)
    except Exception as error:  # kombu raises several unrelated types for a broker that is down
        log.error("could not publish the videos of %s (the reaper will): %s", index.id, error)
    return index


def get_index(session: Session, tenant_id: str, index_id: str) -> VideoIndex:
    return owned_or_404(session, VideoIndex, index_id, tenant_id, message=f"no video index {index_id}",
                        code="video_index_not_found")


def encode_position_cursor(*parts: int) -> str:
    return base64.urlsafe_b64encode(json.dumps(parts).encode()).decode().rstrip("=")


def decode_position_cursor(cursor: str, size: int) -> list[int]:
    try:
        parts = json.loads(base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True))
    except (binascii.Error, UnicodeDecodeError, ValueError) as error:
        raise ValidationFailed("invalid cursor", code="invalid_cursor") from error
    if not (isinstance(parts, list) and len(parts) == size and all(isinstance(p, int) for p in parts)):
        raise ValidationFailed("invalid cursor", code="invalid_cursor")
    return parts


def thumbnail_url(index_id: str, segment_id: int, thumbnail_key: str | None) -> str | None:
    return f"/v1/video-indexes/{index_id}/segments/{segment_id}/thumbnail" if thumbnail_key else None


def segment_document(index_id: str, row: Any) -> dict[str, Any]:
    return {"external_id": row.external_id, "start_s": row.start_s, "end_s": row.end_s, "text": row.text,
            "thumbnail_url": thumbnail_url(index_id, row.id, row.thumbnail_key)}


def list_segments(session: Session, index_id: str, *, external_id: str | None, limit: int,
                  cursor: str | None) -> tuple[list[Any], str | None]:
    """Time order: the videos in index order, each video's segments from its start."""
    query = select(IndexSegment).where(IndexSegment.index_id == index_id)
    if external_id is not None:
        query = query.where(IndexSegment.external_id == external_id)
    if cursor:
        position, seq = decode_position_cursor(cursor, 2)
        query = query.where(
            (IndexSegment.position > position) | ((IndexSegment.position == position) & (IndexSegment.seq > seq))
        )
    rows = list(session.scalars(query.order_by(IndexSegment.position, IndexSegment.seq).limit(limit + 1)))
    if len(rows) > limit:
        last = rows[limit - 1]
        return rows[:limit], encode_position_cursor(last.position, last.seq)
    return rows, None


def list_videos(session: Session, index_id: str, *, limit: int, cursor: str | None) -> tuple[list[IndexVideo], str | None]:
    query = select(IndexVideo).where(IndexVideo.index_id == index_id)
    if cursor:
        (position,) = decode_position_cursor(cursor, 1)
        query = query.where(IndexVideo.position > position)
    rows = list(session.scalars(query.order_by(IndexVideo.position).limit(limit + 1)))
    if len(rows) > limit:
        return rows[:limit], encode_position_cursor(rows[limit - 1].position)
    return rows, None


def video_document(video: IndexVideo) -> dict[str, Any]:
    return {
        "external_id": video.external_id, "status": video.status,
        "input": {**video.source, "object_key": video.object_key},
        "error": video.error, "duration_s": video.duration_s,
        "segments_total": video.segments_total, "segments_done": video.segments_done,
    }


def all_segments(session: Session, index_id: str, *, external_id: str | None, page: int = 1000) -> Iterator[dict]:
    """Every segment in time order, read a page at a time (exports stream; never all in memory)."""
    cursor = None
    while True:
        rows, cursor = list_segments(session, index_id, external_id=external_id, limit=page, cursor=cursor)
        for row in rows:
            yield segment_document(index_id, row)
        if cursor is None:
            return
