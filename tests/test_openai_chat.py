"""POST /v1/chat/completions driven by the official ``openai`` package against a running vlmq."""

from __future__ import annotations

import base64

import httpx
import openai
import pytest

from tests.conftest import TENANT_KEYS
from tests.support.media import png_bytes
from workers.inference.runtime.templates import INTERNVL2_5_SYSTEM


@pytest.fixture
def client(stack) -> openai.OpenAI:
    return openai.OpenAI(api_key=TENANT_KEYS["acme"], base_url=f"{stack.api_url}/v1", max_retries=0, timeout=120)


def data_url(image: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(image).decode()


def test_a_chat_completion_with_an_image_runs_as_a_chat_job(client, acme):
    # given a conversation with a system message and an image given as a data URL
    messages = [
        {"role": "system", "content": "You describe images."},
        {"role": "user", "content": [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": data_url(png_bytes(96, 64)), "detail": "low"}},
        ]},
    ]

    # when the openai client asks for a completion
    raw = client.chat.completions.with_raw_response.create(model="internvl-tiny", messages=messages, max_tokens=5)
    completion = raw.parse()

    # then it is OpenAI's completion object, with usage, made by an ordinary job
    assert completion.object == "chat.completion" and completion.model == "internvl-tiny"
    (choice,) = completion.choices
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert 1 <= completion.usage.completion_tokens <= 5
    assert completion.usage.prompt_tokens > 256  # one tile's image tokens and the text
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    job_id = raw.headers["x-vlmq-job-id"]
    assert completion.id == f"chatcmpl-{job_id}"
    job = acme.get(f"/v1/jobs/{job_id}").json()
    assert job["task"] == "chat" and job["status"] == "succeeded"
    assert job["system"] == "You describe images." and job["prompt"] == "<image>\nWhat is in this picture?"
    assert job["options"]["max_tiles"] == 1 and job["options"]["max_new_tokens"] == 5
    assert job["result"]["text"] == choice.message.content
    assert job["result"]["usage"]["tiles"] == 1 and len(job["input"]["items"]) == 1


def test_a_streamed_completion_concatenates_to_the_final_text(client, acme):
    # given a text-only conversation with an earlier turn
    messages = [
        {"role": "user", "content": "Hello."},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "Tell me a story."},
    ]

    # when it is streamed with usage
    stream = client.chat.completions.create(model="internvl-tiny", messages=messages, max_completion_tokens=40,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)

    # then the chunks are OpenAI's, their deltas make up the job's text, and usage comes last
    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk.id for chunk in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [chunk for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]
    assert content  # (how many pieces depends on how fast the tiny model generates)
    finish = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    assert finish in (["stop"], ["length"])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    job = acme.get(f"/v1/jobs/{chunks[0].id.removeprefix('chatcmpl-')}").json()
    assert "".join(chunk.choices[0].delta.content for chunk in content) == job["result"]["text"]
    assert job["history"] == [{"user": "Hello.", "assistant": "Hi."}] and job["prompt"] == "Tell me a story."


def test_several_images_follow_the_image_n_convention(client, acme):
    # given two images in the first turn and one in the last
    def image_part(width):
        return {"type": "image_url", "image_url": {"url": data_url(png_bytes(width, 48)), "detail": "low"}}

    messages = [
        {"role": "user", "content": [image_part(40), image_part(50), {"type": "text", "text": "Compare them."}]},
        {"role": "assistant", "content": "They differ."},
        {"role": "user", "content": [{"type": "text", "text": "And this one?"}, image_part(60)]},
    ]

    # when completed
    raw = client.chat.completions.with_raw_response.create(model="internvl-tiny", messages=messages, max_tokens=2)

    # then each image is numbered where it was given, across the conversation
    job = acme.get(f"/v1/jobs/{raw.headers['x-vlmq-job-id']}").json()
    assert job["history"] == [{"user": "Image-1: <image>\nImage-2: <image>\nCompare them.", "assistant": "They differ."}]
    assert job["prompt"] == "Image-3: <image>\nAnd this one?"
    assert job["status"] == "succeeded" and job["result"]["usage"]["tiles"] == 3


def test_errors_come_in_openai_shape_and_raise_the_clients_exceptions(client, stack):
    # an unknown model
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "Hi"}])
    assert missing.value.code == "model_not_found" and missing.value.type == "invalid_request_error"
    # an argument vlmq does not implement is named
    with pytest.raises(openai.BadRequestError) as unknown:
        client.chat.completions.create(model="internvl-tiny", messages=[{"role": "user", "content": "Hi"}],
                                       tools=[{"type": "function", "function": {"name": "f"}}])
    assert "Unrecognized request argument supplied: tools" in unknown.value.message
    # a conversation that does not end with the user
    with pytest.raises(openai.BadRequestError) as order:
        client.chat.completions.create(model="internvl-tiny", messages=[{"role": "assistant", "content": "Hi"}])
    assert order.value.body["param"] == "messages"
    # an image that is not an image
    with pytest.raises(openai.UnprocessableEntityError) as bad_image:
        client.chat.completions.create(model="internvl-tiny", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"0" * 64).decode()}}]}])
    assert bad_image.value.code == "invalid_media"
    # a wrong key
    stranger = openai.OpenAI(api_key="wrong", base_url=f"{stack.api_url}/v1", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.chat.completions.create(model="internvl-tiny", messages=[{"role": "user", "content": "Hi"}])
    # the body shape itself, as OpenAI writes it
    body = httpx.post(f"{stack.api_url}/v1/chat/completions", json={"model": "internvl-tiny"},
                      headers={"Authorization": f"Bearer {TENANT_KEYS['acme']}"}).json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["param"] == "messages"


def test_image_urls_are_fetched_by_the_worker_and_their_failures_are_the_requests_fault(client):
    # a scheme vlmq never fetches is refused before any job exists
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="internvl-tiny", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}}]}])
    assert refused.value.code == "invalid_input"
    # an http(s) URL is the job's input, fetched when it runs: one that cannot be fetched fails the job,
    # and the completion answers 400 with the job's reason code, asking the client not to retry
    with pytest.raises(openai.BadRequestError) as unfetchable:
        client.chat.completions.create(model="internvl-tiny", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/missing.png"}}]}])
    assert unfetchable.value.code == "media_fetch_failed"
    assert unfetchable.value.response.headers["x-should-retry"] == "false"
    assert unfetchable.value.response.headers["x-vlmq-job-id"] in unfetchable.value.message


def test_the_system_message_takes_the_templates_system_slot(acme):
    # given a chat job with a system message, planned
    plan = acme.post("/v1/jobs/plan", json={"task": "chat", "prompt": "Hi", "system": "Be brief."}).json()
    default = acme.post("/v1/jobs/plan", json={"task": "chat", "prompt": "Hi"}).json()

    # then it replaces the checkpoint's own system message
    assert plan["prompt"].startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    assert default["prompt"].startswith(f"<|im_start|>system\n{INTERNVL2_5_SYSTEM}<|im_end|>\n")
    assert acme.post("/v1/jobs", json={"task": "caption", "system": "x", "input": {"url": "https://example.com/a.png"}}
                     ).status_code == 400


def test_an_idempotency_key_answers_a_repeated_request_with_the_same_job(client):
    # given a completion sent with an Idempotency-Key
    request = {"model": "internvl-tiny", "messages": [{"role": "user", "content": "Only once?"}], "max_tokens": 3,
               "extra_headers": {"Idempotency-Key": "chat-once-1"}}
    first = client.chat.completions.with_raw_response.create(**request)

    # when the client sends it again, then it gets the same job's completion, not a second job
    again = client.chat.completions.with_raw_response.create(**request)
    assert again.headers["x-vlmq-job-id"] == first.headers["x-vlmq-job-id"]
    assert again.parse().choices[0].message.content == first.parse().choices[0].message.content
    # and the same key with another request is refused
    with pytest.raises(openai.ConflictError) as reused:
        client.chat.completions.create(**{**request, "max_tokens": 4})
    assert reused.value.code == "idempotency_key_reused"


def test_the_openai_client_lists_the_models_it_can_name(client, acme):
    # given vlmq's own model list, when the openai client lists models, then it sees the same ids
    ids = [model["id"] for model in acme.get("/v1/models").json()["data"]]
    listed = list(client.models.list())
    assert [model.id for model in listed] == ids and "internvl-tiny" in ids
    assert {model.object for model in listed} == {"model"} and {model.owned_by for model in listed} == {"vlmq"}
