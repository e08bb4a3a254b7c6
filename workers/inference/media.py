"""A job's media, ready for the model: media given by URL fetched first, then images decoded.

Fetching happens under the attempt's lease, so a worker that dies mid-download is noticed like any
other, and the fetched items are written back to the job (``shared.jobs.record_fetched_input``)
so a retry does not download again and DELETE removes the stored copy.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image
from sqlalchemy.orm import Session

from shared.config.settings import WorkerSettings
from shared.db.media_rows import record_media
from shared.db.models import Job
from shared.jobs import JobTask, record_fetched_input
from shared.media import DEFAULT_MAX_IMAGE_PIXELS, MediaRejected, StoredMedia, open_image
from shared.media.fetch import FetchFailed, FetchLimits, fetch_media
from shared.storage import ObjectNotFound, ObjectStore, StorageError
from workers.frames.extract import ExtractionFailed, decode_bundle, extract_frames
from workers.inference.failures import AttemptStopped, JobFailure, TransientFailure

log = logging.getLogger("vlmq.worker")


def fetch_pending_urls(
    session: Session, job: Job, attempt: int, *, store: ObjectStore, settings: WorkerSettings,
    should_stop: Callable[[], bool],
) -> list[dict]:
    """The job's input items with every not-yet-fetched URL fetched, stored and recorded."""
    items = [dict(item) for item in job.input.get("items", [])]
    pending = [index for index, item in enumerate(items) if item.get("url") and not item.get("object_key")]
    if not pending:
        return items
    limits = FetchLimits.from_settings(settings)
    fetched: list[StoredMedia] = []
    for index in pending:
        try:
            media = fetch_media(items[index]["url"], limits=limits, store=store, tenant_id=job.tenant_id,
                                should_stop=should_stop)
        except FetchFailed as failure:
            if failure.code == "stopped":
                raise AttemptStopped(failure.message) from None
            raise (TransientFailure if failure.transient else JobFailure)(failure.code, failure.message) from None
        _check_kind(job.task, media)
        items[index] = media.as_input_item()
        fetched.append(media)
    record_media(session.connection(), job.tenant_id, fetched)
    # A stale attempt raises StaleTransition here and writes nothing; what it stored stays in
    # storage unreferenced (content-addressed, so it may equally be another job's file).
    record_fetched_input(session, job.id, attempt=attempt, items=items)
    session.commit()
    return items


def _check_kind(task: str, media: StoredMedia) -> None:
    """The check the API could not make before the URL was fetched: images for image tasks,
    one video for video tasks."""
    wants_video = JobTask(task).is_video
    if media.is_image == wants_video:
        wanted = "a video" if wants_video else "images"
        raise JobFailure("invalid_input", f"task {task} takes {wanted}; {media.url} is {media.content_type}")


def load_images(store: ObjectStore, items: list[dict], *,
                max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> list[Image.Image]:
    """The job's images, decoded. Each is held to the pixel budget from its header first: media the
    API took under another budget (or an older one) fail the job, never the worker's memory."""
    images = []
    for item in items:
        try:
            data = store.read(item["object_key"])
        except ObjectNotFound as error:
            raise JobFailure("media_unavailable", f"media {item['object_key']} does not exist") from error
        except StorageError as error:
            raise TransientFailure("media_unavailable", f"media {item['object_key']} could not be read: {error}") from error
        try:
            with open_image(io.BytesIO(data), max_pixels=max_pixels) as image:
                images.append(image.convert("RGB"))
        except MediaRejected as rejection:
            raise JobFailure(rejection.code, rejection.message) from None
        except (OSError, SyntaxError, ValueError) as error:
            raise JobFailure("invalid_media", f"the image could not be decoded: {error}") from error
    return images


@dataclass
class VideoFrames:
    tiles: list  # one 448×448×3 uint8 array per frame
    frames: list[dict]  # {"index", "time_s"} of each
    decode_ms: float  # spent by the frames worker (or here, when it had to decode itself)
    load_ms: float  # spent here reading the prepared tiles


def load_video_frames(job: Job, items: list[dict], *, store: ObjectStore, settings: WorkerSettings) -> VideoFrames:
    """The frames the frames worker prepared; decoded here only when the job came without them."""
    started = time.perf_counter()
    if job.prepared:
        try:
            tiles = decode_bundle(store.read(job.prepared["frames_key"]))
        except ObjectNotFound as error:
            raise JobFailure("media_unavailable", "the job's prepared frames are gone") from error
        except StorageError as error:
            raise TransientFailure("media_unavailable", f"the job's frames could not be read: {error}") from error
        return VideoFrames(list(tiles), job.prepared["frames"], job.prepared.get("decode_ms", 0.0),
                           (time.perf_counter() - started) * 1000)
    if len(items) != 1:
        raise JobFailure("invalid_input", "a video task takes exactly one video")
    try:
        extracted = extract_frames(store, items[0]["object_key"], job.options, settings=settings)
    except ExtractionFailed as failure:
        raise (TransientFailure if failure.transient else JobFailure)(failure.code, failure.message) from None
    return VideoFrames(list(extracted.tiles), [frame.as_dict() for frame in extracted.frames], extracted.decode_ms, 0.0)


def discard_prepared_frames(store: ObjectStore, job: Job) -> None:
    """Once a video job has ended its frame bundle has served: remove it (best effort)."""
    if job.prepared:
        try:
            store.delete(job.prepared["frames_key"])
        except StorageError:
            log.warning("could not delete the frames of %s", job.id)
