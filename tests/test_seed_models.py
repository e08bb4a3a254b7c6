"""The four seed models, in their original checkpoint format, through the API and the worker."""

from __future__ import annotations

import pytest

from tests.support.media import png_bytes, submit, wait_for_job
from tests.support.videos import make_video
from workers.inference.runtime.templates import INTERNVL2_5_SYSTEM, INTERNVL2_SYSTEM

SEED_MODELS = ["internvl2-1b", "mini-internvl-chat-4b-v1-5", "internvl2-8b", "internvl2_5-4b"]
FEW_TOKENS = {"max_new_tokens": 4, "max_tiles": 2}

# The exact chat-template text REFERENCE.md prescribes, per template, written out by hand.
IM = "<|im_start|>"
PROMPTS = {
    "single": {
        "Hermes-2": f"{IM}system\n{INTERNVL2_SYSTEM}<|im_end|>{IM}user\n<image>\nWhat is red?<|im_end|>{IM}assistant\n",
        "internlm2-chat": f"{IM}system\n{INTERNVL2_SYSTEM}<|im_end|>{IM}user\n<image>\nWhat is red?<|im_end|>{IM}assistant\n",
        "phi3-chat": f"<|system|>\n{INTERNVL2_SYSTEM}<|end|><|user|>\n<image>\nWhat is red?<|end|><|assistant|>\n",
        "internvl2_5": (
            f"{IM}system\n{INTERNVL2_5_SYSTEM}<|im_end|>\n{IM}user\n<image>\nWhat is red?<|im_end|>\n{IM}assistant\n"
        ),
    },
    "multi": {
        "Hermes-2": (
            f"{IM}system\n{INTERNVL2_SYSTEM}<|im_end|>{IM}user\nImage-1: <image>\nImage-2: <image>\nSame?<|im_end|>"
            f"{IM}assistant\n"
        ),
        "internlm2-chat": (
            f"{IM}system\n{INTERNVL2_SYSTEM}<|im_end|>{IM}user\nImage-1: <image>\nImage-2: <image>\nSame?<|im_end|>"
            f"{IM}assistant\n"
        ),
        "phi3-chat": (
            f"<|system|>\n{INTERNVL2_SYSTEM}<|end|><|user|>\nImage-1: <image>\nImage-2: <image>\nSame?<|end|>"
            "<|assistant|>\n"
        ),
        "internvl2_5": (
            f"{IM}system\n{INTERNVL2_5_SYSTEM}<|im_end|>\n{IM}user\nImage-1: <image>\nImage-2: <image>\nSame?<|im_end|>\n"
            f"{IM}assistant\n"
        ),
    },
    "history": {
        "Hermes-2": (
            f"{IM}system\n{INTERNVL2_SYSTEM}<|im_end|>{IM}user\n<image>\nWhat is it?<|im_end|>{IM}assistant\nA square."
            f"<|im_end|>{IM}user\nWhich colour?<|im_end|>{IM}assistant\n"
        ),
        "internlm2-chat": (
            f"{IM}system\n{INTERNVL2_SYSTEM}<|im_end|>{IM}user\n<image>\nWhat is it?<|im_end|>{IM}assistant\nA square."
            f"<|im_end|>{IM}user\nWhich colour?<|im_end|>{IM}assistant\n"
        ),
        "phi3-chat": (
            f"<|system|>\n{INTERNVL2_SYSTEM}<|end|><|user|>\n<image>\nWhat is it?<|end|><|assistant|>\nA square.<|end|>"
            "<|user|>\nWhich colour?<|end|><|assistant|>\n"
        ),
        "internvl2_5": (
            f"{IM}system\n{INTERNVL2_5_SYSTEM}<|im_end|>\n{IM}user\n<image>\nWhat is it?<|im_end|>\n{IM}assistant\n"
            f"A square.<|im_end|>\n{IM}user\nWhich colour?<|im_end|>\n{IM}assistant\n"
        ),
    },
}
TEMPLATE_OF = {
    "internvl2-1b": "Hermes-2",
    "mini-internvl-chat-4b-v1-5": "phi3-chat",
    "internvl2-8b": "internlm2-chat",
    "internvl2_5-4b": "internvl2_5",
}


@pytest.mark.parametrize("model_id", SEED_MODELS)
def test_plan_shows_the_exact_prompt_of_each_seed_models_template(acme, model_id):
    template = TEMPLATE_OF[model_id]
    # given a single-image question, a two-image question and an image chat with history
    single = {"task": "vqa", "model": model_id, "prompt": "What is red?"}
    multi = {"task": "vqa", "model": model_id, "prompt": "Same?"}
    history = {
        "task": "chat", "model": model_id, "prompt": "Which colour?",
        "history": [{"user": "What is it?", "assistant": "A square."}],
    }

    # when each is planned, then the prompt is REFERENCE.md's, character for character
    assert submit(acme, single, png_bytes(), path="/v1/jobs/plan").json()["prompt"] == PROMPTS["single"][template]
    assert submit(acme, multi, png_bytes(), png_bytes(64, 64), path="/v1/jobs/plan").json()["prompt"] == (
        PROMPTS["multi"][template]
    )
    planned = submit(acme, history, png_bytes(), path="/v1/jobs/plan").json()
    assert planned["prompt"] == PROMPTS["history"][template] and planned["model"] == model_id


@pytest.mark.parametrize("model_id", SEED_MODELS)
def test_every_task_succeeds_end_to_end_on_each_seed_model(acme, model_id):
    # given caption, vqa (two images), grounding and chat jobs for one seed model
    jobs = {
        "caption": submit(acme, {"task": "caption", "model": model_id, "options": FEW_TOKENS}, png_bytes()),
        "vqa": submit(
            acme, {"task": "vqa", "model": model_id, "prompt": "Same?", "options": FEW_TOKENS},
            png_bytes(), png_bytes(200, 100),
        ),
        "grounding": submit(
            acme, {"task": "grounding", "model": model_id, "prompt": "the red square", "options": FEW_TOKENS},
            png_bytes(640, 480),
        ),
        "chat": acme.post(
            "/v1/jobs",
            json={
                "task": "chat", "model": model_id, "prompt": "And you?", "options": FEW_TOKENS,
                "history": [{"user": "Hello", "assistant": "Hi."}],
            },
        ),
    }

    # when they run on the worker that serves every registered model
    finished = {task: wait_for_job(acme, response.json()["id"]) for task, response in jobs.items()}

    # then each succeeds on that model, with the structure of its task (the words are random)
    for task, job in finished.items():
        assert job["status"] == "succeeded", (task, job["error"])
        assert job["model"] == model_id and isinstance(job["result"]["text"], str)
        assert 1 <= job["result"]["usage"]["output_tokens"] <= 4
    assert finished["vqa"]["result"]["usage"]["tiles"] >= 2
    assert finished["chat"]["result"]["usage"]["tiles"] == 0
    assert isinstance(finished["grounding"]["result"]["boxes"], list)


def test_a_job_for_an_unknown_model_is_refused_with_the_registry_hint(acme):
    response = submit(acme, {"task": "caption", "model": "internvl9-1t"}, png_bytes())
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("model_id", SEED_MODELS)
def test_plan_of_a_video_question_numbers_one_placeholder_per_frame(acme, model_id, tmp_path):
    # given a video question with 3 frames
    video = make_video(tmp_path / "clip.mp4", seconds=1).read_bytes()
    request = {"task": "video_qa", "model": model_id, "prompt": "What happens?", "options": {"num_frames": 3}}

    # when it is planned
    plan = submit(acme, request, video, filename="clip.mp4", path="/v1/jobs/plan").json()

    # then each frame is one tile under its own FrameN label on the first user turn
    user_turn = "Frame1: <image>\nFrame2: <image>\nFrame3: <image>\nWhat happens?"
    expected = PROMPTS["single"][TEMPLATE_OF[model_id]].replace("<image>\nWhat is red?", user_turn)
    assert plan["prompt"] == expected and plan["image_tokens"] == 3 * 256
