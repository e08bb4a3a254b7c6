"""Every series vlmq exports, in one place; processes record into them, ``exposition`` serves them.

Labels stay bounded: task and model come from the registry and the task list, routes are route
templates, outcomes and queues are fixed sets.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram  # multiprocess: shared.metrics chose the directory

# Seconds: from a fast API call to the longest job a deployment allows.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
JOB_STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

HTTP_REQUESTS = Counter(
    "vlmq_http_requests", "API requests, by route template and status.", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "vlmq_http_request_duration_seconds", "API request latency, to the end of the response body.",
    ["method", "route"], buckets=LATENCY_BUCKETS,
)

JOBS_CREATED = Counter("vlmq_jobs_created", "Jobs accepted by the API.", ["task", "model"])
JOBS_FINISHED = Counter(
    "vlmq_jobs_finished", "Jobs that reached a final status: succeeded, failed or canceled.",
    ["task", "model", "outcome"],
)
JOB_QUEUE_WAIT = Histogram(
    "vlmq_job_queue_wait_seconds", "From creation to the start of the attempt that succeeded.",
    ["task", "model"], buckets=JOB_STAGE_BUCKETS,
)
JOB_PREPROCESS = Histogram(
    "vlmq_job_preprocess_seconds", "Media loading, tiling and prompt building on the GPU worker.",
    ["task", "model"], buckets=JOB_STAGE_BUCKETS,
)
JOB_INFERENCE = Histogram(
    "vlmq_job_inference_seconds", "The model's forward passes and generation.",
    ["task", "model"], buckets=JOB_STAGE_BUCKETS,
)
BATCH_SIZE = Histogram(
    "vlmq_batch_size", "Requests the model ran together (a job, or an index's segments).",
    ["model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
GENERATED_TOKENS = Counter("vlmq_generated_tokens", "Tokens the model generated.", ["model"])
PROMPT_TOKENS = Counter("vlmq_prompt_tokens", "Prompt tokens, image tokens included, the model read.", ["model"])

WEBHOOK_DELIVERIES = Counter(
    "vlmq_webhook_delivery_attempts",
    "Webhook delivery attempts by outcome: delivered, retrying, failed (gave up or refused), disabled (410).",
    ["outcome"],
)

# Summed over the live pool processes of a worker that share a GPU.
GPU_MEMORY_ALLOCATED = Gauge(
    "vlmq_gpu_memory_allocated_bytes", "GPU memory held by tensors.", ["device"], multiprocess_mode="livesum"
)
GPU_MEMORY_RESERVED = Gauge(
    "vlmq_gpu_memory_reserved_bytes", "GPU memory reserved by torch's caching allocator.", ["device"],
    multiprocess_mode="livesum",
)

QUEUE_DEPTH = "vlmq_queue_depth"  # read from the broker when scraped (exposition.QueueDepthCollector)
