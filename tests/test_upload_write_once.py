"""An upload is written once: after its first complete PUT its URL cannot replace the bytes a job
recorded, on S3 (a conditional write signed into the presigned URL) and on local storage (the API's
own PUT route)."""

from __future__ import annotations

import hashlib
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from tests.conftest import BUCKET, TENANT_KEYS
from tests.support.media import jpeg_bytes, png_bytes, wait_for_job
from tests.support.services import isolated_stack


def new_upload(client: httpx.Client, image: bytes) -> dict:
    slot = client.post("/v1/uploads", json={"filename": "a.jpg", "content_type": "image/jpeg",
                                            "size_bytes": 2 * len(image)})
    assert slot.status_code == 201, slot.text
    return slot.json()


def test_a_second_put_to_a_presigned_s3_url_is_refused_and_the_job_keeps_its_bytes(acme, s3_client):
    # given an upload a job has used
    first, second = jpeg_bytes(200, 100), png_bytes(64, 48)
    upload = new_upload(acme, first)
    assert httpx.put(upload["url"], content=first, headers=upload["headers"]).status_code == 200
    created = acme.post("/v1/jobs", json={"task": "caption", "input": {"upload_id": upload["upload_id"]},
                                          "options": {"max_new_tokens": 2}})
    assert created.status_code == 202, created.text
    job = wait_for_job(acme, created.json()["id"])

    # when the same URL is used again, as the upload told the client to use it
    again = httpx.put(upload["url"], content=second, headers=upload["headers"])

    # then S3 refuses the write (the condition is signed: the URL is void without it) and the stored
    # bytes are still those the job recorded
    assert again.status_code == 412, again.text
    assert upload["headers"]["If-None-Match"] == "*"
    assert "if-none-match" in parse_qs(urlparse(upload["url"]).query)["X-Amz-SignedHeaders"][0].split(";")
    stored = s3_client.get_object(Bucket=BUCKET, Key=job["input"]["items"][0]["object_key"])["Body"].read()
    assert stored == first and hashlib.sha256(stored).hexdigest() == job["input"]["items"][0]["sha256"]


@pytest.fixture(scope="module")
def local_storage_stack(stack_env, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("local-uploads")
    storage = data_dir / "objects"
    with isolated_stack(stack_env, data_dir, with_worker=False, VLMQ_STORAGE_URL=storage.as_uri()) as running:
        running.storage_root = storage
        yield running


def test_a_second_put_to_a_local_upload_url_is_409_and_the_stored_bytes_stay(local_storage_stack):
    headers = {"Authorization": f"Bearer {TENANT_KEYS['acme']}"}
    with httpx.Client(base_url=local_storage_stack.api_url, headers=headers, timeout=60) as client:
        # given a local upload that a job has used
        first, second = jpeg_bytes(200, 100), png_bytes(64, 48)
        upload = new_upload(client, first)
        assert upload["url"].startswith(local_storage_stack.api_url)
        assert httpx.put(upload["url"], content=first, headers=upload["headers"]).status_code == 200
        created = client.post("/v1/jobs", json={"task": "caption", "input": {"upload_id": upload["upload_id"]}})
        assert created.status_code == 202, created.text
        item = created.json()["input"]["items"][0]

        # when the upload URL is used again
        again = httpx.put(upload["url"], content=second, headers=upload["headers"])

    # then it is a conflict in the error shape, and the stored bytes are those the job recorded
    assert again.status_code == 409, again.text
    assert again.json()["error"]["code"] == "upload_already_written"
    stored = (local_storage_stack.storage_root / item["object_key"]).read_bytes()
    assert stored == first and hashlib.sha256(stored).hexdigest() == item["sha256"]


def test_a_local_upload_is_written_once_even_before_any_job_uses_it(local_storage_stack):
    headers = {"Authorization": f"Bearer {TENANT_KEYS['acme']}"}
    with httpx.Client(base_url=local_storage_stack.api_url, headers=headers, timeout=60) as client:
        # given an upload whose bytes were PUT once
        first, second = jpeg_bytes(120, 80), png_bytes(64, 48)
        upload = new_upload(client, first)
        assert httpx.put(upload["url"], content=first, headers=upload["headers"]).status_code == 200

        # when it is PUT again, then a job naming it
        again = httpx.put(upload["url"], content=second, headers=upload["headers"])
        created = client.post("/v1/jobs", json={"task": "caption", "input": {"upload_id": upload["upload_id"]}})

    # then the second PUT was refused and the job describes the first bytes
    assert again.status_code == 409, again.text
    item = created.json()["input"]["items"][0]
    assert (item["width"], item["height"], item["sha256"]) == (120, 80, hashlib.sha256(first).hexdigest())
