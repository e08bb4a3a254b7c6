"""Listing jobs with cursors, and the plan endpoint that runs no model."""

from __future__ import annotations

import pytest

from tests.support.media import png_bytes, submit, wait_for_job
from workers.inference.runtime.templates import INTERNVL2_5_SYSTEM


@pytest.fixture
def stored_image_key(globex):
    job = wait_for_job(globex, submit(globex, {"task": "caption", "options": {"max_new_tokens": 1}}, png_bytes(800, 600)).json()["id"])
    return job["input"]["items"][0]["object_key"]


def test_listing_walks_every_job_newest_first_with_cursors(globex, stored_image_key):
    # given seven jobs created by JSON with an existing object key
    created = []
    for number in range(7):
        response = globex.post(
            "/v1/jobs",
            json={"task": "caption", "input": {"object_key": stored_image_key}, "metadata": {"n": number},
                  "options": {"max_new_tokens": 1}},
        )
        assert response.status_code == 202, response.text
        created.append(response.json()["id"])

    # when listing three at a time
    seen, cursor, pages = [], None, 0
    while True:
        page = globex.get("/v1/jobs", params={"limit": 3, **({"cursor": cursor} if cursor else {})}).json()
        seen += [job["id"] for job in page["data"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break

    # then every job appears once, newest first
    assert len(seen) == len(set(seen))
    assert seen == sorted(seen, reverse=True)
    assert seen[:7] == list(reversed(created))
    assert pages == -(-len(seen) // 3)
    for job_id in created:
        wait_for_job(globex, job_id)


def test_listing_filters_by_status_and_task(globex, stored_image_key):
    job = wait_for_job(globex, globex.post("/v1/jobs", json={"task": "caption", "input": {"object_key": stored_image_key}, "options": {"max_new_tokens": 1}}).json()["id"])
    succeeded = globex.get("/v1/jobs", params={"status": "succeeded", "task": "caption", "limit": 200}).json()["data"]
    assert job["id"] in [item["id"] for item in succeeded]
    assert all(item["status"] == "succeeded" and item["task"] == "caption" for item in succeeded)
    assert globex.get("/v1/jobs", params={"task": "grounding"}).json()["data"] == []


def test_listing_rejects_a_bad_limit_or_cursor(globex):
    assert globex.get("/v1/jobs", params={"limit": 0}).status_code == 400
    assert globex.get("/v1/jobs", params={"limit": 201}).status_code == 400
    response = globex.get("/v1/jobs", params={"cursor": "%%%"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_cursor"


def test_plan_shows_the_exact_prompt_grid_and_token_count(acme):
    # given a 1000×500 image and a grounding request
    request = {"task": "grounding", "prompt": "the red square", "options": {"max_tiles": 6}}

    # when planned
    response = submit(acme, request, png_bytes(1000, 500), path="/v1/jobs/plan")

    # then the plan names the template text, the 2×1 grid plus thumbnail, and 3×256 image tokens
    assert response.status_code == 200, response.text
    plan = response.json()
    assert plan["model"] == "internvl-tiny"
    assert plan["images"] == [{"width": 1000, "height": 500, "tile_grid": [2, 1], "tiles": 3}]
    assert plan["image_tokens"] == 3 * 256
    assert plan["frames"] == []
    assert plan["prompt"] == (
        f"<|im_start|>system\n{INTERNVL2_5_SYSTEM}<|im_end|>\n"
        "<|im_start|>user\n<image>\nPlease provide the bounding box coordinate of the region this sentence "
        "describes: <ref>the red square</ref><|im_end|>\n<|im_start|>assistant\n"
    )


def test_plan_stores_nothing_and_numbers_several_images(acme, s3_client):
    from tests.conftest import BUCKET

    before = s3_client.list_objects_v2(Bucket=BUCKET).get("KeyCount")
    plan = submit(acme, {"task": "vqa", "prompt": "Which is larger?"}, png_bytes(64, 64), png_bytes(65, 64), path="/v1/jobs/plan").json()
    assert "Image-1: <image>\nImage-2: <image>\nWhich is larger?" in plan["prompt"]
    assert [image["tiles"] for image in plan["images"]] == [1, 1]
    assert s3_client.list_objects_v2(Bucket=BUCKET).get("KeyCount") == before


def test_models_lists_every_registered_model_in_registry_order(acme):
    # given the registry of the test stack: a native checkpoint (the default) and the four seeds
    # when the models are listed
    models = acme.get("/v1/models").json()["data"]

    # then each shows its LLM family, chat template and format
    described = [(m["id"], m["llm"], m["template"], m["format"], m["default"]) for m in models]
    assert described == [
        ("internvl-tiny", "qwen2", "internvl2_5", "native", True),
        ("internvl2-1b", "qwen2", "Hermes-2", "original", False),
        ("mini-internvl-chat-4b-v1-5", "phi3", "phi3-chat", "original", False),
        ("internvl2-8b", "internlm2", "internlm2-chat", "original", False),
        ("internvl2_5-4b", "qwen2", "internvl2_5", "original", False),
    ]
    assert all(m["family"] == "internvl" and m["max_tiles"] == 40 and m["params"] > 100_000 for m in models)


def test_operations_endpoints(anonymous):
    assert anonymous.get("/healthz").json() == {"status": "ok"}
    ready = anonymous.get("/readyz").json()
    assert ready["checks"] == {"database": "ok", "broker": "ok", "storage": "ok"}
    spec = anonymous.get("/openapi.json").json()
    assert {"/v1/jobs", "/v1/jobs/plan", "/v1/jobs/{job_id}", "/v1/uploads", "/v1/models"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
