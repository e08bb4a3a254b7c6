"""Worker throughput, measured the way traffic comes: jobs arriving over time, mixed sizes and
output lengths, against a worker that is already up.

    python bench/worker_throughput.py [--jobs 40] [--rate 2] [--seed 7] [--batch 16] [--size small]
    python bench/worker_throughput.py --pre-queued [--jobs 48] [--max-new-tokens 24]   # the older measurement

Open loop (the default): the API, PostgreSQL, Redis and one inference worker, warmed up (each model
loaded, one job run); then ``--jobs`` jobs submitted over HTTP at seeded Poisson times (``--rate``
per second; an arrival never waits for an earlier job). Jobs: captions, questions and groundings
on JPEGs from a 128×128 thumbnail to 4K (``max_tiles`` 6, every sixth about two images), greedy,
``max_new_tokens`` 8 / 48 / 160 for 50 / 30 / 20 % of them. Three workers in turn, on the same
arrivals: ``VLMQ_BATCH_MAX_JOBS=1`` (one job at a time, the baseline), the engine
(``--batch``), and the engine serving the jobs split over two models. Prints jobs/s, generated
tokens/s, p50/p99 latency (created to finished) per length class, mean rows per decode step and the
engine's idle share (from the worker's log), and the ratios against the baseline. Targets on CPU:
≥ 1.6× jobs/s, ≤ 0.5× short-answer p50 latency, ≥ 3 mean rows with two models.

``--pre-queued``: every job queued before the worker starts, against the model cards' pattern
(one request at a time, its own preprocessing, one ``generate`` each) in this process, with the
ceiling on the ratio (the baseline's time over its time with one new token per job: what batching
decode steps cannot save); with ``--device cuda``, vision tiles/s and their share of an H100's dense
bf16 roofline (989 TFLOP/s). It overstates batching: real arrivals never form such a backlog.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from bench.harness import API_KEY, api_stack
from tests.support.media import submit
from tests.support.services import REPO_ROOT, wait_until
from tests.test_preprocess_reference import photo_like_jpeg

SIZES = [(128, 128), (640, 480), (1280, 720), (1920, 1080), (3840, 2160)]
MAX_TILES = 6
H100_BF16_DENSE_FLOPS = 989e12


def workload(count: int, max_new_tokens: int) -> list[dict]:
    jobs = []
    for number in range(count):
        task = ("caption", "vqa", "grounding")[number % 3]
        images = [photo_like_jpeg(*SIZES[number % len(SIZES)], seed=number)]
        if number % 6 == 1:  # a question about two images
            images.append(photo_like_jpeg(*SIZES[(number + 2) % len(SIZES)], seed=number + 1000))
        prompt = {"caption": None, "vqa": "What is in the picture?", "grounding": "the bright corner"}[task]
        jobs.append({"task": task, "prompt": prompt, "images": images,
                     "options": {"max_new_tokens": max_new_tokens, "max_tiles": MAX_TILES}})
    return jobs


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def wait_for_every_job(client: httpx.Client, ids: list[str], *, interval_s: float) -> list[dict]:
    """Every job once all ended; a failed one ends the benchmark with its error."""
    def all_done() -> list[dict] | None:
        found = [client.get(f"/v1/jobs/{job_id}").json() for job_id in ids]
        return found if all(job["status"] in ("succeeded", "failed") for job in found) else None

    done = wait_until(all_done, timeout_s=3600, interval_s=interval_s, what="every job")
    failed = [job["error"] for job in done if job["status"] != "succeeded"]
    if failed:
        raise SystemExit(f"{len(failed)} jobs failed: {failed[:3]}")
    return done


def at(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def run_baseline(model_dir: Path, jobs: list[dict], device: str, *, max_new_tokens: int | None = None) -> dict:
    """The cards' pattern: one request at a time, its own preprocessing, one generate each
    (``max_new_tokens`` overrides the jobs' own: 1 times what no batching of decode steps can save)."""
    import torch

    from tests.support.reference_preprocess import reference_pixel_values
    from workers.inference.runtime.loading import LoadOptions
    from workers.inference.runtime.model import InternVLRuntime
    from workers.inference.runtime.prompts import (
        build_prompt,
        expand_image_placeholders,
        question_for,
    )

    runtime = InternVLRuntime.load(model_dir, LoadOptions(device=device))
    latencies, tokens, tiles = [], 0, 0
    started = time.perf_counter()
    for job in jobs:
        pixel_values = torch.cat([reference_pixel_values(data, MAX_TILES) for data in job["images"]])
        counts = [len(reference_pixel_values(data, MAX_TILES)) for data in job["images"]] if len(job["images"]) > 1 \
            else [len(pixel_values)]
        prompt = build_prompt(runtime.template, question=question_for(job["task"], job["prompt"]),
                              n_images=len(job["images"]), multi_image="numbered",
                              system_message=runtime.checkpoint.system_message)
        encoded = runtime.tokenizer(expand_image_placeholders(prompt, counts), return_tensors="pt").to(runtime.device)
        with torch.inference_mode():
            output = runtime.model.generate(**encoded, pixel_values=pixel_values.to(runtime.device, runtime.dtype),
                                            max_new_tokens=max_new_tokens or job["options"]["max_new_tokens"],
                                            do_sample=False,
                                            eos_token_id=runtime.stop_token_id, pad_token_id=runtime.tokenizer.pad_token_id)
        tokens += output.shape[1] - encoded["input_ids"].shape[1]
        tiles += len(pixel_values)
        latencies.append(time.perf_counter() - started)
    elapsed = time.perf_counter() - started
    return {"jobs_per_s": len(jobs) / elapsed, "tokens_per_s": tokens / elapsed, "tiles_per_s": tiles / elapsed,
            "p50_latency_s": percentile(latencies, 50), "p99_latency_s": percentile(latencies, 99), "seconds": elapsed}


def run_vlmq(model_dir: Path, jobs: list[dict], device: str, batch: int, data_dir: Path) -> dict:
    extra = {"VLMQ_MODELS": json.dumps({"bench-model": str(model_dir)}), "VLMQ_DEVICE": device,
             "VLMQ_BATCH_MAX_JOBS": str(batch), "VLMQ_MAX_IMAGE_BYTES": str(64 * 1024 * 1024),
             "VLMQ_API_ACCESS_LOG": "false", "VLMQ_JOB_TIMEOUT_S": "3600"}
    with api_stack(data_dir, extra=extra) as stack:
        with httpx.Client(base_url=stack.api_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as client:
            # Every job queued before the worker starts, as the baseline has every request at once;
            # timed from the worker's first job (its model loaded) to its last.
            ids = []
            for job in jobs:
                request = {"task": job["task"], "options": job["options"]} | ({"prompt": job["prompt"]} if job["prompt"] else {})
                ids.append(submit(client, request, *job["images"], filename="image.jpg").json()["id"])
            worker = stack.add_worker("worker-measured")
            done = wait_for_every_job(client, ids, interval_s=1.0)
        worker.stop()
    first, last = min(at(job["started_at"]) for job in done), max(at(job["finished_at"]) for job in done)
    elapsed = last - first
    latencies = [at(job["finished_at"]) - first for job in done]
    batches = {job["result"]["batch"]["id"]: job["result"]["batch"]["size"] for job in done}
    return {"jobs_per_s": len(done) / elapsed,
            "tokens_per_s": sum(job["result"]["usage"]["output_tokens"] for job in done) / elapsed,
            "tiles_per_s": sum(job["result"]["usage"]["tiles"] for job in done) / elapsed,
            "p50_latency_s": percentile(latencies, 50), "p99_latency_s": percentile(latencies, 99), "seconds": elapsed,
            "model_calls": len(batches), "mean_batch": statistics.mean(batches.values())}


def vision_flops_per_tile(model_dir: Path) -> float:
    """Dense FLOPs of one 448×448 tile through the vision encoder (matmuls and attention)."""
    vision = json.loads((model_dir / "config.json").read_text())["vision_config"]
    tokens, width, layers = (448 // 14) ** 2 + 1, vision["hidden_size"], vision["num_hidden_layers"]
    per_layer = 2 * tokens * (4 * width * width + 2 * width * vision["intermediate_size"]) + 4 * tokens * tokens * width
    return layers * per_layer


LENGTH_CLASSES = [(8, 0.5), (48, 0.3), (160, 0.2)]  # max_new_tokens and share: most answers short


def open_loop_workload(count: int, seed: int) -> list[dict]:
    """The mixed jobs of ``workload`` with output lengths drawn per job from LENGTH_CLASSES."""
    rng = random.Random(seed)
    jobs = workload(count, 8)
    for job in jobs:
        job["options"] = {**job["options"], "max_new_tokens": rng.choices(
            [tokens for tokens, _ in LENGTH_CLASSES], [share for _, share in LENGTH_CLASSES])[0]}
    return jobs


def run_open_loop(model_dir: Path, jobs: list[dict], *, batch: int, models: int, rate: float, seed: int,
                  device: str, data_dir: Path) -> dict:
    """One worker, ready before the first job; jobs submitted at seeded Poisson times (open loop:
    an arrival never waits for an earlier job), alternating over ``models`` registered models."""
    names = [f"bench-model-{number}" for number in range(models)]
    extra = {"VLMQ_MODELS": json.dumps({name: str(model_dir) for name in names}), "VLMQ_DEVICE": device,
             "VLMQ_BATCH_MAX_JOBS": str(batch), "VLMQ_MAX_IMAGE_BYTES": str(64 * 1024 * 1024),
             "VLMQ_API_ACCESS_LOG": "false", "VLMQ_JOB_TIMEOUT_S": "3600"}
    rng = random.Random(seed)
    with api_stack(data_dir, extra=extra) as stack:
        worker = stack.add_worker(f"worker-{batch}-{models}")
        with httpx.Client(base_url=stack.api_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as client:
            for name in names:  # every model loaded and its engine warm before the clock starts
                warm = client.post("/v1/jobs", json={"task": "chat", "prompt": "Hi", "model": name,
                                                     "options": {"max_new_tokens": 2}}).json()["id"]
                wait_until(lambda warm=warm: client.get(f"/v1/jobs/{warm}").json()["status"] == "succeeded",
                           timeout_s=600, interval_s=0.2, what="the worker to warm up")
            ids, started = [], time.perf_counter()
            due = 0.0
            for number, job in enumerate(jobs):
                due += rng.expovariate(rate)
                time.sleep(max(0.0, started + due - time.perf_counter()))
                request = {"task": job["task"], "options": job["options"], "model": names[number % models]}
                request |= {"prompt": job["prompt"]} if job["prompt"] else {}
                ids.append(submit(client, request, *job["images"], filename="image.jpg").json()["id"])
            done = wait_for_every_job(client, ids, interval_s=0.5)
        worker.stop()
        stats = re.findall(r"engine (\S+): (\d+) decode steps, ([\d.]+) mean rows, idle share ([\d.]+)",
                           worker.log_path.read_text())
    first, last = min(at(job["created_at"]) for job in done), max(at(job["finished_at"]) for job in done)
    by_class: dict[int, list[float]] = {}
    for job in done:
        by_class.setdefault(job["options"]["max_new_tokens"], []).append(at(job["finished_at"]) - at(job["created_at"]))
    latest = {name: (int(steps), float(rows), float(idle)) for name, steps, rows, idle in stats}
    steps = sum(value[0] for value in latest.values())
    return {
        "jobs_per_s": len(done) / (last - first),
        "tokens_per_s": sum(job["result"]["usage"]["output_tokens"] for job in done) / (last - first),
        "latency_s": {str(tokens): {"p50": round(percentile(values, 50), 2), "p99": round(percentile(values, 99), 2)}
                      for tokens, values in sorted(by_class.items())},
        "mean_rows_per_decode_step": round(sum(v[0] * v[1] for v in latest.values()) / steps, 2) if steps else None,
        "engine_idle_share": round(max((v[2] for v in latest.values()), default=0.0), 3),
        "mean_job_rows": round(statistics.mean(job["result"]["batch"]["mean_rows"] for job in done), 2),
    }


def open_loop_main(arguments, model_dir: Path) -> None:
    jobs = open_loop_workload(arguments.jobs, arguments.seed)
    sides = {}
    with tempfile.TemporaryDirectory(prefix="vlmq-open-loop-") as scratch:
        for label, batch, models in (("one_job_at_a_time", 1, 1), ("engine", arguments.batch, 1),
                                     ("engine_two_models", arguments.batch, 2)):
            sides[label] = run_open_loop(model_dir, jobs, batch=batch, models=models, rate=arguments.rate,
                                         seed=arguments.seed, device=arguments.device, data_dir=Path(scratch) / label)
            print(label, json.dumps(sides[label]), flush=True)
    short = str(LENGTH_CLASSES[0][0])
    base = sides["one_job_at_a_time"]
    report = {
        "benchmark": "worker_throughput_open_loop", "size": arguments.size, "device": arguments.device,
        "jobs": arguments.jobs, "rate_jobs_per_s": arguments.rate, "seed": arguments.seed, "batch": arguments.batch,
        "sides": sides,
        "ratio_jobs_per_s": round(sides["engine"]["jobs_per_s"] / base["jobs_per_s"], 2),
        "ratio_short_p50_latency": round(sides["engine"]["latency_s"][short]["p50"] / base["latency_s"][short]["p50"], 2),
        "targets": {"ratio_jobs_per_s": ">= 1.6", "ratio_short_p50_latency": "<= 0.5",
                    "two_models_mean_rows_per_decode_step": ">= 3"},
    }
    print(json.dumps(report, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=48)
    parser.add_argument("--size", default="small", choices=["small", "1b", "4b", "8b"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--batch", type=int, default=16, help="VLMQ_BATCH_MAX_JOBS of the worker")
    parser.add_argument("--pre-queued", action="store_true",
                        help="the older measurement: every job queued before the worker starts, against the "
                             "cards' pattern in this process")
    parser.add_argument("--rate", type=float, default=2.0, help="open loop: mean arrivals per second (Poisson)")
    parser.add_argument("--seed", type=int, default=7)
    arguments = parser.parse_args()

    from workers.inference.tiny_model import build_tiny_model

    model_dir = REPO_ROOT / ".run" / "bench" / "models" / f"internvl-{arguments.size}"
    if not (model_dir / "config.json").exists():
        build_tiny_model(model_dir, size=arguments.size)
    if not arguments.pre_queued:
        return open_loop_main(arguments, model_dir)
    jobs = workload(arguments.jobs, arguments.max_new_tokens)
    baseline = run_baseline(model_dir, jobs, arguments.device)
    # Preprocessing, the vision tower and the prefill cost every job the same on both sides; batching
    # saves decode steps. With decode free, vlmq could be at most this many times the baseline.
    unbatchable = run_baseline(model_dir, jobs, arguments.device, max_new_tokens=1)["seconds"]
    with tempfile.TemporaryDirectory(prefix="vlmq-throughput-") as scratch:
        ours = run_vlmq(model_dir, jobs, arguments.device, arguments.batch, Path(scratch))
    report = {
        "benchmark": "worker_throughput", "size": arguments.size, "device": arguments.device, "jobs": arguments.jobs,
        "max_new_tokens": arguments.max_new_tokens, "max_tiles": MAX_TILES, "batch": arguments.batch,
        "cards_pattern": {key: round(value, 3) for key, value in baseline.items()},
        "vlmq": {key: round(value, 3) for key, value in ours.items()},
        "ratio_jobs_per_s": round(ours["jobs_per_s"] / baseline["jobs_per_s"], 2),
        "ratio_tokens_per_s": round(ours["tokens_per_s"] / baseline["tokens_per_s"], 2),
        "preprocess_vision_prefill_s": round(unbatchable, 2),
        "ceiling_ratio_if_decode_were_free": round(baseline["seconds"] / unbatchable, 2),
        "target_ratio_cpu": 3.0,
    }
    if arguments.device == "cuda":
        flops = vision_flops_per_tile(model_dir)
        report["vision_roofline_fraction"] = {
            name: round(side["tiles_per_s"] * flops / H100_BF16_DENSE_FLOPS, 4)
            for name, side in (("cards_pattern", baseline), ("vlmq", ours))
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
