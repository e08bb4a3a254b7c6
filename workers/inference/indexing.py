"""The inference worker's share of a video index: caption one batch of a video's segments in one
``run_batch`` call (one request per segment, its frames one tile each), and record the texts.

Idempotent: only segments still without text are captioned and written (shared.indexes.progress
writes a text only into an empty segment), so a duplicate delivery costs compute, never a count.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import select

from shared.config.settings import WorkerSettings
from shared.db.engine import session_scope
from shared.db.models import IndexSegment, IndexVideo, VideoIndex
from shared.indexes.progress import ACTIVE, fail_video, record_captions
from shared.storage import ObjectNotFound, ObjectStore, StorageError, segment_batch_key
from workers.frames.extract import decode_bundle
from workers.inference.runtime.requests import GenerationRequest, GenerationResult

log = logging.getLogger("vlmq.worker")
RunBatch = Callable[[str, list[GenerationRequest], Callable[[], bool]], list[GenerationResult]]


def caption_segments(video_id: str, batch: int, *, settings: WorkerSettings, store: ObjectStore,
                     run_batch: RunBatch) -> str:
    database_url = settings.resolved_database_url
    with session_scope(database_url) as session:
        video = session.get(IndexVideo, video_id)
        index = session.get(VideoIndex, video.index_id) if video else None
        if video is None or index is None or index.status not in ACTIVE or video.status != "running":
            return "skipped"
        rows = list(session.scalars(
            select(IndexSegment).where(IndexSegment.video_id == video_id, IndexSegment.batch == batch)
            .order_by(IndexSegment.seq)
        ))
        pending = [(offset, row.id) for offset, row in enumerate(rows) if row.text is None]
        key = segment_batch_key(video.tenant_id, index.id, video_id, batch)
        model_id, prompt, per_segment = index.model, index.prompt, index.frames_per_segment
        max_new_tokens = index.max_new_tokens
    if not pending:
        return "done"
    try:
        tiles = decode_bundle(store.read(key))
    except ObjectNotFound:
        return _fail(database_url, video_id, "media_unavailable", f"the frames of batch {batch} are gone")
    requests = [
        GenerationRequest(task="video_caption", prompt=prompt, images=[], max_tiles=1, max_new_tokens=max_new_tokens,
                          frames=list(tiles[offset * per_segment:(offset + 1) * per_segment]))
        for offset, _ in pending
    ]
    try:
        results = run_batch(model_id, requests, lambda: False)
    except Exception as error:  # the model broke: the video fails with the reason, the worker serves on
        log.exception("captioning batch %d of video %s failed", batch, video_id)
        return _fail(database_url, video_id, "model_error", f"{type(error).__name__}: {error}")
    with session_scope(database_url) as session:
        written = record_captions(session, video_id, {
            segment_id: result.text for (_, segment_id), result in zip(pending, results, strict=True)
        })
    if written == len(pending):  # every segment of the batch has its text now
        try:
            store.delete(key)  # captioned: the tiles have served
        except StorageError:
            log.warning("could not delete %s", key)
    return "captioned"


def _fail(database_url: str, video_id: str, code: str, message: str) -> str:
    with session_scope(database_url) as session:
        fail_video(session, video_id, code=code, message=message)
    return "failed"
