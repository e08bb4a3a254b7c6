"""An image job through the real API, S3 endpoint, Redis broker, worker process and PostgreSQL."""

from __future__ import annotations

import time

import pytest

from shared.queue import queue_for
from tests.support.media import png_bytes, submit, wait_for_job


@pytest.mark.parametrize(
    "request_body",
    [
        {"task": "caption", "options": {"max_new_tokens": 8}},
        {"task": "vqa", "prompt": "What colour is the square?", "options": {"max_new_tokens": 8}},
        {"task": "grounding", "prompt": "the red square", "options": {"max_new_tokens": 8}},
    ],
    ids=["caption", "vqa", "grounding"],
)
def test_an_uploaded_image_job_runs_to_success(acme, request_body):
    # given an image uploaded with a task
    image = png_bytes(640, 480)

    # when the job is created and the worker runs it
    created = submit(acme, request_body, image)
    assert created.status_code == 202, created.text
    job = created.json()
    assert created.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["id"].startswith("job_")
    finished = wait_for_job(acme, job["id"])

    # then it succeeded with a result of the documented shape
    assert finished["status"] == "succeeded", finished["error"]
    assert finished["attempts"] == 1
    assert finished["started_at"] and finished["finished_at"]
    result = finished["result"]
    assert isinstance(result["text"], str)
    assert result["usage"]["tiles"] == 13  # 640×480 → a 4×3 grid plus the thumbnail
    assert result["usage"]["input_tokens"] > 13 * 256
    assert 1 <= result["usage"]["output_tokens"] <= 8
    assert set(result["timings_ms"]) == {"queue", "preprocess", "inference", "total"}
    item = finished["input"]["items"][0]
    assert (item["width"], item["height"], item["content_type"]) == (640, 480, "image/png")
    if request_body["task"] == "grounding":
        assert isinstance(result["boxes"], list)
    else:
        assert "boxes" not in result


def test_a_job_is_seen_queued_then_running_then_succeeded(acme):
    # given a job long enough to be observed while it runs (random weights rarely stop early)
    created = submit(acme, {"task": "caption", "options": {"max_new_tokens": 1200, "max_tiles": 1}}, png_bytes(64, 64))
    job_id = created.json()["id"]
    seen = [created.json()["status"]]

    # when we poll it until it ends
    deadline = time.monotonic() + 120
    while seen[-1] not in ("succeeded", "failed") and time.monotonic() < deadline:
        status = acme.get(f"/v1/jobs/{job_id}").json()["status"]
        if status != seen[-1]:
            seen.append(status)
        time.sleep(0.02)

    # then it went through the state machine in order
    assert seen == ["queued", "running", "succeeded"]


def test_multi_image_vqa_counts_tiles_of_every_image(acme):
    # given two images and a shared tile budget
    request = {"task": "vqa", "prompt": "Compare them.", "options": {"max_new_tokens": 4, "max_tiles": 6, "max_tiles_total": 4}}

    # when the job runs
    job = wait_for_job(acme, submit(acme, request, png_bytes(448, 448), png_bytes(896, 448)).json()["id"])

    # then each image got at most 4 // 2 = 2 tiles: 1 for the square one, 2+thumbnail→ capped grid 2×1 = 3
    assert job["status"] == "succeeded", job["error"]
    assert len(job["input"]["items"]) == 2
    assert job["result"]["usage"]["tiles"] == 1 + 3


def test_the_same_job_id_delivered_twice_runs_once(acme, stack_env):
    # given a finished job
    job = wait_for_job(acme, submit(acme, {"task": "caption", "options": {"max_new_tokens": 2}}, png_bytes()).json()["id"])
    assert job["status"] == "succeeded"

    # when the broker delivers its id again (a duplicate message)
    from celery import Celery

    producer = Celery(broker=stack_env["VLMQ_BROKER_URL"])
    queue = queue_for(job["model"])
    producer.send_task("vlmq.inference.caption", args=[job["id"]], queue=queue)
    producer.send_task("vlmq.inference.caption", args=["job_does_not_exist"], queue=queue)
    time.sleep(2)

    # then nothing changes: one attempt, the same result
    again = acme.get(f"/v1/jobs/{job['id']}").json()
    assert again["attempts"] == 1 and again["result"] == job["result"] and again["status"] == "succeeded"


def test_the_worker_loads_the_model_once_per_process(acme, stack):
    # given several jobs run by the worker's task threads
    for _ in range(3):
        wait_for_job(acme, submit(acme, {"task": "caption", "options": {"max_new_tokens": 1}}, png_bytes(32, 32)).json()["id"])

    # then its log shows a single model load: every thread shares the one engine
    log = (stack.data_dir / "worker.log").read_text()
    loads = [line for line in log.splitlines() if "loading internvl-tiny" in line]
    assert len(loads) == 1
