"""Small media factories for tests."""

from __future__ import annotations

import io
import json
import time

import httpx
from PIL import Image, ImageDraw

TERMINAL = ("succeeded", "failed", "canceled")


def png_bytes(width: int = 320, height: int = 240, *, colour=(200, 30, 30)) -> bytes:
    image = Image.new("RGB", (width, height), (240, 240, 230))
    ImageDraw.Draw(image).rectangle((width // 4, height // 4, width // 2, height // 2), fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(width: int = 320, height: int = 240) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 120, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


def submit(client: httpx.Client, request: dict, *files: bytes, filename: str = "image.png", path: str = "/v1/jobs"):
    parts = [("file", (filename, data, "application/octet-stream")) for data in files]
    return client.post(path, files=parts or None, data={"request": json.dumps(request)})


def wait_for_job(client: httpx.Client, job_id: str, *, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in TERMINAL:
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} did not finish in {timeout_s}s: {job}")
