"""Presigned uploads straight to S3, then a job that names the upload."""

from __future__ import annotations

import httpx

from tests.support.media import jpeg_bytes, wait_for_job


def test_a_presigned_upload_becomes_a_job(acme):
    # given an upload slot
    image = jpeg_bytes(500, 300)
    slot = acme.post("/v1/uploads", json={"filename": "photo.jpg", "content_type": "image/jpeg", "size_bytes": len(image)})
    assert slot.status_code == 201, slot.text
    upload = slot.json()
    assert upload["upload_id"].startswith("upl_") and upload["method"] == "PUT"

    # when the client PUTs the bytes to the URL and creates a job with the upload id
    put = httpx.put(upload["url"], content=image, headers=upload["headers"])
    assert put.status_code == 200, put.text
    created = acme.post("/v1/jobs", json={"task": "caption", "input": {"upload_id": upload["upload_id"]}, "options": {"max_new_tokens": 2}})

    # then the job runs on those bytes, with their type and size read from the content
    assert created.status_code == 202, created.text
    job = wait_for_job(acme, created.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    item = job["input"]["items"][0]
    assert (item["content_type"], item["width"], item["height"], item["size_bytes"]) == ("image/jpeg", 500, 300, len(image))


def test_an_upload_of_another_tenant_is_404(acme, globex):
    upload = acme.post("/v1/uploads", json={"filename": "a.jpg", "content_type": "image/jpeg", "size_bytes": 10}).json()
    response = globex.post("/v1/jobs", json={"task": "caption", "input": {"upload_id": upload["upload_id"]}})
    assert response.status_code == 404 and response.json()["error"]["code"] == "upload_not_found"


def test_an_upload_that_was_never_put_is_404(acme):
    upload = acme.post("/v1/uploads", json={"filename": "a.jpg", "content_type": "image/jpeg", "size_bytes": 10}).json()
    response = acme.post("/v1/jobs", json={"task": "caption", "input": {"upload_id": upload["upload_id"]}})
    assert response.status_code == 404 and response.json()["error"]["code"] == "object_not_found"


def test_an_upload_larger_than_the_limit_is_refused_up_front(acme):
    response = acme.post("/v1/uploads", json={"filename": "a.mp4", "content_type": "video/mp4", "size_bytes": 10**12})
    assert response.status_code == 413 and response.json()["error"]["code"] == "media_too_large"


def test_an_object_written_to_storage_directly_is_inspected_then_used(acme, s3_client):
    # given an image put into the tenant's storage without the API
    from tests.conftest import BUCKET

    image = jpeg_bytes(123, 45)
    s3_client.put_object(Bucket=BUCKET, Key="tenants/acme/direct/photo.bin", Body=image)

    # when a JSON job names its key
    created = acme.post("/v1/jobs", json={"task": "caption", "input": {"object_key": "tenants/acme/direct/photo.bin"}, "options": {"max_new_tokens": 2}})

    # then the API read it through the same checks as an upload, and the job runs
    assert created.status_code == 202, created.text
    item = created.json()["input"]["items"][0]
    assert (item["content_type"], item["width"], item["height"], item["size_bytes"]) == ("image/jpeg", 123, 45, len(image))
    assert wait_for_job(acme, created.json()["id"])["status"] == "succeeded"


def test_a_directly_written_file_that_is_not_media_is_415(acme, s3_client):
    from tests.conftest import BUCKET

    s3_client.put_object(Bucket=BUCKET, Key="tenants/acme/direct/notes.txt", Body=b"just some notes, not an image")
    response = acme.post("/v1/jobs", json={"task": "caption", "input": {"object_key": "tenants/acme/direct/notes.txt"}})
    assert response.status_code == 415 and response.json()["error"]["code"] == "unsupported_media"
