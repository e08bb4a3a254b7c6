"""Media that arrive inside a request body: OpenAI-style ``data:`` URLs (base64), decoded and stored
through the same checks as an upload, under the tenant's content address."""

from __future__ import annotations

import base64
import binascii
import re

from shared.media.check import MediaCheck, MediaRejected, StoredMedia, settle_staged
from shared.storage import ObjectStore, media_key, staging_key

_DATA_URL = re.compile(r"^data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?);base64,", re.IGNORECASE)


def decode_data_url(url: str, *, max_bytes: int) -> bytes:
    """The bytes of a base64 ``data:`` URL; MediaRejected for anything else or more than ``max_bytes``.
    The declared type is not trusted: the bytes are sniffed like every upload."""
    match = _DATA_URL.match(url)
    if match is None:
        raise MediaRejected("invalid_media", "a data URL must be data:<type>;base64,<data>")
    payload = url[match.end():]
    if len(payload) // 4 * 3 > max_bytes + 3:
        raise MediaRejected("media_too_large", f"the image is larger than {max_bytes} bytes",
                            {"limit_bytes": max_bytes})
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise MediaRejected("invalid_media", f"the data URL is not valid base64: {error}") from None


def store_media_bytes(data: bytes, *, store: ObjectStore, tenant_id: str, max_bytes: int,
                      max_image_bytes: int, max_image_pixels: int) -> StoredMedia:
    """Check ``data`` as media and store it at its content address (``newly_stored`` says if new)."""
    check = MediaCheck(max_bytes=max_bytes, max_image_bytes=max_image_bytes, max_image_pixels=max_image_pixels)
    staging = staging_key(tenant_id)
    writer = store.open_writer(staging)
    try:
        ready = check.feed(data)
        writer.write(ready + check.finish())
        media = check.describe()
        media.object_key = media_key(tenant_id, media.sha256)
        writer.complete()
        writer = None
        media.newly_stored = settle_staged(store, staging, media.object_key)
        return media
    finally:
        check.close()
        if writer is not None:
            writer.abort()
