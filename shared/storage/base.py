"""The object store protocol every backend implements."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol


class StorageError(Exception):
    """Base of every storage error."""


class ObjectNotFound(StorageError):
    pass


class ObjectWriter(Protocol):
    """A streaming write: bytes go out as they come, nothing is visible until ``complete``."""

    def write(self, chunk: bytes) -> None: ...

    def complete(self) -> None: ...

    def abort(self) -> None: ...


class ObjectStore(Protocol):
    def open_writer(self, key: str) -> ObjectWriter: ...

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
        """A URL the client can PUT to directly, or None if this backend cannot presign."""
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
