"""Build the object store a storage URL names."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from shared.storage.base import ObjectStore, StorageError


@lru_cache
def open_store(url: str) -> ObjectStore:
    """``s3://bucket?endpoint_url=…&region=…&public_endpoint_url=…`` or ``file:///absolute/dir``."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        from shared.storage.local import LocalObjectStore

        return LocalObjectStore(Path(unquote(parsed.path)))
    if parsed.scheme == "s3":
        from shared.storage.s3 import S3ObjectStore

        query = {name: values[-1] for name, values in parse_qs(parsed.query).items()}
        if not parsed.netloc:
            raise StorageError(f"storage URL has no bucket: {url!r}")
        return S3ObjectStore(parsed.netloc, endpoint_url=query.get("endpoint_url"), region=query.get("region"),
                             public_endpoint_url=query.get("public_endpoint_url"))
    raise StorageError(f"unsupported storage URL scheme {parsed.scheme!r} (use s3:// or file://)")
