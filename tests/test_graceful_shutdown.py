"""SIGTERM on an inference worker, as Kubernetes sends it when it scales a pool down: the worker
takes nothing new, finishes (or, past its drain time, hands back) what it runs, and exits; every
job still succeeds exactly once, and what waits stays in the queue KEDA counts."""

from __future__ import annotations

import json
import signal
import time

import httpx
import pytest
import redis
from sqlalchemy import create_engine, func, select

from shared.db.models import JobResult
from shared.queue import queue_for
from tests.support.media import wait_for_job
from tests.support.receiver import Receiver
from tests.support.services import (
    ManagedProcess,
    Stack,
    isolated_stack,
    wait_until,
)

KEY = "key-drain-0123456789"
TINY_ONLY = {"VLMQ_SERVE_MODELS": '["internvl-tiny"]'}
# Long enough to outlast a one-second drain by far on the tiny model, short enough to re-run.
LONG_TOKENS = 3000


@pytest.fixture(scope="module")
def drain_stack(stack_env, tmp_path_factory):
    """The API and the notifier; each test brings its own inference workers."""
    with isolated_stack(stack_env, tmp_path_factory.mktemp("drain"), with_worker=False,
                        VLMQ_API_KEYS=f"drain:{KEY}", VLMQ_LEASE_S="4", VLMQ_HEARTBEAT_S="1",
                        VLMQ_REAPER_INTERVAL_S="1") as stack:
        stack.processes.append(stack._celery("notifier", "services.notifier.app", pool="threads", concurrency=2))
        yield stack


@pytest.fixture()
def client(drain_stack):
    with httpx.Client(base_url=drain_stack.api_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as c:
        yield c


@pytest.fixture()
def receiver():
    receiver = Receiver(200)
    yield receiver
    receiver.close()


def _chat(client: httpx.Client, receiver: Receiver, tokens: int) -> str:
    request = {"task": "chat", "prompt": "Tell me a story.", "options": {"max_new_tokens": tokens},
               "webhook": {"url": receiver.url, "events": ["job.succeeded"]}}
    return client.post("/v1/jobs", json=request).json()["id"]


def _statuses(client: httpx.Client, ids: list[str]) -> list[str]:
    return [client.get(f"/v1/jobs/{job_id}").json()["status"] for job_id in ids]


def _terminate(worker: ManagedProcess, *, grace_s: float) -> float:
    """SIGTERM to the worker's main process only, as a container runtime sends it; seconds to exit."""
    sent = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    exit_code = worker.process.wait(timeout=grace_s)
    assert exit_code == 0, worker.log_tail()
    return time.monotonic() - sent


def _succeeded_once(stack: Stack, client: httpx.Client, receiver: Receiver, ids: list[str]) -> list[dict]:
    jobs = [wait_for_job(client, job_id, timeout_s=120) for job_id in ids]
    assert [job["status"] for job in jobs] == ["succeeded"] * len(ids), [job["error"] for job in jobs]
    engine = create_engine(stack.database_url)
    with engine.connect() as connection:
        rows = connection.execute(
            select(JobResult.job_id, func.count()).where(JobResult.job_id.in_(ids)).group_by(JobResult.job_id)
        ).all()
    engine.dispose()
    assert dict(rows) == dict.fromkeys(ids, 1)
    wait_until(lambda: len(receiver.requests) >= len(ids), timeout_s=30, what="a webhook per job")
    time.sleep(1)  # a duplicate would arrive right behind
    delivered = sorted(request["body"] for request in receiver.requests)
    assert sorted(ids) == sorted(json.loads(body)["data"]["id"] for body in delivered)
    return jobs


def test_a_terminated_worker_finishes_its_running_jobs_and_leaves_the_rest_queued(drain_stack, client, receiver):
    # given a worker decoding two jobs at most, with two more waiting behind them
    worker = drain_stack.add_worker("worker-a", VLMQ_BATCH_MAX_JOBS="2", VLMQ_SHUTDOWN_DRAIN_S="60", **TINY_ONLY)
    ids = [_chat(client, receiver, tokens=1200) for _ in range(4)]
    wait_until(lambda: worker.log_path.read_text().count(" decoding") >= 2, timeout_s=90, what="two jobs decoding")

    # when Kubernetes scales it down (SIGTERM, then a 30 s grace period)
    took = _terminate(worker, grace_s=30)

    # then it exited within the grace period, after finishing what it ran, on the first attempt
    assert took < 30
    # (the two it decoded; the two claimed behind them, waiting for the engine, went straight back)
    jobs = [client.get(f"/v1/jobs/{job_id}").json() for job_id in ids]
    finished = [job for job in jobs if job["status"] == "succeeded"]
    assert [job["attempts"] for job in finished] == [1, 1]
    # and the waiting jobs are still in the queue's Redis list, where KEDA and /metrics count them
    assert sorted(job["status"] for job in jobs) == ["queued", "queued", "succeeded", "succeeded"]
    assert redis.Redis.from_url(drain_stack.redis.url).llen(queue_for("internvl-tiny")) == 2
    metrics = httpx.get(f"{drain_stack.api_url}/metrics").text
    assert f'vlmq_queue_depth{{queue="{queue_for("internvl-tiny")}"}} 2.0' in metrics

    # and when a new worker comes up, they run, and all four succeeded exactly once
    replacement = drain_stack.add_worker("worker-b", **TINY_ONLY)
    try:
        _succeeded_once(drain_stack, client, receiver, ids)
    finally:
        replacement.stop()


def test_a_job_still_running_when_the_drain_time_ends_is_handed_back_and_rerun_once(drain_stack, client, receiver):
    # given a worker with one second to drain, running a long job
    worker = drain_stack.add_worker("worker-c", VLMQ_SHUTDOWN_DRAIN_S="1", **TINY_ONLY)
    (job_id,) = ids = [_chat(client, receiver, tokens=LONG_TOKENS)]
    wait_until(lambda: _statuses(client, ids) == ["running"], timeout_s=90, what="the job to start")

    # when the worker is terminated
    took = _terminate(worker, grace_s=30)

    # then it stopped the job at the next decode step after one second, handed it back and exited
    assert took < 15
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert (job["status"], job["attempts"]) == ("queued", 1)
    assert f"job {job_id} attempt 1 handed back" in worker.log_path.read_text()

    # and another worker runs it from the start, at once (no lease to wait out): it succeeds once
    replacement = drain_stack.add_worker("worker-d", **TINY_ONLY)
    try:
        (job,) = _succeeded_once(drain_stack, client, receiver, ids)
        assert job["attempts"] == 2
    finally:
        replacement.stop()
