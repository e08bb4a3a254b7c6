"""Request bodies: the key is checked and the size capped before a body is read; JSON bodies are
parsed off the event loop; the multipart and JSON forms of a job share their limits and refusals."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.conftest import BUCKET, TENANT_KEYS
from tests.support.media import png_bytes, submit
from tests.support.raw_http import RawConnection

MB = 1000 * 1000
# Every route that takes a JSON body, and routes with no body at all (one must not be read either).
BODY_ROUTES = [
    "/v1/jobs", "/v1/jobs/plan", "/v1/video-indexes", "/v1/uploads", "/v1/chat/completions", "/v1/batches",
    "/v1/files", "/v1/webhook-secret/rotate", "/v1/jobs/job_000000000000nope/cancel",
]
# Routes with a JSON body and its cap; 100 MB is over every one of them (the largest, chat's, is 64 MiB).
CAPPED_ROUTES = ["/v1/jobs", "/v1/jobs/plan", "/v1/video-indexes", "/v1/uploads", "/v1/chat/completions",
                 "/v1/batches"]


def bearer(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TENANT_KEYS[tenant]}"}


def assert_too_large(status: int, body: dict) -> None:
    assert status == 413, body
    code = body["error"]["code"]
    assert code == "request_too_large", body


@pytest.mark.parametrize("path", BODY_ROUTES)
def test_a_large_body_without_a_key_is_refused_before_it_is_read(stack, path):
    # given a request declaring a 50 MB JSON body and no API key, of which only the first 64 KiB are sent
    with RawConnection(stack.api_url) as connection:
        connection.send(connection.head("POST", path, {"Content-Type": "application/json",
                                                       "Content-Length": str(50 * MB)}))
        connection.send(b"[" + b"1," * 32 * 1024)

        # when the client waits without sending the rest
        response = connection.read_response(timeout_s=30)

        # then the answer is 401 and the server ends the connection instead of reading the rest
        assert response.status == 401, response.body
        assert response.headers.get("connection") == "close"
        assert connection.closed_by_server(within_s=10)


@pytest.mark.parametrize("path", CAPPED_ROUTES)
def test_a_declared_length_over_the_cap_is_413_before_the_body_is_read(stack, path):
    # given a tenant's request whose Content-Length is over the route's cap, its body not yet sent
    with RawConnection(stack.api_url) as connection:
        connection.send(connection.head("POST", path, {**bearer("acme"), "Content-Type": "application/json",
                                                       "Content-Length": str(100 * MB)}))

        # when the client waits for the answer
        response = connection.read_response(timeout_s=30)

        # then it is 413 in the error shape at once, and the connection is ended
        assert_too_large(response.status, response.json())
        assert connection.closed_by_server(within_s=10)


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/uploads", "/v1/batches", "/v1/video-indexes"])
def test_a_chunked_body_is_cut_at_the_cap(acme, path):
    # given a JSON body of unannounced length (chunked), larger than the route's cap (at most 16 MiB here)
    sent = 0

    def body():
        nonlocal sent
        yield b'{"padding": "'
        for _ in range(40):
            sent += MB
            yield b"x" * MB
        yield b'"}'

    # when it is posted
    response = acme.post(path, content=body(), headers={"Content-Type": "application/json"})

    # then it is refused as too large, before all of it was sent
    assert_too_large(response.status_code, response.json())
    assert sent < 40 * MB


def test_healthz_answers_while_large_bodies_are_parsed(stack, acme):
    # given two chat completion bodies of 50 MB of small JSON values (under the 64 MiB cap, costly to parse)
    body = json.dumps({"model": "internvl-tiny", "messages": [{"role": "user", "content": "x"}] * 1_500_000})
    answers: list[int] = []

    def post() -> None:
        with httpx.Client(base_url=stack.api_url, headers=bearer("acme"), timeout=120) as client:
            answers.append(client.post("/v1/chat/completions", content=body,
                                       headers={"Content-Type": "application/json"}).status_code)

    senders = [threading.Thread(target=post) for _ in range(2)]
    for sender in senders:
        sender.start()

    # when /healthz is asked while they are being read and parsed
    waits = []
    while any(sender.is_alive() for sender in senders):
        started = time.monotonic()
        assert acme.get("/healthz", timeout=60).status_code == 200
        waits.append(time.monotonic() - started)
        time.sleep(0.05)
    for sender in senders:
        sender.join()

    # then the bodies are refused (too many messages) and /healthz never waited for their parsing
    # (a generous bound: parsing one such body on the event loop holds it for many seconds)
    assert answers == [400, 400]
    assert max(waits) < 5, waits


def objects_under(s3_client, prefix: str) -> list[str]:
    listing = s3_client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for item in listing.get("Contents", [])]


def test_more_images_than_a_job_takes_are_refused_in_both_forms_alike(acme, s3_client):
    # given the cap on images per job (16), and 17 images in each body form
    images = [png_bytes(16 + number, 16) for number in range(17)]
    before = set(objects_under(s3_client, "tenants/acme/"))
    uploaded = submit(acme, {"task": "caption"}, images[0]).json()["input"]["items"][0]["object_key"]
    items = [{"object_key": uploaded}] * 17

    # when each is posted, and 16 in each form as well
    as_files = submit(acme, {"task": "caption"}, *images, path="/v1/jobs/plan")
    as_json = acme.post("/v1/jobs/plan", json={"task": "caption", "input": {"items": items}})
    sixteen_files = submit(acme, {"task": "caption"}, *images[1:], path="/v1/jobs/plan")
    sixteen_refs = acme.post("/v1/jobs/plan", json={"task": "caption", "input": {"items": items[:16]}})

    # then 17 is refused with the same status and code in both forms, 16 is planned in both,
    # and nothing of the refused multipart body stays in storage
    assert as_files.status_code == as_json.status_code == 400, (as_files.text, as_json.text)
    assert as_files.json()["error"]["code"] == as_json.json()["error"]["code"] == "validation_error"
    assert "16" in as_files.json()["error"]["message"] and "16" in as_json.json()["error"]["message"]
    assert sixteen_files.status_code == sixteen_refs.status_code == 200, (sixteen_files.text, sixteen_refs.text)
    assert len(sixteen_files.json()["images"]) == len(sixteen_refs.json()["images"]) == 16
    assert set(objects_under(s3_client, "tenants/acme/")) - before == {uploaded}


def test_invalid_utf8_in_the_request_part_is_refused_as_in_json(acme):
    # given the same request, its prompt holding a byte that is not UTF-8, in each body form
    raw = b'{"task": "vqa", "prompt": "what is \xff here?"}'
    boundary = "vlmqutf8"
    multipart = (f'--{boundary}\r\nContent-Disposition: form-data; name="request"\r\n\r\n'.encode() + raw
                 + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
                   f'Content-Type: image/png\r\n\r\n'.encode() + png_bytes(16, 16) + f"\r\n--{boundary}--\r\n".encode())

    # when each is posted
    as_json = acme.post("/v1/jobs", content=raw, headers={"Content-Type": "application/json"})
    as_part = acme.post("/v1/jobs", content=multipart,
                        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})

    # then both are refused alike, none with the byte silently replaced
    assert as_json.status_code == as_part.status_code == 400, (as_json.text, as_part.text)
    assert as_json.json()["error"]["code"] == as_part.json()["error"]["code"] == "validation_error"
    assert "utf-8" in as_part.json()["error"]["message"].lower()
