"""Fetch media a job names by URL: through the outbound guard, checked while it streams.

The worker calls this when the job runs (never the API's request path): the bytes go to a staging
key as they arrive, the size cap and content sniffing of uploads apply on the way, and only a
complete, valid file moves to the tenant's content-addressed key. A failure says whether another
attempt could succeed (the server or the network hiccuped) or not (refused URL, 404, not media).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from shared.media.check import (
    DEFAULT_MAX_IMAGE_PIXELS,
    MediaCheck,
    MediaRejected,
    StoredMedia,
    WriteBlocks,
    settle_staged,
)
from shared.net import OutboundRefused, iter_body, stream
from shared.storage import ObjectStore, StorageError, media_key, staging_key

# Statuses worth asking again later; any other non-200 answer is final.
_RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_ACCEPT = "image/*, video/*;q=0.9, */*;q=0.1"


class FetchFailed(Exception):
    """``code`` is the job's reason code; ``transient`` when a later attempt may succeed."""

    def __init__(self, code: str, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.code, self.message, self.transient = code, message, transient


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int
    max_image_bytes: int
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    read_timeout_s: float = 10.0  # each connect and read
    total_timeout_s: float = 300.0  # the whole transfer: a server dripping bytes cannot hold a worker
    allow_private: bool = False

    @classmethod
    def from_settings(cls, settings) -> FetchLimits:
        """The limits a ``shared.config`` settings object sets (the API's and the worker's agree)."""
        return cls(
            max_bytes=settings.max_upload_bytes,
            max_image_bytes=settings.max_image_bytes,
            max_image_pixels=settings.max_image_pixels,
            total_timeout_s=settings.media_fetch_timeout_s,
            allow_private=settings.allow_private_networks,
        )


def fetch_media(url: str, *, limits: FetchLimits, store: ObjectStore | None = None,
                tenant_id: str | None = None, should_stop: Callable[[], bool] | None = None) -> StoredMedia:
    """The media at ``url``, stored under the tenant's content address when ``store`` and
    ``tenant_id`` are given (``newly_stored`` says whether it was new), else only checked.
    ``should_stop`` is polled between chunks: True ends the transfer with code ``stopped``."""
    check = MediaCheck(max_bytes=limits.max_bytes, max_image_bytes=limits.max_image_bytes,
                       max_image_pixels=limits.max_image_pixels)
    staging = staging_key(tenant_id) if store is not None and tenant_id else None
    try:
        writer = store.open_writer(staging) if staging else None
    except StorageError as error:
        raise FetchFailed("media_unavailable", f"storage could not be written: {error}", transient=True) from error
    try:
        _transfer(url, limits, check, writer, should_stop or (lambda: False))
        media = check.describe()
        media.url = url
        if writer is not None:
            media.object_key = media_key(tenant_id, media.sha256)  # type: ignore[arg-type]
            writer.complete()
            writer = None
            media.newly_stored = settle_staged(store, staging, media.object_key)  # type: ignore[arg-type]
        return media
    except MediaRejected as rejection:
        raise FetchFailed(rejection.code, f"{url}: {rejection.message}") from None
    except StorageError as error:
        raise FetchFailed("media_unavailable", f"storage could not be written: {error}", transient=True) from error
    finally:
        check.close()
        if writer is not None:
            writer.abort()


def _transfer(url: str, limits: FetchLimits, check: MediaCheck, writer, should_stop: Callable[[], bool]) -> None:
    deadline = time.monotonic() + limits.total_timeout_s
    blocks = WriteBlocks()
    try:
        with stream("GET", url, allow_private=limits.allow_private, follow_redirects=True,
                    timeout=limits.read_timeout_s, headers={"accept": _ACCEPT}) as response:
            if response.status_code != 200:
                raise FetchFailed(
                    "media_fetch_failed", f"{url} answered HTTP {response.status_code}",
                    transient=response.status_code in _RETRYABLE_STATUSES,
                )
            # The biggest file any kind may be: the check applies the smaller image cap once sniffed.
            for chunk in iter_body(response, max_bytes=max(limits.max_bytes, limits.max_image_bytes)):
                if should_stop():
                    raise FetchFailed("stopped", f"the transfer of {url} was stopped")
                if time.monotonic() > deadline:
                    raise FetchFailed("media_fetch_failed", f"{url} took longer than {limits.total_timeout_s:g} s")
                ready = check.feed(chunk)
                if writer is not None and ready and (block := blocks.add(ready)) is not None:
                    writer.write(block)
    except OutboundRefused as refusal:
        if refusal.reason == "too_large":
            limit = max(limits.max_bytes, limits.max_image_bytes)
            raise MediaRejected("media_too_large", str(refusal), {"limit_bytes": limit}) from None
        # A name that does not resolve may be a DNS hiccup; every other refusal is about the URL.
        raise FetchFailed("url_refused" if refusal.reason != "unresolvable" else "media_fetch_failed",
                          str(refusal), transient=refusal.reason == "unresolvable") from None
    except httpx.TimeoutException as error:
        raise FetchFailed("media_fetch_failed", f"{url} timed out: {type(error).__name__}", transient=True) from None
    except httpx.HTTPError as error:
        raise FetchFailed("media_fetch_failed", f"{url} could not be fetched: {type(error).__name__}: {error}",
                          transient=True) from None
    tail = check.finish()
    if writer is not None:
        writer.write(blocks.take() + tail)
