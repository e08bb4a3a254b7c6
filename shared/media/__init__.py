"""Media files: what vlmq accepts (sniffed by content), their checks, and fetching them by URL."""

from shared.media.check import (
    MEDIA_FIELDS,
    MediaCheck,
    MediaRejected,
    PendingUrl,
    StoredMedia,
    WriteBlocks,
    image_size,
    settle_staged,
)
from shared.media.types import IMAGE_TYPES, SNIFF_BYTES, VIDEO_TYPES, sniff_media_type

__all__ = [
    "IMAGE_TYPES",
    "MEDIA_FIELDS",
    "SNIFF_BYTES",
    "VIDEO_TYPES",
    "MediaCheck",
    "MediaRejected",
    "PendingUrl",
    "StoredMedia",
    "WriteBlocks",
    "image_size",
    "settle_staged",
    "sniff_media_type",
]
