"""The object store protocol every backend implements."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol


class StorageError(Exception):
    """Base of every storage error."""


class ObjectNotFound(StorageError):
    pass


class InvalidObjectKey(ObjectNotFound):
    """A key not in the one canonical form (``shared.storage.keys``): no object can live under it.

    A kind of ObjectNotFound so that code which only reads treats it as permanent (a job fails, it
    is not retried); the API maps it to a 400 of its own."""


class ObjectExists(StorageError):
    """A write-once object (an upload) was written already; nothing was replaced."""


class ObjectWriter(Protocol):
    """A streaming write: bytes go out as they come, nothing is visible until ``complete``."""

    def write(self, chunk: bytes) -> None: ...

    def complete(self) -> None: ...

    def abort(self) -> None: ...


class ObjectStore(Protocol):
    def open_writer(self, key: str, *, exclusive: bool = False) -> ObjectWriter:
        """``exclusive``: ``complete`` raises ObjectExists instead of replacing an existing object."""
        ...

    def size(self, key: str) -> int:
        """Size in bytes; raises ObjectNotFound."""
        ...

    def read_range(self, key: str, start: int, length: int) -> bytes: ...

    def iter_chunks(self, key: str, chunk_size: int = 1024 * 1024) -> Iterator[bytes]: ...

    def read(self, key: str) -> bytes: ...

    def move(self, source: str, destination: str) -> None:
        """Rename within the store (a server-side copy then delete on S3)."""
        ...

    def delete(self, key: str) -> None: ...

    def presign_put(self, key: str, *, content_type: str, expires_s: int) -> tuple[str, dict[str, str]] | None:
        """A URL the client can PUT to directly, once (a second PUT is refused), with the headers it
        must send; or None if this backend cannot presign."""
        ...

    def ping(self) -> None:
        """Raise StorageError unless the store is reachable."""
        ...


def put_bytes(store: ObjectStore, key: str, data: bytes) -> None:
    """Write a small object whole (frame arrays, thumbnails); nothing is left behind on failure."""
    writer = store.open_writer(key)
    try:
        writer.write(data)
    except BaseException:
        writer.abort()
        raise
    writer.complete()
