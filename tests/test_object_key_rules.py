"""The one canonical form of an object key, and both stores refusing every other form themselves."""

from __future__ import annotations

import pytest

from shared.storage import (
    InvalidObjectKey,
    ObjectNotFound,
    StorageError,
    check_object_key,
    is_tenant_key,
    open_store,
)

SHA = "ab" * 32

CANONICAL = [
    f"tenants/bob/media/{SHA}",
    "tenants/bob/uploads/upl_0192a4b5c6d7e8f9a0b1c2d3e4f5",
    "tenants/bob/direct/photo 1.jpg",
    "tenants/bob/%2e%2e/alice/media/x",  # percent signs are literal characters, not an encoding
    "tenants/bob/...",  # three dots are a name like any other
    "tenants/bob/ünïcödé/日本.png",
]

NOT_CANONICAL = [
    "",
    f"tenants/bob/../alice/media/{SHA}",
    "tenants/bob/../alice/uploads/upl_0192a4b5c6d7e8f9a0b1c2d3e4f5",
    f"tenants/bob/media/../../alice/media/{SHA}",
    f"tenants/bob//../alice/media/{SHA}",
    "tenants/bob/../../../../etc/passwd",
    f"/tenants/bob/media/{SHA}",
    "tenants/bob/media/",
    "tenants/bob/./media/x",
    "tenants//bob/media/x",
    "..",
    f"tenants\\bob\\..\\alice\\media\\{SHA}",
    "tenants/bob/media/a\\b",
    "tenants/bob/media/x\x00",
    "tenants/bob/media/x\n",
    "tenants/bob/media/\x1b[31mred",
    "tenants/bob/media/x\u202e",  # a bidirectional override: shows one name, stores another
    "tenants/bob/" + "x" * 600,
]


@pytest.mark.parametrize("key", CANONICAL)
def test_a_canonical_key_is_accepted_as_it_is(key):
    # when a canonical key is checked / then it comes back unchanged
    assert check_object_key(key) == key


@pytest.mark.parametrize("key", NOT_CANONICAL)
def test_every_other_form_is_refused_with_a_named_error(key):
    # when a key with an empty, '.' or '..' segment, a backslash, a control character or too many bytes is checked
    with pytest.raises(InvalidObjectKey) as refused:
        check_object_key(key)

    # then the refusal is a storage error that is also "no such object" to code that only reads
    assert isinstance(refused.value, StorageError) and isinstance(refused.value, ObjectNotFound)


def test_ownership_is_decided_by_whole_segments_not_by_a_string_prefix():
    # given canonical keys of bob's, alice's, and of a tenant whose name starts with bob's
    # then only bob's own are his
    assert is_tenant_key("bob", f"tenants/bob/media/{SHA}")
    assert not is_tenant_key("bob", f"tenants/alice/media/{SHA}")
    assert not is_tenant_key("bob", f"tenants/bobby/media/{SHA}")
    assert not is_tenant_key("bob", "tenants/bob")  # the prefix itself names no object
    assert not is_tenant_key("bob", f"other/bob/media/{SHA}")


def test_ownership_of_a_non_canonical_key_is_refused_not_guessed():
    # when a traversal form that starts with bob's prefix is asked about / then it is refused outright
    with pytest.raises(InvalidObjectKey):
        is_tenant_key("bob", f"tenants/bob/../alice/media/{SHA}")


@pytest.mark.parametrize("key", [
    "tenants/bob/../alice/media/x", "tenants/bob//../alice/x", "tenants/bob/../../../../etc/passwd",
    "/tenants/bob/x", "tenants\\bob\\x", "tenants/bob/x\x00",
])
def test_both_stores_refuse_a_non_canonical_key_for_every_operation(store, key):
    # given an object alice really has, which a traversal key may point at
    writer = store.open_writer("tenants/alice/media/x")
    writer.write(b"alice's bytes")
    writer.complete()

    # when any operation names a non-canonical key / then the store refuses it before acting
    for operation in (
        lambda: store.read(key), lambda: store.size(key), lambda: store.read_range(key, 0, 4),
        lambda: list(store.iter_chunks(key)), lambda: store.delete(key), lambda: store.open_writer(key),
        lambda: store.move("tenants/alice/media/x", key), lambda: store.move(key, "tenants/bob/media/x"),
        lambda: store.presign_put(key, content_type="image/png", expires_s=60),
    ):
        with pytest.raises(InvalidObjectKey):
            operation()

    # and alice's object is untouched
    assert store.read("tenants/alice/media/x") == b"alice's bytes"
    store.delete("tenants/alice/media/x")


def test_the_local_store_keeps_its_staging_directory_out_of_reach(tmp_path):
    # given a local store (its unfinished writes live in .staging under the root)
    store = open_store((tmp_path / "storage").as_uri())

    # when a key names that directory / then it is refused like any key outside the objects
    with pytest.raises(InvalidObjectKey):
        store.open_writer(".staging/anything")


def test_workers_fail_a_row_with_a_non_canonical_key_for_good_without_reading_it(store, tmp_path):
    # given alice's image in the store, and a job item written before keys were checked that points
    # at it through '..'
    from workers.frames.extract import ExtractionFailed, download
    from workers.inference.failures import JobFailure, TransientFailure
    from workers.inference.media import load_images

    writer = store.open_writer(f"tenants/alice/media/{SHA}")
    writer.write(b"alice's bytes")
    writer.complete()
    item = {"object_key": f"tenants/bob/../alice/media/{SHA}"}

    # when the inference worker loads it as an image, and the frames worker downloads it as a video
    with pytest.raises(JobFailure) as as_image:
        load_images(store, [item])
    with pytest.raises(ExtractionFailed) as as_video:
        download(store, item["object_key"], tmp_path)

    # then both fail the job for good (never retried, never read): her bytes stay hers
    assert not isinstance(as_image.value, TransientFailure) and as_image.value.code == "media_unavailable"
    assert as_video.value.code == "media_unavailable"
    assert not as_video.value.transient and not (tmp_path / "video").read_bytes()
    store.delete(f"tenants/alice/media/{SHA}")
