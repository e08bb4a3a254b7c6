"""The object store contract, on the S3 endpoint and on a local directory alike."""

from __future__ import annotations

import os

import httpx
import pytest

from shared.storage import ObjectNotFound, StorageError, open_store
from shared.storage.s3 import PART_SIZE
from tests.conftest import BUCKET


def test_a_streamed_write_is_invisible_until_complete_then_readable(store):
    # given a write of more than one S3 part
    payload = os.urandom(PART_SIZE + 1234)
    writer = store.open_writer("tenants/t/obj")
    for start in range(0, len(payload), 1_000_000):
        writer.write(payload[start : start + 1_000_000])
    with pytest.raises(ObjectNotFound):
        store.size("tenants/t/obj")

    # when completed
    writer.complete()

    # then it reads back whole, by range and by chunks
    assert store.size("tenants/t/obj") == len(payload)
    assert store.read("tenants/t/obj") == payload
    assert store.read_range("tenants/t/obj", 10, 20) == payload[10:30]
    assert b"".join(store.iter_chunks("tenants/t/obj", 65536)) == payload
    store.delete("tenants/t/obj")


def test_an_aborted_write_leaves_nothing(store):
    writer = store.open_writer("tenants/t/aborted")
    writer.write(os.urandom(PART_SIZE + 1))
    writer.abort()
    with pytest.raises(ObjectNotFound):
        store.size("tenants/t/aborted")


def test_move_and_delete(store):
    writer = store.open_writer("tenants/t/a")
    writer.write(b"hello")
    writer.complete()
    store.move("tenants/t/a", "tenants/t/b")
    assert store.read("tenants/t/b") == b"hello"
    with pytest.raises(ObjectNotFound):
        store.read("tenants/t/a")
    store.delete("tenants/t/b")
    store.delete("tenants/t/b")  # deleting twice is fine
    store.ping()


def test_s3_presigned_put_works_against_the_endpoint(s3_endpoint):
    store = open_store(f"s3://{BUCKET}?endpoint_url={s3_endpoint}")
    url, headers = store.presign_put("tenants/t/presigned", content_type="image/png", expires_s=60)
    assert httpx.put(url, content=b"bytes", headers=headers).status_code == 200
    assert store.read("tenants/t/presigned") == b"bytes"


def test_local_keys_cannot_escape_the_root(tmp_path):
    store = open_store((tmp_path / "root").as_uri())
    with pytest.raises(StorageError):
        store.open_writer("../outside")


def test_unknown_schemes_and_missing_buckets_are_refused():
    with pytest.raises(StorageError):
        open_store("ftp://example/bucket")
    with pytest.raises(StorageError):
        open_store("s3://")


def test_presigned_urls_name_the_public_endpoint_when_clients_reach_storage_elsewhere(s3_endpoint):
    # given a store vlmq reaches at 127.0.0.1 while clients reach the same server as localhost
    public = s3_endpoint.replace("127.0.0.1", "localhost")
    store = open_store(f"s3://{BUCKET}?endpoint_url={s3_endpoint}&public_endpoint_url={public}")

    # when an upload URL is presigned and a client PUTs to it
    url, headers = store.presign_put("tenants/t/uploads/public-endpoint", content_type="image/png", expires_s=60)
    response = httpx.put(url, content=b"\x89PNG\r\n\x1a\n", headers=headers)

    # then the URL is the public one, it works, and vlmq reads the object through its own endpoint
    assert url.startswith(f"{public}/{BUCKET}/") and response.status_code == 200
    assert store.read("tenants/t/uploads/public-endpoint") == b"\x89PNG\r\n\x1a\n"
    store.delete("tenants/t/uploads/public-endpoint")
