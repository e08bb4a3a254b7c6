"""Object storage: one protocol, an S3 implementation and a local-directory one, and the key layout."""

from shared.storage.base import (
    InvalidObjectKey,
    ObjectExists,
    ObjectNotFound,
    ObjectStore,
    ObjectWriter,
    StorageError,
    put_bytes,
)
from shared.storage.factory import open_store
from shared.storage.keys import (
    check_object_key,
    file_key,
    frames_key,
    index_prefix,
    is_tenant_key,
    media_key,
    segment_batch_key,
    staging_key,
    tenant_prefix,
    thumbnail_key,
    upload_key,
)

__all__ = [
    "InvalidObjectKey",
    "ObjectExists",
    "ObjectNotFound",
    "ObjectStore",
    "ObjectWriter",
    "StorageError",
    "check_object_key",
    "file_key",
    "frames_key",
    "index_prefix",
    "is_tenant_key",
    "media_key",
    "open_store",
    "put_bytes",
    "segment_batch_key",
    "staging_key",
    "tenant_prefix",
    "thumbnail_key",
    "upload_key",
]
