"""With no service URLs configured: SQLite, a local storage directory, and a local broker."""

from __future__ import annotations

import os

import httpx
import pytest

from tests.support.media import jpeg_bytes, png_bytes, submit, wait_for_job
from tests.support.services import REPO_ROOT, Stack, migrate


@pytest.fixture(params=["default-broker", "file-broker"])
def embedded_stack(request, tiny_model_dir, tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("VLMQ_")}
    env.update({"PYTHONPATH": str(REPO_ROOT), "VLMQ_MODEL_PATH": str(tiny_model_dir)})
    if request.param == "file-broker":
        env["VLMQ_BROKER_URL"] = "filesystem://"
    # migrations are an explicit step, as `make up` runs them
    migrate(f"sqlite:///{tmp_path / 'data' / 'vlmq.db'}")
    stack = Stack.start(env, tmp_path / "data")
    yield stack
    stack.stop()


def test_a_job_runs_on_embedded_defaults_with_a_local_upload_url(embedded_stack):
    data_dir = embedded_stack.data_dir
    key = (data_dir / "api-key").read_text().strip()  # generated because none was configured
    with httpx.Client(base_url=embedded_stack.api_url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        # given an image uploaded through the API's own upload URL (local storage cannot presign)
        image = jpeg_bytes(320, 200)
        upload = client.post("/v1/uploads", json={"filename": "a.jpg", "content_type": "image/jpeg", "size_bytes": len(image)}).json()
        assert upload["url"].startswith(embedded_stack.api_url)
        assert httpx.put(upload["url"], content=image).status_code == 200
        assert httpx.put(upload["url"].replace("token=", "token=x"), content=image).status_code == 401

        # when a job names it, and another job uploads inline
        by_upload = client.post("/v1/jobs", json={"task": "caption", "input": {"upload_id": upload["upload_id"]}, "options": {"max_new_tokens": 2}})
        inline = submit(client, {"task": "grounding", "prompt": "square", "options": {"max_new_tokens": 2}}, png_bytes())

        # then both run to success, stored in SQLite and the local directory
        for response in (by_upload, inline):
            assert response.status_code == 202, response.text
            job = wait_for_job(client, response.json()["id"])
            assert job["status"] == "succeeded", job["error"]
    assert (data_dir / "vlmq.db").exists()
    assert any((data_dir / "storage" / "tenants" / "dev" / "media").iterdir())


def test_a_checkpoint_vlmq_cannot_load_fails_jobs_with_a_reason(tmp_path):
    # given a model directory that holds some other architecture
    model_dir = tmp_path / "llava-1.5-7b"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"]}')
    env = {key: value for key, value in os.environ.items() if not key.startswith("VLMQ_")}
    env.update({"PYTHONPATH": str(REPO_ROOT), "VLMQ_MODEL_PATH": str(model_dir), "VLMQ_BROKER_URL": "filesystem://"})
    migrate(f"sqlite:///{tmp_path / 'data' / 'vlmq.db'}")
    stack = Stack.start(env, tmp_path / "data")
    try:
        key = (tmp_path / "data" / "api-key").read_text().strip()
        with httpx.Client(base_url=stack.api_url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
            # when a plan is asked for and a job is submitted
            plan = submit(client, {"task": "caption"}, png_bytes(), path="/v1/jobs/plan")
            job = wait_for_job(client, submit(client, {"task": "caption"}, png_bytes()).json()["id"])

        # then both name what was found instead of crashing
        assert plan.status_code == 503 and plan.json()["error"]["code"] == "model_unavailable"
        assert "LlavaForConditionalGeneration" in plan.json()["error"]["message"]
        assert job["status"] == "failed" and job["error"]["code"] == "model_unavailable"
        assert "LlavaForConditionalGeneration" in job["error"]["message"]
    finally:
        stack.stop()
