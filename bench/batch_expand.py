"""How fast a batch file becomes jobs, and in how much memory, against submitting the same jobs one
request at a time, in one run.

    python bench/batch_expand.py [--lines 50000] [--baseline-jobs 5000] [--concurrency 8]

The batch path: the openai client uploads an N-line JSONL file (streamed to S3), creates a batch,
and the frames worker turns the lines into chat jobs (500 per transaction, PostgreSQL, Redis). No
inference worker runs, so jobs stay queued and only the expansion is timed. The baseline: the same
kind of chat job sent as ``POST /v1/jobs`` over keep-alive connections. Memory: the frames worker's
peak resident size after a batch of N/10 lines and after one of N lines; streaming keeps the two
close (the file is never held whole).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import openai
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import API_KEY, api_stack, s3_storage
from bench.loadgen import post_json_rate
from shared.db.engine import session_scope
from shared.db.models import Job
from workers.inference.tiny_model import build_tiny_model


def batch_file(lines: int) -> bytes:
    return "".join(
        json.dumps({"custom_id": f"r{n}", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": "internvl-tiny", "max_tokens": 64,
                             "messages": [{"role": "user", "content": f"Summarise document {n} in one line."}]}}) + "\n"
        for n in range(lines)
    ).encode()


def peak_rss_mb(pid: int) -> float:
    """The largest peak resident size among a process and its children (the prefork pool)."""
    peaks = []
    for status in [Path(f"/proc/{pid}/status"), *Path("/proc").glob("[0-9]*/status")]:
        try:
            text = status.read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if status.parent.name == str(pid) or fields.get("PPid", "").strip() == str(pid):
            peaks.append(int(fields.get("VmHWM", "0 kB").split()[0]) / 1024)
    return max(peaks, default=0.0)


def expand(client: openai.OpenAI, database_url: str, lines: int) -> tuple[float, float]:
    """(seconds to upload the file, seconds from batch creation until every line is a job)."""
    content = batch_file(lines)
    started = time.perf_counter()
    uploaded = client.files.create(file=("bench.jsonl", content), purpose="batch")
    uploaded_s = time.perf_counter() - started
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    started = time.perf_counter()
    while True:
        with session_scope(database_url) as session:
            made = session.scalar(select(func.count()).where(Job.batch_id == batch.id))
        if made >= lines:
            return uploaded_s, time.perf_counter() - started
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--baseline-jobs", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, default=8)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory, s3_storage() as storage_url:
        model_dir = Path(directory) / "models" / "internvl-tiny"
        build_tiny_model(model_dir)
        extra = {"VLMQ_MODELS": json.dumps({"internvl-tiny": str(model_dir)}), "VLMQ_MAX_QUEUED_JOBS": "0",
                 "VLMQ_BATCH_QUEUED_JOBS": str(10 * arguments.lines)}
        with api_stack(Path(directory) / "stack", storage_url=storage_url, extra=extra) as stack:
            frames = stack._celery("frames", "workers.frames.celery_app", pool="prefork", concurrency=1)
            stack.processes.append(frames)
            time.sleep(5)
            database_url = stack.env["VLMQ_DATABASE_URL"]
            client = openai.OpenAI(api_key=API_KEY, base_url=f"{stack.api_url}/v1", max_retries=0, timeout=600)

            body = json.dumps({"task": "chat", "prompt": "Summarise this document in one line.",
                               "options": {"max_new_tokens": 64}}).encode()
            api_rate = post_json_rate(f"{stack.api_url}/v1/jobs", body, {"Authorization": f"Bearer {API_KEY}"},
                                      requests=arguments.baseline_jobs, connections=arguments.concurrency, expect=202)
            small_lines = max(arguments.lines // 10, 1)
            expand(client, database_url, small_lines)
            small_rss = peak_rss_mb(frames.process.pid)
            upload_s, expand_s = expand(client, database_url, arguments.lines)
            large_rss = peak_rss_mb(frames.process.pid)
    batch_rate = arguments.lines / expand_s
    report = {
        "benchmark": "batch_expand",
        "lines": arguments.lines,
        "file_mb": round(len(batch_file(arguments.lines)) / 2**20, 1),
        "upload_s": round(upload_s, 2),
        "expansion_s": round(expand_s, 1),
        "batch_jobs_per_s": round(batch_rate, 1),
        "api_jobs_per_s": round(api_rate, 1),
        "ratio_batch_to_api": round(batch_rate / api_rate, 2),
        "frames_worker_peak_rss_mb": {f"{small_lines}_lines": round(small_rss, 1),
                                      f"{arguments.lines}_lines": round(large_rss, 1)},
        "rss_ratio_large_to_small": round(large_rss / small_rss, 2) if small_rss else None,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
