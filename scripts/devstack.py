"""Run vlmq on one machine: ``python -m scripts.devstack up|down|demo`` (what ``make up/down/demo`` call).

``up`` applies migrations, builds the tiny model if no model is configured, starts the API and one
inference worker in the background (PIDs and logs under VLMQ_DATA_DIR, default .run/) and returns
when ``/readyz`` answers 200. ``down`` stops them. ``demo`` runs caption, vqa and grounding jobs
through the HTTP API and prints each finished job.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from shared.config.settings import ApiSettings
from shared.queue import resolve_broker_url

PROCESSES = {
    "api": [sys.executable, "-m", "services.api"],
    "worker": [
        sys.executable, "-m", "celery", "-A", "workers.inference.celery_app", "worker",
        "--pool", "threads",
        "-n", "vlmq-inference@%h", "--loglevel", "INFO",
    ],
    "frames": [
        sys.executable, "-m", "celery", "-A", "workers.frames.celery_app", "worker",
        "--concurrency", "2", "--pool", "prefork", "-n", "vlmq-frames@%h", "--loglevel", "INFO",
    ],
    "notifier": [
        sys.executable, "-m", "celery", "-A", "services.notifier.app", "worker",
        "--concurrency", "4", "--pool", "threads", "-n", "vlmq-notifier@%h", "--loglevel", "INFO",
    ],
}


def _run_dir(settings: ApiSettings) -> Path:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings.data_dir


def _environment(settings: ApiSettings) -> dict[str, str]:
    """Resolve once what both processes must agree on (the broker above all)."""
    env = dict(os.environ)
    env["VLMQ_BROKER_URL"] = resolve_broker_url(settings)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def _base_url(settings: ApiSettings) -> str:
    return f"http://{settings.api_host}:{settings.api_port}"


def up(settings: ApiSettings) -> str:
    run_dir = _run_dir(settings)
    env = _environment(settings)
    if settings.model_path is None and not settings.models:
        subprocess.run(
            [sys.executable, "-m", "workers.inference.tiny_model", str(settings.resolved_model_path), "--if-missing"],
            check=True, env=env,
        )
    subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], check=True, env=env)
    (run_dir / "sample.png").write_bytes(sample_image())  # for the README's curl examples
    (run_dir / "sample.mp4").write_bytes(sample_video())
    for name, command in PROCESSES.items():
        pid_file = run_dir / f"{name}.pid"
        if pid_file.exists() and _alive(int(pid_file.read_text())):
            print(f"{name} already running (pid {pid_file.read_text().strip()})")
            continue
        with open(run_dir / f"{name}.log", "ab") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        pid_file.write_text(str(process.pid))
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{_base_url(settings)}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if not _alive(int((run_dir / "api.pid").read_text())):
            sys.exit(f"the API exited; see {run_dir / 'api.log'}")
        time.sleep(0.5)
    else:
        sys.exit(f"the API did not become ready; see {run_dir / 'api.log'}")
    key = (run_dir / "api-key").read_text().strip() if not settings.api_keys else None
    print(f"vlmq is up at {_base_url(settings)} (broker {env['VLMQ_BROKER_URL']}); logs in {run_dir}/")
    if key:
        print(f"development API key (also in {run_dir / 'api-key'}): {key}")
    return key or settings.api_keys.split(",")[0].split(":", 1)[1]


def down(settings: ApiSettings) -> None:
    run_dir = _run_dir(settings)
    for name in PROCESSES:
        pid_file = run_dir / f"{name}.pid"
        if not pid_file.exists():
            continue
        pid = int(pid_file.read_text())
        if _alive(pid):
            os.killpg(pid, signal.SIGTERM)  # the whole group: Celery's pool children too
            deadline = time.monotonic() + 20
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _alive(pid):
                os.killpg(pid, signal.SIGKILL)
        try:
            os.killpg(pid, signal.SIGKILL)  # stragglers left in the group
        except ProcessLookupError:
            pass
        pid_file.unlink()
        print(f"stopped {name}")


def sample_image() -> bytes:
    """A generated scene: shapes on a background, as PNG."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (640, 480), (235, 235, 220))
    draw = ImageDraw.Draw(image)
    draw.rectangle((60, 80, 260, 300), fill=(200, 30, 30))
    draw.ellipse((340, 160, 560, 380), fill=(30, 60, 200))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def sample_video() -> bytes:
    """A generated clip: a red square crossing a pale background, 4 s at 25 fps, H.264 in MP4."""
    import tempfile

    import av
    import numpy as np

    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/sample.mp4"
        with av.open(path, "w") as container:
            stream = container.add_stream("libx264", rate=25)
            stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
            for index in range(100):
                frame = np.full((240, 320, 3), (235, 235, 220), np.uint8)
                left = index * 2
                frame[90:150, left:left + 60] = (200, 30, 30)
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        with open(path, "rb") as file:
            return file.read()


# (request, file name): the image tasks on sample.png, a video question on sample.mp4.
DEMO_JOBS = [
    ({"task": "caption", "options": {"max_new_tokens": 24}}, "sample.png"),
    ({"task": "vqa", "prompt": "What colour is the circle?", "options": {"max_new_tokens": 24}}, "sample.png"),
    ({"task": "grounding", "prompt": "the red square", "options": {"max_new_tokens": 24}}, "sample.png"),
    ({"task": "video_qa", "prompt": "Where does the square go?", "options": {"num_frames": 4, "max_new_tokens": 24}},
     "sample.mp4"),
]


def demo(settings: ApiSettings) -> int:
    key = up(settings)
    failures = 0
    try:
        headers = {"Authorization": f"Bearer {key}"}
        run_dir = _run_dir(settings)
        with httpx.Client(base_url=_base_url(settings), headers=headers, timeout=60) as client:
            ids = []
            for spec, name in DEMO_JOBS:
                response = client.post(
                    "/v1/jobs",
                    files={"file": (name, (run_dir / name).read_bytes(), "application/octet-stream")},
                    data={"request": json.dumps(spec)},
                )
                response.raise_for_status()
                ids.append(response.json()["id"])
            for job_id in ids:
                deadline = time.monotonic() + 150
                while True:
                    job = client.get(f"/v1/jobs/{job_id}").json()
                    if job["status"] in ("succeeded", "failed", "canceled") or time.monotonic() > deadline:
                        break
                    time.sleep(0.5)
                print(json.dumps(job, indent=2, ensure_ascii=False))
                failures += job["status"] != "succeeded"
    finally:
        down(settings)
    print(f"demo: {len(DEMO_JOBS) - failures} of {len(DEMO_JOBS)} jobs succeeded")
    return 1 if failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(description="Run vlmq on this machine.")
    parser.add_argument("command", choices=["up", "down", "demo"])
    command = parser.parse_args().command
    settings = ApiSettings()
    if command == "up":
        up(settings)
    elif command == "down":
        down(settings)
    else:
        sys.exit(demo(settings))


if __name__ == "__main__":
    main()
