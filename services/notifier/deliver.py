"""Send one delivery attempt and record what happened (every write a compare-and-set)."""

from __future__ import annotations

import json
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta

import httpx
from sqlalchemy import update
from sqlalchemy.orm import Session

from services.notifier.leases import ATTEMPT_DEADLINE_S, claim
from shared.config.settings import NotifierSettings
from shared.db.engine import session_scope
from shared.db.models import Delivery, DeliveryAttempt, WebhookEndpoint, utcnow
from shared.logs import about_job
from shared.metrics import record
from shared.net import OutboundRefused, stream
from shared.webhooks import (
    delay_before_attempt,
    is_retryable,
    secret_for,
    signature_header,
    signing_secrets,
)

log = logging.getLogger("vlmq.notifier")
# The status decides; the body is not kept. A small one is read so that the exchange ends cleanly,
# a larger one is cut off there (a 2xx stays a success whatever follows it).
RESPONSE_PREFIX_BYTES = 64 * 1024


@dataclass
class Outcome:
    status_code: int | None = None
    error: str | None = None
    retry_after_s: float | None = None
    refused: bool = False


def deliver(delivery_id: str, *, token: str | None, settings: NotifierSettings) -> str | None:
    """One attempt for the dispatch ``token`` names; returns the delivery's status after it, or None
    if this message may not make it (see ``leases.claim``)."""
    database_url = settings.resolved_database_url
    with session_scope(database_url) as session:
        claimed = claim(session, delivery_id, token, tenant_limit=settings.webhook_tenant_concurrency)
        if claimed is None:
            return None
        attempt, url, payload = claimed.attempt, claimed.url, claimed.payload
        secrets_ = signing_secrets(secret_for(session, claimed.tenant_id))
    about = payload["data"].get("id") if payload["type"].startswith("job.") else None
    with about_job(about) if about else nullcontext():
        return _attempt(delivery_id, attempt, url, payload, secrets_, settings)


def _attempt(delivery_id: str, attempt: int, url: str, payload: dict, secrets_: list[str],
             settings: NotifierSettings) -> str | None:
    database_url = settings.resolved_database_url
    started = utcnow()
    clock = time.perf_counter()
    outcome = _post(delivery_id, url, payload, secrets_, allow_private=settings.allow_private_networks)
    duration_ms = (time.perf_counter() - clock) * 1000
    with session_scope(database_url) as session:
        session.add(
            DeliveryAttempt(
                delivery_id=delivery_id, attempt=attempt, started_at=started, duration_ms=duration_ms,
                status_code=outcome.status_code, error=outcome.error,
            )
        )
        return _settle(session, delivery_id, attempt, url, outcome, settings)


def _post(delivery_id: str, url: str, payload: dict, secrets_: list[str], *, allow_private: bool) -> Outcome:
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    timestamp = utcnow()
    headers = {
        "content-type": "application/json",
        "user-agent": "vlmq-webhooks/1",
        "webhook-id": delivery_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": signature_header(secrets_, delivery_id, timestamp, body),
    }
    try:
        with stream(
            "POST", url, allow_private=allow_private, follow_redirects=False, timeout=ATTEMPT_DEADLINE_S,
            deadline_s=ATTEMPT_DEADLINE_S, headers=headers, content=body.encode(),
        ) as response:
            _read_prefix(response)
    except OutboundRefused as error:  # a URL or address the guard refuses: never sent, not retried
        return Outcome(error=f"refused ({error.reason}): {error}"[:500], refused=True)
    except httpx.HTTPError as error:  # connection refused, reset, TLS, a timeout or the deadline
        return Outcome(error=f"{type(error).__name__}: {error}"[:500])
    retry_after = _retry_after_s(response) if response.status_code in (429, 503) else None
    return Outcome(status_code=response.status_code, retry_after_s=retry_after)


def _read_prefix(response: httpx.Response) -> None:
    """At most RESPONSE_PREFIX_BYTES of the body (raw: nothing is decompressed), within the deadline."""
    received = 0
    try:
        for chunk in response.iter_raw(RESPONSE_PREFIX_BYTES):
            received += len(chunk)
            if received >= RESPONSE_PREFIX_BYTES:
                return
    except httpx.HTTPError:
        return  # the status line and headers came: what the body does after them changes nothing


def _retry_after_s(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # HTTP-date forms are rare for webhooks; the schedule applies


def _settle(session: Session, delivery_id: str, attempt: int, url: str, outcome: Outcome,
            settings: NotifierSettings) -> str | None:
    now = utcnow()
    code = outcome.status_code
    values: dict
    if code is not None and 200 <= code < 300:
        values = {"status": "succeeded", "finished_at": now, "next_attempt_at": None, "last_error": None}
    elif code == 410:
        _disable_endpoint(session, delivery_id, url, now)
        values = {"status": "failed", "finished_at": now, "next_attempt_at": None, "last_error": "410 Gone: endpoint disabled"}
    elif outcome.refused or (code is not None and not is_retryable(code)):
        values = {"status": "failed", "finished_at": now, "next_attempt_at": None,
                  "last_error": outcome.error or f"HTTP {code}"}
    else:
        delay = delay_before_attempt(attempt + 1, retry_after_s=outcome.retry_after_s)
        error = outcome.error or f"HTTP {code}"
        if delay is None:
            values = {"status": "failed", "finished_at": now, "next_attempt_at": None,
                      "last_error": f"{error}; retries exhausted"}
        else:
            scaled = delay * settings.webhook_retry_scale if outcome.retry_after_s is None else delay
            values = {"next_attempt_at": now + timedelta(seconds=scaled), "last_error": error}
    settled = session.execute(
        update(Delivery)
        .where(Delivery.id == delivery_id, Delivery.status == "pending", Delivery.attempts == attempt)
        .values(**values, leased_until=None)  # the attempt is over: its lease and its tenant slot end
    )
    if settled.rowcount != 1:
        return None  # redelivered meanwhile: the newer attempt decides
    log.info("delivery %s attempt %d to %s: %s", delivery_id, attempt, url, code or outcome.error)
    status = values.get("status", "pending")
    record.webhook_attempt("disabled" if code == 410 else _OUTCOMES[status])
    return status


_OUTCOMES = {"succeeded": "delivered", "pending": "retrying", "failed": "failed"}


def _disable_endpoint(session: Session, delivery_id: str, url: str, now) -> None:
    tenant_id = session.get(Delivery, delivery_id).tenant_id
    endpoint = session.get(WebhookEndpoint, (tenant_id, url))
    if endpoint is None:
        session.add(WebhookEndpoint(tenant_id=tenant_id, url=url, disabled_at=now, disabled_reason="410 Gone"))
    else:
        endpoint.disabled_at, endpoint.disabled_reason = now, "410 Gone"
