"""Job submissions per second through the API vs. bare ``celery send_task`` calls, in one run.

    python bench/api_submit.py [--jobs 400] [--concurrency 8]

The API path: JSON body with an existing object key → auth, media lookup, job row in PostgreSQL,
enqueue on Redis, 202. The baseline: the same number of ``send_task`` calls on the same broker.
Target: the API reaches at least half the bare rate.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import API_KEY, api_stack, s3_storage  # noqa: E402
from bench.loadgen import post_json_rate  # noqa: E402
from shared.queue import INFERENCE_QUEUE  # noqa: E402
from tests.support.media import png_bytes, submit  # noqa: E402


def _stat_fields(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live children (the API's server processes)."""
    pids = [pid] + [
        int(entry.name) for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and _ppid_is(int(entry.name), pid)
    ]
    ticks = 0
    for member in pids:
        try:
            ticks += sum(int(value) for value in _stat_fields(member)[11:13])
        except FileNotFoundError:
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


def _ppid_is(pid: int, parent: int) -> bool:
    try:
        return int(_stat_fields(pid)[1]) == parent
    except (FileNotFoundError, IndexError, ValueError):
        return False


def api_rate(base_url: str, api_pid: int, object_key: str, jobs: int, connections: int) -> tuple[float, float]:
    """(jobs per second, API CPU milliseconds per job)."""
    body = json.dumps({"task": "caption", "input": {"object_key": object_key}}).encode()
    headers = {"Authorization": f"Bearer {API_KEY}"}
    post_json_rate(f"{base_url}/v1/jobs", body, headers, requests=connections * 5, connections=connections, expect=202)
    cpu_before = cpu_seconds(api_pid)
    rate = post_json_rate(f"{base_url}/v1/jobs", body, headers, requests=jobs, connections=connections, expect=202)
    return rate, (cpu_seconds(api_pid) - cpu_before) * 1000 / jobs


def bare_rate(broker_url: str, jobs: int, *, repeats: int = 3) -> float:
    """The median of a few runs: a single short run on a busy 2-core machine is noisy."""
    from celery import Celery

    app = Celery(broker=broker_url)
    app.send_task("vlmq.inference.caption", args=["job_warmup"], queue=INFERENCE_QUEUE)
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for number in range(jobs):
            app.send_task("vlmq.inference.caption", args=[f"job_{number:028d}"], queue=INFERENCE_QUEUE)
        rates.append(jobs / (time.perf_counter() - started))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8, help="keep-alive client connections")
    parser.add_argument("--api-workers", type=int, default=1, help="API server processes (VLMQ_API_WORKERS)")
    parser.add_argument("--no-access-log", action="store_true", help="VLMQ_API_ACCESS_LOG=false")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory, s3_storage() as storage_url:
        extra = {"VLMQ_API_WORKERS": str(arguments.api_workers), "VLMQ_API_ACCESS_LOG": str(not arguments.no_access_log)}
        with api_stack(Path(directory), storage_url=storage_url, extra=extra) as stack:
            with httpx.Client(base_url=stack.api_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as client:
                created = submit(client, {"task": "caption"}, png_bytes(640, 480))
                created.raise_for_status()
                object_key = created.json()["input"]["items"][0]["object_key"]
            api, api_cpu_ms = api_rate(
                stack.api_url, stack.processes[0].process.pid, object_key, arguments.jobs, arguments.concurrency
            )
            bare = bare_rate(stack.env["VLMQ_BROKER_URL"], arguments.jobs)
    report = {
        "benchmark": "api_submit",
        "jobs": arguments.jobs,
        "concurrency": arguments.concurrency,
        "api_workers": arguments.api_workers,
        "api_access_log": not arguments.no_access_log,
        "api_jobs_per_s": round(api, 1),
        "api_cpu_ms_per_job": round(api_cpu_ms, 2),
        "bare_send_task_per_s": round(bare, 1),
        "ratio_api_to_bare": round(api / bare, 3),
        "target_ratio": 0.5,
        "meets_target": api / bare >= 0.5,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
