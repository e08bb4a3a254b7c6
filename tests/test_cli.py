"""The ``vlmq`` command line, run as its own process against the running test stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import TENANT_KEYS
from tests.support.media import png_bytes
from tests.support.videos import make_video


@pytest.fixture
def vlmq(stack):
    env = {**os.environ, "VLMQ_API_URL": stack.api_url, "VLMQ_API_KEY": TENANT_KEYS["acme"]}

    def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "services.cli.main", *args], env=env, cwd=cwd,
                              capture_output=True, text=True, timeout=300)

    return run


def test_index_a_folder_uploads_follows_progress_and_downloads_the_export(vlmq, tmp_path):
    # given a folder of three short videos (one in a subfolder) and a file that is not a video
    folder = tmp_path / "library"
    (folder / "day2").mkdir(parents=True)
    make_video(folder / "a.mp4", seconds=3)
    make_video(folder / "b.mp4", seconds=7, fps=30)
    make_video(folder / "day2" / "c.mp4", seconds=2)
    (folder / "notes.txt").write_text("not a video")
    out = tmp_path / "export.jsonl"

    # when it is indexed in 5 s segments
    done = vlmq("index", str(folder), "--segment-s", "5", "--frames-per-segment", "2", "--out", str(out))

    # then it uploaded the three videos, showed progress, and wrote the export
    assert done.returncode == 0, done.stderr
    assert "3 videos" in done.stderr
    progress = [line for line in done.stderr.splitlines() if line.startswith("progress ")]
    assert progress and progress[-1].startswith("progress 3/3 videos")
    assert "succeeded: 3 videos done, 0 failed, 4 segments" in done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(row["external_id"], row["start_s"]) for row in rows] == [
        ("a.mp4", 0.0), ("b.mp4", 0.0), ("b.mp4", 5.0), ("day2/c.mp4", 0.0)]


def test_jobs_submit_wait_and_get(vlmq, tmp_path):
    image = tmp_path / "square.png"
    image.write_bytes(png_bytes(320, 240))

    submitted = vlmq("jobs", "submit", str(image), "--task", "vqa", "--prompt", "What is red?",
                     "-o", "max_new_tokens=2", "-o", "max_tiles=2", "--wait")

    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)
    assert job["status"] == "succeeded" and job["options"]["max_new_tokens"] == 2
    got = vlmq("jobs", "get", job["id"])
    assert json.loads(got.stdout)["id"] == job["id"]
    waited = vlmq("jobs", "wait", job["id"])
    assert waited.returncode == 0 and json.loads(waited.stdout)["status"] == "succeeded"


def test_api_errors_are_reported_with_their_code(vlmq):
    missing = vlmq("jobs", "get", "job_doesnotexist")
    assert missing.returncode == 1
    assert "404 job_not_found" in missing.stderr
