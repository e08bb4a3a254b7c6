"""Webhook receivers that misbehave cannot hold the notifier: every attempt ends by its deadline,
one delivery never has two attempts at once, one tenant's slow endpoints leave senders for the
others, and a 2xx is a success whatever body comes with it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from shared.db.engine import session_scope
from shared.db.models import Delivery, DeliveryAttempt
from tests.support.media import png_bytes, submit, wait_for_job
from tests.support.receiver import Receiver
from tests.support.services import wait_until
from tests.support.webhook_receivers import LargeBodyReceiver, TricklingReceiver

SUCCEEDED_HOOK = {"task": "caption", "options": {"max_new_tokens": 2}}
DEADLINE_S = 10  # API.md: "10 s timeout", for the whole attempt


def _request(url: str) -> dict:
    return {**SUCCEEDED_HOOK, "webhook": {"url": url, "events": ["job.succeeded"]}}


def _attempts(database_url: str, url: str) -> list[tuple[str, int, int | None, str | None, float]]:
    """(delivery id, attempt, status code, error, duration ms) of every attempt to ``url``."""
    with session_scope(database_url) as session:
        rows = session.execute(
            select(DeliveryAttempt.delivery_id, DeliveryAttempt.attempt, DeliveryAttempt.status_code,
                   DeliveryAttempt.error, DeliveryAttempt.duration_ms)
            .join(Delivery, Delivery.id == DeliveryAttempt.delivery_id)
            .where(Delivery.url == url)
            .order_by(DeliveryAttempt.id)
        ).all()
    return [tuple(row) for row in rows]


def _stop_retrying(database_url: str, url: str) -> None:
    """What is left of a test's deliveries to a receiver that is going away: nothing more to send."""
    with session_scope(database_url) as session:
        session.execute(update(Delivery).where(Delivery.url == url, Delivery.status == "pending")
                        .values(status="failed", next_attempt_at=None, last_error="test over"))


@pytest.fixture()
def trickler(database_url):
    receiver = TricklingReceiver(interval_s=2.0)
    yield receiver
    _stop_retrying(database_url, receiver.url)
    receiver.close()


def _finished_at(job: dict) -> datetime:
    return datetime.fromisoformat(job["finished_at"])


def test_a_trickling_receiver_is_cut_at_the_deadline_while_another_tenants_webhooks_arrive(
        acme, globex, stack, stack_env, database_url, trickler):
    # given acme's receiver that sends its status line and then one byte every 2 s, forever,
    # and more acme deliveries for it than acme may send at once
    tenant_limit = int(stack_env["VLMQ_WEBHOOK_TENANT_CONCURRENCY"])
    acme_jobs = [submit(acme, _request(trickler.url), png_bytes(colour=(n, 9, 9))).json()["id"]
                 for n in range(tenant_limit + 1)]
    for job_id in acme_jobs:
        wait_for_job(acme, job_id)
    wait_until(lambda: len(trickler.open_connections()) == tenant_limit, timeout_s=30,
               what="acme's attempts to reach the trickling receiver")

    # when globex's jobs report to a healthy receiver while acme's attempts are being trickled
    healthy = Receiver()
    try:
        arrivals: dict[str, datetime] = {}

        def arrived() -> bool:  # when each job's webhook came, by job id
            for sent in healthy.requests[len(arrivals):]:
                arrivals[json.loads(sent["body"])["data"]["id"]] = datetime.now(UTC)
            return len(arrivals) == 3

        globex_jobs = [wait_for_job(globex, submit(globex, _request(healthy.url), png_bytes()).json()["id"])
                       for _ in range(3)]
        wait_until(arrived, timeout_s=30, what="globex's webhooks")
    finally:
        healthy.close()

    # then each of globex's webhooks arrived within 15 s of its job finishing
    assert all(job["status"] == "succeeded" for job in globex_jobs)
    assert all(arrivals[job["id"]] < _finished_at(job) + timedelta(seconds=15) for job in globex_jobs)

    # and acme's attempts were cut at the deadline and recorded as failed attempts that say so
    cut = wait_until(lambda: [a for a in _attempts(database_url, trickler.url) if a[3]], timeout_s=DEADLINE_S + 20,
                     what="a cut attempt to be recorded")
    _, _, status_code, error, duration_ms = cut[0]
    assert status_code is None and "deadline" in error
    assert DEADLINE_S * 1000 * 0.9 <= duration_ms <= (DEADLINE_S + 10) * 1000
    # and the delivery that found acme's senders busy was deferred, not failed: it is attempted too
    deliveries = _delivery_ids(database_url, trickler.url)
    assert len(deliveries) == len(acme_jobs)
    wait_until(lambda: {c.webhook_id for c in trickler.connections} == deliveries, timeout_s=2 * DEADLINE_S + 30,
               what="every acme delivery to be attempted")
    # and acme never had more attempts at once than its limit, nor two of one delivery
    assert trickler.most_at_once() <= tenant_limit
    assert all(trickler.most_at_once(delivery_id) == 1 for delivery_id in deliveries)


def _delivery_ids(database_url: str, url: str) -> set[str]:
    with session_scope(database_url) as session:
        return set(session.scalars(select(Delivery.id).where(Delivery.url == url)))


def test_redelivering_a_delivery_while_its_attempt_is_in_flight_never_runs_two_attempts_at_once(
        acme, stack, database_url, trickler):
    # given a delivery whose first attempt is being trickled
    job = wait_for_job(acme, submit(acme, _request(trickler.url), png_bytes(colour=(1, 2, 3))).json()["id"])
    (connection,) = wait_until(trickler.open_connections, timeout_s=30, what="the first attempt")

    # when it is redelivered (and so due at once) while that attempt is still in flight
    assert acme.post(f"/v1/deliveries/{connection.webhook_id}/redeliver").status_code == 200

    # then a second attempt starts only once the first has been cut at its deadline
    wait_until(lambda: len([c for c in trickler.connections if c.webhook_id == connection.webhook_id]) >= 2,
               timeout_s=DEADLINE_S + 30, what="the next attempt")
    assert trickler.most_at_once(connection.webhook_id) == 1
    attempts = acme.get(f"/v1/jobs/{job['id']}/deliveries").json()["data"][0]["attempts"]
    assert attempts and "deadline" in attempts[0]["error"]


def test_a_2xx_with_a_large_body_is_a_success_and_is_not_sent_again(acme, stack, database_url):
    # given a receiver that accepts with 200 and a 1 MB body
    receiver = LargeBodyReceiver(body_bytes=1024 * 1024)
    try:
        # when a job reports to it
        job = wait_for_job(acme, submit(acme, _request(receiver.url), png_bytes(colour=(4, 5, 6))).json()["id"])

        # then its one delivery succeeded at the first attempt
        (delivery,) = wait_until(
            lambda: [d for d in acme.get(f"/v1/jobs/{job['id']}/deliveries").json()["data"] if d["status"] != "pending"],
            timeout_s=30, what="the delivery to settle",
        )
        assert delivery["status"] == "succeeded"
        assert [(a["status_code"], a["error"]) for a in delivery["attempts"]] == [(200, None)]
        assert len(receiver.requests) == 1
    finally:
        _stop_retrying(database_url, receiver.url)
        receiver.close()
