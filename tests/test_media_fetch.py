"""shared.media.fetch against a real HTTP server on loopback and a real (local-directory) store."""

from __future__ import annotations

import gzip
import hashlib
import threading

import pytest

from shared.media.fetch import FetchFailed, FetchLimits, fetch_media
from shared.storage import media_key, open_store
from tests.support.media import png_bytes
from tests.support.media_server import MediaServer, Reply

LIMITS = FetchLimits(max_bytes=1024 * 1024, max_image_bytes=256 * 1024, allow_private=True)
TRUNCATED_PNG = png_bytes(640, 480)[:-40]  # IDAT cut short, IEND gone
MP4_HEAD = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + bytes(64)


@pytest.fixture
def server():
    running = MediaServer()
    yield running
    running.close()


@pytest.fixture
def store(tmp_path):
    return open_store((tmp_path / "storage").as_uri())


def stored_keys(tmp_path) -> list[str]:
    root = tmp_path / "storage"
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


def test_an_image_url_is_stored_under_its_content_address(server, store, tmp_path):
    # given an image served over HTTP
    image = png_bytes(300, 200)
    url = server.serve("/cat.png", Reply(body=image, headers={"content-type": "application/octet-stream"}))

    # when it is fetched for a tenant
    media = fetch_media(url, limits=LIMITS, store=store, tenant_id="acme")

    # then it is described by its bytes, not the server's header, and stored once by its sha256
    sha = hashlib.sha256(image).hexdigest()
    assert (media.content_type, media.width, media.height, media.size_bytes) == ("image/png", 300, 200, len(image))
    assert media.sha256 == sha and media.url == url and media.newly_stored
    assert media.object_key == media_key("acme", sha)
    assert store.read(media.object_key) == image
    assert stored_keys(tmp_path) == [media.object_key]

    # and fetching the same bytes again stores nothing new
    again = fetch_media(url, limits=LIMITS, store=store, tenant_id="acme")
    assert again.object_key == media.object_key and not again.newly_stored
    assert stored_keys(tmp_path) == [media.object_key]


def test_redirects_are_followed_one_checked_hop_at_a_time(server, store):
    image = png_bytes(64, 64)
    server.serve("/final.png", Reply(body=image))
    url = server.serve("/start", Reply(302, headers={"location": "/middle"}))
    server.serve("/middle", Reply(301, headers={"location": server.base_url + "/final.png"}))

    media = fetch_media(url, limits=LIMITS, store=store, tenant_id="acme")

    assert media.width == 64 and media.url == url
    assert server.hits == {"/start": 1, "/middle": 1, "/final.png": 1}


@pytest.mark.parametrize(
    ("reply", "code", "transient"),
    [
        (Reply(404, b"gone"), "media_fetch_failed", False),
        (Reply(403, b"no"), "media_fetch_failed", False),
        (Reply(503, b"busy"), "media_fetch_failed", True),
        (Reply(429, b"slow down"), "media_fetch_failed", True),
        (Reply(body=b"<!doctype html><html><body>a page, not media</body></html>"), "unsupported_media", False),
        (Reply(body=b""), "invalid_media", False),
        (Reply(body=TRUNCATED_PNG), "invalid_media", False),
        (Reply(body=b"\x89PNG\r\n\x1a\n" + bytes(300 * 1024)), "media_too_large", False),  # over the image cap
        (Reply(body=MP4_HEAD + bytes(2 * 1024 * 1024), declare_length=False), "media_too_large", False),
    ],
    ids=["404", "403", "503", "429", "html", "empty", "truncated", "image-too-large", "video-too-large-chunked"],
)
def test_bad_answers_fail_with_a_reason_code_and_leave_nothing_stored(server, store, tmp_path, reply, code, transient):
    url = server.serve("/media", reply)

    with pytest.raises(FetchFailed) as failure:
        fetch_media(url, limits=LIMITS, store=store, tenant_id="acme")

    assert (failure.value.code, failure.value.transient) == (code, transient)
    assert stored_keys(tmp_path) == []  # no staged leftovers


def test_the_size_cap_counts_decoded_bytes_so_a_compressed_body_cannot_slip_past(server, store, tmp_path):
    # given a small gzip body that inflates past the cap
    body = gzip.compress(b"\x89PNG\r\n\x1a\n" + bytes(2 * 1024 * 1024))
    url = server.serve("/bomb.png", Reply(body=body, headers={"content-encoding": "gzip"}))

    with pytest.raises(FetchFailed) as failure:
        fetch_media(url, limits=LIMITS, store=store, tenant_id="acme")

    assert failure.value.code == "media_too_large" and len(body) < LIMITS.max_image_bytes
    assert stored_keys(tmp_path) == []


def test_a_declared_length_over_the_cap_is_refused_before_reading(server, store):
    url = server.serve("/huge", Reply(body=MP4_HEAD + bytes(LIMITS.max_bytes)))

    with pytest.raises(FetchFailed) as failure:
        fetch_media(url, limits=LIMITS, store=store, tenant_id="acme")

    assert failure.value.code == "media_too_large"


def test_private_addresses_are_refused_unless_allowed(server, store):
    url = server.serve("/cat.png", Reply(body=png_bytes(32, 32)))

    with pytest.raises(FetchFailed) as failure:
        fetch_media(url, limits=FetchLimits(max_bytes=10**6, max_image_bytes=10**6), store=store, tenant_id="acme")

    assert failure.value.code == "url_refused" and not failure.value.transient
    assert server.hits == {}  # refused before connecting


def test_a_redirect_to_a_private_address_is_refused(server, store):
    # given a URL whose redirect points at loopback, with private networks allowed only for the first hop
    url = server.serve("/hop", Reply(302, headers={"location": "http://169.254.169.254/latest/meta-data/"}))

    # when private networks are refused, the first hop already is; the metadata address never is reached
    with pytest.raises(FetchFailed) as failure:
        fetch_media(url, limits=FetchLimits(max_bytes=10**6, max_image_bytes=10**6), store=store, tenant_id="acme")
    assert failure.value.code == "url_refused"


def test_a_slow_transfer_stops_when_asked_and_when_its_time_is_up(server, store, tmp_path):
    body = MP4_HEAD + bytes(900 * 1024)
    url = server.serve("/slow.mp4", Reply(body=body, chunk_delay_s=0.05))

    # when the attempt is asked to stop mid-transfer
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    with pytest.raises(FetchFailed) as stopped:
        fetch_media(url, limits=LIMITS, store=store, tenant_id="acme", should_stop=stop.is_set)
    assert stopped.value.code == "stopped"

    # and when the whole transfer takes longer than allowed
    short = FetchLimits(max_bytes=LIMITS.max_bytes, max_image_bytes=LIMITS.max_image_bytes, total_timeout_s=0.3,
                        allow_private=True)
    with pytest.raises(FetchFailed) as timed_out:
        fetch_media(url, limits=short, store=store, tenant_id="acme")
    assert timed_out.value.code == "media_fetch_failed" and "longer than" in timed_out.value.message
    assert stored_keys(tmp_path) == []


def test_a_server_that_never_answers_times_out_as_a_transient_failure(store):
    # given a socket that accepts connections and never answers
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/never"
    limits = FetchLimits(max_bytes=10**6, max_image_bytes=10**6, read_timeout_s=0.5, allow_private=True)
    try:
        with pytest.raises(FetchFailed) as failure:
            fetch_media(url, limits=limits, store=store, tenant_id="acme")
    finally:
        listener.close()
    assert failure.value.code == "media_fetch_failed" and failure.value.transient


def test_without_a_store_the_media_is_only_checked(server, tmp_path):
    url = server.serve("/cat.jpg", Reply(body=png_bytes(40, 30)))

    media = fetch_media(url, limits=LIMITS)

    assert (media.width, media.height, media.object_key, media.newly_stored) == (40, 30, "", False)
