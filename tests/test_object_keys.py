"""Object keys from clients, attacked as another tenant would, on S3 and on local storage alike.

acme plays alice (her image is stored), globex plays bob (he names her media through traversal
forms of a key or an upload id). Every path that takes a key or an upload id is tried: jobs (JSON
and multipart), plans, video indexes (JSON and a JSONL manifest), chat completions and batch lines,
and ``DELETE /v1/jobs/{id}`` of a row written before keys were checked.

The contract (README, "Object keys"): a key that is not canonical is a 400 ``validation_error``,
decided by its form alone; a canonical key outside the tenant's prefix is the same 404
``object_not_found`` as a missing one of the tenant's own, answered before storage is touched.
"""

from __future__ import annotations

import base64
import json
import time

import httpx
import pytest
from sqlalchemy import update

from shared.db.engine import session_scope
from shared.db.models import Job
from tests.conftest import TENANT_KEYS
from tests.support.media import png_bytes, submit, wait_for_job
from tests.support.services import isolated_stack

MISSING_SHA = "0" * 64
MISSING_UPLOAD = "upl_" + "0" * 28
ALICE_WIDTH, ALICE_HEIGHT = 333, 111  # her image's size: a job that echoes it read her bytes


@pytest.fixture(scope="module", params=["s3", "local"])
def keyed_stack(request, stack_env, tmp_path_factory):
    """The session stack (moto S3), then a stack of this module's own on a local storage directory."""
    if request.param == "s3":
        stack = request.getfixturevalue("stack")
        stack.database_url = request.getfixturevalue("database_url")
        yield stack
        return
    folder = tmp_path_factory.mktemp("local-keys")
    with isolated_stack(stack_env, folder, VLMQ_STORAGE_URL=(folder / "storage").as_uri()) as local:
        yield local


def tenant_client(stack, tenant: str) -> httpx.Client:
    return httpx.Client(base_url=stack.api_url, headers={"Authorization": f"Bearer {TENANT_KEYS[tenant]}"}, timeout=60)


@pytest.fixture(scope="module")
def alice(keyed_stack):
    with tenant_client(keyed_stack, "acme") as client:
        yield client


@pytest.fixture(scope="module")
def bob(keyed_stack):
    with tenant_client(keyed_stack, "globex") as client:
        yield client


@pytest.fixture(scope="module")
def alices_media(alice) -> dict:
    """Alice's stored image (by a job of hers) and an upload of hers with bytes in it."""
    # given alice's image, stored through a job that succeeded
    created = submit(alice, {"task": "caption", "options": {"max_new_tokens": 2}}, png_bytes(ALICE_WIDTH, ALICE_HEIGHT))
    assert created.status_code == 202, created.text
    job = wait_for_job(alice, created.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    item = job["input"]["items"][0]
    # and an upload of hers, its bytes PUT
    image = png_bytes(ALICE_WIDTH, ALICE_HEIGHT, colour=(0, 90, 0))
    upload = alice.post("/v1/uploads", json={"filename": "a.png", "content_type": "image/png", "size_bytes": len(image)})
    assert upload.status_code == 201, upload.text
    assert httpx.put(upload.json()["url"], content=image, headers=upload.json()["headers"]).status_code in (200, 204)
    return {"key": item["object_key"], "sha": item["sha256"], "upload_id": upload.json()["upload_id"]}


def traversal_keys(sha: str, upload_id: str) -> dict[str, str]:
    """The issue's attack forms on a key, aimed at alice's media ``sha`` and her upload."""
    return {
        "dot-dot": f"tenants/globex/../acme/media/{sha}",
        "dot-dot to an upload": f"tenants/globex/../acme/uploads/{upload_id}",
        "media/../../": f"tenants/globex/media/../../acme/media/{sha}",
        "//../": f"tenants/globex//../acme/media/{sha}",
        "escaping the storage root": "tenants/globex/../../../../../../../../etc/hostname",
        "a leading slash": f"/tenants/acme/media/{sha}",
        "backslashes": f"tenants\\globex\\..\\acme\\media\\{sha}",
        "a control character": f"tenants/globex/media/{sha}\r\nX-Injected: 1",
        "a NUL": f"tenants/globex/../acme/media/{sha}\x00",
    }


def canonical_elsewhere(sha: str) -> dict[str, str]:
    """Canonical keys that are not bob's objects: 404, exactly as a missing one of his own."""
    return {"alice's own key": f"tenants/acme/media/{sha}", "%2e%2e is literal": f"tenants/globex/%2e%2e/acme/media/{sha}"}


UPLOAD_ID_FORMS = {
    "a path before it": "../acme/uploads/{upload_id}",
    "a path after it": "{upload_id}/../../acme/uploads/{upload_id}",
    "a backslash": "..\\{upload_id}",
    "a control character": "{upload_id}\n",
}


def job_body(ref: dict) -> dict:
    return {"task": "caption", "input": ref, "options": {"max_new_tokens": 2}}


def answer(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def test_bob_never_gets_a_job_or_plan_from_a_traversal_key(bob, alices_media):
    # given the traversal forms of a key aimed at alice's image and her upload
    for form, key in traversal_keys(alices_media["sha"], alices_media["upload_id"]).items():
        # when bob names it as a job's input, as one of several items, and in a plan
        answers = {
            "job": bob.post("/v1/jobs", json=job_body({"object_key": key})),
            "items": bob.post("/v1/jobs", json=job_body({"items": [{"object_key": key}]})),
            "plan": bob.post("/v1/jobs/plan", json=job_body({"object_key": key})),
        }
        # then each is refused for its form, before anything reads alice's bytes
        for path, response in answers.items():
            assert answer(response) == (400, "validation_error"), (form, path, response.text)


def test_canonical_keys_outside_bobs_prefix_are_not_found(bob, alices_media):
    for form, key in canonical_elsewhere(alices_media["sha"]).items():
        # when bob names a canonical key that is not his (alice's, or a literal "%2e%2e" name)
        for path in ("/v1/jobs", "/v1/jobs/plan"):
            response = bob.post(path, json=job_body({"object_key": key}))
            # then it does not exist for him
            assert answer(response) == (404, "object_not_found"), (form, path, response.text)


def test_bob_cannot_tell_whether_alices_key_exists(bob, alices_media):
    # given each attack form aimed once at alice's real image and upload, once at ones that do not exist
    real = {**traversal_keys(alices_media["sha"], alices_media["upload_id"]), **canonical_elsewhere(alices_media["sha"])}
    missing = {**traversal_keys(MISSING_SHA, MISSING_UPLOAD), **canonical_elsewhere(MISSING_SHA)}
    for form, aimed in real.items():
        for path, body in (
            ("/v1/jobs", lambda key: job_body({"object_key": key})),
            ("/v1/jobs/plan", lambda key: job_body({"object_key": key})),
            ("/v1/video-indexes", lambda key: {"videos": [{"object_key": key}]}),
        ):
            # when bob asks with both
            existing, absent = bob.post(path, json=body(aimed)), bob.post(path, json=body(missing[form]))
            # then the answers are the same (an index takes a canonical key of bob's own on trust, as
            # it takes a URL: its video fails later when nothing is there)
            assert existing.status_code == absent.status_code, (form, path, existing.text, absent.text)
            if existing.status_code >= 400:
                assert answer(existing) == answer(absent), (form, path, existing.text, absent.text)
            else:
                assert form == "%2e%2e is literal" and path == "/v1/video-indexes", (form, path, existing.text)


def test_upload_ids_are_ids_not_paths(bob, alices_media):
    upload_id = alices_media["upload_id"]
    for form, template in UPLOAD_ID_FORMS.items():
        # when bob names an upload id that carries a path, aimed at alice's upload and at a missing one
        existing = bob.post("/v1/jobs", json=job_body({"upload_id": template.format(upload_id=upload_id)}))
        absent = bob.post("/v1/jobs", json=job_body({"upload_id": template.format(upload_id=MISSING_UPLOAD)}))
        # then both are refused for their form alone
        assert answer(existing) == answer(absent) == (400, "validation_error"), (form, existing.text)
    # and alice's real upload id is no upload of bob's
    for path in ("/v1/jobs", "/v1/jobs/plan"):
        assert answer(bob.post(path, json=job_body({"upload_id": upload_id}))) == (404, "upload_not_found")


def test_a_multipart_job_cannot_carry_a_key(bob, alices_media):
    # when bob's multipart request part names alice's key beside his own file
    key = traversal_keys(alices_media["sha"], alices_media["upload_id"])["dot-dot"]
    response = submit(bob, job_body({"object_key": key}), png_bytes(64, 48))
    # then the request part is refused: multipart jobs take their media from their file parts only
    assert answer(response) == (400, "validation_error"), response.text


def test_video_indexes_refuse_traversal_keys_in_json_and_in_a_manifest(bob, alices_media):
    for form, key in traversal_keys(alices_media["sha"], alices_media["upload_id"]).items():
        # when bob names it as a video of an index, in a JSON body and in a JSONL manifest
        by_json = bob.post("/v1/video-indexes", json={"videos": [{"object_key": key, "external_id": "mine"}]})
        manifest = json.dumps({"object_key": key, "external_id": "mine"}).encode()
        by_manifest = bob.post("/v1/video-indexes", files={"manifest": ("videos.jsonl", manifest)})
        # then no index is created: nothing would cut alice's video into bob's thumbnails
        assert answer(by_json) == (400, "validation_error"), (form, by_json.text)
        assert answer(by_manifest) == (400, "validation_error"), (form, by_manifest.text)
    # and alice's canonical key is no video of bob's
    refused = bob.post("/v1/video-indexes", json={"videos": [{"object_key": alices_media["key"]}]})
    assert answer(refused) == (404, "object_not_found")


def chat_with_image(image_url: dict) -> dict:
    return {"model": "internvl-tiny", "max_tokens": 2,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Describe."},
                                                      {"type": "image_url", "image_url": image_url}]}]}


def chat_attempts(key: str) -> dict[str, dict]:
    """Every way a chat request might try to name a stored object: none is a way chat takes media."""
    return {
        "a key as the image URL": chat_with_image({"url": key}),
        "a file: URL": chat_with_image({"url": "file:///" + key}),
        "an object_key instead of a URL": chat_with_image({"object_key": key}),
        "an upload_id instead of a URL": chat_with_image({"upload_id": "upl_x"}),
        "a vlmq input beside the messages": {**chat_with_image({"url": "data:,"}), "input": {"object_key": key}},
    }


def test_chat_completions_take_no_keys(bob, alices_media):
    key = traversal_keys(alices_media["sha"], alices_media["upload_id"])["dot-dot"]
    for form, body in chat_attempts(key).items():
        # when bob's chat request names alice's media so / then it is refused in OpenAI's shape
        response = bob.post("/v1/chat/completions", json=body)
        assert response.status_code == 400, (form, response.text)
        assert response.json()["error"]["type"] == "invalid_request_error", form


def test_batch_lines_take_no_keys(bob, alices_media):
    # given a batch file whose every line names alice's media some way chat does not take media
    key = traversal_keys(alices_media["sha"], alices_media["upload_id"])["dot-dot"]
    attempts = chat_attempts(key)
    lines = [{"custom_id": form, "method": "POST", "url": "/v1/chat/completions", "body": body}
             for form, body in attempts.items()]
    content = "\n".join(json.dumps(line) for line in lines).encode()
    uploaded = bob.post("/v1/files", files={"file": ("keys.jsonl", content)}, data={"purpose": "batch"})
    assert uploaded.status_code == 200, uploaded.text

    # when the batch runs
    created = bob.post("/v1/batches", json={"input_file_id": uploaded.json()["id"],
                                            "endpoint": "/v1/chat/completions", "completion_window": "24h"})
    assert created.status_code == 200, created.text
    batch = wait_for_batch(bob, created.json()["id"])

    # then every line is in the error file and none became a job
    assert batch["request_counts"]["completed"] == 0, batch
    errors = [json.loads(line) for line in bob.get(f"/v1/files/{batch['error_file_id']}/content").text.splitlines()]
    assert sorted(line["custom_id"] for line in errors) == sorted(attempts)


def wait_for_batch(client: httpx.Client, batch_id: str, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = client.get(f"/v1/batches/{batch_id}").json()
        if batch["status"] in ("completed", "failed", "cancelled", "expired"):
            return batch
        time.sleep(0.5)
    raise AssertionError(f"batch {batch_id} did not finish: {batch}")


def test_deleting_a_row_written_before_keys_were_checked_never_removes_alices_file(keyed_stack, alice, bob, alices_media):
    # given a job of bob's whose recorded input names alice's image through '..' (as rows written
    # before keys were checked can)
    created = submit(bob, {"task": "caption", "options": {"max_new_tokens": 2}}, png_bytes(70, 50))
    job = wait_for_job(bob, created.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    # (a form no other test's job names, so no other row of bob's keeps the key referenced)
    traversal = f"tenants/globex/./../acme/media/{alices_media['sha']}"
    forged = {**job["input"]["items"][0], "object_key": traversal}
    with session_scope(keyed_stack.database_url) as session:
        session.execute(update(Job).where(Job.id == job["id"]).values(input={"items": [forged]}))

    # when bob deletes that job
    assert bob.delete(f"/v1/jobs/{job['id']}").status_code == 204

    # then alice's image is still there: her next job on it succeeds on her bytes
    again = alice.post("/v1/jobs", json=job_body({"object_key": alices_media["key"]}))
    assert again.status_code == 202, again.text
    finished = wait_for_job(alice, again.json()["id"])
    assert finished["status"] == "succeeded", finished["error"]
    assert finished["input"]["items"][0]["width"] == ALICE_WIDTH


def test_a_data_url_in_chat_stores_under_bobs_own_prefix(bob):
    # given a chat request with an inline image (the one way chat stores media)
    image = "data:image/png;base64," + base64.b64encode(png_bytes(40, 30)).decode()
    # when it is answered / then it succeeds: refusing keys did not refuse the keys vlmq makes itself
    response = bob.post("/v1/chat/completions", json=chat_with_image({"url": image}))
    assert response.status_code == 200, response.text
