"""Prompts that cannot fit the model's context are refused before they run, by the API (jobs, plans,
chat completions, batch lines) and by the worker; a prompt that just fits runs."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from tests.conftest import TENANT_KEYS
from tests.support.media import png_bytes, submit, wait_for_job
from tests.support.media_server import MediaServer, Reply
from tests.support.services import isolated_stack

CONTEXT = 32768  # the tiny model's max_position_embeddings
SMALL_CONTEXT = 1024


def long_history(turns: int) -> list[dict]:
    """About 26 tokens a turn with the tiny model's tokenizer: 2,000 turns are ~50,000 tokens."""
    return [{"user": f"Tell me about item number {number} again, please.", "assistant": f"Item {number} is fine."}
            for number in range(turns)]


def long_messages() -> list[dict]:
    """100 earlier turns (OpenAI's requests take at most 256 messages) of ~400 tokens each, then a question."""
    turns = [message for number in range(100) for message in (
        {"role": "user", "content": f"Tell me about item number {number} again, please. " * 30},
        {"role": "assistant", "content": f"Item {number} is fine."})]
    return [*turns, {"role": "user", "content": "And now?"}]


@pytest.fixture(scope="module")
def openai_client(stack) -> openai.OpenAI:
    return openai.OpenAI(api_key=TENANT_KEYS["acme"], base_url=f"{stack.api_url}/v1", max_retries=0, timeout=60)


def test_a_job_whose_history_exceeds_the_context_is_refused(acme):
    # given a chat whose history alone is longer than the model's 32768 positions
    request = {"task": "chat", "prompt": "And now?", "history": long_history(2000), "options": {"max_new_tokens": 8}}

    # when it is submitted as a job and as a plan
    created = acme.post("/v1/jobs", json=request)
    planned = acme.post("/v1/jobs/plan", json=request)

    # then both are refused in the error shape, with the numbers that did not fit
    for response in (created, planned):
        assert response.status_code == 400, response.text[:500]
        error = response.json()["error"]
        assert error["code"] == "context_length_exceeded"
        assert error["details"]["context_length"] == CONTEXT
        assert error["details"]["input_tokens"] + error["details"]["max_new_tokens"] > CONTEXT
        assert error["details"]["max_new_tokens"] == 8


def test_a_chat_completion_longer_than_the_context_is_refused_in_openai_shape(openai_client):
    # given messages far longer than the model's 32768 positions
    messages = long_messages()

    # when the openai client asks for a completion, then it gets OpenAI's 400 with the code
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client.chat.completions.create(model="internvl-tiny", messages=messages, max_tokens=8)
    assert refused.value.code == "context_length_exceeded"


def test_a_batch_line_longer_than_the_context_becomes_a_line_error(openai_client):
    # given a batch file with one line far too long and one short line
    lines = [
        {"custom_id": "long", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "internvl-tiny", "messages": long_messages(), "max_tokens": 2}},
        {"custom_id": "short", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "internvl-tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}},
    ]
    content = ("\n".join(json.dumps(line) for line in lines) + "\n").encode()
    uploaded = openai_client.files.create(file=("long.jsonl", content), purpose="batch")

    # when the batch runs
    batch = openai_client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                         completion_window="24h")
    deadline = time.monotonic() + 120
    while (done := openai_client.batches.retrieve(batch.id)).status not in ("completed", "failed"):
        assert time.monotonic() < deadline, done.status
        time.sleep(0.5)

    # then the long line is an error line with the reason code, and the short one ran
    errors = [json.loads(line) for line in openai_client.files.content(done.error_file_id).text.splitlines()]
    assert [(line["custom_id"], line["error"]["code"]) for line in errors] == [("long", "context_length_exceeded")]
    assert done.request_counts.completed == 1


# A model of 1024 positions: the boundary is cheap to reach on a CPU.


@pytest.fixture(scope="module")
def small_context_stack(stack_env, models_dir, tmp_path_factory):
    from workers.inference.tiny_model import build_tiny_model

    model_dir = build_tiny_model(models_dir / "internvl-tiny-1k", max_position_embeddings=SMALL_CONTEXT)
    registry = json.dumps({"internvl-tiny-1k": str(model_dir)})
    with isolated_stack(stack_env, tmp_path_factory.mktemp("context"), VLMQ_MODELS=registry,
                        VLMQ_DEFAULT_MODEL="internvl-tiny-1k") as running:
        yield running


@pytest.fixture
def small(small_context_stack):
    with httpx.Client(base_url=small_context_stack.api_url, timeout=60,
                      headers={"Authorization": f"Bearer {TENANT_KEYS['acme']}"}) as client:
        yield client


def test_a_prompt_that_just_fits_runs_and_one_token_more_is_refused(small):
    # given a chat whose prompt the plan counts
    request = {"task": "chat", "prompt": "And now?", "history": long_history(14)}
    plan = small.post("/v1/jobs/plan", json={**request, "options": {"max_new_tokens": 1}})
    assert plan.status_code == 200, plan.text[:500]
    input_tokens = plan.json()["input_tokens"]
    assert plan.json()["context_length"] == SMALL_CONTEXT and 300 < input_tokens < SMALL_CONTEXT - 16

    # when it asks for exactly the positions left, and for one more
    fits = small.post("/v1/jobs", json={**request, "options": {"max_new_tokens": SMALL_CONTEXT - input_tokens}})
    over = small.post("/v1/jobs", json={**request, "options": {"max_new_tokens": SMALL_CONTEXT - input_tokens + 1}})

    # then the one that fits runs to the end, and the other is refused
    assert fits.status_code == 202, fits.text[:500]
    job = wait_for_job(small, fits.json()["id"], timeout_s=240)
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["usage"]["input_tokens"] == input_tokens
    assert over.status_code == 400 and over.json()["error"]["code"] == "context_length_exceeded", over.text[:500]


def test_image_tokens_count_towards_the_context(small):
    # given an image of 13 tiles (12 and a thumbnail: 3328 image tokens) and a short question
    image = png_bytes(1600, 1200)

    # when it is planned and submitted with all its tiles, and with one tile
    planned = submit(small, {"task": "vqa", "prompt": "What is red?"}, image, path="/v1/jobs/plan")
    created = submit(small, {"task": "vqa", "prompt": "What is red?"}, image)
    one_tile = submit(small, {"task": "vqa", "prompt": "What is red?",
                              "options": {"max_tiles": 1, "max_new_tokens": 2}}, image)

    # then the tiles that cannot fit are refused, with the image tokens named, and one tile runs
    for response in (planned, created):
        assert response.status_code == 400, response.text[:500]
        assert response.json()["error"]["code"] == "context_length_exceeded"
        assert response.json()["error"]["details"]["image_tokens"] == 13 * 256
    assert one_tile.status_code == 202, one_tile.text
    assert wait_for_job(small, one_tile.json()["id"])["status"] == "succeeded"


def test_the_worker_refuses_a_job_that_reaches_it_too_long(small):
    # given an image by URL: its size, and so its tiles, are known only once the worker fetched it
    server = MediaServer()
    try:
        url = server.serve("/big.png", Reply(200, png_bytes(1600, 1200), {"content-type": "image/png"}))

        # when a job names it
        created = small.post("/v1/jobs", json={"task": "caption", "input": {"url": url},
                                               "options": {"max_new_tokens": 2}})
        assert created.status_code == 202, created.text
        job = wait_for_job(small, created.json()["id"])
    finally:
        server.close()

    # then the worker fails it with the reason code instead of running 3,300 tokens through 1,024 positions
    assert job["status"] == "failed" and job["error"]["code"] == "context_length_exceeded", job["error"]
    assert "1024" in job["error"]["message"]
