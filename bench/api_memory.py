"""The API's peak memory while it refuses hostile bodies: 8 concurrent plans of a 13000×13000 PNG
(a 493 KB decompression bomb) and 8 concurrent 50 MB JSON bodies.

    python bench/api_memory.py [--concurrency 8] [--json-mb 50]

The baseline is the API's idle resident memory, measured in the same run just before each burst
(after a warm-up request of each kind, so first-use imports are not counted). Memory is the RSS of
the API process and its server processes together (psutil, which the worker extra's accelerate
brings). Target: under 64 MB growth each.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import API_KEY, PeakSampler, api_stack
from tests.support.media import blank_png, png_bytes, submit
from workers.inference.tiny_model import build_tiny_model

MiB = 1024 * 1024
TARGET_GROWTH_MB = 64


def tree_rss(root: psutil.Process) -> int:
    """Resident bytes of the API process and every process under it (uvicorn's workers)."""
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def idle_rss(root: psutil.Process, *, seconds: float = 1.0) -> int:
    """The highest RSS over a quiet second: the baseline a burst is measured against."""
    deadline, highest = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        highest = max(highest, tree_rss(root))
        time.sleep(0.05)
    return highest


def outcome(send) -> str:
    """The status a request got, or how the connection ended when the server cut it short."""
    try:
        return str(send().status_code)
    except httpx.HTTPError as error:
        return type(error).__name__


def burst(root: psutil.Process, send, concurrency: int) -> dict:
    baseline = idle_rss(root)
    sampler = PeakSampler(lambda: tree_rss(root), interval_s=0.01)
    sampler.start()
    with ThreadPoolExecutor(concurrency) as pool:
        outcomes = list(pool.map(lambda _: outcome(send), range(concurrency)))
    peak = sampler.stop()
    growth = (peak - baseline) / MiB
    return {
        "outcomes": {status: outcomes.count(status) for status in sorted(set(outcomes))},
        "api_rss_idle_mb": round(baseline / MiB, 1),
        "api_rss_peak_mb": round(peak / MiB, 1),
        "api_rss_growth_mb": round(growth, 1),
        "meets_target": growth < TARGET_GROWTH_MB,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json-mb", type=int, default=50)
    arguments = parser.parse_args()
    bomb = blank_png(13000, 13000)
    big_json = b'{"task": "caption", "prompt": "' + b"a" * (arguments.json_mb * MiB) + b'"}'
    with tempfile.TemporaryDirectory() as directory:
        # A plan needs a model's configuration (never its weights in the API): the tiny one.
        model = build_tiny_model(Path(directory) / "models" / "internvl-tiny")
        with api_stack(Path(directory) / "api", extra={"VLMQ_MODEL_PATH": str(model)}) as stack:
            plans, bodies = measure(stack, bomb, big_json, arguments.concurrency)
    print(json.dumps({
        "benchmark": "api_memory",
        "concurrency": arguments.concurrency,
        "bomb_png": {"width": 13000, "height": 13000, "size_bytes": len(bomb)},
        "plans_of_the_bomb": plans,
        f"json_bodies_{arguments.json_mb}mb": bodies,
        "target_rss_growth_mb": TARGET_GROWTH_MB,
        "meets_target": plans["meets_target"] and bodies["meets_target"],
    }, indent=2))


def measure(stack, bomb: bytes, big_json: bytes, concurrency: int) -> tuple[dict, dict]:
    """(the plans' burst, the JSON bodies' burst), each against its own idle baseline."""
    root = psutil.Process(stack.processes[0].process.pid)
    headers = {"Authorization": f"Bearer {API_KEY}"}

    def plan_bomb() -> httpx.Response:
        with httpx.Client(base_url=stack.api_url, headers=headers, timeout=120) as client:
            return submit(client, {"task": "caption"}, bomb, path="/v1/jobs/plan")

    def post_big_json() -> httpx.Response:
        return httpx.post(f"{stack.api_url}/v1/jobs", content=big_json, timeout=120,
                          headers={**headers, "Content-Type": "application/json"})

    # Warm-up: one accepted plan and one oversized body, so first-use imports are in the baseline.
    with httpx.Client(base_url=stack.api_url, headers=headers, timeout=60) as client:
        submit(client, {"task": "caption"}, png_bytes(640, 480), path="/v1/jobs/plan").raise_for_status()
        client.post("/v1/jobs", json={"task": "caption", "prompt": "x" * 2 * MiB})
    return burst(root, plan_bomb, concurrency), burst(root, post_big_json, concurrency)


if __name__ == "__main__":
    main()
