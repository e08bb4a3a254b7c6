"""Crash safety with real processes: a worker killed mid-job, a broker that forgets every message.

This module runs its own stack (a fresh PostgreSQL database, a Redis server of its own that keeps
nothing on disk, an API and two workers) with short leases, so a crash is noticed in seconds.
"""

from __future__ import annotations

import os
import re
import signal
import time

import httpx
import pytest
from sqlalchemy import create_engine, func, select

from shared.db.models import JobResult
from tests.support.media import png_bytes, submit, wait_for_job
from tests.support.services import (
    Stack,
    TcpRelay,
    isolated_stack,
    wait_until,
)

KEY = "key-crash-0123456789"
LONG_CHAT = {"task": "chat", "prompt": "Tell me a long story.", "options": {"max_new_tokens": 4096}}
# Long enough to be killed mid-way (seconds on the tiny model), short enough to re-run quickly.
KILLED_CHAT = {"task": "chat", "prompt": "Tell me a story.", "options": {"max_new_tokens": 2048}}


@pytest.fixture(scope="module")
def crash_stack(stack_env, tmp_path_factory):
    # Short enough that a dead worker's job is requeued within seconds.
    short_leases = {"VLMQ_LEASE_S": "4", "VLMQ_HEARTBEAT_S": "1", "VLMQ_REAPER_INTERVAL_S": "1",
                    "VLMQ_REQUEUE_AFTER_S": "3", "VLMQ_INDEX_LEASE_S": "4"}
    with isolated_stack(stack_env, tmp_path_factory.mktemp("crash"), VLMQ_API_KEYS=f"crash:{KEY}",
                        **short_leases) as stack:
        stack.add_worker("worker-b")
        yield stack


@pytest.fixture()
def client(crash_stack):
    with httpx.Client(base_url=crash_stack.api_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as c:
        yield c


def _result_rows(database_url: str, job_id: str) -> int:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return connection.execute(select(func.count()).where(JobResult.job_id == job_id)).scalar_one()
    finally:
        engine.dispose()


def _worker_running(stack: Stack, job_id: str):
    for process in stack.processes[1:]:
        if process.alive() and f"job {job_id} attempt 1 started" in process.log_path.read_text(errors="replace"):
            return process
    return None


def test_a_worker_killed_mid_job_is_replaced_and_the_job_succeeds_once(crash_stack, client):
    # given a long job that one of two workers has started
    job_id = client.post("/v1/jobs", json=KILLED_CHAT).json()["id"]
    victim = wait_until(lambda: _worker_running(crash_stack, job_id), timeout_s=60, what="the job to start")
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "running"

    # when that worker is killed outright, pool process and all
    os.killpg(victim.process.pid, signal.SIGKILL)
    killed_at = time.monotonic()

    # then the other worker re-runs it after the lease lapses, and it succeeds with one result
    job = wait_for_job(client, job_id, timeout_s=90)
    assert job["status"] == "succeeded", job["error"]
    assert time.monotonic() - killed_at < 90
    assert job["attempts"] == 2
    assert _result_rows(crash_stack.database_url, job_id) == 1
    crash_stack.add_worker("worker-c")  # back to two workers for the next test


def test_a_broker_restarted_without_persistence_loses_no_queued_job(crash_stack, client):
    # given 50 jobs submitted, most still queued
    ids = [
        client.post("/v1/jobs", json={"task": "chat", "prompt": f"Count to {n}.", "options": {"max_new_tokens": 24}})
        .json()["id"]
        for n in range(50)
    ]

    # when Redis restarts and forgets every message it held
    crash_stack.redis.restart()

    # then the database re-publishes what the broker lost: all 50 succeed, none runs twice
    jobs = [wait_for_job(client, job_id, timeout_s=180) for job_id in ids]
    assert [job["status"] for job in jobs] == ["succeeded"] * 50, [job["error"] for job in jobs if job["error"]]
    assert all(job["attempts"] == 1 for job in jobs)
    assert all(_result_rows(crash_stack.database_url, job_id) == 1 for job_id in ids)
    # and it was the reaper that brought the lost ones back
    assert _republished(crash_stack) > 0


def test_a_video_index_completes_after_the_broker_forgot_its_messages(crash_stack, client, tmp_path):
    # given an index of six videos, served over HTTP
    from tests.support.media_server import MediaServer, Reply
    from tests.support.videos import make_video

    server = MediaServer()
    videos = [{"url": server.serve(f"/{n}.mp4", Reply(body=make_video(tmp_path / f"{n}.mp4", seconds=4 + n).read_bytes())),
               "external_id": f"v{n}"} for n in range(6)]
    created = client.post("/v1/video-indexes", json={"videos": videos, "segment_s": 2, "frames_per_segment": 1,
                                                     "max_new_tokens": 2})
    index_id = created.json()["id"]

    # when Redis restarts and forgets the cut and caption tasks it held, once some are under way
    wait_until(lambda: client.get(f"/v1/video-indexes/{index_id}").json()["status"] == "running", timeout_s=30,
               what="the index to start")
    crash_stack.redis.restart()

    # then the reaper publishes them again and every video is captioned once
    deadline = time.monotonic() + 180
    while (index := client.get(f"/v1/video-indexes/{index_id}").json())["status"] == "running":
        assert time.monotonic() < deadline, index
        time.sleep(0.5)
    server.close()
    assert index["status"] == "succeeded" and index["counts"]["videos_done"] == 6, index
    expected = sum(-(-(4 + n) // 2) for n in range(6))
    assert index["counts"]["segments_done"] == expected
    segments = client.get(f"/v1/video-indexes/{index_id}/segments", params={"limit": 200}).json()["data"]
    assert len(segments) == expected and all(segment["text"] is not None for segment in segments)


def _republished(stack: Stack) -> int:
    pattern = re.compile(r"reaper: \d+ jobs requeued after a lapsed lease, (\d+) lost messages re-published")
    logs = "".join(process.log_path.read_text(errors="replace") for process in stack.processes[1:])
    return sum(int(count) for count in pattern.findall(logs))


def test_a_canceled_running_job_stops_at_the_next_decode_step_and_writes_nothing(crash_stack, client):
    from shared.db.engine import session_scope
    from shared.jobs import cancel_job

    # given a long job a worker is generating
    job_id = client.post("/v1/jobs", json=LONG_CHAT).json()["id"]
    worker = wait_until(lambda: _worker_running(crash_stack, job_id), timeout_s=60, what="the job to start")

    # when it is canceled
    with session_scope(crash_stack.database_url) as session:
        cancel_job(session, job_id)

    # then its worker stops generating long before max_new_tokens, and no result is stored
    stopped = re.compile(rf"job {job_id} attempt 1 stopped after (\d+) tokens: lease lost")
    match = wait_until(lambda: stopped.search(worker.log_path.read_text(errors="replace")), timeout_s=30,
                       what="the worker to stop")
    assert int(match.group(1)) < LONG_CHAT["options"]["max_new_tokens"]
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "canceled" and job["result"] is None
    assert _result_rows(crash_stack.database_url, job_id) == 0


def test_storage_unreachable_is_retried_with_backoff_then_fails_with_a_reason(crash_stack, client):
    # given only workers that reach S3 through a link that can be cut (the API reaches it directly)
    for process in crash_stack.processes[1:]:
        process.stop()
    endpoint_port = int(crash_stack.env["VLMQ_STORAGE_URL"].rsplit(":", 1)[1])
    relay = TcpRelay(endpoint_port)
    storage_url = crash_stack.env["VLMQ_STORAGE_URL"].replace(f":{endpoint_port}", f":{relay.port}")
    worker = crash_stack.add_worker("worker-s3", VLMQ_STORAGE_URL=storage_url, VLMQ_RETRY_BACKOFF_S="1")

    # when the link is down while a job starts, and comes back a moment later
    relay.cut()
    recovered = submit(client, {"task": "caption", "options": {"max_new_tokens": 2}}, png_bytes()).json()["id"]
    first_try_failed = f"job {recovered} attempt 1: media"
    wait_until(lambda: first_try_failed in worker.log_path.read_text(errors="replace"), timeout_s=90, what="a retry")
    relay.restore()

    # then the job is retried and succeeds
    job = wait_for_job(client, recovered, timeout_s=60)
    assert job["status"] == "succeeded" and job["attempts"] >= 2, job

    # and when the link stays down, the job fails after the bounded attempts, with its reason
    relay.cut()
    doomed = submit(client, {"task": "caption", "options": {"max_new_tokens": 2}}, png_bytes()).json()["id"]
    job = wait_for_job(client, doomed, timeout_s=90)
    assert job["status"] == "failed" and job["attempts"] == 3
    assert job["error"]["code"] == "media_unavailable" and "after 3 attempts" in job["error"]["message"]


def test_a_job_longer_than_its_tasks_timeout_fails_with_timeout(crash_stack, client):
    # given only a worker whose chat jobs may run 1 s
    for process in crash_stack.processes[1:]:
        process.stop()
    crash_stack.add_worker("worker-timeout", VLMQ_TASK_TIMEOUTS_S='{"chat": 1}')

    # when a long chat runs on it, then it stops at the deadline and fails with the reason
    job = wait_for_job(client, client.post("/v1/jobs", json=LONG_CHAT).json()["id"], timeout_s=90)
    assert job["status"] == "failed" and job["error"]["code"] == "timeout"
    assert job["result"] is None
