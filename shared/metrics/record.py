"""What processes record, in the words of their own work (jobs, batches, deliveries)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from shared.metrics import series


def job_created(task: str, model: str) -> None:
    series.JOBS_CREATED.labels(task, model).inc()


def job_finished(task: str, model: str, outcome: str) -> None:
    series.JOBS_FINISHED.labels(task, model, outcome).inc()


def job_stages(task: str, model: str, timings_ms: dict[str, float]) -> None:
    """The stages of a succeeded job, from its result's ``timings_ms``."""
    series.JOB_QUEUE_WAIT.labels(task, model).observe(timings_ms["queue"] / 1000)
    series.JOB_PREPROCESS.labels(task, model).observe(timings_ms["preprocess"] / 1000)
    series.JOB_INFERENCE.labels(task, model).observe(timings_ms["inference"] / 1000)


def batch_ran(model: str, results: Sequence) -> None:
    """Calls of the model (each result names its call): their sizes, the tokens read and written;
    GPU memory after them."""
    for size in {result.batch_id: result.batch_size for result in results}.values():
        series.BATCH_SIZE.labels(model).observe(size)
    series.GENERATED_TOKENS.labels(model).inc(sum(result.output_tokens for result in results))
    series.PROMPT_TOKENS.labels(model).inc(sum(result.input_tokens for result in results))
    gpu_memory()


def gpu_memory() -> None:
    """Memory of every visible GPU, when torch is loaded and has one (never imports torch)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return
    for index in range(torch.cuda.device_count()):
        device = f"cuda:{index}"
        series.GPU_MEMORY_ALLOCATED.labels(device).set(torch.cuda.memory_allocated(index))
        series.GPU_MEMORY_RESERVED.labels(device).set(torch.cuda.memory_reserved(index))


def webhook_attempt(outcome: str) -> None:
    series.WEBHOOK_DELIVERIES.labels(outcome).inc()
