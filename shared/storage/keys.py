"""Where things live in the store. Every key starts with its tenant's prefix."""

from __future__ import annotations

import uuid


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
