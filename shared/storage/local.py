"""Local-directory object store for the embedded default and single-machine installs."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from shared.storage.base import InvalidObjectKey, ObjectExists, ObjectNotFound, StorageError
from shared.storage.keys import check_object_key

STAGING_DIR = ".staging"  # unfinished writes, under the root but never an object


class LocalFileWriter:
    def __init__(self, final_path: Path, staging_dir: Path, *, exclusive: bool = False) -> None:
        self._final_path, self._exclusive = final_path, exclusive
        self._staging_path = staging_dir / uuid.uuid4().hex
        self._file = open(self._staging_path, "wb")

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)

    def complete(self) -> None:
        self._file.close()
        self._final_path.parent.mkdir(parents=True, exist_ok=True)
        if not self._exclusive:
            os.replace(self._staging_path, self._final_path)
            return
        # A hard link is created only where no file is, atomically: of two racing writers one wins.
        try:
            os.link(self._staging_path, self._final_path)
        except FileExistsError:
            raise ObjectExists(self._final_path.name) from None
        finally:
            self._staging_path.unlink(missing_ok=True)

    def abort(self) -> None:
        self._file.close()
        self._staging_path.unlink(missing_ok=True)


class LocalObjectStore:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._staging_dir = self.root / STAGING_DIR
        self._staging_dir.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        """The file of a canonical key: refused before the filesystem resolves anything, so no
        ``..`` is ever followed; the check after resolving still catches a symlink pointing out."""
        if check_object_key(key).split("/", 1)[0] == STAGING_DIR:
            raise InvalidObjectKey(f"{STAGING_DIR} holds unfinished writes, not objects")
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise InvalidObjectKey(f"key escapes the storage root: {key!r}")
        return path

    def _existing(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(key)
        return path

    def open_writer(self, key: str, *, exclusive: bool = False) -> LocalFileWriter:
        return LocalFileWriter(self._path(key), self._staging_dir, exclusive=exclusive)

    def size(self, key: str) -> int:
        return self._existing(key).stat().st_size

    def read_range(self, key: str, start: int, length: int) -> bytes:
        with open(self._existing(key), "rb") as file:
            file.seek(start)
            return file.read(length)

    def iter_chunks(self, key: str, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        with open(self._existing(key), "rb") as file:
            while chunk := file.read(chunk_size):
                yield chunk

    def read(self, key: str) -> bytes:
        return self._existing(key).read_bytes()

    def move(self, source: str, destination: str) -> None:
        target = self._path(destination)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._existing(source), target)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def presign_put(self, key: str, *, content_type: str, expires_s: int) -> None:
        """None: the API serves PUTs for local storage itself (the key is still checked)."""
        self._path(key)

    def ping(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"storage directory {self.root} is not writable")
