"""Per-tenant limits on job creation: a rate per minute and a cap on queued jobs, each a 429 with
Retry-After in API.md's error shape, configurable per tenant.

The module runs its own API (a fresh database, a Redis of its own for the rate counters, no worker,
so jobs stay queued) with a default of 3 jobs a minute and per-tenant overrides.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
from pydantic import ValidationError

from services.api.limits import QUEUED_COUNT_TTL_S, Limits, TenantLimiter
from shared.config.settings import ApiSettings
from tests.support.media import png_bytes, submit
from tests.support.services import isolated_stack

DEFAULT_PER_MINUTE = 3
KEYS = {
    "plain": "key-plain-0123456789",  # the defaults
    "roomy": "key-roomy-0123456789",  # a rate above the default
    "neighbour": "key-neighbour-0123456789",  # a rate of its own
    "capped": "key-capped-0123456789",  # no rate limit, two queued jobs at most
    "replayer": "key-replayer-0123456789",  # the defaults, with Idempotency-Keys
    "indexer": "key-indexer-0123456789",  # one creation a minute
}
OVERRIDES = {
    "roomy": {"jobs_per_minute": 5},
    "neighbour": {"jobs_per_minute": 10},
    "capped": {"jobs_per_minute": 0, "max_queued_jobs": 2},
    "indexer": {"jobs_per_minute": 1},
}
CHAT = {"task": "chat", "prompt": "Hello?", "options": {"max_new_tokens": 4}}


@pytest.fixture(scope="module")
def limits_stack(stack_env, tmp_path_factory):
    with isolated_stack(
        stack_env, tmp_path_factory.mktemp("limits"), with_worker=False,
        VLMQ_API_KEYS=",".join(f"{tenant}:{key}" for tenant, key in KEYS.items()),
        VLMQ_JOBS_PER_MINUTE=str(DEFAULT_PER_MINUTE), VLMQ_TENANT_LIMITS=json.dumps(OVERRIDES),
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def client_for(limits_stack):
    clients: list[httpx.Client] = []

    def make(tenant: str) -> httpx.Client:
        client = httpx.Client(base_url=limits_stack.api_url, headers={"Authorization": f"Bearer {KEYS[tenant]}"},
                              timeout=30)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def assert_too_many(response: httpx.Response, code: str) -> dict:
    """API.md's error shape, status 429 and a Retry-After of whole seconds; returns the details."""
    assert response.status_code == 429, response.text
    assert set(response.json()) == {"error"}
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert int(response.headers["Retry-After"]) >= 1
    return error["details"]


def test_a_tenant_over_its_jobs_per_minute_is_refused_with_retry_after(client_for):
    plain, neighbour = client_for("plain"), client_for("neighbour")
    # given a tenant that created its default 3 jobs this minute
    assert [plain.post("/v1/jobs", json=CHAT).status_code for _ in range(DEFAULT_PER_MINUTE)] == [202] * 3

    # when it creates another, as JSON and as multipart
    refused = [plain.post("/v1/jobs", json=CHAT), submit(plain, {"task": "caption"}, png_bytes())]

    # then both are 429 rate_limited, saying when a slot frees up within the minute
    for response in refused:
        details = assert_too_many(response, "rate_limited")
        assert details == {"limit": DEFAULT_PER_MINUTE, "retry_after_s": int(response.headers["Retry-After"])}
        assert details["retry_after_s"] <= 60
    assert len(plain.get("/v1/jobs").json()["data"]) == DEFAULT_PER_MINUTE
    # and another tenant, with a limit of its own, is unaffected
    assert neighbour.post("/v1/jobs", json=CHAT).status_code == 202


def test_a_per_tenant_override_beats_the_default(client_for):
    roomy = client_for("roomy")
    # given a tenant whose override allows 5 a minute, above the default 3
    assert OVERRIDES["roomy"]["jobs_per_minute"] == 5 > DEFAULT_PER_MINUTE

    # when it creates 5 jobs and one more
    statuses = [roomy.post("/v1/jobs", json=CHAT).status_code for _ in range(5)]
    over = roomy.post("/v1/jobs", json=CHAT)

    # then the default did not stop it, its own limit did
    assert statuses == [202] * 5
    assert assert_too_many(over, "rate_limited")["limit"] == 5


def test_a_tenant_at_its_queued_cap_is_refused_until_a_job_leaves_the_queue(client_for):
    capped = client_for("capped")
    # given a tenant with its 2 allowed jobs queued (no worker runs them)
    queued = [capped.post("/v1/jobs", json=CHAT).json()["id"] for _ in range(2)]

    # when it creates a third
    refused = capped.post("/v1/jobs", json=CHAT)

    # then it is 429 too_many_queued_jobs, with the cap and the count
    assert assert_too_many(refused, "too_many_queued_jobs") == {"max_queued_jobs": 2, "queued": 2}
    # and once one of its jobs is canceled, it may create again after the Retry-After it was given
    assert capped.post(f"/v1/jobs/{queued[0]}/cancel").json()["status"] == "canceled"
    time.sleep(QUEUED_COUNT_TTL_S)  # the API recounts a tenant's queue at most this often
    assert capped.post("/v1/jobs", json=CHAT).status_code == 202
    assert int(refused.headers["Retry-After"]) >= QUEUED_COUNT_TTL_S


def test_an_idempotent_replay_is_answered_even_over_the_rate(client_for):
    replayer = client_for("replayer")
    # given a tenant that spent its minute on keyed requests
    first = [
        replayer.post("/v1/jobs", json=CHAT, headers={"Idempotency-Key": f"order-{n}"}).json()["id"]
        for n in range(DEFAULT_PER_MINUTE)
    ]
    assert assert_too_many(replayer.post("/v1/jobs", json=CHAT, headers={"Idempotency-Key": "order-new"}),
                           "rate_limited")

    # when it repeats one of those requests with the same key
    replay = replayer.post("/v1/jobs", json=CHAT, headers={"Idempotency-Key": "order-0"})

    # then it gets the original job, as it would under the limit
    assert replay.status_code == 200 and replay.json()["id"] == first[0]


def test_a_video_index_spends_the_same_budget_as_jobs(client_for):
    indexer = client_for("indexer")
    # given a tenant allowed one creation a minute, which it spent on a job
    assert indexer.post("/v1/jobs", json=CHAT).status_code == 202

    # when it creates a video index
    response = indexer.post("/v1/video-indexes", json={
        "name": "talks", "videos": [{"url": "https://media.example/talk.mp4", "external_id": "talk"}],
    })

    # then the index is refused like a job
    assert assert_too_many(response, "rate_limited")["limit"] == 1


def test_tenant_limits_parse_from_json_and_refuse_unknown_keys(monkeypatch):
    # given per-tenant limits as the environment spells them
    monkeypatch.setenv("VLMQ_JOBS_PER_MINUTE", "100")
    monkeypatch.setenv("VLMQ_TENANT_LIMITS", '{"acme": {"max_queued_jobs": 7}, "globex": {"jobs_per_minute": 0}}')

    # when the API's settings read them
    settings = ApiSettings()

    # then each override replaces only the limits it names, 0 meaning no limit
    limiter = TenantLimiter.from_settings(settings.model_copy(update={"broker_url": "filesystem://"}))
    assert limiter.limits_for("acme") == Limits(jobs_per_minute=100, max_queued_jobs=7)
    assert limiter.limits_for("globex") == Limits(jobs_per_minute=0, max_queued_jobs=10_000)
    assert limiter.limits_for("initech") == Limits(jobs_per_minute=100, max_queued_jobs=10_000)
    # and a misspelt or negative limit stops the settings from loading
    monkeypatch.setenv("VLMQ_TENANT_LIMITS", '{"acme": {"jobs_per_minit": 60}}')
    with pytest.raises(ValidationError, match="jobs_per_minit"):
        ApiSettings()
    monkeypatch.setenv("VLMQ_TENANT_LIMITS", '{"acme": {"max_queued_jobs": -1}}')
    with pytest.raises(ValidationError, match="max_queued_jobs"):
        ApiSettings()
