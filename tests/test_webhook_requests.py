"""What a webhook may name, refused when the job, index or batch is created (API.md, "Webhooks"):
only known event names, and no literal internal address unless private networks are allowed."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import TENANT_KEYS
from tests.support.media import png_bytes, submit
from tests.support.services import Stack

INTERNAL_URLS = [
    "http://127.0.0.1:8080/hooks",
    "http://[::1]/hooks",
    "http://169.254.169.254/latest/meta-data",
    "http://10.1.2.3/hooks",
    "http://localhost:9000/hooks",
    "http://metadata.google.internal/hooks",
]
CAPTION = {"task": "caption", "options": {"max_new_tokens": 2}}


def _assert_refused(response: httpx.Response, *, code: str) -> dict:
    """API.md's error shape: {"error": {"code", "message", "details"}}."""
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    return error


def test_a_job_webhook_with_an_unknown_event_name_is_refused_in_either_body_form(acme):
    # given a webhook asking for an event that does not exist
    webhook = {"url": "https://example.com/hooks", "events": ["job.succeeded", "nope"]}

    # when a job is created with it, as JSON and as multipart
    as_json = acme.post("/v1/jobs", json={**CAPTION, "input": {"url": "https://example.com/a.png"}, "webhook": webhook})
    as_form = submit(acme, {**CAPTION, "webhook": webhook}, png_bytes())

    # then both are refused, naming the field
    for response in (as_json, as_form):
        error = _assert_refused(response, code="validation_error")
        assert ["webhook", "events", "1"] in [problem["loc"] for problem in error["details"]["errors"]]


def test_known_event_names_are_accepted(acme):
    # given every job event name API.md lists
    events = ["job.started", "job.succeeded", "job.failed", "job.canceled"]

    # when a job is created with them, then it is accepted
    response = submit(acme, {**CAPTION, "webhook": {"url": "https://example.com/hooks", "events": events}}, png_bytes())
    assert response.status_code == 202, response.text


def test_an_index_webhook_with_an_unknown_event_name_is_refused(acme):
    # when an index is created with a webhook for a job event it never sends
    response = acme.post("/v1/video-indexes", json={
        "videos": [{"url": "https://example.com/a.mp4"}],
        "webhook": {"url": "https://example.com/hooks", "events": ["job.succeeded"]},
    })

    # then it is refused
    _assert_refused(response, code="validation_error")


@pytest.fixture(scope="module")
def guarded_api(stack_env, tmp_path_factory):
    """An API process as production runs it: private networks not allowed (the suite's stack allows them)."""
    env = {**stack_env, "VLMQ_ALLOW_PRIVATE_NETWORKS": "false"}
    stack = Stack.start(env, tmp_path_factory.mktemp("guarded"), with_worker=False)
    client = httpx.Client(base_url=stack.api_url, headers={"Authorization": f"Bearer {TENANT_KEYS['acme']}"}, timeout=60)
    yield client
    client.close()
    stack.stop()


@pytest.mark.parametrize("url", INTERNAL_URLS)
def test_a_job_webhook_to_an_internal_address_is_refused_at_creation(guarded_api, url):
    # given a webhook URL naming a loopback, private, link-local or metadata host literally

    # when a job is created with it, as JSON and as multipart
    as_json = guarded_api.post(
        "/v1/jobs", json={**CAPTION, "input": {"url": "https://example.com/a.png"}, "webhook": {"url": url}})
    as_form = submit(guarded_api, {**CAPTION, "webhook": {"url": url}}, png_bytes())

    # then both are refused at once, as a media URL like it is
    for response in (as_json, as_form):
        error = _assert_refused(response, code="url_refused")
        assert error["details"]["url"].startswith(url.split("/hooks")[0].rstrip("/"))
        assert "webhook" in error["message"]


def test_an_index_webhook_to_an_internal_address_is_refused_at_creation(guarded_api):
    # when an index is created with a webhook to the metadata address
    response = guarded_api.post("/v1/video-indexes", json={
        "videos": [{"url": "https://example.com/a.mp4"}], "webhook": {"url": "http://169.254.169.254/hooks"}})

    # then it is refused
    _assert_refused(response, code="url_refused")


def test_a_batch_webhook_to_an_internal_address_is_refused_at_creation(guarded_api):
    # given a batch input file
    line = {"custom_id": "one", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "internvl-tiny", "messages": [{"role": "user", "content": "Hi."}], "max_tokens": 2}}
    uploaded = guarded_api.post("/v1/files", data={"purpose": "batch"},
                                files={"file": ("b.jsonl", json.dumps(line).encode(), "application/jsonl")})
    assert uploaded.status_code == 200, uploaded.text

    # when a batch over it names a loopback webhook (the openai client's extra_body)
    response = guarded_api.post("/v1/batches", json={
        "input_file_id": uploaded.json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h",
        "webhook": {"url": "http://127.0.0.1:9/hooks"}})

    # then it is refused, in OpenAI's error shape on that route
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "url_refused"
