"""Bulk video indexing end to end: the API, the frames worker cutting videos into segments, the
inference worker captioning batches, search on PostgreSQL and SQLite, exports, cancel, webhook."""

from __future__ import annotations

import json
import re
import time

import pytest
from sqlalchemy import insert

from shared.db.engine import session_scope
from shared.db.models import IndexSegment, IndexVideo, Tenant, VideoIndex, utcnow
from shared.indexes.search import search_segments
from tests.support.media_server import MediaServer, Reply
from tests.support.receiver import Receiver
from tests.support.services import migrate, wait_until
from tests.support.videos import NTSC, corrupt_copy, make_video

SEGMENT_S = 5.0
DURATIONS = [1, 2, 3.5, 4, 5, 6, 7.5, 9, 10, 11, 12, 13, 14.2, 15, 16, 3, 8, 2.5, 6.5]  # 19 good videos


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """19 videos of known lengths (portrait and landscape, 25 and 29.97 fps) and one corrupt one."""
    folder = tmp_path_factory.mktemp("library")
    videos = {}
    for number, seconds in enumerate(DURATIONS):
        fps = NTSC if number % 2 else 25
        width, height = (64, 48) if number % 3 else (48, 64)
        path = make_video(folder / f"v{number:02d}.mp4", seconds=seconds, fps=fps, width=width, height=height)
        videos[f"video-{number:02d}"] = (path.read_bytes(), round(seconds * fps) / fps, float(fps))
    good = next(iter(videos.values()))[0]
    (folder / "good.mp4").write_bytes(good)
    videos["broken"] = (corrupt_copy(folder / "good.mp4", folder / "broken.mp4").read_bytes(), None, None)
    return videos


@pytest.fixture(scope="module")
def served(library):
    server = MediaServer()
    urls = {name: server.serve(f"/{name}.mp4", Reply(body=data)) for name, (data, _, _) in library.items()}
    yield urls
    server.close()


def segment_count(duration_s: float, fps: float) -> int:
    """Whole segments, plus the last piece unless it is shorter than one frame (nothing to show)."""
    whole, rest = divmod(duration_s, SEGMENT_S)
    return max(1, int(whole) + (1 if rest >= 1 / fps - 1e-9 else 0))


def wait_for_index(client, index_id: str, timeout_s: float = 240) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        index = client.get(f"/v1/video-indexes/{index_id}").json()
        if index["status"] in ("succeeded", "failed", "canceled"):
            return index
        time.sleep(0.5)
    raise AssertionError(f"index {index_id} did not finish: {index}")


def upload(client, data: bytes) -> str:
    import httpx

    created = client.post("/v1/uploads", json={"filename": "v.mp4", "content_type": "video/mp4", "size_bytes": len(data)})
    assert created.status_code == 201, created.text
    body = created.json()
    assert httpx.put(body["url"], content=data, headers=body["headers"]).status_code in (200, 204)
    return body["upload_id"]


def test_an_index_of_twenty_videos_is_cut_captioned_and_searchable(acme, library, served):
    # given 20 videos: most by URL, two uploaded, one of them corrupt; and a webhook receiver
    receiver = Receiver()
    videos = [{"url": url, "external_id": name} for name, url in served.items()]
    for entry in videos[:2]:
        entry.pop("url")
        entry["upload_id"] = upload(acme, library[entry["external_id"]][0])

    # when they are indexed in 5 s segments of 2 frames
    created = acme.post("/v1/video-indexes", json={
        "name": "library", "videos": videos, "segment_s": SEGMENT_S, "frames_per_segment": 2,
        "prompt": "Describe this part of the video.", "max_new_tokens": 3,
        "webhook": {"url": receiver.url}, "metadata": {"batch": 7},
    })
    assert created.status_code == 202, created.text
    assert created.headers["location"] == f"/v1/video-indexes/{created.json()['id']}"
    index = wait_for_index(acme, created.json()["id"])

    # then every good video is done, the broken one failed with a reason, and the index succeeded
    expected_segments = {name: segment_count(duration, fps) for name, (_, duration, fps) in library.items() if duration}
    assert index["status"] == "succeeded"
    assert index["counts"] == {"videos_total": 20, "videos_done": 19, "videos_failed": 1,
                               "segments_done": sum(expected_segments.values())}
    listed = acme.get(f"/v1/video-indexes/{index['id']}/videos", params={"limit": 200}).json()["data"]
    broken = next(video for video in listed if video["external_id"] == "broken")
    assert broken["status"] == "failed" and broken["error"]["code"] == "invalid_media"
    assert {v["external_id"]: v["segments_done"] for v in listed if v["status"] == "succeeded"} == expected_segments

    # and each video's segments come in time order, cover it, and have a JPEG thumbnail
    segments, cursor = [], None
    while True:
        page = acme.get(f"/v1/video-indexes/{index['id']}/segments", params={"limit": 7, "cursor": cursor}).json()
        segments += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(segments) == sum(expected_segments.values())
    by_video: dict[str, list] = {}
    for segment in segments:
        by_video.setdefault(segment["external_id"], []).append(segment)
    for name, rows in by_video.items():
        assert [row["start_s"] for row in rows] == [n * SEGMENT_S for n in range(len(rows))]
        assert rows[-1]["end_s"] == pytest.approx(library[name][1], abs=1e-3)
        assert all(isinstance(row["text"], str) for row in rows)
    thumb = acme.get(segments[0]["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert thumb.content[:3] == b"\xff\xd8\xff"

    # and the exports hold the same segments
    lines = acme.get(f"/v1/video-indexes/{index['id']}/export", params={"format": "jsonl"}).text.splitlines()
    assert [json.loads(line) for line in lines] == segments
    vtt = acme.get(f"/v1/video-indexes/{index['id']}/export", params={"format": "vtt", "external_id": "video-13"})
    assert vtt.headers["content-type"].startswith("text/vtt")
    assert_valid_webvtt(vtt.text, cues=expected_segments["video-13"])

    # and the completion webhook arrived once, with the index object
    wait_until(lambda: receiver.requests, timeout_s=30, what="the video_index.completed webhook")
    event = json.loads(receiver.requests[0]["body"])
    assert event["type"] == "video_index.completed" and event["data"]["id"] == index["id"]
    assert event["data"]["counts"]["videos_failed"] == 1 and event["data"]["metadata"] == {"batch": 7}
    receiver.close()


CUE_TIMES = re.compile(r"^(\d{2}):(\d{2}):(\d{2})\.(\d{3}) --> (\d{2}):(\d{2}):(\d{2})\.(\d{3})$")


def assert_valid_webvtt(document: str, *, cues: int) -> None:
    """The WebVTT rules a player checks: the signature, blank-line separated cues, each with an
    optional identifier, a timing line whose end follows its start, non-empty text; cue starts do
    not go back in time."""
    assert document.startswith("WEBVTT\n")
    blocks = document.split("\n\n")[1:]
    assert len(blocks) == cues
    previous_start = -1.0
    for block in blocks:
        lines = block.strip("\n").split("\n")
        timing = lines[1] if not CUE_TIMES.match(lines[0]) else lines[0]
        match = CUE_TIMES.match(timing)
        assert match, timing
        h1, m1, s1, f1, h2, m2, s2, f2 = map(int, match.groups())
        start, end = h1 * 3600 + m1 * 60 + s1 + f1 / 1000, h2 * 3600 + m2 * 60 + s2 + f2 / 1000
        assert end > start >= previous_start
        previous_start = start
        text = lines[lines.index(timing) + 1:]
        assert text and all(line.strip() and "-->" not in line for line in text)


def test_a_jsonl_manifest_creates_an_index_and_bad_lines_are_named(acme, served):
    manifest = "\n".join(json.dumps({"url": url, "external_id": name}) for name, url in list(served.items())[:2])
    created = acme.post("/v1/video-indexes", files={"manifest": ("videos.jsonl", manifest.encode())},
                        data={"request": json.dumps({"name": "from a manifest", "segment_s": 10, "max_new_tokens": 2})})
    assert created.status_code == 202, created.text
    assert created.json()["counts"]["videos_total"] == 2
    assert wait_for_index(acme, created.json()["id"])["status"] == "succeeded"

    bad = manifest + '\n{"url": "https://example.com/a.mp4", "object_key": "x"}\nnot json\n'
    refused = acme.post("/v1/video-indexes", files={"manifest": ("videos.jsonl", bad.encode())})
    assert refused.status_code == 400
    places = {tuple(error["loc"][:1]) for error in refused.json()["error"]["details"]["errors"]}
    assert places == {("manifest line 3",), ("manifest line 4",)}


def test_cancel_stops_an_index_and_its_pending_videos(acme, served):
    videos = [{"url": url, "external_id": f"{name}-{copy}"} for copy in range(4) for name, url in served.items()]
    created = acme.post("/v1/video-indexes", json={"videos": videos, "segment_s": 5, "max_new_tokens": 2})
    index_id = created.json()["id"]

    canceled = acme.post(f"/v1/video-indexes/{index_id}/cancel")

    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    assert acme.post(f"/v1/video-indexes/{index_id}/cancel").status_code == 409
    time.sleep(2)
    listed = acme.get(f"/v1/video-indexes/{index_id}/videos", params={"limit": 200}).json()["data"]
    assert {video["status"] for video in listed} <= {"canceled", "succeeded", "failed"}
    assert acme.get(f"/v1/video-indexes/{index_id}").json()["status"] == "canceled"


def test_videos_that_cannot_be_named_are_refused_before_anything_runs(acme):
    cases = [
        ({"object_key": "tenants/globex/media/abc"}, 404, "object_not_found"),
        ({"upload_id": "upl_missing"}, 404, "upload_not_found"),
        ({"url": "http://user:pw@example.com/a.mp4"}, 400, "url_refused"),
        ({"url": "https://example.com/a.mp4", "object_key": "tenants/acme/x"}, 400, "validation_error"),
    ]
    for video, status, code in cases:
        response = acme.post("/v1/video-indexes", json={"videos": [video]})
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), video


def test_another_tenant_sees_no_index(acme, globex, served):
    created = acme.post("/v1/video-indexes", json={"videos": [{"url": next(iter(served.values()))}], "max_new_tokens": 1})
    index_id = created.json()["id"]
    for path in ("", "/videos", "/segments", "/search?q=a", "/export"):
        assert globex.get(f"/v1/video-indexes/{index_id}{path}").status_code == 404
    assert globex.post(f"/v1/video-indexes/{index_id}/cancel").status_code == 404


KNOWN_TEXTS = [
    "A red panda climbs a tree and eats bamboo leaves.",
    "Two red pandas play in the snow.",
    "A panda sleeps.",
    "A red car drives down a road at night.",
    "Cooking pasta in a small kitchen.",
]


def _index_with_texts(session, texts: list[str]) -> str:
    if session.get(Tenant, "search") is None:
        session.add(Tenant(id="search"))
        session.flush()
    index = VideoIndex(id=f"vix_search{time.time_ns()}", tenant_id="search", name="", status="succeeded", model="m",
                       prompt=None, segment_s=10, frames_per_segment=1, max_new_tokens=1, webhook=None, metadata_={},
                       videos_total=1, videos_done=1, videos_failed=0, segments_done=len(texts), created_at=utcnow())
    video = IndexVideo(id=f"ivd_search{time.time_ns()}", index_id=index.id, tenant_id="search", position=0,
                       external_id="clip", source={"object_key": "k"}, object_key="k", status="succeeded",
                       segments_done=len(texts), attempts=1, created_at=utcnow())
    session.add(index)
    session.flush()
    session.add(video)
    session.flush()
    session.execute(insert(IndexSegment), [
        {"index_id": index.id, "video_id": video.id, "position": 0, "external_id": "clip", "seq": seq, "batch": 0,
         "start_s": seq * 10.0, "end_s": seq * 10.0 + 10, "frames": [], "text": text, "thumbnail_key": None,
         "created_at": utcnow()}
        for seq, text in enumerate(texts)
    ])
    session.commit()
    return index.id


@pytest.fixture(params=["postgresql", "sqlite"])
def search_database(request, database_url, tmp_path):
    if request.param == "postgresql":
        return database_url
    url = f"sqlite:///{tmp_path / 'search.db'}"
    migrate(url)
    return url


def test_search_ranks_segments_by_relevance(search_database):
    with session_scope(search_database) as session:
        index_id = _index_with_texts(session, KNOWN_TEXTS)

        # "red panda": both words (stemmed: "pandas" matches), the denser match first
        hits = search_segments(session, index_id, "red panda", limit=10)
        assert [hit["text"] for hit in hits][:2] == [KNOWN_TEXTS[1], KNOWN_TEXTS[0]] or \
            [hit["text"] for hit in hits][:2] == [KNOWN_TEXTS[0], KNOWN_TEXTS[1]]
        assert {hit["text"] for hit in hits} == {KNOWN_TEXTS[0], KNOWN_TEXTS[1]}
        assert hits[0]["score"] >= hits[1]["score"] > 0

        # one word matches all that hold it; the query's own syntax is never interpreted
        assert {hit["text"] for hit in search_segments(session, index_id, "panda", limit=10)} == set(KNOWN_TEXTS[:3])
        for raw in ('kitchen"', "(kitchen", "kitchen:*", "-kitchen^"):
            assert [hit["text"] for hit in search_segments(session, index_id, raw, limit=10)][:1] == [KNOWN_TEXTS[4]], raw
        assert search_segments(session, index_id, "submarine", limit=10) == []
