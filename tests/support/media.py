"""Small media factories for tests."""

from __future__ import annotations

import functools
import io
import json
import struct
import time
import zlib

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


@functools.lru_cache(maxsize=4)
def blank_png(width: int, height: int) -> bytes:
    """A black RGB PNG of any size, compressed row by row: a 13000×13000 one is about 500 KB on
    disk and 500 MB decoded (a decompression bomb), built without holding its pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor, row, parts = zlib.compressobj(9), bytes(1 + 3 * width), []
    for _ in range(height):
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


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
