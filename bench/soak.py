"""Soak: jobs keep their promises while workers die and the broker forgets (not part of `make test`).

    python bench/soak.py [--jobs 1000] [--kill-every 5] [--workers 2]

Real processes on loopback: PostgreSQL (a fresh database), a Redis server of its own that keeps
nothing on disk, the API, N inference workers with the tiny model, the notifier, and a webhook
receiver. It submits text chat jobs with a webhook while killing a random worker (SIGKILL, pool
and all) every few seconds and starting a new one, and restarts Redis once. It prints how many jobs
were submitted, succeeded, lost (never finished) and duplicated (more than one success event),
the webhook deliveries received, re-runs after kills, and p50/p99 job latency.
Target: 0 lost, 0 duplicated.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from tests.support.receiver import Receiver  # noqa: E402
from tests.support.services import (  # noqa: E402
    REPO_ROOT,
    RedisServer,
    Stack,
    create_database,
    drop_database,
    migrate,
)

API_KEY = "soak-key-0123456789"


def _chaos(stack: Stack, redis: RedisServer, stop: threading.Event, kill_every_s: float, stats: dict) -> None:
    generation = 0
    restarted = False
    started = time.monotonic()
    while not stop.wait(kill_every_s):
        workers = [p for p in stack.processes if p.name.startswith("worker") and p.alive()]
        if workers:
            victim = random.choice(workers)
            os.killpg(victim.process.pid, signal.SIGKILL)
            victim.process.wait()
            stats["workers_killed"] += 1
            generation += 1
            stack.add_worker(f"worker-g{generation}")
        if not restarted and time.monotonic() - started > 3 * kill_every_s:
            redis.restart()
            restarted = True
            stats["redis_restarts"] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--kill-every", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1200.0)
    arguments = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="vlmq-soak-"))
    from workers.inference.tiny_model import build_tiny_model

    model_dir = build_tiny_model(data_dir / "models" / "internvl-tiny")
    redis = RedisServer(data_dir / "redis").start()
    database_name, database_url = create_database()
    migrate(database_url)
    receiver = Receiver()  # answers 200 to everything
    env = {key: value for key, value in os.environ.items() if not key.startswith("VLMQ_")}
    env.update(
        {
            "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1",
            "VLMQ_DATABASE_URL": database_url, "VLMQ_BROKER_URL": redis.url,
            "VLMQ_STORAGE_URL": (data_dir / "storage").as_uri(), "VLMQ_MODEL_PATH": str(model_dir),
            "VLMQ_API_KEYS": f"soak:{API_KEY}", "VLMQ_ALLOW_PRIVATE_NETWORKS": "true",
            "VLMQ_LEASE_S": "6", "VLMQ_HEARTBEAT_S": "1", "VLMQ_REAPER_INTERVAL_S": "2", "VLMQ_REQUEUE_AFTER_S": "10",
            "VLMQ_WEBHOOK_RETRY_SCALE": "0.01", "VLMQ_API_ACCESS_LOG": "false", "VLMQ_JOBS_PER_MINUTE": "0",
        }
    )
    stack = Stack.start(env, data_dir)
    for number in range(1, arguments.workers):
        stack.add_worker(f"worker-{number}")
    stats = defaultdict(int)
    stop = threading.Event()
    chaos = threading.Thread(target=_chaos, args=(stack, redis, stop, arguments.kill_every, stats), daemon=True)
    client = httpx.Client(base_url=stack.api_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
    request = {
        "task": "chat", "prompt": "Say something.", "options": {"max_new_tokens": 8},
        "webhook": {"url": receiver.url, "events": ["job.succeeded"]},
    }

    def submit(_number: int) -> tuple[int, str | None]:
        for _ in range(20):  # a 503 during the broker restart: the client retries, as clients do
            response = client.post("/v1/jobs", json=request)
            if response.status_code == 202:
                return 202, response.json()["id"]
            stats[f"submit_{response.status_code}"] += 1
            time.sleep(0.5)
        return response.status_code, None

    try:
        chaos.start()
        began = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            ids = [job_id for status, job_id in pool.map(submit, range(arguments.jobs)) if job_id]
        deadline = time.monotonic() + arguments.timeout
        pending = set(ids)
        jobs: dict[str, dict] = {}
        while pending and time.monotonic() < deadline:
            for job_id in list(pending):
                job = client.get(f"/v1/jobs/{job_id}").json()
                if job["status"] in ("succeeded", "failed", "canceled"):
                    jobs[job_id] = job
                    pending.discard(job_id)
            time.sleep(1)
        stop.set()
        webhooks_deadline = time.monotonic() + 30  # the last deliveries are still on their way
        while len(receiver.requests) < len(jobs) and time.monotonic() < webhooks_deadline:
            time.sleep(0.5)
        succeeded = [job for job in jobs.values() if job["status"] == "succeeded"]
        # Distinct webhook-ids of job.succeeded events per job: more than one is a duplicate.
        success_events: dict[str, set[str]] = defaultdict(set)
        for sent in list(receiver.requests):
            success_events[json.loads(sent["body"])["data"]["id"]].add(sent["headers"]["webhook-id"])

        def latency_s(job):
            finished, created = (datetime.fromisoformat(job[key].replace("Z", "+00:00")) for key in ("finished_at", "created_at"))
            return (finished - created).total_seconds()

        latencies = sorted(latency_s(job) for job in succeeded)
        report = {
            "jobs_submitted": len(ids),
            "succeeded": len(succeeded),
            "failed": sum(job["status"] == "failed" for job in jobs.values()),
            "lost": len(pending),
            "duplicated": sum(len(ids_) > 1 for ids_ in success_events.values()),
            "rerun_after_a_kill": sum(job["attempts"] > 1 for job in jobs.values()),
            "webhook_requests": len(receiver.requests),
            "jobs_with_a_success_webhook": len(success_events),
            "latency_s_p50": round(statistics.median(latencies), 2) if latencies else None,
            "latency_s_p99": round(latencies[int(0.99 * (len(latencies) - 1))], 2) if latencies else None,
            "wall_s": round(time.monotonic() - began, 1),
            **stats,
        }
        print(json.dumps(report, indent=2))
    finally:
        stop.set()
        client.close()
        stack.stop()
        redis.stop()
        drop_database(database_name)


if __name__ == "__main__":
    main()
