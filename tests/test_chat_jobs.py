"""Task chat: text-only conversations and image chats with history (REFERENCE.md, prompt building)."""

from __future__ import annotations

from tests.support.media import png_bytes, submit, wait_for_job
from workers.inference.runtime.templates import INTERNVL2_5_SYSTEM

HISTORY = [{"user": "What is in the image?", "assistant": "A red square."}, {"user": "Anything else?", "assistant": ""}]


def test_a_text_only_chat_with_history_runs(acme):
    # given a chat with no media at all, as JSON
    created = acme.post(
        "/v1/jobs",
        json={"task": "chat", "prompt": "Tell me more.", "history": HISTORY[:1], "options": {"max_new_tokens": 3}},
    )

    # then it runs with no image tiles
    assert created.status_code == 202, created.text
    job = wait_for_job(acme, created.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["usage"]["tiles"] == 0 and job["input"]["items"] == []
    assert job["history"] == HISTORY[:1]


def test_an_image_chat_puts_the_image_on_the_first_turn(acme):
    # given an image chat with two earlier turns, one with an empty answer
    request = {"task": "chat", "prompt": "And now?", "history": HISTORY, "options": {"max_tiles": 1, "max_new_tokens": 3}}

    # when planned and run
    plan = submit(acme, request, png_bytes(64, 64), path="/v1/jobs/plan").json()
    job = wait_for_job(acme, submit(acme, request, png_bytes(64, 64)).json()["id"])

    # then the placeholder sits in the first user turn, and the empty answer keeps upstream's quirk
    assert plan["prompt"] == (
        f"<|im_start|>system\n{INTERNVL2_5_SYSTEM}<|im_end|>\n"
        "<|im_start|>user\n<image>\nWhat is in the image?<|im_end|>\n<|im_start|>assistant\nA red square.<|im_end|>\n"
        "<|im_start|>user\nAnything else?<|im_end|>\n<|im_start|>assistant\n"
        "<|im_start|>user\nAnd now?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert plan["image_tokens"] == 256
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["usage"]["tiles"] == 1


def test_a_chat_needs_a_prompt(acme):
    response = acme.post("/v1/jobs", json={"task": "chat"})
    assert response.status_code == 400 and "prompt" in response.json()["error"]["message"]
