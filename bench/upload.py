"""Upload throughput through the API and the API's peak memory for a 1 GB upload.

    python bench/upload.py [--size-mb 1024] [--storage local|s3]

The file streams as one multipart ``POST /v1/jobs`` (a video job; no worker runs it). The baseline,
measured in the same run, writes the same bytes straight through the storage writer in this
process. Target: the API's resident memory grows by less than 64 MB during the upload.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import API_KEY, PeakSampler, api_stack, s3_storage  # noqa: E402
from shared.storage import open_store  # noqa: E402

MiB = 1024 * 1024
CHUNK = MiB
# An MP4 "ftyp" box, so the content sniffing sees a video; the rest is filler.
MP4_HEAD = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"


def media_chunks(size: int):
    yield MP4_HEAD
    block = os.urandom(CHUNK)
    remaining = size - len(MP4_HEAD)
    while remaining > 0:
        yield block[: min(CHUNK, remaining)]
        remaining -= CHUNK


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def direct_rate(storage_url: str, size: int) -> float:
    store = open_store(storage_url)
    started = time.perf_counter()
    writer = store.open_writer("tenants/bench/direct-baseline")
    for chunk in media_chunks(size):
        writer.write(chunk)
    writer.complete()
    elapsed = time.perf_counter() - started
    store.delete("tenants/bench/direct-baseline")
    return size / MiB / elapsed


def multipart_body(size: int, boundary: str):
    request = json.dumps({"task": "video_caption"})
    yield f'--{boundary}\r\nContent-Disposition: form-data; name="request"\r\n\r\n{request}\r\n'.encode()
    yield f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.mp4"\r\n\r\n'.encode()
    yield from media_chunks(size)
    yield f"\r\n--{boundary}--\r\n".encode()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--storage", choices=["local", "s3"], default="local")
    arguments = parser.parse_args()
    size = arguments.size_mb * MiB
    with tempfile.TemporaryDirectory() as directory:
        storage_context = s3_storage() if arguments.storage == "s3" else nullcontext((Path(directory) / "storage").as_uri())
        with storage_context as storage_url:
            extra = {"VLMQ_MAX_UPLOAD_BYTES": str(size + MiB)}
            with api_stack(Path(directory) / "api", storage_url=storage_url, extra=extra) as stack:
                pid = stack.processes[0].process.pid
                baseline_rate = direct_rate(storage_url, size)
                rss_before = rss_bytes(pid)
                sampler = PeakSampler(lambda: rss_bytes(pid), interval_s=0.02)
                sampler.start()
                boundary = "vlmqbenchboundary"
                started = time.perf_counter()
                response = httpx.post(
                    f"{stack.api_url}/v1/jobs",
                    content=multipart_body(size, boundary),
                    headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": f"multipart/form-data; boundary={boundary}"},
                    timeout=600,
                )
                elapsed = time.perf_counter() - started
                peak = sampler.stop()
    assert response.status_code == 202, response.text
    item = response.json()["input"]["items"][0]
    growth = (peak - rss_before) / MiB
    print(json.dumps({
        "benchmark": "upload",
        "storage": arguments.storage,
        "size_mb": arguments.size_mb,
        "stored_size_bytes": item["size_bytes"],
        "api_upload_mb_per_s": round(size / MiB / elapsed, 1),
        "direct_storage_write_mb_per_s": round(baseline_rate, 1),
        "ratio_api_to_direct": round(size / MiB / elapsed / baseline_rate, 3),
        "api_rss_before_mb": round(rss_before / MiB, 1),
        "api_rss_peak_mb": round(peak / MiB, 1),
        "api_rss_growth_mb": round(growth, 1),
        "target_rss_growth_mb": 64,
        "meets_target": growth < 64,
    }, indent=2))


if __name__ == "__main__":
    main()
