"""GET /v1/jobs/{id}/events through the real stack: Server-Sent Events of a job's statuses, the text
of a ``stream: true`` job as it is generated, and the final job."""

from __future__ import annotations

import asyncio
import json
from contextlib import ExitStack

import httpx
from sqlalchemy import event

from services.api.waiting import UNSEEN, JobWaiter
from shared.db.engine import get_engine
from tests.support.media import wait_for_job


def read_events(client: httpx.Client, job_id: str) -> list[tuple[str, dict]]:
    """(event, data) of every event until the server ends the stream."""
    events, event, data = [], None, []
    with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                data.append(line.split(":", 1)[1].strip())
            elif not line and event:
                events.append((event, json.loads("\n".join(data))))
                event, data = None, []
    return events


def test_a_streamed_job_sends_deltas_that_add_up_to_its_final_text(acme):
    # given a chat job created with stream: true
    job = acme.post("/v1/jobs", json={"task": "chat", "prompt": "Tell me a story.", "stream": True,
                                      "options": {"max_new_tokens": 200}}).json()

    # when its events are read from the start to the end of the stream
    events = read_events(acme, job["id"])

    # then statuses come first, the text arrives as deltas, and the job object ends the stream
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "status" and kinds[-1] == "job" and kinds.count("job") == 1
    statuses = [data["status"] for kind, data in events if kind == "status"]
    life = ["queued", "running", "succeeded"]
    assert statuses == life[len(life) - len(statuses):], statuses  # from wherever the job was at connection
    final = events[-1][1]
    assert final["status"] == "succeeded" and final["id"] == job["id"]
    deltas = [data["text"] for kind, data in events if kind == "delta"]
    assert len(deltas) > 1 and "".join(deltas) == final["result"]["text"]
    assert {data["attempt"] for kind, data in events if kind == "delta"} == {1}


def test_a_job_without_stream_sends_statuses_and_the_job_only(acme):
    job = acme.post("/v1/jobs", json={"task": "chat", "prompt": "Hi", "options": {"max_new_tokens": 8}}).json()
    events = read_events(acme, job["id"])
    assert {kind for kind, _ in events} == {"status", "job"} and events[-1][1]["status"] == "succeeded"


def test_a_finished_job_yields_its_final_event_at_once_and_others_cannot_listen(acme, globex):
    # given a finished job
    job = wait_for_job(acme, acme.post("/v1/jobs", json={"task": "chat", "prompt": "Hi",
                                                         "options": {"max_new_tokens": 2}}).json()["id"])
    # then its events are its status and the job itself
    assert [kind for kind, _ in read_events(acme, job["id"])] == ["status", "job"]
    # and another tenant gets API.md's 404, not a stream
    response = globex.get(f"/v1/jobs/{job['id']}/events")
    assert response.status_code == 404 and response.json()["error"]["code"] == "job_not_found"


def test_every_open_stream_is_read_by_one_query_per_tick_and_none_when_idle(acme, database_url):
    # given three jobs, and thirty event streams open on them in one API process
    job_ids = [acme.post("/v1/jobs", json={"task": "chat", "prompt": "Hi.", "options": {"max_new_tokens": 1}})
               .json()["id"] for _ in range(3)]
    statements: list[str] = []

    def count(_connection, _cursor, statement, *_args) -> None:
        if "FROM jobs" in statement:
            statements.append(statement)

    engine = get_engine(database_url)
    event.listen(engine, "before_cursor_execute", count)

    async def streams_then_idle() -> tuple[list, int, int]:
        waiter = JobWaiter(database_url=database_url, interval_s=0.05)
        waiter.start()
        with ExitStack() as streams:
            for job_id in job_ids * 10:
                streams.enter_context(waiter.watching(job_id))
            await asyncio.sleep(0.5)
            latest = [waiter.latest(job_id) for job_id in job_ids]
        while_open = len(statements)
        await asyncio.sleep(0.3)
        await waiter.close()
        return latest, while_open, len(statements) - while_open

    # when they stay open half a second (ten ticks), then close
    try:
        latest, while_open, after_close = asyncio.run(streams_then_idle())
    finally:
        event.remove(engine, "before_cursor_execute", count)

    # then each tick read all three jobs in one query, and nothing is read once no stream is open
    assert 1 <= while_open <= 12
    assert after_close <= 1  # at most the tick that was under way
    assert all(seen is not UNSEEN and seen[0] in {"queued", "running", "succeeded"} for seen in latest)
