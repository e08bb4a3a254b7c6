"""Cancel, delete, Idempotency-Key and Prefer: wait on /v1/jobs (API.md), against the real stack."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from datetime import timedelta

import httpx
import pytest
from celery import Celery
from sqlalchemy import insert, select, update

from services.api.errors import DependencyDown
from services.api.idempotency import KeyedRequest, Replayed
from services.api.schemas import JobSpec
from services.api.submission import job_rows, jobs_table
from services.api.submitter import JobSubmitter, Submission
from services.api.waiting import wait_preference
from shared.config.settings import CommonSettings
from shared.db.engine import session_scope
from shared.db.models import Job, JobResult, Media, Tenant, utcnow
from shared.media import StoredMedia
from shared.queue import create_celery, queue_for, task_name_for
from tests.conftest import BUCKET
from tests.support.media import png_bytes, submit, wait_for_job
from tests.support.services import REPO_ROOT, Stack, free_port, fresh_redis_url, migrate

QUICK = {"task": "caption", "options": {"max_new_tokens": 2, "max_tiles": 1}}
# Random weights rarely stop early: long enough to be seen queued or running.
SLOW = {"task": "caption", "options": {"max_new_tokens": 1200, "max_tiles": 1}}


def unique_png() -> bytes:
    """An image no other test uploads, so its content-addressed object is this test's alone."""
    return png_bytes(64, 64, colour=tuple(os.urandom(3)))


def object_exists(s3_client, key: str) -> bool:
    return s3_client.list_objects_v2(Bucket=BUCKET, Prefix=key).get("KeyCount", 0) > 0


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and isinstance(error["details"], dict)
    return error


def insert_queued_job(database_url: str, tenant_id: str, media: list[StoredMedia]) -> str:
    """A job row exactly as the API writes it, but with no broker message: it stays queued."""
    job, _ = job_rows(tenant_id=tenant_id, spec=JobSpec(task="caption"), model_id="internvl-tiny", media=media)
    with session_scope(database_url) as session:
        session.execute(insert(jobs_table), [job])
    return job["id"]


def deliver(stack_env, job_id: str) -> None:
    """Ring the worker for a job id, as the API (or the reaper) would."""
    Celery(broker=stack_env["VLMQ_BROKER_URL"]).send_task(
        task_name_for("caption"), args=[job_id], queue=queue_for("internvl-tiny")
    )


def submit_with_headers(client, request: dict, *files: bytes, headers: dict):
    parts = [("file", ("image.png", data, "application/octet-stream")) for data in files]
    return client.post("/v1/jobs", files=parts, data={"request": json.dumps(request)}, headers=headers)


def wait_until_status(client, job_id: str, status: str, *, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] == status:
            return job
        time.sleep(0.02)
    raise TimeoutError(f"job {job_id} never became {status}: {job}")


# --- cancel ------------------------------------------------------------------------------------


def test_a_queued_job_is_canceled_and_never_starts(acme, database_url, stack_env):
    # given a queued job whose message has not reached the worker yet
    job_id = insert_queued_job(database_url, "acme", media=[])

    # when it is canceled, and its message then arrives
    response = acme.post(f"/v1/jobs/{job_id}/cancel")
    deliver(stack_env, job_id)
    time.sleep(2)

    # then it is canceled for good: never started, no attempt spent
    assert response.status_code == 200, response.text
    canceled = response.json()
    assert canceled["status"] == "canceled" and canceled["error"]["code"] == "canceled" and canceled["finished_at"]
    later = acme.get(f"/v1/jobs/{job_id}").json()
    assert later["status"] == "canceled" and later["attempts"] == 0 and later["started_at"] is None


def test_a_running_job_is_canceled_and_its_late_result_is_rejected(acme):
    # given a job the worker is running
    job_id = submit(acme, SLOW, png_bytes(64, 64)).json()["id"]
    wait_until_status(acme, job_id, "running")

    # when it is canceled, and the worker has moved on to a next job
    response = acme.post(f"/v1/jobs/{job_id}/cancel")
    after = wait_for_job(acme, submit(acme, QUICK, png_bytes(32, 32)).json()["id"], timeout_s=300)

    # then it stays canceled, with no result, whatever its attempt produced
    assert response.status_code == 200 and response.json()["status"] == "canceled"
    assert after["status"] == "succeeded"
    job = acme.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "canceled" and job["result"] is None and job["attempts"] == 1


def test_canceling_a_finished_job_is_409(acme):
    # given a job that succeeded
    job = wait_for_job(acme, submit(acme, QUICK, png_bytes(32, 32)).json()["id"])
    assert job["status"] == "succeeded"

    # when it is canceled
    response = acme.post(f"/v1/jobs/{job['id']}/cancel")

    # then that is a conflict naming its status, and the job is unchanged
    assert assert_error(response, 409, "job_already_finished")["details"] == {"status": "succeeded"}
    assert acme.get(f"/v1/jobs/{job['id']}").json() == job


def test_another_tenants_job_cannot_be_canceled_or_deleted(acme, globex, database_url):
    # given a queued job of tenant acme
    job_id = insert_queued_job(database_url, "acme", media=[])

    # when tenant globex tries to cancel or delete it, or names a job that does not exist
    canceled = globex.post(f"/v1/jobs/{job_id}/cancel")
    deleted = globex.delete(f"/v1/jobs/{job_id}")
    unknown = acme.post("/v1/jobs/job_000000000000nope/cancel")

    # then each is 404, and acme's job is untouched
    for response in (canceled, deleted, unknown):
        assert_error(response, 404, "job_not_found")
    assert acme.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
    assert acme.delete(f"/v1/jobs/{job_id}").status_code == 204


# --- delete ------------------------------------------------------------------------------------


def test_deleting_a_job_removes_it_its_result_and_its_media(acme, database_url, s3_client):
    # given a finished job with an image only it uses
    job = wait_for_job(acme, submit(acme, QUICK, unique_png()).json()["id"])
    key = job["input"]["items"][0]["object_key"]
    assert job["status"] == "succeeded" and object_exists(s3_client, key)

    # when it is deleted
    response = acme.delete(f"/v1/jobs/{job['id']}")

    # then the job, its result, its media row and its stored object are gone
    assert response.status_code == 204 and response.content == b""
    assert_error(acme.get(f"/v1/jobs/{job['id']}"), 404, "job_not_found")
    assert_error(acme.delete(f"/v1/jobs/{job['id']}"), 404, "job_not_found")
    with session_scope(database_url) as session:
        assert session.get(JobResult, job["id"]) is None
        assert session.get(Media, ("acme", key)) is None
    assert not object_exists(s3_client, key)


def test_deleting_a_job_keeps_media_another_job_still_uses(acme, database_url, s3_client):
    # given two jobs made from the same image bytes (one content-addressed object)
    image = unique_png()
    first, second = (wait_for_job(acme, submit(acme, QUICK, image).json()["id"]) for _ in range(2))
    key = first["input"]["items"][0]["object_key"]
    assert second["input"]["items"][0]["object_key"] == key

    # when the first is deleted
    assert acme.delete(f"/v1/jobs/{first['id']}").status_code == 204

    # then the object stays for the second; deleting that one too removes it
    assert object_exists(s3_client, key)
    assert acme.get(f"/v1/jobs/{second['id']}").json()["status"] == "succeeded"
    assert acme.delete(f"/v1/jobs/{second['id']}").status_code == 204
    assert not object_exists(s3_client, key)
    with session_scope(database_url) as session:
        assert session.get(Media, ("acme", key)) is None


def test_deleting_a_queued_job_removes_it_and_its_late_message_runs_nothing(acme, database_url, stack_env, s3_client):
    # given a finished job and a queued one (its message not yet sent) sharing an image no one else uses
    finished = wait_for_job(acme, submit(acme, QUICK, unique_png()).json()["id"])
    media = StoredMedia(**finished["input"]["items"][0], recorded=True)
    queued_id = insert_queued_job(database_url, "acme", media=[media])

    # when the finished one is deleted, then the queued one, and the queued one's message arrives
    first = acme.delete(f"/v1/jobs/{finished['id']}")
    kept = object_exists(s3_client, media.object_key)
    second = acme.delete(f"/v1/jobs/{queued_id}")
    deliver(stack_env, queued_id)
    time.sleep(1)

    # then the object outlived the first deletion only; the queued job is gone and stays gone
    assert (first.status_code, kept, second.status_code) == (204, True, 204)
    assert not object_exists(s3_client, media.object_key)
    assert_error(acme.get(f"/v1/jobs/{queued_id}"), 404, "job_not_found")


def test_deleting_a_running_job_stops_it_and_removes_it(acme):
    # given a job the worker is running
    job_id = submit(acme, SLOW, png_bytes(64, 64)).json()["id"]
    wait_until_status(acme, job_id, "running")

    # when it is deleted
    response = acme.delete(f"/v1/jobs/{job_id}")

    # then it is gone at once, and the worker goes on to the next job
    assert response.status_code == 204
    assert_error(acme.get(f"/v1/jobs/{job_id}"), 404, "job_not_found")
    after = wait_for_job(acme, submit(acme, QUICK, png_bytes(32, 32)).json()["id"], timeout_s=300)
    assert after["status"] == "succeeded"


# --- Idempotency-Key ---------------------------------------------------------------------------


def test_the_same_key_and_body_return_the_original_job(acme):
    # given a job created with an Idempotency-Key
    key = {"Idempotency-Key": f"order-{uuid.uuid4()}"}
    image = png_bytes(48, 48)
    first = acme.post("/v1/jobs", files=[("file", ("a.png", image))], data={"request": json.dumps(QUICK)}, headers=key)

    # when the same request is sent again (key order and spelled-out defaults do not matter)
    same = {"stream": False, "options": {"top_p": None, **QUICK["options"]}, "task": "caption"}
    again = acme.post("/v1/jobs", files=[("file", ("b.png", image))], data={"request": json.dumps(same)}, headers=key)

    # then it answers with the original job, 200 instead of 202
    assert first.status_code == 202, first.text
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == f"/v1/jobs/{first.json()['id']}"
    wait_for_job(acme, first.json()["id"])


def test_the_same_key_with_another_body_is_409(acme):
    # given a JSON job created with a key
    key = {"Idempotency-Key": f"chat-{uuid.uuid4()}"}
    first = acme.post("/v1/jobs", json={"task": "chat", "prompt": "Hi", "options": {"max_new_tokens": 2}}, headers=key)

    # when the key comes back with a different body
    other = acme.post("/v1/jobs", json={"task": "chat", "prompt": "Bye"}, headers=key)

    # then it is refused, naming the key's job
    assert first.status_code == 202, first.text
    error = assert_error(other, 409, "idempotency_key_reused")
    assert error["details"] == {"job_id": first.json()["id"]}


def test_keys_belong_to_one_tenant(acme, globex):
    # given a key acme used
    key = {"Idempotency-Key": f"shared-{uuid.uuid4()}"}
    body = {"task": "chat", "prompt": "Hi", "options": {"max_new_tokens": 2}}
    mine = acme.post("/v1/jobs", json=body, headers=key)

    # when globex uses the same key and body
    theirs = globex.post("/v1/jobs", json=body, headers=key)

    # then globex gets a job of its own
    assert (mine.status_code, theirs.status_code) == (202, 202)
    assert mine.json()["id"] != theirs.json()["id"]


def test_a_key_older_than_24_hours_makes_a_new_job(acme, database_url):
    # given a job created with a key more than 24 hours ago
    key = f"old-{uuid.uuid4()}"
    body = {"task": "chat", "prompt": "Hi", "options": {"max_new_tokens": 2}}
    old_id = acme.post("/v1/jobs", json=body, headers={"Idempotency-Key": key}).json()["id"]
    with session_scope(database_url) as session:
        session.execute(update(Job).where(Job.id == old_id).values(created_at=utcnow() - timedelta(hours=25)))

    # when the key is used again
    again = acme.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})

    # then a new job is made, and the key now names it alone
    assert again.status_code == 202, again.text
    assert again.json()["id"] != old_id
    with session_scope(database_url) as session:
        holders = session.scalars(select(Job.id).where(Job.tenant_id == "acme", Job.idempotency_key == key)).all()
    assert holders == [again.json()["id"]]


def test_concurrent_requests_with_one_new_key_make_one_job(acme, stack, database_url):
    # given eight clients sending the same request with the same new key at once
    key = f"race-{uuid.uuid4()}"
    body = {"task": "chat", "prompt": "Once only", "options": {"max_new_tokens": 2}}
    responses = []
    start = threading.Barrier(8)

    def send():
        start.wait()
        responses.append(acme.post("/v1/jobs", json=body, headers={"Idempotency-Key": key}))

    # when they all land
    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # then exactly one job exists: one 202, seven 200s with its id
    assert sorted(response.status_code for response in responses) == [200] * 7 + [202], [r.text for r in responses]
    assert len({response.json()["id"] for response in responses}) == 1
    with session_scope(database_url) as session:
        assert len(session.scalars(select(Job.id).where(Job.idempotency_key == key)).all()) == 1


def test_an_invalid_key_is_400(acme):
    response = acme.post("/v1/jobs", json={"task": "chat", "prompt": "Hi"}, headers={"Idempotency-Key": "k" * 256})
    assert_error(response, 400, "validation_error")


@pytest.fixture
def own_tenant(database_url) -> str:
    """A tenant of this test alone, so no other test's job or key mixes into its assertions."""
    tenant_id = f"idem-{uuid.uuid4().hex[:8]}"
    with session_scope(database_url) as session:
        session.add(Tenant(id=tenant_id))
    return tenant_id


def keyed_chat(tenant_id: str, key: str) -> Submission:
    return Submission(tenant_id, JobSpec(task="chat", prompt="x"), "m", media=[], keyed=KeyedRequest(key, "f" * 64))


def test_one_key_submitted_many_times_at_once_is_one_job(own_tenant, database_url):
    # given a submitter whose broker no worker consumes, and twenty submissions of one keyed request
    # handed over together (so some share a batch, some do not)
    celery = create_celery(CommonSettings(broker_url=fresh_redis_url(db=8)))
    submitter = JobSubmitter(database_url=database_url, celery=celery)
    try:
        futures = [submitter.submit(keyed_chat(own_tenant, "batch-key")) for _ in range(20)]

        # when they are settled
        outcomes = [future.result(timeout=30) for future in futures]
    finally:
        submitter.close()

    # then one created the job, and every other was answered with it
    created = [outcome for outcome in outcomes if isinstance(outcome, dict)]
    assert len(created) == 1
    assert all(outcome == Replayed(created[0]["id"]) for outcome in outcomes if not isinstance(outcome, dict))
    with session_scope(database_url) as session:
        assert session.scalars(select(Job.id).where(Job.tenant_id == own_tenant)).all() == [created[0]["id"]]


def test_a_job_the_broker_never_got_gives_its_key_back(own_tenant, database_url):
    # given a keyed submission while the broker is down
    celery = create_celery(CommonSettings(broker_url=f"redis://127.0.0.1:{free_port()}/0"))
    submitter = JobSubmitter(database_url=database_url, celery=celery)
    try:
        future = submitter.submit(keyed_chat(own_tenant, "k"))

        # when it fails with a 503
        with pytest.raises(DependencyDown):
            future.result(timeout=60)
    finally:
        submitter.close()

    # then the failed job no longer holds the key, so the client's retry can create a job
    with session_scope(database_url) as session:
        job = session.scalars(select(Job).where(Job.tenant_id == own_tenant)).one()
    assert job.status == "failed" and job.idempotency_key is None


# --- Prefer: wait ------------------------------------------------------------------------------


def test_prefer_wait_returns_the_finished_job(acme):
    # when a quick job is created asking to wait up to 30 s
    started = time.monotonic()
    response = submit_with_headers(acme, QUICK, png_bytes(32, 32), headers={"Prefer": "wait=30"})

    # then the response is the finished job, with its result, status 200
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "succeeded" and job["result"]["text"] is not None
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert time.monotonic() - started < 30


def test_prefer_wait_gives_up_after_n_seconds_with_202(acme):
    # given a worker busy with a long job
    blocker = submit(acme, SLOW, png_bytes(64, 64)).json()["id"]

    # when another long job is created asking to wait 1 s
    started = time.monotonic()
    response = submit_with_headers(acme, SLOW, png_bytes(64, 64), headers={"Prefer": "respond-async, wait=1"})
    elapsed = time.monotonic() - started

    # then after about a second the response is the unfinished job, 202
    assert response.status_code == 202, response.text
    assert response.json()["status"] in ("queued", "running")
    assert 1 <= elapsed < 5
    for job_id in (blocker, response.json()["id"]):  # free the worker for the next tests
        acme.post(f"/v1/jobs/{job_id}/cancel")


@pytest.mark.parametrize(
    "header, seconds",
    [(None, 0), ("wait=5", 5), ("respond-async, wait=7", 7), ("WAIT = 3", 3), ('wait="4"', 4),
     ("wait=600", 60), ("wait=-1", 0), ("wait=soon", 0), ("wait=2, wait=9", 2), ("handling=lenient", 0)],
)
def test_the_wait_preference_is_read_as_rfc_7240_says(header, seconds):
    assert wait_preference(header) == seconds


def test_openapi_documents_cancel_delete_and_the_headers(anonymous):
    paths = anonymous.get("/openapi.json").json()["paths"]
    create = paths["/v1/jobs"]["post"]
    assert {"Idempotency-Key", "Prefer"} <= {parameter["name"] for parameter in create["parameters"]}
    assert {"200", "202", "409"} <= set(create["responses"])
    assert {"200", "404", "409"} <= set(paths["/v1/jobs/{job_id}/cancel"]["post"]["responses"])
    assert {"204", "404"} <= set(paths["/v1/jobs/{job_id}"]["delete"]["responses"])



def test_the_lifecycle_on_embedded_defaults(tiny_model_dir, tmp_path):
    # given the API on SQLite, a local storage directory and a file broker, with no worker: jobs stay queued
    env = {key: value for key, value in os.environ.items() if not key.startswith("VLMQ_")}
    env.update(PYTHONPATH=str(REPO_ROOT), VLMQ_MODEL_PATH=str(tiny_model_dir), VLMQ_BROKER_URL="filesystem://")
    migrate(f"sqlite:///{tmp_path / 'data' / 'vlmq.db'}")
    stack = Stack.start(env, tmp_path / "data", with_worker=False)
    try:
        api_key = (tmp_path / "data" / "api-key").read_text().strip()
        with httpx.Client(base_url=stack.api_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=60) as client:
            # when one image makes two jobs (the first twice, by its key), one is canceled, then both deleted
            key = {"Idempotency-Key": "embedded"}
            image = unique_png()
            first = submit_with_headers(client, QUICK, image, headers=key)
            replayed = submit_with_headers(client, QUICK, image, headers=key)
            other = submit_with_headers(client, QUICK, image, headers={})
            canceled = client.post(f"/v1/jobs/{first.json()['id']}/cancel")
            media_path = tmp_path / "data" / "storage" / first.json()["input"]["items"][0]["object_key"]
            deleted_first = client.delete(f"/v1/jobs/{first.json()['id']}")
            kept = media_path.exists()
            deleted_other = client.delete(f"/v1/jobs/{other.json()['id']}")

        # then SQLite gives the same answers as PostgreSQL
        assert (first.status_code, replayed.status_code, other.status_code) == (202, 200, 202)
        assert replayed.json()["id"] == first.json()["id"] != other.json()["id"]
        assert canceled.json()["status"] == "canceled"
        assert (deleted_first.status_code, kept, deleted_other.status_code) == (204, True, 204)
        assert not media_path.exists()
    finally:
        stack.stop()
