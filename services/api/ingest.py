"""Stream one media file into storage: type by magic bytes, size limit and sha256 on the way.

Nothing of a refused file is left behind: bytes go to a staging key, and only a complete, valid
file moves to its content-addressed key.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool

from services.api.errors import InvalidMedia, PayloadTooLarge, UnsupportedMedia
from services.api.media_types import IMAGE_TYPES, SNIFF_BYTES, sniff_media_type
from shared.storage import ObjectNotFound, ObjectStore, media_key, staging_key

# Hand bytes to the (blocking) storage writer in blocks this large, not per network chunk.
WRITE_BLOCK = 1024 * 1024
# Images are validated by decoding them; below this they stay in memory, above it on disk.
SPOOL_IN_MEMORY = 4 * 1024 * 1024


@dataclass
class StoredMedia:
    object_key: str
    content_type: str
    size_bytes: int
    sha256: str
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None
    fps: float | None = None
    newly_stored: bool = field(default=False, compare=False)
    # True when this description came from the media table (nothing to record again).
    recorded: bool = field(default=False, compare=False)

    @property
    def is_image(self) -> bool:
        return self.content_type in IMAGE_TYPES

    def as_input_item(self) -> dict[str, Any]:
        return {
            "object_key": self.object_key,
            "content_type": self.content_type,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "width": self.width,
            "height": self.height,
            "duration_s": self.duration_s,
            "fps": self.fps,
        }


def _image_size(spool) -> tuple[int, int]:
    """Decode the whole image: a truncated or corrupt file fails here, not in the worker."""
    spool.seek(0)
    try:
        with Image.open(spool) as image:
            image.load()
            return image.width, image.height
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise InvalidMedia(f"the image could not be decoded: {error}") from error


class MediaIngest:
    """One file. ``store_as`` = tenant id to store it, None to only inspect it (plans, existing keys)."""

    def __init__(self, store: ObjectStore, *, store_as: str | None, max_bytes: int, max_image_bytes: int) -> None:
        self._store, self._tenant = store, store_as
        self._max_bytes, self._max_image_bytes = max_bytes, max_image_bytes
        self._hash = hashlib.sha256()
        self._size = 0
        self._head = b""
        self._content_type: str | None = None
        self._pending = bytearray()  # bytes seen before the type is known
        self._blocks: list[bytes] = []  # bytes on their way to the writer
        self._blocked_bytes = 0
        self._spool: tempfile.SpooledTemporaryFile | None = None
        self._staging_key = staging_key(store_as) if store_as else None
        self._writer = store.open_writer(self._staging_key) if self._staging_key else None

    async def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        self._size += len(chunk)
        limit = self._max_image_bytes if self._content_type in IMAGE_TYPES else self._max_bytes
        if self._size > limit:
            await self.abort()
            raise PayloadTooLarge(f"the file is larger than the limit of {limit} bytes", details={"limit_bytes": limit})
        self._hash.update(chunk)
        if self._content_type is None:
            self._head += chunk[: SNIFF_BYTES - len(self._head)]
            self._pending += chunk
            if len(self._head) >= SNIFF_BYTES:
                await self._decide_type()
            return
        await self._forward(chunk)

    async def _decide_type(self) -> None:
        self._content_type = sniff_media_type(self._head)
        if self._content_type is None:
            await self.abort()
            raise UnsupportedMedia("the file is not an image or video type vlmq accepts (decided by its content)")
        if self._content_type in IMAGE_TYPES:
            if self._size > self._max_image_bytes:
                await self.abort()
                raise PayloadTooLarge(f"images are limited to {self._max_image_bytes} bytes")
            self._spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
        buffered, self._pending = bytes(self._pending), bytearray()
        await self._forward(buffered)

    async def _forward(self, chunk: bytes) -> None:
        if self._spool is not None:
            self._spool.write(chunk)
        if self._writer is not None:
            # A list of chunks joined once per block: one copy, where a growing bytearray makes two.
            self._blocks.append(chunk)
            self._blocked_bytes += len(chunk)
            if self._blocked_bytes >= WRITE_BLOCK:
                await run_in_threadpool(self._writer.write, self._take_block())

    def _take_block(self) -> bytes:
        block = b"".join(self._blocks)
        self._blocks, self._blocked_bytes = [], 0
        return block

    async def finish(self) -> StoredMedia:
        try:
            if self._size == 0:
                raise InvalidMedia("the file is empty")
            if self._content_type is None:
                await self._decide_type()
            width = height = None
            if self._spool is not None:
                width, height = await run_in_threadpool(_image_size, self._spool)
                self._spool.close()
            sha256 = self._hash.hexdigest()
            media = StoredMedia("", self._content_type, self._size, sha256, width, height)  # type: ignore[arg-type]
            if self._writer is not None:
                media.object_key = media_key(self._tenant, sha256)  # type: ignore[arg-type]
                media.newly_stored = await run_in_threadpool(self._commit, media.object_key)
            return media
        except BaseException:
            await self.abort()
            raise

    def _commit(self, final_key: str) -> bool:
        """Complete the staged write and move it to its content address; True if it is new there."""
        self._writer.write(self._take_block())  # type: ignore[union-attr]
        self._writer.complete()  # type: ignore[union-attr]
        self._writer = None
        try:
            self._store.size(final_key)
            existed = True
        except ObjectNotFound:
            existed = False
        if existed:
            self._store.delete(self._staging_key)  # type: ignore[arg-type]
        else:
            self._store.move(self._staging_key, final_key)  # type: ignore[arg-type]
        return not existed

    async def abort(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None
        writer, self._writer = self._writer, None
        if writer is not None:
            await run_in_threadpool(writer.abort)


async def inspect_stored_object(
    store: ObjectStore, key: str, *, max_bytes: int, max_image_bytes: int
) -> StoredMedia:
    """Read an object already in storage through the same checks as an upload."""
    ingest = MediaIngest(store, store_as=None, max_bytes=max_bytes, max_image_bytes=max_image_bytes)
    chunks = await run_in_threadpool(lambda: iter(store.iter_chunks(key)))
    while True:
        chunk = await run_in_threadpool(next, chunks, None)
        if chunk is None:
            break
        await ingest.feed(chunk)
    media = await ingest.finish()
    media.object_key = key
    return media
