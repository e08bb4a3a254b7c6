"""Check one media file's bytes as they pass: type by magic bytes, size limit per kind, sha256.

Both ways media arrive go through here: uploads streamed by the API and files the worker fetches
by URL. Neither trusts a file name or a Content-Type header.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image, UnidentifiedImageError

from shared.media.types import IMAGE_TYPES, SNIFF_BYTES, sniff_media_type
from shared.storage import ObjectNotFound, ObjectStore

# Images are validated (``image_size``); below this they stay in memory, above it on disk.
SPOOL_IN_MEMORY = 4 * 1024 * 1024

# The default pixel budget (VLMQ_MAX_IMAGE_PIXELS): an 8192² square, a 50 Mpx phone photo.
DEFAULT_MAX_IMAGE_PIXELS = 8192 * 8192

# What vlmq knows of a stored media file: the job object's input item and the media table's columns.
MEDIA_FIELDS = ("object_key", "content_type", "size_bytes", "sha256", "width", "height", "duration_s", "fps")

RejectionCode = Literal["media_too_large", "unsupported_media", "invalid_media", "image_too_large"]


class MediaRejected(Exception):
    """The bytes are not media vlmq accepts; ``code`` is the reason code users see."""

    def __init__(self, code: RejectionCode, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code: RejectionCode = code
        self.message = message
        self.details = details or {}


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
    url: str | None = None  # where it was fetched from, for media given by URL
    newly_stored: bool = field(default=False, compare=False)
    # True when this description came from the media table (nothing to record again).
    recorded: bool = field(default=False, compare=False)

    @property
    def is_image(self) -> bool:
        return self.content_type in IMAGE_TYPES

    def as_input_item(self) -> dict[str, Any]:
        item = self.as_media_row()
        return item if self.url is None else {"url": self.url, **item}

    def as_media_row(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in MEDIA_FIELDS}


@dataclass
class PendingUrl:
    """Media given by URL: nothing is known of it until the worker fetches it when the job runs."""

    url: str
    is_image: None = None  # image or video is decided by the fetched bytes
    newly_stored: bool = False
    recorded: bool = True  # no media row until it is fetched

    def as_input_item(self) -> dict[str, Any]:
        return {"url": self.url, **dict.fromkeys(MEDIA_FIELDS)}


def open_image(file, *, max_pixels: int) -> Image.Image:
    """The image in ``file``, opened (Pillow reads only the header) and refused with code
    ``image_too_large`` when its width × height is over ``max_pixels``, before any pixel is decoded."""
    # Pillow's own bomb guard (a warning above the limit, an error above twice it) says the same as
    # ours: one budget per process, from its settings.
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        image = Image.open(file)
    except Image.DecompressionBombError as error:
        raise MediaRejected("image_too_large", f"the image has more pixels than the limit of {max_pixels} pixels",
                            {"limit_pixels": max_pixels}) from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise MediaRejected("invalid_media", f"the image could not be decoded: {error}") from error
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise MediaRejected(
            "image_too_large",
            f"the image is {width}×{height} = {width * height} pixels, more than the limit of {max_pixels} pixels",
            {"limit_pixels": max_pixels, "width": width, "height": height},
        )
    return image


def image_size(file, *, max_pixels: int) -> tuple[int, int]:
    """Check the whole image in bounded memory: the pixel budget from the header first, then a
    truncated or corrupt file fails here, not in the model. A JPEG is decoded at 1/8 scale (its
    whole entropy-coded stream is still read); a PNG has every chunk's CRC checked up to IEND
    without inflating its pixels; other formats are decoded, within the budget."""
    file.seek(0)
    with open_image(file, max_pixels=max_pixels) as image:
        size = image.size
        try:
            if image.format == "PNG":
                image.verify()
            else:
                if image.format == "JPEG":
                    image.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
                image.load()
        except (OSError, SyntaxError, ValueError) as error:
            raise MediaRejected("invalid_media", f"the image could not be decoded: {error}") from error
    return size


class MediaCheck:
    """One file's bytes, fed in order. ``feed`` answers the bytes ready to pass on (none while the
    type is still being sniffed) or raises MediaRejected; ``describe`` checks and sums it up."""

    def __init__(self, *, max_bytes: int, max_image_bytes: int, max_image_pixels: int) -> None:
        self._max_bytes, self._max_image_bytes = max_bytes, max_image_bytes
        self._max_image_pixels = max_image_pixels
        self._hash = hashlib.sha256()
        self._size = 0
        self._head = b""
        self.content_type: str | None = None
        self._pending = bytearray()  # bytes seen before the type is known
        self._spool: tempfile.SpooledTemporaryFile | None = None

    def feed(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        self._size += len(chunk)
        limit = self._max_image_bytes if self.content_type in IMAGE_TYPES else self._max_bytes
        if self._size > limit:
            raise MediaRejected("media_too_large", f"the file is larger than the limit of {limit} bytes",
                                {"limit_bytes": limit})
        self._hash.update(chunk)
        if self.content_type is None:
            self._head += chunk[: SNIFF_BYTES - len(self._head)]
            self._pending += chunk
            return self._decide_type() if len(self._head) >= SNIFF_BYTES else b""
        return self._keep(chunk)

    def finish(self) -> bytes:
        """The end of the file: the bytes still held back (a file shorter than the sniffing window)."""
        if self._size == 0:
            raise MediaRejected("invalid_media", "the file is empty")
        return self._decide_type() if self.content_type is None else b""

    def describe(self) -> StoredMedia:
        """After ``finish``: the file as stored media (``object_key`` still empty). Checks images."""
        width = height = None
        if self._spool is not None:
            try:
                width, height = image_size(self._spool, max_pixels=self._max_image_pixels)
            finally:
                self.close()
        return StoredMedia("", self.content_type, self._size, self._hash.hexdigest(), width, height)  # type: ignore[arg-type]

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None

    def _decide_type(self) -> bytes:
        self.content_type = sniff_media_type(self._head)
        if self.content_type is None:
            raise MediaRejected(
                "unsupported_media", "the file is not an image or video type vlmq accepts (decided by its content)"
            )
        if self.content_type in IMAGE_TYPES:
            if self._size > self._max_image_bytes:
                raise MediaRejected("media_too_large", f"images are limited to {self._max_image_bytes} bytes",
                                    {"limit_bytes": self._max_image_bytes})
            self._spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
        buffered, self._pending = bytes(self._pending), bytearray()
        return self._keep(buffered)

    def _keep(self, chunk: bytes) -> bytes:
        if self._spool is not None:
            self._spool.write(chunk)
        return chunk


# Bytes go to a storage writer in blocks this large, not per network chunk.
WRITE_BLOCK = 1024 * 1024


class WriteBlocks:
    """Chunks gathered into blocks for a storage writer. A list joined once per block: one copy,
    where a growing bytearray makes two."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0

    def add(self, chunk: bytes) -> bytes | None:
        """Keep ``chunk``; a full block to write once WRITE_BLOCK bytes are held, else None."""
        self._chunks.append(chunk)
        self._size += len(chunk)
        return self.take() if self._size >= WRITE_BLOCK else None

    def take(self) -> bytes:
        """Whatever is held, as one block."""
        block = b"".join(self._chunks)
        self._chunks, self._size = [], 0
        return block


def settle_staged(store: ObjectStore, staging: str, final_key: str) -> bool:
    """Move a completed staged object to its content address; True if it is new there."""
    try:
        store.size(final_key)
    except ObjectNotFound:
        store.move(staging, final_key)
        return True
    store.delete(staging)
    return False
