"""Session fixtures: real PostgreSQL, Redis, a moto S3 server, and API + worker processes."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import boto3
import httpx
import pytest

from tests.support.services import (
    AWS_ENV,
    REPO_ROOT,
    RedisServer,
    Stack,
    create_database,
    drop_database,
    migrate,
    s3_server,
)

BUCKET = "vlmq-test"
TENANT_KEYS = {"acme": "key-acme-0123456789", "globex": "key-globex-0123456789"}
MAX_UPLOAD_BYTES = 12 * 1024 * 1024


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_model_dir(models_dir):
    from workers.inference.tiny_model import build_tiny_model

    return build_tiny_model(models_dir / "internvl-tiny")


@pytest.fixture(scope="session")
def seed_model_dirs(models_dir) -> dict[str, Path]:
    """A tiny original-format checkpoint of each seed model, named by its model id."""
    from workers.inference.fixtures.original import SEED_ARCHITECTURES, build_original_checkpoint

    return {model_id: build_original_checkpoint(models_dir / model_id, model_id) for model_id in SEED_ARCHITECTURES}


@pytest.fixture(scope="session")
def s3_endpoint():
    with s3_server(BUCKET) as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def s3_client(s3_endpoint):
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture(params=["s3", "local"])
def store(request, tmp_path):
    """An object store on each backend: moto's S3 server, then a local directory."""
    from shared.storage import open_store

    if request.param == "s3":
        return open_store(f"s3://{BUCKET}?endpoint_url={request.getfixturevalue('s3_endpoint')}")
    return open_store((tmp_path / "storage").as_uri())


@pytest.fixture(scope="session")
def database_url():
    name, url = create_database()
    migrate(url)
    yield url
    drop_database(name)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A Redis server of this test session's own: concurrent sessions never share queues."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def broker_url(redis_server):
    return redis_server.url


@pytest.fixture(scope="session")
def stack_env(database_url, broker_url, s3_endpoint, tiny_model_dir, seed_model_dirs):
    registry = {"internvl-tiny": str(tiny_model_dir)} | {model_id: str(path) for model_id, path in seed_model_dirs.items()}
    return {
        **os.environ,
        **AWS_ENV,
        "PYTHONPATH": str(REPO_ROOT),
        "PYTHONUNBUFFERED": "1",
        "VLMQ_ENV": "development",
        "VLMQ_DATABASE_URL": database_url,
        "VLMQ_BROKER_URL": broker_url,
        "VLMQ_STORAGE_URL": f"s3://{BUCKET}?endpoint_url={s3_endpoint}",
        "VLMQ_MODELS": json.dumps(registry),
        "VLMQ_DEFAULT_MODEL": "internvl-tiny",
        "VLMQ_API_KEYS": ",".join(f"{tenant}:{key}" for tenant, key in TENANT_KEYS.items()),
        "VLMQ_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
        "VLMQ_MAX_IMAGE_BYTES": str(4 * 1024 * 1024),
        # Webhook receivers in tests listen on loopback; API.md's retry schedule shrunk 100×.
        "VLMQ_ALLOW_PRIVATE_NETWORKS": "true",
        "VLMQ_WEBHOOK_RETRY_SCALE": "0.01",
        # Below the notifier's three senders: one tenant's slow receiver leaves a sender to the others.
        "VLMQ_WEBHOOK_TENANT_CONCURRENCY": "2",
        # The suite sends jobs faster than a tenant's default budget; tests/test_tenant_limits.py sets its own.
        "VLMQ_JOBS_PER_MINUTE": "0",
    }


@pytest.fixture(scope="session")
def stack(stack_env, tmp_path_factory):
    running = Stack.start(stack_env, tmp_path_factory.mktemp("stack"))
    yield running
    running.stop()
    for process in running.processes:
        sys.stderr.write(f"--- {process.name} log tail ---\n{process.log_tail(15)}\n")


def _client(stack: Stack, tenant: str) -> httpx.Client:
    return httpx.Client(
        base_url=stack.api_url, headers={"Authorization": f"Bearer {TENANT_KEYS[tenant]}"}, timeout=60
    )


@pytest.fixture
def acme(stack):
    with _client(stack, "acme") as client:
        yield client


@pytest.fixture
def globex(stack):
    with _client(stack, "globex") as client:
        yield client


@pytest.fixture
def anonymous(stack):
    with httpx.Client(base_url=stack.api_url, timeout=30) as client:
        yield client
