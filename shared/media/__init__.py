"""Media files: what vlmq accepts (sniffed by content), their checks, and fetching them by URL."""

from shared.media.check import (
    DEFAULT_MAX_IMAGE_PIXELS,
    MEDIA_FIELDS,
    MediaCheck,
    MediaRejected,
    PendingUrl,
    StoredMedia,
    WriteBlocks,
    image_size,
    open_image,
    settle_staged,
)
from shared.media.types import IMAGE_TYPES, SNIFF_BYTES, VIDEO_TYPES, sniff_media_type

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
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
    "open_image",
    "settle_staged",
    "sniff_media_type",
]
