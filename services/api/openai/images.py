"""The images of a chat request as job media: ``data:`` URLs stored now, http(s) URLs left for the
worker to fetch through the outbound guard (as a job's ``{"url"}`` input is)."""

from __future__ import annotations

from urllib.parse import urlsplit

from services.api.multipart import discard_new_media
from shared.config.settings import CommonSettings
from shared.media import MediaRejected, PendingUrl, StoredMedia
from shared.media.inline import decode_data_url, store_media_bytes
from shared.net import OutboundRefused, check_url_form
from shared.storage import ObjectStore


class ImageRefused(Exception):
    """An image URL vlmq will not use; ``code`` is a job reason code (``invalid_media``, ``url_refused``…)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def image_media(url: str, *, store: ObjectStore, tenant_id: str,
                settings: CommonSettings) -> StoredMedia | PendingUrl:
    scheme = urlsplit(url).scheme.lower()
    if scheme == "data":
        try:
            data = decode_data_url(url, max_bytes=settings.max_image_bytes)
            return store_media_bytes(data, store=store, tenant_id=tenant_id, max_bytes=settings.max_upload_bytes,
                                     max_image_bytes=settings.max_image_bytes,
                                     max_image_pixels=settings.max_image_pixels)
        except MediaRejected as rejection:
            raise ImageRefused(rejection.code, rejection.message) from None
    if scheme not in ("http", "https"):
        raise ImageRefused("invalid_input", "image_url.url must be a data: URL or an http(s) URL")
    try:
        check_url_form(url, allow_private=settings.allow_private_networks)
    except OutboundRefused as refusal:
        raise ImageRefused("url_refused", str(refusal)) from None
    return PendingUrl(url)


def images_media(urls: list[str], *, store: ObjectStore, tenant_id: str,
                 settings: CommonSettings) -> list[StoredMedia | PendingUrl]:
    """Every image in order; on a refusal, the ones this call stored first are removed again."""
    media: list[StoredMedia | PendingUrl] = []
    try:
        for url in urls:
            media.append(image_media(url, store=store, tenant_id=tenant_id, settings=settings))
    except ImageRefused:
        discard_new_media(store, media)
        raise
    return media
