"""Bad requests get API.md's error shape and a fitting status, and leave nothing behind."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from tests.conftest import BUCKET, MAX_UPLOAD_BYTES
from tests.support.media import png_bytes, submit, wait_for_job


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)
    return body["error"]


def objects_under(s3_client, prefix: str) -> list[str]:
    listing = s3_client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for item in listing.get("Contents", [])]


def test_a_request_without_a_key_is_401(anonymous):
    assert_error(anonymous.get("/v1/jobs"), 401, "unauthorized")


def test_a_request_with_a_wrong_key_is_401(anonymous):
    response = anonymous.get("/v1/jobs", headers={"Authorization": "Bearer not-a-key"})
    assert_error(response, 401, "unauthorized")


def test_an_unknown_job_is_404(acme):
    assert_error(acme.get("/v1/jobs/job_000000000000nope"), 404, "job_not_found")


def test_another_tenants_job_is_404_not_403(acme, globex):
    # given a job of tenant acme
    job = submit(acme, {"task": "caption", "options": {"max_new_tokens": 1}}, png_bytes()).json()

    # when tenant globex asks for it, or lists its jobs
    response = globex.get(f"/v1/jobs/{job['id']}")
    listed = globex.get("/v1/jobs").json()["data"]

    # then it does not exist for globex
    assert_error(response, 404, "job_not_found")
    assert job["id"] not in [item["id"] for item in listed]
    wait_for_job(acme, job["id"])


def test_an_object_key_of_another_tenant_is_404(acme, globex):
    job = wait_for_job(acme, submit(acme, {"task": "caption", "options": {"max_new_tokens": 1}}, png_bytes(50, 50)).json()["id"])
    key = job["input"]["items"][0]["object_key"]
    response = globex.post("/v1/jobs", json={"task": "caption", "input": {"object_key": key}})
    assert_error(response, 404, "object_not_found")


def test_a_file_over_the_limit_is_413_and_nothing_is_left_in_storage(acme, s3_client):
    # given a video-looking file larger than the upload limit, sent as a stream
    before = set(objects_under(s3_client, "tenants/acme/"))
    head = b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 20

    def body():
        yield head
        for _ in range(MAX_UPLOAD_BYTES // (1024 * 1024) + 4):
            yield b"\x00" * (1024 * 1024)

    # when it is uploaded
    boundary = "vlmqboundary"
    def multipart():
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="request"\r\n\r\n'
               + json.dumps({"task": "video_caption"}) + "\r\n").encode()
        yield f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="v.mp4"\r\n\r\n'.encode()
        yield from body()
        yield f"\r\n--{boundary}--\r\n".encode()

    response = acme.post(
        "/v1/jobs", content=multipart(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )

    # then it is refused as too large and no object (staged or final) remains
    assert_error(response, 413, "media_too_large")
    assert set(objects_under(s3_client, "tenants/acme/")) == before
    assert s3_client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_a_text_file_named_like_an_image_is_415(acme):
    response = submit(acme, {"task": "caption"}, b"hello, I am plain text, not an image at all", filename="cat.jpg")
    assert_error(response, 415, "unsupported_media")


def test_an_image_pil_cannot_decode_is_422(acme, s3_client):
    # given a PNG whose body is cut off after the header
    before = set(objects_under(s3_client, "tenants/acme/"))
    truncated = png_bytes(300, 300)[:60]
    response = submit(acme, {"task": "caption"}, truncated)
    assert_error(response, 422, "invalid_media")
    assert set(objects_under(s3_client, "tenants/acme/")) == before


def test_an_empty_file_is_422(acme):
    assert_error(submit(acme, {"task": "caption"}, b""), 422, "invalid_media")


@pytest.mark.parametrize(
    "request_body, field",
    [
        ({"task": "paint"}, "task"),
        ({"task": "vqa"}, "prompt"),
        ({"task": "caption", "options": {"max_tiles": 41}}, "max_tiles"),
        ({"task": "caption", "options": {"max_new_tokens": 0}}, "max_new_tokens"),
        ({"task": "caption", "history": [{"user": "a", "assistant": "b"}]}, "history"),
    ],
)
def test_invalid_fields_are_400_with_details(acme, request_body, field):
    error = assert_error(submit(acme, request_body, png_bytes(32, 32)), 400, "validation_error")
    assert field in error["message"]


def test_an_image_task_without_an_image_is_400(acme):
    assert_error(acme.post("/v1/jobs", json={"task": "caption"}), 400, "invalid_input")


def test_a_multipart_body_without_a_request_part_is_400(acme):
    response = acme.post("/v1/jobs", files=[("file", ("a.png", png_bytes(), "image/png"))])
    assert_error(response, 400, "validation_error")


def test_malformed_json_is_400(acme):
    response = acme.post("/v1/jobs", content=b"{not json", headers={"Content-Type": "application/json"})
    assert_error(response, 400, "validation_error")


def test_an_unknown_model_is_404(acme):
    assert_error(submit(acme, {"task": "caption", "model": "gpt-9"}, png_bytes()), 404, "model_not_found")


def test_an_unsupported_body_type_is_415(acme):
    response = acme.post("/v1/jobs", content=b"x", headers={"Content-Type": "text/plain"})
    assert_error(response, 415, "unsupported_content_type")


def test_a_huge_image_dimension_is_422_not_a_crash(acme):
    # given a tiny PNG file that claims to be 30000×30000 pixels (a decompression bomb)
    buffer = io.BytesIO()
    Image.new("1", (30000, 30000)).save(buffer, format="PNG")
    assert_error(submit(acme, {"task": "caption"}, buffer.getvalue()), 422, "image_too_large")


@pytest.mark.parametrize(
    "body",
    [
        b"this is not multipart at all",
        b"--vlmqb\r\nbroken header line\r\n\r\n",
        b'--vlmqb\r\nContent-Disposition: form-data; name="request"\r\n\r\n{"task": "caption"}\r\n'
        b'--vlmqb\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n' + png_bytes()[:200],
    ],
    ids=["garbage", "bad-header", "cut-off-inside-a-file"],
)
def test_a_malformed_or_truncated_multipart_body_is_400_and_leaves_nothing(acme, s3_client, body):
    before = set(objects_under(s3_client, "tenants/acme/"))
    response = acme.post("/v1/jobs", content=body, headers={"Content-Type": "multipart/form-data; boundary=vlmqb"})
    assert_error(response, 400, "validation_error")
    assert set(objects_under(s3_client, "tenants/acme/")) == before
    assert s3_client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
