"""Media failures say what is wrong with the file, never where a worker kept it."""

from __future__ import annotations

import re

import pytest

from tests.support.media import submit, wait_for_job
from tests.support.videos import corrupt_copy, make_video, truncated_copy

# An absolute path of the server's filesystem: what a message must never show.
SERVER_PATH = re.compile(r"(^|[\s'\"(])/(tmp|var|home|root|work|data)\b|vlmq-video-")


@pytest.fixture(scope="module")
def broken_videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("broken")
    good = make_video(folder / "good.mp4", seconds=2, fps=30, width=64, height=48)
    return {"corrupt": corrupt_copy(good, folder / "corrupt.mp4"),
            "truncated": truncated_copy(good, folder / "truncated.mp4")}


@pytest.mark.parametrize("clip", ["corrupt", "truncated"])
def test_a_failed_video_job_names_no_server_path(acme, broken_videos, clip):
    # given a video whose container header is fine but whose data is not
    video = broken_videos[clip].read_bytes()

    # when it runs as a job
    created = submit(acme, {"task": "video_caption", "options": {"max_new_tokens": 2}}, video, filename="clip.mp4")
    assert created.status_code == 202, created.text
    job = wait_for_job(acme, created.json()["id"])

    # then it fails as invalid media, and the message does not reveal the worker's temporary file
    assert job["status"] == "failed" and job["error"]["code"] == "invalid_media", job["error"]
    assert not SERVER_PATH.search(job["error"]["message"]), job["error"]["message"]


def test_a_plan_of_a_broken_video_names_no_server_path(acme, broken_videos):
    # given the same broken video, when a plan is asked for (the API probes it itself)
    response = submit(acme, {"task": "video_caption"}, broken_videos["corrupt"].read_bytes(), filename="clip.mp4",
                      path="/v1/jobs/plan")

    # then the 422 says why without the API's temporary path
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_media"
    assert not SERVER_PATH.search(response.json()["error"]["message"]), response.json()["error"]["message"]
