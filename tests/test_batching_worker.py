"""Cross-job batching in a real inference worker: queued jobs share model calls, and each still
ends on its own (a poisoned one fails alone, a canceled one stops alone)."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from tests.conftest import BUCKET
from tests.support.media import png_bytes, submit, wait_for_job
from tests.support.services import isolated_stack, wait_until

KEY = "key-batch-0123456789"
TINY_ONLY = {"VLMQ_SERVE_MODELS": '["internvl-tiny"]'}


@pytest.fixture(scope="module")
def batch_stack(stack_env, tmp_path_factory):
    """The API alone: each test queues its jobs first, then starts the worker that batches them."""
    with isolated_stack(stack_env, tmp_path_factory.mktemp("batching"), with_worker=False,
                        VLMQ_API_KEYS=f"batch:{KEY}", VLMQ_LEASE_S="4", VLMQ_HEARTBEAT_S="1") as stack:
        yield stack


@pytest.fixture()
def client(batch_stack):
    with httpx.Client(base_url=batch_stack.api_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as c:
        yield c


def _mixed_jobs(client: httpx.Client, count: int) -> list[str]:
    """Captions, questions and groundings on images of several sizes, and text-only chats."""
    ids = []
    for number in range(count):
        kind = number % 4
        options = {"max_new_tokens": 4 + number, "max_tiles": 2}
        if kind == 3:
            response = client.post("/v1/jobs", json={"task": "chat", "prompt": f"Count to {number}.", "options": options})
        else:
            task = ("caption", "vqa", "grounding")[kind]
            prompt = {"caption": None, "vqa": "What colour is the square?", "grounding": "the square"}[task]
            request = {"task": task, "options": options} | ({"prompt": prompt} if prompt else {})
            response = submit(client, request, png_bytes(160 + 40 * number, 120 + 30 * number))
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    return ids


def test_sixteen_queued_jobs_are_served_in_fewer_model_calls_than_jobs(batch_stack, client):
    # given 16 mixed jobs queued before any worker runs
    ids = _mixed_jobs(client, 16)

    # when a worker that batches up to 8 jobs starts
    worker = batch_stack.add_worker("worker-batches", VLMQ_BATCH_MAX_JOBS="8", **TINY_ONLY)
    try:
        jobs = [wait_for_job(client, job_id) for job_id in ids]
    finally:
        worker.stop()

    # then every job succeeded with its own result and usage, in far fewer model calls than jobs
    assert [job["status"] for job in jobs] == ["succeeded"] * 16, [job["error"] for job in jobs]
    calls = {job["result"]["batch"]["id"]: job["result"]["batch"]["size"] for job in jobs}
    assert len(calls) < 16 and max(calls.values()) > 1 and sum(calls.values()) == 16
    assert all(job["result"]["usage"]["output_tokens"] <= 4 + number for number, job in enumerate(jobs))
    assert all(isinstance(job["result"]["boxes"], list) for job in jobs[2::4])  # groundings keep their boxes


def test_a_poisoned_job_fails_alone_and_its_batch_mates_succeed(batch_stack, client, s3_client):
    # given four queued jobs, one of whose image vanished from storage after it was accepted
    ids = _mixed_jobs(client, 3)
    poisoned = submit(client, {"task": "caption", "options": {"max_new_tokens": 4}}, png_bytes(99, 77)).json()
    (item,) = client.get(f"/v1/jobs/{poisoned['id']}").json()["input"]["items"]
    s3_client.delete_object(Bucket=BUCKET, Key=item["object_key"])

    # when one worker takes them as one batch
    worker = batch_stack.add_worker("worker-poison", VLMQ_BATCH_MAX_JOBS="8", **TINY_ONLY)
    try:
        failed = wait_for_job(client, poisoned["id"])
        others = [wait_for_job(client, job_id) for job_id in ids]
    finally:
        worker.stop()

    # then the poisoned job failed with its reason code, and the rest succeeded
    assert (failed["status"], failed["error"]["code"]) == ("failed", "media_unavailable")
    assert [job["status"] for job in others] == ["succeeded"] * 3


def test_a_job_canceled_inside_a_running_batch_stops_alone(batch_stack, client):
    # given a batch of four chats, one of them long
    short = [client.post("/v1/jobs", json={"task": "chat", "prompt": f"Hi {n}", "options": {"max_new_tokens": 400}})
             .json()["id"] for n in range(3)]
    long = client.post("/v1/jobs", json={"task": "chat", "prompt": "Tell me a story.",
                                         "options": {"max_new_tokens": 4000}}).json()["id"]
    worker = batch_stack.add_worker("worker-cancel", VLMQ_BATCH_MAX_JOBS="8", **TINY_ONLY)
    try:
        wait_until(lambda: client.get(f"/v1/jobs/{long}").json()["status"] == "running", timeout_s=60,
                   what="the batch to start")
        # when the long one is canceled while the batch runs
        assert client.post(f"/v1/jobs/{long}/cancel").json()["status"] == "canceled"
        jobs = [wait_for_job(client, job_id) for job_id in short]
        stopped = wait_until(lambda: re.search(rf"job {long} attempt 1 stopped after (\d+) tokens",
                                               worker.log_path.read_text()), timeout_s=60, what="the row to stop")
    finally:
        worker.stop()

    # then its row stopped long before its limit and wrote nothing, and its batch-mates succeeded
    assert int(stopped.group(1)) < 4000
    assert client.get(f"/v1/jobs/{long}").json()["result"] is None
    assert [job["status"] for job in jobs] == ["succeeded"] * 3
    assert all(job["result"]["batch"]["mean_rows"] > 1 for job in jobs)  # they decoded beside each other


def test_jobs_arriving_one_by_one_share_decode_steps_and_a_short_one_ends_while_a_long_one_runs(batch_stack, client):
    # given a running worker decoding one long chat
    worker = batch_stack.add_worker("worker-arrivals", VLMQ_BATCH_MAX_JOBS="16", **TINY_ONLY)
    try:
        long = client.post("/v1/jobs", json={"task": "chat", "prompt": "Tell me a story.",
                                             "options": {"max_new_tokens": 4000}}).json()["id"]
        wait_until(lambda: f"job {long} attempt 1 decoding" in worker.log_path.read_text(), timeout_s=90,
                   what="the long job to decode")

        # when sixteen short jobs arrive one by one while it runs
        short = []
        for number in range(16):
            short.append(client.post("/v1/jobs", json={"task": "chat", "prompt": f"Hi {number}",
                                                       "options": {"max_new_tokens": 6 + number}}).json()["id"])
            time.sleep(0.05)
        jobs = [wait_for_job(client, job_id) for job_id in short]

        # then each succeeded while the long one was still running, having decoded beside it
        assert client.get(f"/v1/jobs/{long}").json()["status"] == "running"
        assert [job["status"] for job in jobs] == ["succeeded"] * 16
        assert all(job["result"]["batch"]["mean_rows"] > 1 for job in jobs)
        assert client.post(f"/v1/jobs/{long}/cancel").json()["status"] == "canceled"
    finally:
        worker.stop()
