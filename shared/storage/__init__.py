"""Object storage: one protocol, an S3 implementation and a local-directory one, and the key layout."""

from shared.storage.base import ObjectNotFound, ObjectStore, ObjectWriter, StorageError, put_bytes
from shared.storage.factory import open_store
from shared.storage.keys import (
    frames_key,
    index_prefix,
    media_key,
    segment_batch_key,
    staging_key,
    tenant_prefix,
    thumbnail_key,
    file_key,
    upload_key,
)

__all__ = [
    "ObjectNotFound",
    "ObjectStore",
    "ObjectWriter",
    "StorageError",
    "frames_key",
    "index_prefix",
    "media_key",
    "open_store",
    "put_bytes",
    "segment_batch_key",
    "staging_key",
    "tenant_prefix",
    "thumbnail_key",
    "file_key",
    "upload_key",
]
