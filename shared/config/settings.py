"""One settings class per process role; embedded defaults need no configuration at all.

With no ``VLMQ_`` variables set, everything lives under ``VLMQ_DATA_DIR`` (default ``.run``):
a SQLite database, a local storage directory and the tiny model that ``make demo`` builds.
Production swaps in PostgreSQL, S3 and Redis by URL only.
"""

from __future__ import annotations

import enum
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class Environment(enum.StrEnum):
    development = "development"
    production = "production"


class CommonSettings(BaseSettings):
    """What every process needs: where the database, broker, storage and model are."""

    model_config = SettingsConfigDict(env_prefix="VLMQ_", extra="ignore")

    env: Environment = Environment.development
    data_dir: Path = Path(".run")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite file under data_dir."
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker URL; default: local Redis if reachable, else a file broker.",
    )
    storage_url: str | None = Field(
        default=None,
        description="s3://bucket?endpoint_url=...&region=... or file:///dir; default: data_dir/storage.",
    )
    model_path: Path | None = Field(
        default=None, description="Local checkpoint directory; default: data_dir/models/internvl-tiny."
    )
    model_id: str | None = Field(default=None, description="Public id of the model; default: its directory name.")
    models: dict[str, str] = Field(
        default_factory=dict,
        description='Model registry, JSON: {"internvl2-1b": "/models/InternVL2-1B", "internvl2-8b": '
        '"OpenGVLab/InternVL2-8B"}: a local directory or a hub id each. Empty: the one model_path.',
    )
    default_model: str | None = Field(default=None, description="Model of jobs that name none; default: the first.")
    hub_cache_dir: Path | None = Field(default=None, description="Where hub ids are looked up; default: data_dir/hub.")
    hub_download: bool = Field(default=False, description="Download hub ids that are not in the cache yet.")
    allow_private_networks: bool = False
    # Media limits hold for uploads (API) and for media fetched by URL (worker) alike.
    max_upload_bytes: int = Field(default=2048 * MiB, description="Largest accepted media file.")
    max_image_bytes: int = Field(default=64 * MiB, description="Largest accepted image file.")
    max_image_pixels: int = Field(
        default=8192 * 8192, ge=1,
        description="Most pixels (width × height, read from the header before decoding) an accepted image may have; "
        "more is refused as image_too_large. The default takes an 8192² square or a 50 Mpx photo.")
    media_fetch_timeout_s: float = Field(default=300.0, gt=0, description="Longest a media URL may take to fetch.")
    max_video_duration_s: float = Field(default=4 * 3600.0, gt=0, description="Longest video a job may sample.")
    max_video_side: int = Field(default=8192, gt=0, description="Widest or tallest video frame, in pixels.")
    # The OpenAI-compatible surface: a chat completion body and a batch line are the same request.
    openai_max_request_bytes: int = Field(
        default=64 * MiB, ge=1024,
        description="Largest /v1/chat/completions body and largest batch input line (images as data: URLs).")
    batch_max_lines: int = Field(default=50_000, ge=1, description="Most requests in one batch input file.")
    # Operations: logs and metrics, the same for every process role.
    log_format: Literal["json", "text"] = Field(
        default="json", description="json: one object per line, with job_id on every line about a job."
    )
    log_level: str = Field(default="INFO", description="Python logging level of vlmq's own loggers.")
    metrics_dir: Path | None = Field(
        default=None,
        description="prometheus-client's multiprocess directory (forked workers, several API processes): "
        "empty at start, private to one pod or host. Default: a fresh temporary directory per process tree.",
    )
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535,
        description="Celery workers (inference, frames, notifier): serve /metrics and /healthz on this port. "
        "The API serves both on its own port.",
    )

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'vlmq.db'}"

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or (self.data_dir.resolve() / "storage").as_uri()

    @property
    def resolved_model_path(self) -> Path:
        return (self.model_path or self.data_dir / "models" / "internvl-tiny").resolve()

    @property
    def resolved_model_id(self) -> str:
        return self.model_id or self.resolved_model_path.name.lower()

    @property
    def model_sources(self) -> dict[str, str]:
        """Model id → local directory or hub id, in registry order."""
        return dict(self.models) or {self.resolved_model_id: str(self.resolved_model_path)}

    @property
    def resolved_default_model(self) -> str:
        return self.default_model or next(iter(self.model_sources))

    @property
    def resolved_hub_cache_dir(self) -> Path:
        return (self.hub_cache_dir or self.data_dir / "hub").resolve()

    @model_validator(mode="after")
    def _default_model_is_registered(self) -> CommonSettings:
        if self.default_model and self.default_model not in self.model_sources:
            raise ValueError(f"VLMQ_DEFAULT_MODEL={self.default_model!r} is not in VLMQ_MODELS")
        return self

    @model_validator(mode="after")
    def _refuse_unsafe_production_values(self) -> CommonSettings:
        if self.env is Environment.production:
            if self.allow_private_networks:
                raise ValueError("VLMQ_ALLOW_PRIVATE_NETWORKS is for development and tests only")
            missing = [name for name in ("database_url", "broker_url", "storage_url") if not getattr(self, name)]
            if missing:
                raise ValueError(f"production needs explicit {', '.join('VLMQ_' + m.upper() for m in missing)}")
        return self


class TenantLimits(BaseModel):
    """One tenant's overrides of the API's job-creation limits; a field left out keeps the default."""

    model_config = ConfigDict(extra="forbid")

    jobs_per_minute: int | None = Field(default=None, ge=0, description="0: no rate limit for this tenant.")
    max_queued_jobs: int | None = Field(default=None, ge=0, description="0: no cap for this tenant.")


class ApiSettings(CommonSettings):
    """The ingest API."""

    api_keys: str = Field(default="", description="Comma-separated tenant:key pairs.")
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_workers: int = Field(default=1, ge=1, description="API server processes.")
    api_worker_healthcheck_s: int = Field(
        default=30, ge=1, description="With several API processes: how long uvicorn's supervisor waits for one to "
        "answer its health ping before it kills and replaces it (uvicorn's own default, 5 s, kills busy processes "
        "on a loaded machine, dropping their open connections).")
    api_access_log: bool = Field(default=True, description="uvicorn's per-request access log lines.")
    # What one connection may hold (services.api.http_protocol): a slow or oversized request is cut off.
    api_max_header_bytes: int = Field(
        default=64 * 1024, ge=4096, description="Largest request head (request line and headers, which bounds "
        "their number too); a larger one is answered 431 and the connection closed.")
    api_header_timeout_s: float = Field(
        default=10.0, gt=0, description="How long a connection may take to send a whole request head, from its "
        "start or the first byte of its next request; then it is closed.")
    api_body_idle_timeout_s: float = Field(
        default=60.0, gt=0, description="How long a request body may stop arriving (while the API waits for it) "
        "before the connection is closed.")
    api_max_concurrency: int = Field(
        default=1000, ge=0, description="Connections and requests one API process serves at once; beyond, new "
        "requests get 503 (uvicorn's limit_concurrency). 0: unlimited.")
    upload_url_ttl_s: int = 3600
    public_url: str | None = Field(
        default=None, description="Base URL clients use to reach the API (for local-storage upload URLs)."
    )
    # Per-tenant limits on job creation (services.api.limits); 0 turns a limit off.
    jobs_per_minute: int = Field(
        default=600, ge=0,
        description="Jobs (and video indexes) a tenant may create per minute, over a sliding minute; "
        "0: unlimited. Counted in the broker's Redis when it is Redis, so all API processes share it.",
    )
    max_queued_jobs: int = Field(
        default=10_000, ge=0, description="Jobs a tenant may have waiting in status queued; 0: unlimited."
    )
    tenant_limits: dict[str, TenantLimits] = Field(
        default_factory=dict,
        description='Per-tenant overrides, JSON: {"acme": {"jobs_per_minute": 60, "max_queued_jobs": 100}}.',
    )
    chat_completion_wait_s: float = Field(
        default=600.0, gt=0,
        description="How long POST /v1/chat/completions holds a request for its job (the openai client's own "
        "timeout is 600 s); after that it answers 504 naming the job, which runs on.")
    batch_max_file_bytes: int = Field(default=200 * MiB, ge=1024, description="Largest batch input file.")

    @model_validator(mode="after")
    def _refuse_keyless_production(self) -> ApiSettings:
        if self.env is Environment.production and not self.api_keys.strip():
            raise ValueError("VLMQ_API_KEYS is required outside development")
        return self


class WorkerSettings(CommonSettings):
    """The inference worker."""

    device: str = Field(default="auto", description="cpu, cuda, or auto.")
    dtype: str = Field(default="auto", description="float32, bfloat16, float16 or auto.")
    serve_models: list[str] = Field(
        default_factory=list,
        description='Model ids this worker loads and whose queues it consumes, JSON list; default: all.',
    )
    load_in_8bit: bool = Field(default=False, description="8-bit LLM weights (needs a GPU and bitsandbytes).")
    # Crash safety: a running job's lease is renewed every heartbeat_s; a reaper in every worker
    # requeues jobs whose lease lapsed (their worker died) and re-publishes queued jobs whose
    # message the broker lost. lease_s + reaper_interval_s bounds how late a crash is noticed.
    lease_s: float = Field(default=30.0, gt=0)
    heartbeat_s: float = Field(default=5.0, gt=0)
    reaper_interval_s: float = Field(default=10.0, gt=0)
    requeue_after_s: float = Field(default=60.0, gt=0, description="A queued job unseen this long is re-published.")
    job_timeout_s: float = Field(default=900.0, gt=0, description="A job running longer fails with code timeout.")
    task_timeouts_s: dict[str, float] = Field(
        default_factory=dict, description='Per-task overrides of job_timeout_s, JSON: {"chat": 120, "caption": 60}.'
    )
    max_attempts: int = Field(default=3, ge=1, description="Attempts for transient failures (storage hiccups).")
    retry_backoff_s: float = Field(default=2.0, gt=0, description="First retry delay; doubles per attempt.")
    # Continuous batching: each served model's engine decodes up to batch_max_jobs rows per step.
    batch_max_jobs: int = Field(
        default=16, ge=1, le=256, description="Most jobs decoding together per model (1: one job at a time).")
    batch_max_tiles: int = Field(
        default=96, ge=1, description="Most image tiles (448×448 each, thumbnails and video frames included) "
        "through the vision tower per engine step; a job over it alone still runs, alone.",
    )
    engine_kv_tokens: int = Field(
        default=65_536, ge=256, description="KV-cache tokens one model's running jobs may reserve (each its prompt "
        "and its whole max_new_tokens); also bounds the claimed jobs waiting for the engine.",
    )
    engine_prefill_tokens: int = Field(
        default=8192, ge=64, description="Prompt tokens prefilled per engine step (a longer prompt alone still "
        "runs), so a long prompt holds the running jobs back for one prefill at most.",
    )
    preprocess_threads: int = Field(default=4, ge=1, description="Requests of an index batch tiled at once.")
    shutdown_drain_s: float = Field(
        default=60.0, ge=0,
        description="On SIGTERM the worker takes no new job and gives running ones this long to finish; "
        "past it, they are handed back to the queue (another worker runs them from the start).",
    )

    @model_validator(mode="after")
    def _heartbeat_well_inside_the_lease(self) -> WorkerSettings:
        if self.heartbeat_s * 2 > self.lease_s:
            raise ValueError("VLMQ_HEARTBEAT_S must be at most half of VLMQ_LEASE_S, or healthy jobs lose their lease")
        return self

    def timeout_for(self, task: str) -> float:
        return self.task_timeouts_s.get(task, self.job_timeout_s)

    @property
    def served_models(self) -> list[str]:
        unknown = sorted(set(self.serve_models) - set(self.model_sources))
        if unknown:
            raise ValueError(f"VLMQ_SERVE_MODELS names models not in the registry: {', '.join(unknown)}")
        return self.serve_models or list(self.model_sources)


class FramesSettings(CommonSettings):
    """The frames worker: decodes and samples video frames on CPUs, ahead of the GPU worker."""

    decode_threads: int = Field(default=0, ge=0, description="Decoder threads per video; 0: one per CPU.")
    frame_reader: Literal["decord", "pyav"] = Field(
        default="pyav",
        description="pyav: the same pixels as decord (the cards' decoder), with the non-reference frames no "
        "sampled frame needs skipped (2-3x faster, bench/video_decode.py); decord: one reader per keyframe run. "
        "decord always counts the frames and the rate, and reads whatever the other cannot.",
    )
    index_batch_segments: int = Field(default=8, ge=1, le=64, description="Index segments captioned per task.")
    index_lease_s: float = Field(default=120.0, gt=0, description="How long a video being cut may go unheard of.")
    max_attempts: int = Field(default=3, ge=1, description="Attempts for transient failures (storage hiccups).")
    retry_backoff_s: float = Field(default=2.0, gt=0, description="First retry delay; doubles per attempt.")
    batch_chunk_lines: int = Field(
        default=500, ge=1, le=5000, description="Batch input lines turned into jobs per transaction.")
    batch_sweep_s: float = Field(
        default=1.0, gt=0,
        description="How often the frames worker looks for batches to finish, cancel, expire or hand on.")
    batch_lease_s: float = Field(default=120.0, gt=0, description="How long a batch being expanded may go unheard of.")
    batch_queued_jobs: int = Field(
        default=2000, ge=1,
        description="A tenant's queued jobs above which its batches stop adding more until the queue drains: "
        "a 50,000-line batch is fed in, never dumped ahead of everyone's interactive jobs.")


@lru_cache
def get_frames_settings() -> FramesSettings:
    return FramesSettings()


class NotifierSettings(CommonSettings):
    """The webhook notifier."""

    notifier_poll_s: float = Field(default=0.5, gt=0, description="How often due deliveries are looked for.")
    # 1.0 keeps API.md's schedule (5 s, 5 min, 30 min, …); tests shrink it to see several attempts.
    webhook_retry_scale: float = Field(default=1.0, gt=0)
    webhook_tenant_concurrency: int = Field(
        default=4, ge=1,
        description="Most delivery attempts one tenant has in flight at once, over every notifier process: "
        "a tenant's slow receivers hold no more senders than this; its further deliveries wait their turn.")


@lru_cache
def get_notifier_settings() -> NotifierSettings:
    return NotifierSettings()


@lru_cache
def get_common_settings() -> CommonSettings:
    return CommonSettings()


@lru_cache
def get_api_settings() -> ApiSettings:
    return ApiSettings()


@lru_cache
def get_worker_settings() -> WorkerSettings:
    return WorkerSettings()
