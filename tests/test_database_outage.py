"""A PostgreSQL outage: the API answers 503 database_unavailable while it lasts and recovers by itself."""

from __future__ import annotations

import httpx
import pytest

from tests.support.media import png_bytes, submit
from tests.support.services import PostgresServer, RedisServer, Stack, migrate, wait_until

KEY = "key-outage-0123456789"


@pytest.fixture(scope="module")
def outage_stack(stack_env, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("outage")
    postgres = PostgresServer().start()
    redis_server = RedisServer(data_dir / "redis").start()
    migrate(postgres.url)
    env = {**stack_env, "VLMQ_DATABASE_URL": postgres.url, "VLMQ_BROKER_URL": redis_server.url,
           "VLMQ_API_KEYS": f"outage:{KEY}"}
    stack = Stack.start(env, data_dir / "stack", with_worker=False)
    stack.postgres = postgres
    yield stack
    stack.stop()
    postgres.stop()
    postgres.remove()
    redis_server.stop()


def test_the_api_says_503_during_a_database_outage_and_recovers_without_losing_jobs(outage_stack):
    client = httpx.Client(base_url=outage_stack.api_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    # given a job accepted before the outage
    job_id = submit(client, {"task": "caption"}, png_bytes()).json()["id"]

    # when PostgreSQL goes down
    outage_stack.postgres.stop()

    # then reads and writes answer 503 database_unavailable, in API.md's error shape
    down = wait_until(lambda: (r := client.get("/v1/jobs")).status_code == 503 and r, timeout_s=20, what="a 503")
    assert down.json()["error"]["code"] == "database_unavailable"
    created = submit(client, {"task": "caption"}, png_bytes())
    assert created.status_code == 503 and created.json()["error"]["code"] in ("database_unavailable",)

    # and when it is back, the API recovers by itself and the earlier job is still there
    outage_stack.postgres.start()
    wait_until(lambda: client.get(f"/v1/jobs/{job_id}").status_code == 200, timeout_s=30, what="recovery")
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
    assert submit(client, {"task": "caption"}, png_bytes()).status_code == 202
    client.close()
