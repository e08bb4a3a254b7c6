"""Where things live in the store, and the one check of a key as data.

Every key starts with its tenant's prefix. A key is canonical when it is segments joined by single
``/``: no leading or trailing ``/``, no empty, ``.`` or ``..`` segment, no backslash, no control or
invisible formatting character, at most ``MAX_KEY_BYTES`` of UTF-8. Both stores refuse every other
form themselves, and ownership is decided on canonical keys segment by segment, so no spelling of a
key can reach another tenant's objects or leave the store's root.
"""

from __future__ import annotations

import unicodedata
import uuid

from shared.storage.base import InvalidObjectKey

# The width of the key columns (media, uploads, index videos); S3's own limit is 1024 bytes.
MAX_KEY_BYTES = 512
# Control, format (bidirectional overrides, zero-width), surrogate, private-use and unassigned
# characters, and line/paragraph separators: a key that shows one name and stores another.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def check_object_key(key: object) -> str:
    """``key`` itself when it is canonical; otherwise ``InvalidObjectKey`` saying why."""
    if not isinstance(key, str) or not key:
        raise InvalidObjectKey("an object key is a non-empty string")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidObjectKey(f"an object key is at most {MAX_KEY_BYTES} bytes of UTF-8")
    if "\\" in key:
        raise InvalidObjectKey("an object key has no backslashes; segments are separated by '/'")
    for character in key:
        if unicodedata.category(character) in _REFUSED_CATEGORIES:
            raise InvalidObjectKey(f"an object key has no control or invisible characters (found U+{ord(character):04X})")
    if any(segment in ("", ".", "..") for segment in key.split("/")):
        raise InvalidObjectKey("an object key is segments separated by single '/': no leading, trailing or "
                               "doubled '/', no '.' or '..' segment")
    return key


def is_tenant_key(tenant_id: str, key: str) -> bool:
    """Whether the (canonical, else ``InvalidObjectKey``) key names an object under the tenant's
    prefix: compared segment by segment, so ``tenants/bobby/…`` is not bob's."""
    segments = check_object_key(key).split("/")
    return len(segments) > 2 and segments[0] == "tenants" and segments[1] == tenant_id


def tenant_prefix(tenant_id: str) -> str:
    return f"tenants/{tenant_id}/"


def media_key(tenant_id: str, sha256: str) -> str:
    """Content-addressed: the same bytes uploaded twice by one tenant are stored once."""
    return f"{tenant_prefix(tenant_id)}media/{sha256}"


def staging_key(tenant_id: str) -> str:
    """Where a streaming upload lands before its hash (and so its final key) is known."""
    return f"{tenant_prefix(tenant_id)}staging/{uuid.uuid4().hex}"


def frames_key(tenant_id: str, job_id: str) -> str:
    """A video job's sampled frames, as one array of 448×448 tiles (workers.frames)."""
    return f"{tenant_prefix(tenant_id)}frames/{job_id}.npy"


def index_prefix(tenant_id: str, index_id: str) -> str:
    return f"{tenant_prefix(tenant_id)}indexes/{index_id}/"


def segment_batch_key(tenant_id: str, index_id: str, video_id: str, batch: int) -> str:
    """One batch of an indexed video's segments, as one array of 448×448 tiles (until captioned)."""
    return f"{index_prefix(tenant_id, index_id)}{video_id}/batch-{batch:05d}.npy"


def thumbnail_key(tenant_id: str, index_id: str, video_id: str, seq: int) -> str:
    return f"{index_prefix(tenant_id, index_id)}{video_id}/thumb-{seq:05d}.jpg"


def file_key(tenant_id: str, file_id: str) -> str:
    """A file of the OpenAI-compatible Files API (batch input, output and error JSONL)."""
    return f"{tenant_prefix(tenant_id)}files/{file_id}.jsonl"


def upload_key(tenant_id: str, upload_id: str) -> str:
    return f"{tenant_prefix(tenant_id)}uploads/{upload_id}"
