"""Operations through the real stack: /metrics of the API and of each worker, JSON log lines that
name their job, and the queue depth KEDA scales on."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from shared.config.settings import CommonSettings
from shared.metrics.exposition import metrics_registry, render
from shared.queue import create_celery, queue_for, task_name_for
from tests.support.media import png_bytes, submit, wait_for_job
from tests.support.media_server import MediaServer, Reply
from tests.support.receiver import Receiver
from tests.support.services import isolated_stack, wait_until

CAPTION = {"task": "caption", "options": {"max_new_tokens": 4}}


def scrape(url: str) -> dict[str, list]:
    """Sample name → [(labels, value)] from a Prometheus text exposition."""
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: dict[str, list], name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for found, v in samples.get(name, []) if labels.items() <= found.items())


@pytest.fixture(scope="module")
def finished_jobs(stack, acme):
    """A few jobs of each outcome, one of them reporting to a webhook receiver."""
    receiver, media = Receiver(200), MediaServer()
    try:
        succeeded = [wait_for_job(acme, submit(acme, CAPTION, png_bytes()).json()["id"]) for _ in range(2)]
        hooked = {**CAPTION, "webhook": {"url": receiver.url, "events": ["job.succeeded"]}}
        succeeded.append(wait_for_job(acme, submit(acme, hooked, png_bytes()).json()["id"]))
        gone = {**CAPTION, "input": {"url": media.serve("/gone.png", Reply(404))}}
        failed = wait_for_job(acme, acme.post("/v1/jobs", json=gone).json()["id"])
        wait_until(lambda: receiver.requests, timeout_s=30, what="the webhook delivery")
    finally:
        receiver.close()
        media.close()
    assert [job["status"] for job in succeeded] == ["succeeded"] * 3 and failed["status"] == "failed"
    return succeeded, failed


@pytest.fixture(scope="module")
def acme(stack):
    from tests.conftest import TENANT_KEYS

    with httpx.Client(base_url=stack.api_url, headers={"Authorization": f"Bearer {TENANT_KEYS['acme']}"},
                      timeout=60) as client:
        yield client


def test_the_api_exposes_requests_jobs_created_and_queue_depths(stack, finished_jobs):
    # given jobs created through the API (fixture); when its /metrics is scraped
    samples = scrape(f"{stack.api_url}/metrics")

    # then requests are counted by route template and status, and timed
    assert value(samples, "vlmq_http_requests_total", method="POST", route="/v1/jobs", status="202") >= 4
    assert value(samples, "vlmq_http_requests_total", method="GET", route="/v1/jobs/{job_id}", status="200") >= 4
    assert value(samples, "vlmq_http_request_duration_seconds_count", method="POST", route="/v1/jobs") >= 4
    assert any(labels.get("le") == "+Inf" for labels, _ in samples["vlmq_http_request_duration_seconds_bucket"])
    # and jobs created are counted by task and model
    assert value(samples, "vlmq_jobs_created_total", task="caption", model="internvl-tiny") >= 4
    # and every queue has a depth, the length of its Redis list (nothing waits now)
    depths = {labels["queue"]: depth for labels, depth in samples["vlmq_queue_depth"]}
    assert {queue_for("internvl-tiny"), "vlmq.frames", "vlmq.notify"} <= set(depths)
    assert depths[queue_for("internvl-tiny")] == 0


def test_an_unknown_path_is_counted_under_one_label(stack, anonymous):
    # when scanners probe paths that do not exist
    for path in ("/wp-admin", "/.env", "/v1/nothing/here"):
        assert anonymous.get(path).status_code == 404
    # then they share one series instead of minting one per URL
    samples = scrape(f"{stack.api_url}/metrics")
    routes = {labels["route"] for labels, _ in samples["vlmq_http_requests_total"]}
    assert "unmatched" in routes and not routes & {"/wp-admin", "/.env", "/v1/nothing/here"}


def test_the_inference_worker_exposes_outcomes_stage_times_batches_and_tokens(stack, finished_jobs):
    # given finished jobs; when the inference worker's own endpoint is scraped
    samples = scrape(f"{stack.metrics_urls['worker']}/metrics")

    # then outcomes are counted by task, model and outcome
    assert value(samples, "vlmq_jobs_finished_total", task="caption", model="internvl-tiny", outcome="succeeded") >= 3
    assert value(samples, "vlmq_jobs_finished_total", task="caption", outcome="failed") >= 1
    # and each succeeded job's queue wait, preprocessing and inference are in histograms
    for stage in ("queue_wait", "preprocess", "inference"):
        assert value(samples, f"vlmq_job_{stage}_seconds_count", task="caption", model="internvl-tiny") >= 3
    # and batches and tokens are counted (a pool process wrote them; the main process serves them)
    assert value(samples, "vlmq_batch_size_count", model="internvl-tiny") >= 3
    assert value(samples, "vlmq_generated_tokens_total", model="internvl-tiny") >= 3
    assert value(samples, "vlmq_prompt_tokens_total", model="internvl-tiny") > 0
    # and there is no GPU here, so no GPU memory series has a sample
    assert not samples.get("vlmq_gpu_memory_allocated_bytes")
    # and the same server answers the health probe
    assert httpx.get(f"{stack.metrics_urls['worker']}/healthz", timeout=5).json() == {"status": "ok"}


def test_the_notifier_counts_webhook_deliveries_by_outcome(stack, finished_jobs):
    samples = scrape(f"{stack.metrics_urls['notifier']}/metrics")
    assert value(samples, "vlmq_webhook_delivery_attempts_total", outcome="delivered") >= 1


def test_a_canceled_job_is_counted_where_it_was_canceled(stack, acme):
    # given a long job canceled through the API (queued or running: the API's transition ends it)
    before = value(scrape(f"{stack.api_url}/metrics"), "vlmq_jobs_finished_total", outcome="canceled")
    job = acme.post("/v1/jobs", json={"task": "chat", "prompt": "Wait.", "options": {"max_new_tokens": 4096}}).json()
    acme.post(f"/v1/jobs/{job['id']}/cancel")
    # then the API process counted it (the worker that was running it writes nothing)
    wait_for_job(acme, job["id"])
    after = value(scrape(f"{stack.api_url}/metrics"), "vlmq_jobs_finished_total", outcome="canceled")
    assert after == before + 1


def test_worker_log_lines_are_json_and_name_their_job(stack, finished_jobs):
    # given a succeeded job; when the inference worker's log is read
    job_id = finished_jobs[0][0]["id"]
    lines = [json.loads(line) for line in (stack.data_dir / "worker.log").read_text().splitlines()
             if line.startswith("{")]

    # then its lines are JSON objects with a time, a level, a logger and the role
    assert lines and all({"time", "level", "logger", "message", "role"} <= line.keys() for line in lines)
    # and every line about the job carries its id, not just the text
    about = [line for line in lines if line.get("job_id") == job_id]
    assert any(f"job {job_id} attempt 1 started" == line["message"] for line in about)
    assert all(line["role"] == "inference" for line in about)
    mentioning = [line for line in lines if job_id in line["message"] and line["logger"].startswith("vlmq")]
    assert all(line.get("job_id") == job_id for line in mentioning)


def test_the_queue_depth_metric_is_the_redis_list_length_keda_reads(broker_url):
    # given N messages on a model's queue that no worker consumes, sent the way the API sends them
    model = "nobody-serves-this-either"
    app = create_celery(CommonSettings(broker_url=broker_url), models=[model])
    client = redis.Redis.from_url(broker_url)
    client.delete(queue_for(model))
    for number in range(5):
        app.send_task(task_name_for("caption"), args=[f"job_{number}"], queue=queue_for(model),
                      priority=number % 3 or None)

    # when the metrics are rendered the way /metrics renders them
    body, _ = render(metrics_registry(broker_url=broker_url, queues=[queue_for(model)]))
    (family,) = [f for f in text_string_to_metric_families(body.decode()) if f.name == "vlmq_queue_depth"]

    # then the depth is N, and it is the length of the list a KEDA Redis trigger reads
    assert [(sample.labels, sample.value) for sample in family.samples] == [({"queue": queue_for(model)}, 5.0)]
    assert client.llen(queue_for(model)) == 5
    client.delete(queue_for(model))


def test_several_api_processes_serve_one_set_of_metrics(stack_env, tmp_path_factory):
    # given an API of two server processes (uvicorn workers) sharing one multiprocess directory
    with isolated_stack(stack_env, tmp_path_factory.mktemp("api-workers"), with_worker=False,
                        VLMQ_API_WORKERS="2") as api:
        _wait_for_server_processes(api.data_dir / "api.log", 2)
        # when it answers requests on many concurrent connections, until both processes took some
        sent, served_by = 0, set()

        def probe(_) -> int:
            return httpx.get(f"{api.api_url}/healthz", timeout=10).status_code

        with ThreadPoolExecutor(16) as pool:
            for _ in range(20):
                assert set(pool.map(probe, range(64))) == {200}
                sent += 64
                served_by = {line["process"] for line in _log_lines(api.data_dir / "api.log")
                             if line["logger"] == "uvicorn.access" and "/healthz" in line["message"]}
                if len(served_by) == 2:
                    break
        # then whichever process is scraped counts every request, however they were shared out
        for _ in range(4):
            samples = scrape(f"{api.api_url}/metrics")
            assert value(samples, "vlmq_http_requests_total", method="GET", route="/healthz", status="200") == sent
    assert len(served_by) == 2, served_by


def _wait_for_server_processes(log_path, count: int, timeout_s: float = 60.0) -> None:
    """Until ``count`` uvicorn processes have finished starting (the stack is ready with the first)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        started = {line["process"] for line in _log_lines(log_path) if line["message"] == "Application startup complete."}
        if len(started) >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f"{count} API processes did not start:\n{log_path.read_text()[-4000:]}")


def _log_lines(path) -> list[dict]:
    """The log's JSON lines; a last line still being written is left for the next read."""
    lines = []
    for line in path.read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [line for line in lines if isinstance(line, dict)]
