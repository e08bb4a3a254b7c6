"""A finished chat job in OpenAI's shapes: the completion object, stream chunks, and the error a
failed job answers with. The batch output file uses the same objects, line by line."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from services.api.errors import openai_error_body

# A failed job's reason code → the HTTP status its chat completion answers with. The request's own
# fault is 400; a job that could not finish is 5xx. vlmq has already retried what a retry could fix.
_CLIENT_FAULTS = {"invalid_input", "invalid_media", "image_too_large", "unsupported_media", "media_too_large",
                  "url_refused", "media_fetch_failed", "media_unavailable"}
_STATUS_OF = {"canceled": 409, "timeout": 504, "queue_unavailable": 503}


def completion_id(job_id: str) -> str:
    """``chatcmpl-`` + the job's id: a completion leads back to its job (``GET /v1/jobs/{id}``)."""
    return f"chatcmpl-{job_id}"


def usage(result: dict[str, Any]) -> dict[str, int]:
    prompt, completion = result["usage"]["input_tokens"], result["usage"]["output_tokens"]
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion_object(job_id: str, created_at: datetime, model: str, result: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": completion_id(job_id),
        "object": "chat.completion",
        "created": int(created_at.timestamp()),
        "model": model,
        "system_fingerprint": None,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": result["text"], "refusal": None},
            "logprobs": None,
            "finish_reason": result.get("finish_reason", "stop"),
        }],
        "usage": usage(result),
    }


def chunk_object(job_id: str, created: int, model: str, *, delta: dict[str, Any] | None,
                 finish_reason: str | None = None, usage_: dict[str, int] | None = None) -> dict[str, Any]:
    """One ``chat.completion.chunk``; ``delta=None`` is the usage-only chunk (no choices)."""
    chunk: dict[str, Any] = {
        "id": completion_id(job_id), "object": "chat.completion.chunk", "created": created, "model": model,
        "system_fingerprint": None,
        "choices": [] if delta is None else [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    if usage_ is not None:
        chunk["usage"] = usage_
    return chunk


def failed_job_status(error: dict[str, Any] | None, status: str) -> int:
    code = (error or {}).get("code") or status
    if code in _CLIENT_FAULTS:
        return 400
    return _STATUS_OF.get(code, 500)


def failed_job_error(job_id: str, status: str, error: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
    """(HTTP status, OpenAI error body) for a job that ended without a result."""
    code = (error or {}).get("code") or status
    message = (error or {}).get("message") or f"the job was {status}"
    http_status = failed_job_status(error, status)
    return http_status, openai_error_body(http_status, code, f"job {job_id}: {message}")
