"""Jobs whose media is given by URL (`input.url`), through the real API, workers, S3 and a real
HTTP server on loopback (the test stack sets VLMQ_ALLOW_PRIVATE_NETWORKS=true for it)."""

from __future__ import annotations

import time

import pytest

from tests.support.media import png_bytes, submit, wait_for_job
from tests.support.media_server import MediaServer, Reply

MP4_HEAD = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + bytes(256)
CAPTION = {"task": "caption", "options": {"max_new_tokens": 2, "max_tiles": 2}}


@pytest.fixture(scope="module")
def media_server():
    server = MediaServer()
    yield server
    server.close()


def create(client, url_or_items, **fields):
    source = {"items": url_or_items} if isinstance(url_or_items, list) else {"url": url_or_items}
    response = client.post("/v1/jobs", json={**CAPTION, **fields, "input": source})
    assert response.status_code == 202, response.text
    return response.json()


def test_an_image_url_job_is_fetched_by_the_worker_and_succeeds(acme, media_server):
    # given an image on a web server
    url = media_server.serve("/photos/cat.png", Reply(body=png_bytes(896, 448)))

    # when a job names it by URL
    job = create(acme, url)

    # then the API answers at once with the URL only, and the worker fills in the rest
    assert job["input"]["items"] == [{"url": url, "object_key": None, "content_type": None, "size_bytes": None,
                                      "sha256": None, "width": None, "height": None, "duration_s": None, "fps": None}]
    done = wait_for_job(acme, job["id"])
    assert done["status"] == "succeeded", done["error"]
    item = done["input"]["items"][0]
    assert item["url"] == url and item["object_key"].startswith("tenants/acme/")
    assert (item["content_type"], item["width"], item["height"]) == ("image/png", 896, 448)
    assert done["result"]["usage"]["tiles"] == 3  # 896×448 with max_tiles 2 → a 2×1 grid + the thumbnail
    assert media_server.hits["/photos/cat.png"] == 1

    # and the stored copy serves later jobs by its object key
    again = acme.post("/v1/jobs", json={**CAPTION, "input": {"object_key": item["object_key"]}})
    assert wait_for_job(acme, again.json()["id"])["status"] == "succeeded"


def test_url_and_stored_media_mix_in_one_multi_image_job(acme, media_server):
    stored = wait_for_job(acme, submit(acme, CAPTION, png_bytes(448, 448)).json()["id"])["input"]["items"][0]
    url = media_server.serve("/mix.png", Reply(body=png_bytes(300, 300)))

    job = create(acme, [{"object_key": stored["object_key"]}, {"url": url}], task="vqa", prompt="Same?")

    done = wait_for_job(acme, job["id"])
    assert done["status"] == "succeeded", done["error"]
    assert [item.get("url") for item in done["input"]["items"]] == [None, url]
    assert [item["width"] for item in done["input"]["items"]] == [448, 300]


def test_a_server_error_is_retried_and_the_second_attempt_succeeds(acme, media_server):
    url = media_server.serve("/flaky.png", Reply(503, b"busy"), Reply(body=png_bytes(200, 200)))

    done = wait_for_job(acme, create(acme, url)["id"])

    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 2 and media_server.hits["/flaky.png"] == 2


@pytest.mark.parametrize(
    ("path", "reply", "code"),
    [
        ("/missing.png", Reply(404, b"not found"), "media_fetch_failed"),
        ("/page.html", Reply(body=b"<!doctype html><title>hello</title>" + bytes(64)), "unsupported_media"),
        ("/clip.mp4", Reply(body=MP4_HEAD), "invalid_input"),  # a video for an image task
        ("/huge.png", Reply(body=b"\x89PNG\r\n\x1a\n" + bytes(5 * 1024 * 1024), declare_length=False),
         "media_too_large"),  # past the stack's 4 MiB image cap while streaming
    ],
    ids=["404", "html", "video-for-caption", "too-large"],
)
def test_a_url_that_is_not_usable_media_fails_the_job_with_a_reason_code(acme, media_server, path, reply, code):
    url = media_server.serve(path, reply)

    done = wait_for_job(acme, create(acme, url)["id"])

    assert done["status"] == "failed"
    assert done["error"]["code"] == code, done["error"]
    assert done["attempts"] == 1  # permanent: not retried
    assert done["input"]["items"][0]["object_key"] is None


def test_a_job_canceled_while_its_url_downloads_stops_and_the_worker_serves_on(acme, media_server):
    # given a server that drips a large file slowly
    url = media_server.serve("/slow.png", Reply(body=b"\x89PNG\r\n\x1a\n" + bytes(3 * 1024 * 1024), chunk_delay_s=0.1))
    job = create(acme, url)
    deadline = time.monotonic() + 30
    while acme.get(f"/v1/jobs/{job['id']}").json()["status"] != "running" and time.monotonic() < deadline:
        time.sleep(0.1)

    # when it is canceled mid-download
    assert acme.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "canceled"

    # then it stays canceled and the worker takes the next job
    nxt = create(acme, media_server.serve("/after.png", Reply(body=png_bytes(64, 64))))
    assert wait_for_job(acme, nxt["id"], timeout_s=60)["status"] == "succeeded"
    assert acme.get(f"/v1/jobs/{job['id']}").json()["status"] == "canceled"


def test_deleting_a_url_job_removes_the_fetched_copy(acme, media_server):
    url = media_server.serve("/to-delete.png", Reply(body=png_bytes(123, 77)))
    done = wait_for_job(acme, create(acme, url)["id"])
    key = done["input"]["items"][0]["object_key"]

    assert acme.delete(f"/v1/jobs/{done['id']}").status_code == 204

    reused = acme.post("/v1/jobs", json={**CAPTION, "input": {"object_key": key}})
    assert reused.status_code == 404 and reused.json()["error"]["code"] == "object_not_found"


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("ftp://example.com/cat.png", "validation_error"),
        ("http://user:secret@example.com/cat.png", "url_refused"),
    ],
)
def test_urls_that_can_never_be_fetched_are_refused_by_the_api(acme, url, code):
    response = acme.post("/v1/jobs", json={**CAPTION, "input": {"url": url}})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == code


def test_a_video_task_with_two_urls_is_refused_before_anything_is_fetched(acme, media_server):
    response = acme.post("/v1/jobs", json={
        "task": "video_caption", "input": {"items": [{"url": media_server.base_url + "/a.mp4"},
                                                     {"url": media_server.base_url + "/b.mp4"}]}})

    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_input"


def test_plan_fetches_a_url_without_storing_it(acme, media_server):
    url = media_server.serve("/plan.png", Reply(body=png_bytes(896, 448)))

    plan = acme.post("/v1/jobs/plan", json={"task": "caption", "input": {"url": url}})

    assert plan.status_code == 200, plan.text
    assert plan.json()["images"] == [{"width": 896, "height": 448, "tile_grid": [2, 1], "tiles": 3}]


def test_plan_reports_a_url_that_cannot_be_fetched(acme, media_server):
    plan = acme.post("/v1/jobs/plan", json={"task": "caption", "input": {"url": media_server.base_url + "/nope"}})

    assert plan.status_code == 422 and plan.json()["error"]["code"] == "media_fetch_failed"
