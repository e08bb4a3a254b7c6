"""Images are held to a pixel budget read from their header, before anything decodes them: a small
file of huge dimensions (a decompression bomb) is refused on every path that accepts an image."""

from __future__ import annotations

import base64
import sys

import httpx
import pytest

from tests.conftest import TENANT_KEYS
from tests.support.media import blank_png, submit, wait_for_job
from tests.support.media_server import MediaServer, Reply
from tests.support.services import RedisServer, Stack, create_database, drop_database, migrate

# 169 Mpx in a 493 KB file: the image of the report, decoded whole it is half a gigabyte.
BOMB = (13000, 13000)
# The default budget is 8192² pixels; this one is a row short of it.
JUST_UNDER = (8192, 8191)
CAPTION = {"task": "caption", "options": {"max_new_tokens": 2}}


def assert_too_large(response: httpx.Response) -> None:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "image_too_large", error
    assert "pixels" in error["message"]


def put_upload(client: httpx.Client, image: bytes) -> str:
    slot = client.post("/v1/uploads", json={"filename": "big.png", "content_type": "image/png", "size_bytes": len(image)})
    assert slot.status_code == 201, slot.text
    upload = slot.json()
    assert httpx.put(upload["url"], content=image, headers=upload["headers"]).status_code == 200
    return upload["upload_id"]


@pytest.fixture(scope="module")
def bomb() -> bytes:
    image = blank_png(*BOMB)
    assert len(image) < 600_000
    return image


def test_a_bomb_uploaded_with_a_job_is_422_image_too_large(acme, bomb):
    # when the 13000×13000 PNG is sent as a multipart job
    response = submit(acme, CAPTION, bomb)

    # then it is refused as too large, by its dimensions
    assert_too_large(response)


def test_a_bomb_in_a_plan_is_422_image_too_large(acme, bomb):
    # when a plan of it is asked for (a plan needs only its width and height)
    response = submit(acme, CAPTION, bomb, path="/v1/jobs/plan")

    # then it is refused the same way
    assert_too_large(response)


def test_a_bomb_named_by_upload_id_is_422_at_job_creation_and_in_a_plan(acme, bomb):
    # given the bomb put through a presigned upload
    upload_id = put_upload(acme, bomb)

    # when a JSON job and a JSON plan name the upload
    created = acme.post("/v1/jobs", json={**CAPTION, "input": {"upload_id": upload_id}})
    planned = acme.post("/v1/jobs/plan", json={**CAPTION, "input": {"upload_id": upload_id}})

    # then the API reads its header and refuses both
    assert_too_large(created)
    assert_too_large(planned)


def test_a_bomb_as_a_chat_completion_data_url_is_422_image_too_large(stack, bomb):
    # given a chat completion whose image is the bomb as a data: URL
    url = "data:image/png;base64," + base64.b64encode(bomb).decode()
    body = {"model": "internvl-tiny", "max_tokens": 2,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]}

    # when it is posted
    response = httpx.post(f"{stack.api_url}/v1/chat/completions", json=body, timeout=60,
                          headers={"Authorization": f"Bearer {TENANT_KEYS['acme']}"})

    # then it is refused in OpenAI's error shape with the same code
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "image_too_large"


def test_a_bomb_fetched_by_url_fails_the_job_with_image_too_large(acme, bomb):
    # given the bomb served over HTTP (only the worker fetches media given by URL)
    server = MediaServer()
    try:
        url = server.serve("/bomb.png", Reply(body=bomb))

        # when a job names it
        created = acme.post("/v1/jobs", json={**CAPTION, "input": {"url": url}})
        assert created.status_code == 202, created.text
        job = wait_for_job(acme, created.json()["id"])
    finally:
        server.close()

    # then the worker refuses it by its header and the job fails with the reason code
    assert job["status"] == "failed" and job["error"]["code"] == "image_too_large", job["error"]


def test_an_image_just_under_the_budget_is_planned_and_runs(acme):
    # given a PNG one row short of the default budget of 8192×8192 pixels
    image = blank_png(*JUST_UNDER)

    # when it is planned and run
    planned = submit(acme, CAPTION, image, path="/v1/jobs/plan")
    created = submit(acme, CAPTION, image)

    # then both take it, and the worker decodes it
    assert planned.status_code == 200, planned.text
    assert (planned.json()["images"][0]["width"], planned.json()["images"][0]["height"]) == JUST_UNDER
    assert created.status_code == 202, created.text
    job = wait_for_job(acme, created.json()["id"])
    assert job["status"] == "succeeded", job["error"]


@pytest.fixture(scope="module")
def lenient_api(stack_env, tmp_path_factory):
    """An API whose budget is above the bomb's size beside a worker with the default budget (an
    operator who raised one and not the other): what reaches the worker is checked there again."""
    name, database_url = create_database()
    migrate(database_url)
    folder = tmp_path_factory.mktemp("lenient")
    redis_server = RedisServer(folder / "redis").start()
    env = {**stack_env, "VLMQ_DATABASE_URL": database_url, "VLMQ_BROKER_URL": redis_server.url,
           "VLMQ_MAX_IMAGE_PIXELS": str(200_000_000)}
    running = Stack.start(env, folder / "stack", with_worker=False)
    running.add_worker("worker", VLMQ_MAX_IMAGE_PIXELS=str(8192 * 8192))
    try:
        yield running
    finally:
        running.stop()
        for process in running.processes:
            sys.stderr.write(f"--- {process.name} log tail ---\n{process.log_tail(15)}\n")
        redis_server.stop()
        drop_database(name)


def test_a_bomb_that_reaches_the_worker_fails_the_job_with_image_too_large(lenient_api, bomb):
    with httpx.Client(base_url=lenient_api.api_url, timeout=60,
                      headers={"Authorization": f"Bearer {TENANT_KEYS['acme']}"}) as client:
        # given the bomb uploaded and accepted by an API that allows 200 Mpx
        upload_id = put_upload(client, bomb)
        created = client.post("/v1/jobs", json={**CAPTION, "input": {"upload_id": upload_id}})
        assert created.status_code == 202, created.text
        assert created.json()["input"]["items"][0]["width"] == BOMB[0]

        # when the worker takes the job
        job = wait_for_job(client, created.json()["id"])

    # then it refuses the image by its header: the job fails with the reason code, the worker lives
    assert job["status"] == "failed" and job["error"]["code"] == "image_too_large", job["error"]
    assert all(process.alive() for process in lenient_api.processes)
