"""Video jobs end to end: API → frames worker (decode, sample) → inference worker, with real
processes and PyAV-built videos; bad videos fail with reason codes and the workers keep serving."""

from __future__ import annotations

import pytest

from tests.support.media import png_bytes, submit, wait_for_job
from tests.support.media_server import MediaServer, Reply
from tests.support.videos import NTSC, corrupt_copy, make_audio_only, make_video, truncated_copy
from tests.test_video_sampling import reference_indices


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    good = make_video(folder / "good.mp4", seconds=6, fps=NTSC, width=96, height=64, gop=30)
    return {
        "good": good,
        "portrait": make_video(folder / "portrait.mp4", seconds=2, fps=30, width=48, height=80),
        "audio": make_audio_only(folder / "audio.mp4"),
        "corrupt": corrupt_copy(good, folder / "corrupt.mp4"),
        "truncated": truncated_copy(good, folder / "truncated.mp4"),
    }


def run_video_job(client, request, video: bytes):
    created = submit(client, request, video, filename="clip.mp4")
    assert created.status_code == 202, created.text
    return wait_for_job(client, created.json()["id"])


def test_a_video_caption_job_samples_frames_off_the_gpu_worker_and_succeeds(acme, clips):
    # given a 6 s, 29.97 fps video
    request = {"task": "video_caption", "options": {"num_frames": 4, "max_new_tokens": 2}}

    # when it runs
    job = run_video_job(acme, request, clips["good"].read_bytes())

    # then the reference rule's frames were used, with their times, one tile each
    assert job["status"] == "succeeded", job["error"]
    n_frames = round(6 * 30000 / 1001)
    fps = 30000 / 1001
    expected = reference_indices(fps, n_frames - 1, 4, None)
    assert [frame["index"] for frame in job["result"]["frames"]] == expected
    assert [frame["time_s"] for frame in job["result"]["frames"]] == pytest.approx([i / fps for i in expected])
    assert job["result"]["usage"]["tiles"] == 4
    assert job["result"]["usage"]["input_tokens"] > 4 * 256
    assert {"queue", "preprocess", "inference", "total", "decode"} <= set(job["result"]["timings_ms"])
    # and the video's description was filled in by the frames worker
    item = job["input"]["items"][0]
    assert (item["content_type"], item["width"], item["height"]) == ("video/mp4", 96, 64)
    assert item["fps"] == pytest.approx(fps) and item["duration_s"] == pytest.approx(n_frames / fps, abs=1e-3)


def test_video_qa_with_bounds_samples_inside_them(acme, clips):
    request = {"task": "video_qa", "prompt": "What moves?",
               "options": {"num_frames": 3, "start_s": 1.0, "end_s": 3.0, "max_new_tokens": 2}}

    job = run_video_job(acme, request, clips["portrait"].read_bytes())

    assert job["status"] == "succeeded", job["error"]
    assert [frame["index"] for frame in job["result"]["frames"]] == reference_indices(30, 59, 3, (1.0, 3.0))
    assert all(1.0 <= frame["time_s"] <= 3.0 for frame in job["result"]["frames"])


def test_the_plan_of_a_video_job_shows_its_frames_and_prompt(acme, clips):
    request = {"task": "video_qa", "prompt": "What happens?", "options": {"num_frames": 5}}

    plan = submit(acme, request, clips["good"].read_bytes(), filename="clip.mp4", path="/v1/jobs/plan")

    assert plan.status_code == 200, plan.text
    body = plan.json()
    fps, n_frames = 30000 / 1001, round(6 * 30000 / 1001)
    assert [frame["index"] for frame in body["frames"]] == reference_indices(fps, n_frames - 1, 5, None)
    assert body["image_tokens"] == 5 * 256 and body["images"] == []
    assert "Frame1: <image>\nFrame2: <image>\nFrame3: <image>\nFrame4: <image>\nFrame5: <image>\nWhat happens?" in body["prompt"]


@pytest.mark.parametrize(
    ("clip", "code"),
    [("audio", "no_video_stream"), ("corrupt", "invalid_media"), ("truncated", "invalid_media")],
)
def test_a_bad_video_fails_with_a_reason_code_and_the_workers_keep_serving(acme, clips, clip, code):
    job = run_video_job(acme, {"task": "video_caption", "options": {"max_new_tokens": 2}}, clips[clip].read_bytes())

    assert job["status"] == "failed"
    assert job["error"]["code"] == code, job["error"]
    assert job["attempts"] == 0  # it never reached a GPU worker

    after = run_video_job(acme, {"task": "video_caption", "options": {"num_frames": 2, "max_new_tokens": 1}},
                          clips["good"].read_bytes())
    assert after["status"] == "succeeded", after["error"]


def test_bounds_out_of_order_are_refused_and_a_start_past_the_end_samples_the_last_frame(acme, clips):
    refused = submit(acme, {"task": "video_caption", "options": {"start_s": 4.0, "end_s": 2.0}},
                     clips["good"].read_bytes(), filename="clip.mp4")
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "validation_error"

    # REFERENCE.md: indices past the end are clamped to the last frame
    job = run_video_job(acme, {"task": "video_caption", "options": {"num_frames": 2, "start_s": 30.0, "max_new_tokens": 1}},
                        clips["good"].read_bytes())
    assert job["status"] == "succeeded", job["error"]
    last = round(6 * 30000 / 1001) - 1
    assert [frame["index"] for frame in job["result"]["frames"]] == [last, last]


def test_a_still_image_sent_as_a_video_is_refused(acme):
    response = submit(acme, {"task": "video_caption"}, png_bytes(64, 48), filename="photo.mp4")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_input"


def test_a_video_given_by_url_is_fetched_and_sampled(acme, clips):
    server = MediaServer()
    try:
        url = server.serve("/clip.mp4", Reply(body=clips["good"].read_bytes()))
        created = acme.post("/v1/jobs", json={"task": "video_caption", "input": {"url": url},
                                              "options": {"num_frames": 2, "max_new_tokens": 1}})
        assert created.status_code == 202, created.text
        job = wait_for_job(acme, created.json()["id"])
    finally:
        server.close()

    assert job["status"] == "succeeded", job["error"]
    assert len(job["result"]["frames"]) == 2
    assert job["input"]["items"][0]["url"] == url and job["input"]["items"][0]["fps"] > 29
