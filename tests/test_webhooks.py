"""Signed webhooks through the notifier process to a real HTTP receiver (API.md, "Webhooks")."""

from __future__ import annotations

import json
import threading

import pytest
from sqlalchemy import select
from standardwebhooks import Webhook

from services.api.schemas import JobPublic
from shared.db.engine import session_scope
from shared.db.models import Delivery, DeliveryAttempt, WebhookEndpoint
from shared.webhooks import rotate_secret, secret_for
from tests.support.media import png_bytes, submit, wait_for_job
from tests.support.receiver import Receiver
from tests.support.services import wait_until


@pytest.fixture()
def receiver_factory():
    made = []

    def make(*statuses):
        made.append(Receiver(*statuses))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


def _deliveries(database_url, job_id):
    with session_scope(database_url) as session:
        deliveries = session.scalars(select(Delivery).where(Delivery.job_id == job_id)).all()
        return [
            (d.id, d.status, [(a.attempt, a.status_code) for a in session.scalars(
                select(DeliveryAttempt).where(DeliveryAttempt.delivery_id == d.id).order_by(DeliveryAttempt.attempt)
            )])
            for d in deliveries
        ]


def test_a_failing_receiver_gets_the_same_signed_delivery_until_it_accepts(acme, stack, database_url, receiver_factory):
    # given a receiver that answers 500, 500, then 200
    receiver = receiver_factory(500, 500, 200)

    # when a job with a webhook for its success finishes
    request = {"task": "caption", "options": {"max_new_tokens": 2}, "webhook": {"url": receiver.url, "events": ["job.succeeded"]}}
    job = wait_for_job(acme, submit(acme, request, png_bytes()).json()["id"])
    assert job["status"] == "succeeded"
    wait_until(lambda: len(receiver.requests) == 3, timeout_s=60, what="three delivery attempts")

    # then one delivery made three attempts with the same webhook-id
    (delivery_id, status, attempts), = wait_until(
        lambda: [d for d in _deliveries(database_url, job["id"]) if d[1] == "succeeded"], timeout_s=10,
        what="the delivery to settle",
    )
    assert attempts == [(1, 500), (2, 500), (3, 200)]
    assert {request["headers"]["webhook-id"] for request in receiver.requests} == {delivery_id}
    # and each body verifies with the tenant's secret through the standardwebhooks library
    with session_scope(database_url) as session:
        secret = secret_for(session, "acme").secret
    for sent in receiver.requests:
        event = Webhook(secret).verify(sent["body"], sent["headers"])
        assert event["type"] == "job.succeeded" and event["data"]["id"] == job["id"]
        # and the job in it is the API's job object
        assert JobPublic.model_validate(event["data"]).result["text"] == job["result"]["text"]


def test_a_receiver_that_answers_410_is_disabled(acme, stack, database_url, receiver_factory):
    # given a receiver that is gone
    receiver = receiver_factory(410)
    request = {"task": "caption", "options": {"max_new_tokens": 2}, "webhook": {"url": receiver.url}}

    # when two jobs report to it, one after the other
    first = wait_for_job(acme, submit(acme, request, png_bytes()).json()["id"])
    wait_until(lambda: [d for d in _deliveries(database_url, first["id"]) if d[1] == "failed"], timeout_s=30,
               what="the first delivery to fail")
    second = wait_for_job(acme, submit(acme, request, png_bytes()).json()["id"])

    # then the endpoint is disabled after the 410, and the second event is recorded but never sent
    with session_scope(database_url) as session:
        assert session.get(WebhookEndpoint, ("acme", receiver.url)).disabled_at is not None
    assert [status for _, status, _ in _deliveries(database_url, second["id"])] == ["failed"]
    assert len(receiver.requests) == 1


def test_after_a_rotation_both_secrets_verify_for_a_day(acme, stack, database_url, receiver_factory):
    # given a rotated secret
    with session_scope(database_url) as session:
        old = secret_for(session, "acme").secret
        new = rotate_secret(session, "acme").secret
    receiver = receiver_factory(200)

    # when an event is delivered
    request = {"task": "caption", "options": {"max_new_tokens": 2}, "webhook": {"url": receiver.url}}
    wait_for_job(acme, submit(acme, request, png_bytes()).json()["id"])
    wait_until(lambda: receiver.requests, timeout_s=30, what="a delivery")

    # then it carries two signatures and either secret verifies it
    sent = receiver.requests[0]
    assert len(sent["headers"]["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        assert json.loads(sent["body"])["type"] == Webhook(secret).verify(sent["body"], sent["headers"])["type"]


def test_the_api_shows_the_secret_the_deliveries_and_redelivers(acme, globex, stack, receiver_factory):
    # given a delivery that a receiver refused with 400 (not retried)
    receiver = receiver_factory(400, 200)
    secret = acme.get("/v1/webhook-secret").json()["secret"]
    request = {"task": "caption", "options": {"max_new_tokens": 2}, "webhook": {"url": receiver.url}}
    job = wait_for_job(acme, submit(acme, request, png_bytes()).json()["id"])
    failed = wait_until(
        lambda: [d for d in acme.get(f"/v1/jobs/{job['id']}/deliveries").json()["data"] if d["status"] == "failed"],
        timeout_s=30, what="the delivery to fail",
    )[0]
    assert secret.startswith("whsec_") and [a["status_code"] for a in failed["attempts"]] == [400]

    # when it is redelivered (another tenant cannot)
    assert globex.post(f"/v1/deliveries/{failed['id']}/redeliver").status_code == 404
    assert acme.post(f"/v1/deliveries/{failed['id']}/redeliver").status_code == 200

    # then it is sent again with the same webhook-id and succeeds
    done = wait_until(
        lambda: [d for d in acme.get(f"/v1/jobs/{job['id']}/deliveries").json()["data"] if d["status"] == "succeeded"],
        timeout_s=30, what="the redelivery",
    )[0]
    assert done["id"] == failed["id"] and [a["status_code"] for a in done["attempts"]] == [400, 200]
    assert {sent["headers"]["webhook-id"] for sent in receiver.requests} == {failed["id"]}
    # and a rotation returns a new secret while the old one is still honoured for a day
    rotated = acme.post("/v1/webhook-secret/rotate").json()
    assert rotated["secret"] != secret and rotated["previous_secret_expires_at"] is not None


def test_first_deliveries_racing_for_a_new_tenant_share_one_secret(database_url):
    # given a tenant with no secret yet, and four notifier threads sending its first events at once
    barrier, secrets_seen = threading.Barrier(4), []

    def first_delivery() -> None:
        barrier.wait()
        with session_scope(database_url) as session:
            secrets_seen.append(secret_for(session, "newcomer").secret)

    threads = [threading.Thread(target=first_delivery) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # then none of them failed, and they all signed with the one secret that was stored
    assert len(secrets_seen) == 4 and len(set(secrets_seen)) == 1
