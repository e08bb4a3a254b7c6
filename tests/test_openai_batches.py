"""OpenAI's Files and Batch APIs, driven by the official ``openai`` package against a running vlmq:
each line of a batch becomes an ordinary chat job; output and error files come back by custom_id."""

from __future__ import annotations

import base64
import json
import threading
import time
from datetime import timedelta

import openai
import pytest
from sqlalchemy import func, select, update
from standardwebhooks import Webhook

from shared.config.settings import FramesSettings
from shared.db.engine import session_scope
from shared.db.models import Batch, Job, utcnow
from shared.storage import open_store
from shared.webhooks import secret_for
from tests.conftest import TENANT_KEYS
from tests.support.media import png_bytes
from tests.support.receiver import Receiver
from tests.support.services import isolated_stack, wait_until
from workers.frames.batches import expand_batch

CHAT = "/v1/chat/completions"


@pytest.fixture
def client(stack) -> openai.OpenAI:
    return openai.OpenAI(api_key=TENANT_KEYS["acme"], base_url=f"{stack.api_url}/v1", max_retries=0, timeout=60)


def request_line(custom_id, content="Say something.", **body) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": CHAT,
            "body": {"model": "internvl-tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 2,
                     **body}}


def image_content() -> list[dict]:
    url = "data:image/png;base64," + base64.b64encode(png_bytes(64, 48)).decode()
    return [{"type": "text", "text": "Describe."}, {"type": "image_url", "image_url": {"url": url, "detail": "low"}}]


# (the line as written, its custom_id in the error file, the error code)
INVALID_LINES = [
    ("{not json", None, "invalid_json"),
    (json.dumps({"method": "POST", "url": CHAT, "body": {}}), None, "invalid_custom_id"),
    (json.dumps(request_line("req-0")), None, "duplicate_custom_id"),
    (json.dumps({**request_line("bad-url"), "url": "/v1/embeddings"}), "bad-url", "invalid_url"),
    (json.dumps(request_line("bad-model", model="nope")), "bad-model", "model_not_found"),
    (json.dumps(request_line("bad-arg", tools=[])), "bad-arg", "invalid_request"),
    (json.dumps(request_line("bad-order") | {"body": {"model": "internvl-tiny", "messages": [
        {"role": "assistant", "content": "x"}]}}), "bad-order", "invalid_request"),
    (json.dumps(request_line("bad-image", content=[{"type": "image_url", "image_url": {
        "url": "data:image/png;base64," + base64.b64encode(b"not an image at all").decode()}}])),
     "bad-image", "unsupported_media"),
    (json.dumps(request_line("streamed", stream=True)), "streamed", "invalid_request"),
    (json.dumps([1, 2]), None, "invalid_request"),
    ("[" * 100_000 + "]" * 100_000, None, "invalid_json"),  # nested past Python's stack
]


def batch_file(valid: int) -> tuple[bytes, dict[str, int]]:
    """``valid`` good lines (every 25th with an image), the invalid ones spread among them, blank
    lines too; returns the file and the valid custom_ids with their line numbers."""
    lines, valid_ids = [], {}
    spread = {index * (valid // len(INVALID_LINES)) + 3: line for index, (line, _, _) in enumerate(INVALID_LINES)}
    for number in range(valid):
        if number in spread:
            lines.append(spread[number])
        custom_id = f"req-{number}"
        content = image_content() if number % 25 == 0 else f"Question {number}?"
        lines.append(json.dumps(request_line(custom_id, content)))
        valid_ids[custom_id] = len(lines)
        if number == 50:
            lines.append("   ")
    return ("\n".join(lines) + "\n").encode(), valid_ids


def wait_for_batch(client: openai.OpenAI, batch_id: str, statuses: tuple[str, ...], timeout_s: float = 300):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        time.sleep(0.5)
    raise AssertionError(f"batch {batch_id} still {batch.status}: {batch.request_counts}")


def test_a_batch_of_200_lines_completes_with_output_and_error_files_by_custom_id(client, acme):
    # given an input file of 200 requests, 11 of them invalid, uploaded through the Files API
    content, valid_ids = batch_file(200 - len(INVALID_LINES))
    uploaded = client.files.create(file=("requests.jsonl", content), purpose="batch")
    assert uploaded.object == "file" and uploaded.purpose == "batch" and uploaded.bytes == len(content)
    assert client.files.retrieve(uploaded.id).filename == "requests.jsonl"
    assert client.files.content(uploaded.id).content == content

    # when a batch runs over it
    batch = client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h",
                                  metadata={"run": "nightly"})
    assert batch.status == "validating" and batch.request_counts.total == 200
    assert batch.metadata == {"run": "nightly"}
    done = wait_for_batch(client, batch.id, ("completed", "failed"))

    # then it completed: every valid line in the output file, every invalid one in the error file
    assert done.status == "completed", done.errors
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (
        200, 200 - len(INVALID_LINES), len(INVALID_LINES))
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    output = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
    assert [line["custom_id"] for line in output] == sorted(valid_ids, key=valid_ids.get)  # in input order
    for line in output:
        assert line["error"] is None and line["response"]["status_code"] == 200
        completion = line["response"]["body"]
        assert completion["object"] == "chat.completion" and completion["usage"]["completion_tokens"] >= 1
        assert completion["id"] == f"chatcmpl-{line['response']['request_id']}"
    errors = [json.loads(line) for line in client.files.content(done.error_file_id).text.splitlines()]
    assert [(line["custom_id"], line["error"]["code"]) for line in errors] == [
        (custom_id, code) for _, custom_id, code in INVALID_LINES]
    assert all(line["response"] is None for line in errors)
    assert client.files.retrieve(done.output_file_id).purpose == "batch_output"

    # and each line ran as an ordinary chat job of the tenant, the image lines with their image
    job = acme.get(f"/v1/jobs/{output[0]['response']['request_id']}").json()
    assert job["task"] == "chat" and job["status"] == "succeeded" and job["result"]["usage"]["tiles"] == 1
    assert job["batch"] == {"id": done.id, "custom_id": "req-0", "line": valid_ids["req-0"]}
    assert job["result"]["text"] == output[0]["response"]["body"]["choices"][0]["message"]["content"]
    assert done.id in [listed.id for listed in client.batches.list(limit=5)]
    with pytest.raises(openai.ConflictError):  # a completed batch cannot be cancelled
        client.batches.cancel(done.id)


def test_cancelling_a_batch_cancels_its_open_jobs_and_keeps_what_finished(client, stack_env, database_url):
    # given a batch of long requests, running
    lines = [json.dumps(request_line(f"long-{n}", f"Story {n}", max_tokens=400)) for n in range(120)]
    uploaded = client.files.create(file=("long.jsonl", "\n".join(lines).encode()), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
    wait_for_batch(client, batch.id, ("in_progress",), timeout_s=60)

    # when it is cancelled
    cancelling = client.batches.cancel(batch.id)

    # then it is cancelling at once, and soon cancelled with no job of it left open
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    done = wait_for_batch(client, batch.id, ("cancelled",), timeout_s=120)
    with session_scope(database_url) as session:
        statuses = dict(session.execute(select(Job.status, func.count()).where(Job.batch_id == batch.id)
                                        .group_by(Job.status)).all())
    assert not statuses.get("queued") and not statuses.get("running")
    counts = done.request_counts
    assert counts.total == 120 and counts.completed == statuses.get("succeeded", 0)
    assert counts.failed == statuses.get("canceled", 0) + statuses.get("failed", 0) >= 1
    errors = [json.loads(line) for line in client.files.content(done.error_file_id).text.splitlines()]
    assert {line["error"]["code"] for line in errors if line["error"]} == {"batch_cancelled"}
    # and cancelling it again changes nothing
    assert client.batches.cancel(batch.id).status == "cancelled"


def test_expansion_run_twice_at_once_makes_each_job_once(client, stack_env, database_url):
    # given a batch the frames worker is expanding
    lines = [json.dumps(request_line(f"twice-{n}")) for n in range(300)]
    uploaded = client.files.create(file=("twice.jsonl", "\n".join(lines).encode()), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")

    # when this process expands it too, concurrently, with the lease taken from it halfway
    settings = FramesSettings(database_url=database_url, storage_url=stack_env["VLMQ_STORAGE_URL"],
                              models=json.loads(stack_env["VLMQ_MODELS"]), batch_chunk_lines=50, batch_lease_s=0.01)
    published: list[str] = []
    runs = [threading.Thread(target=lambda: expand_batch(batch.id, settings=settings,
                                                         store=open_store(settings.resolved_storage_url),
                                                         publish=lambda rows: published.extend(r["id"] for r in rows)))
            for _ in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    done = wait_for_batch(client, batch.id, ("completed", "failed"))

    # then every line made exactly one job
    with session_scope(database_url) as session:
        made = session.scalar(select(func.count()).where(Job.batch_id == batch.id))
        lines_made = session.scalar(select(func.count(func.distinct(Job.batch_line))).where(Job.batch_id == batch.id))
    assert made == lines_made == 300
    assert done.status == "completed" and done.request_counts.completed == 300


def test_files_and_batches_refuse_bad_input_in_openai_shape(client):
    with pytest.raises(openai.BadRequestError) as purpose:
        client.files.create(file=("x.jsonl", b"{}\n"), purpose="fine-tune")
    assert purpose.value.code == "invalid_purpose"
    with pytest.raises(openai.NotFoundError) as missing:
        client.batches.create(input_file_id="file-nope", endpoint=CHAT, completion_window="24h")
    assert missing.value.code == "file_not_found"
    empty = client.files.create(file=("empty.jsonl", b"\n  \n"), purpose="batch")
    with pytest.raises(openai.BadRequestError) as nothing:
        client.batches.create(input_file_id=empty.id, endpoint=CHAT, completion_window="24h")
    assert nothing.value.code == "empty_file"
    with pytest.raises(openai.BadRequestError) as endpoint:
        client.batches.create(input_file_id=empty.id, endpoint="/v1/embeddings", completion_window="24h")
    assert endpoint.value.body["param"] == "endpoint"
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")
    stranger = openai.OpenAI(api_key=TENANT_KEYS["globex"], base_url=client.base_url, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        stranger.files.retrieve(empty.id)
    assert client.files.delete(empty.id).deleted


def test_a_batch_whose_window_ends_expires_with_its_unfinished_lines_in_the_error_file(client, database_url):
    # given a running batch of long requests
    lines = [json.dumps(request_line(f"slow-{n}", f"Essay {n}", max_tokens=400)) for n in range(60)]
    uploaded = client.files.create(file=("slow.jsonl", "\n".join(lines).encode()), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
    wait_for_batch(client, batch.id, ("in_progress",), timeout_s=60)

    # when its completion window has passed
    with session_scope(database_url) as session:
        session.execute(update(Batch).where(Batch.id == batch.id).values(expires_at=utcnow() - timedelta(seconds=1)))

    # then the sweeper expires it: no job left open, unfinished lines reported as batch_expired
    done = wait_for_batch(client, batch.id, ("expired",), timeout_s=120)
    assert done.expired_at and done.request_counts.total == 60
    with session_scope(database_url) as session:
        open_jobs = session.scalar(select(func.count()).where(Job.batch_id == batch.id,
                                                              Job.status.in_(("queued", "running"))))
    assert open_jobs == 0
    errors = [json.loads(line) for line in client.files.content(done.error_file_id).text.splitlines()]
    assert errors and {line["error"]["code"] for line in errors} == {"batch_expired"}


def test_expansion_waits_while_the_tenants_queue_is_full_and_resumes_as_it_drains(stack_env, tmp_path_factory):
    # given a stack whose frames worker keeps at most 30 of a tenant's jobs queued, and no inference worker yet
    with isolated_stack(stack_env, tmp_path_factory.mktemp("paced"), with_worker=False,
                        VLMQ_BATCH_QUEUED_JOBS="30", VLMQ_BATCH_CHUNK_LINES="10") as paced:
        paced.processes.append(paced._celery("frames", "workers.frames.celery_app", pool="prefork", concurrency=1))
        client = openai.OpenAI(api_key=TENANT_KEYS["acme"], base_url=f"{paced.api_url}/v1", max_retries=0)
        lines = [json.dumps(request_line(f"paced-{n}")) for n in range(100)]
        uploaded = client.files.create(file=("paced.jsonl", "\n".join(lines).encode()), purpose="batch")

        # when the batch is created
        batch = client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")

        # then its expansion stops near the cap while nothing drains the queue
        def made() -> int:
            with session_scope(paced.database_url) as session:
                return session.scalar(select(func.count()).where(Job.batch_id == batch.id))

        wait_until(lambda: made() >= 30, timeout_s=60, what="the first jobs of the batch")
        time.sleep(3)
        assert 30 <= made() <= 40 and client.batches.retrieve(batch.id).status == "in_progress"

        # and once a worker drains the queue, the rest follows and the batch completes
        paced.add_worker("worker")
        done = wait_for_batch(client, batch.id, ("completed", "failed"), timeout_s=240)
        assert done.status == "completed" and done.request_counts.completed == 100 and made() == 100


def test_a_file_of_more_requests_than_a_batch_may_hold_is_refused_as_it_streams(client):
    # given 50,001 requests, one past the cap, as a file (the lines need not be valid to be counted)
    content = b'{"custom_id": "x"}\n' * 50_001

    # when uploaded, then refused by name, and nothing is kept
    with pytest.raises(openai.BadRequestError) as refused:
        client.files.create(file=("big.jsonl", content), purpose="batch")
    assert refused.value.code == "too_many_lines"
    assert all(listed.filename != "big.jsonl" for listed in client.files.list(purpose="batch"))
    # while exactly 50,000 are taken, blank lines not counted
    accepted = client.files.create(file=("full.jsonl", content[: 19 * 50_000] + b"\n\n"), purpose="batch")
    assert accepted.bytes == 19 * 50_000 + 2
    client.files.delete(accepted.id)


def test_a_batch_with_no_line_that_can_run_fails_with_its_line_errors(client):
    # given a file whose every line is refused
    content = b"{oops\n" + json.dumps(request_line("m", model="nope")).encode() + b"\n"
    uploaded = client.files.create(file=("bad.jsonl", content), purpose="batch")

    # when a batch runs over it
    batch = client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
    done = wait_for_batch(client, batch.id, ("completed", "failed"), timeout_s=60)

    # then it failed, saying why line by line, and the error file holds both lines
    assert done.status == "failed" and done.failed_at and done.output_file_id is None
    assert [(error.code, error.line) for error in done.errors.data] == [("invalid_json", 1), ("model_not_found", 2)]
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (2, 0, 2)
    assert len(client.files.content(done.error_file_id).text.splitlines()) == 2


def test_a_batch_created_with_a_webhook_reports_its_end_signed(client, database_url):
    # given a receiver, and a batch that names it (a vlmq extension, sent as the openai client's extra_body)
    receiver = Receiver()
    lines = [json.dumps(request_line(f"hook-{n}")) for n in range(5)]
    uploaded = client.files.create(file=("hook.jsonl", "\n".join(lines).encode()), purpose="batch")
    try:
        batch = client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h",
                                      extra_body={"webhook": {"url": receiver.url}})

        # when it completes
        done = wait_for_batch(client, batch.id, ("completed",), timeout_s=120)

        # then one signed batch.completed delivery carries the batch object as the API serves it
        wait_until(lambda: receiver.requests, timeout_s=30, what="the batch.completed webhook")
        delivery = receiver.requests[0]
        with session_scope(database_url) as session:
            secret = secret_for(session, "acme").secret
        event = Webhook(secret).verify(delivery["body"], delivery["headers"])
        assert event["type"] == "batch.completed" and event["data"]["id"] == done.id
        assert event["data"]["status"] == "completed" and event["data"]["output_file_id"] == done.output_file_id
        assert event["data"]["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
        time.sleep(1)
        assert len(receiver.requests) == 1
    finally:
        receiver.close()
    # and events outside OpenAI's four batch events are refused
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h",
                              extra_body={"webhook": {"url": "https://example.com/h", "events": ["job.succeeded"]}})
