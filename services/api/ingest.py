"""Stream one uploaded media file into storage, checked on the way (``shared.media``).

Nothing of a refused file is left behind: bytes go to a staging key, and only a complete, valid
file moves to its content-addressed key.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool

from services.api.errors import (
    ApiError,
    DependencyDown,
    ImageTooLarge,
    InvalidMedia,
    PayloadTooLarge,
    UnsupportedMedia,
    ValidationFailed,
)
from shared.media import (
    MediaCheck,
    MediaRejected,
    StoredMedia,
    WriteBlocks,
    settle_staged,
)
from shared.storage import ObjectStore, media_key, staging_key

_ERRORS: dict[str, type[ApiError]] = {
    "media_too_large": PayloadTooLarge, "unsupported_media": UnsupportedMedia, "invalid_media": InvalidMedia,
    "image_too_large": ImageTooLarge,
}


def api_error(rejection: MediaRejected) -> ApiError:
    """API.md's error for media refused by its content: 413, 415 or 422."""
    return _ERRORS[rejection.code](rejection.message, details=rejection.details)


def media_failure_error(code: str, message: str, *, transient: bool) -> ApiError:
    """A job reason code met while planning (a URL fetched, a video probed) as API.md's error: the
    request's fault → 400, media errors as for uploads, storage down → 503, any other → 422."""
    if code in ("url_refused", "invalid_input"):
        return ValidationFailed(message, code=code)
    if code in _ERRORS:
        return _ERRORS[code](message)
    if transient and code == "media_unavailable":
        return DependencyDown(message, code="storage_unavailable")
    return InvalidMedia(message, code=code)


class MediaIngest:
    """One file. ``store_as`` = tenant id to store it, None to only inspect it (plans, existing keys)."""

    def __init__(self, store: ObjectStore, *, store_as: str | None, max_bytes: int, max_image_bytes: int,
                 max_image_pixels: int) -> None:
        self._store, self._tenant = store, store_as
        self._check = MediaCheck(max_bytes=max_bytes, max_image_bytes=max_image_bytes,
                                 max_image_pixels=max_image_pixels)
        self._blocks = WriteBlocks()  # bytes on their way to the writer
        self._staging_key = staging_key(store_as) if store_as else None
        self._writer = store.open_writer(self._staging_key) if self._staging_key else None

    async def feed(self, chunk: bytes) -> None:
        try:
            ready = self._check.feed(chunk)
        except MediaRejected as rejection:
            await self.abort()
            raise api_error(rejection) from None
        if ready and self._writer is not None and (block := self._blocks.add(ready)) is not None:
            await run_in_threadpool(self._writer.write, block)

    async def finish(self) -> StoredMedia:
        try:
            tail = self._check.finish()
            media = await run_in_threadpool(self._check.describe)
            if self._writer is not None:
                media.object_key = media_key(self._tenant, media.sha256)  # type: ignore[arg-type]
                media.newly_stored = await run_in_threadpool(self._commit, media.object_key, tail)
            return media
        except MediaRejected as rejection:
            await self.abort()
            raise api_error(rejection) from None
        except BaseException:
            await self.abort()
            raise

    def _commit(self, final_key: str, tail: bytes) -> bool:
        self._writer.write(self._blocks.take() + tail)  # type: ignore[union-attr]
        self._writer.complete()  # type: ignore[union-attr]
        self._writer = None
        return settle_staged(self._store, self._staging_key, final_key)  # type: ignore[arg-type]

    async def abort(self) -> None:
        self._check.close()
        writer, self._writer = self._writer, None
        if writer is not None:
            await run_in_threadpool(writer.abort)


async def inspect_stored_object(
    store: ObjectStore, key: str, *, max_bytes: int, max_image_bytes: int, max_image_pixels: int
) -> StoredMedia:
    """Read an object already in storage through the same checks as an upload."""
    ingest = MediaIngest(store, store_as=None, max_bytes=max_bytes, max_image_bytes=max_image_bytes,
                         max_image_pixels=max_image_pixels)
    chunks = await run_in_threadpool(lambda: iter(store.iter_chunks(key)))
    while True:
        chunk = await run_in_threadpool(next, chunks, None)
        if chunk is None:
            break
        await ingest.feed(chunk)
    media = await ingest.finish()
    media.object_key = key
    return media
