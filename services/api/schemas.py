"""Request and response bodies of the public API (API.md)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    field_validator,
    model_validator,
)

from shared.jobs.states import JobStatus, JobTask
from shared.storage.base import InvalidObjectKey
from shared.storage.keys import MAX_KEY_BYTES, check_object_key
from shared.webhooks.events import DEFAULT_EVENTS, INDEX_EVENT_TYPES, JOB_EVENT_TYPES

MAX_METADATA_BYTES = 4096
# Images (or videos) one job takes, in either body form: JSON input.items and multipart file parts.
MAX_JOB_MEDIA = 16


def _refuse_nul(value: Any) -> Any:
    """PostgreSQL text and JSONB cannot hold NUL characters: refuse them at the edge (400), in
    every string of a request body, nested ones included."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("strings must not contain NUL characters")
    elif isinstance(value, dict):
        for key, item in value.items():
            _refuse_nul(key)
            _refuse_nul(item)
    elif isinstance(value, list):
        for item in value:
            _refuse_nul(item)
    return value


class RequestBody(BaseModel):
    """Base of the models clients send."""

    @model_validator(mode="before")
    @classmethod
    def _no_nul_characters(cls, data: Any) -> Any:
        return _refuse_nul(data)


class JobOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_tiles: int = Field(default=12, ge=1, le=40)
    max_tiles_total: int | None = Field(default=None, ge=1, le=400)
    multi_image: Literal["numbered", "combined"] = "numbered"
    max_new_tokens: int = Field(default=512, ge=1, le=4096)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    num_frames: int = Field(default=8, ge=1, le=64)
    start_s: float | None = Field(default=None, ge=0.0)
    end_s: float | None = Field(default=None, ge=0.0)

    @model_validator(mode="after")
    def _bounds_in_order(self) -> JobOptions:
        if self.start_s is not None and self.end_s is not None and self.start_s >= self.end_s:
            raise ValueError("start_s must be before end_s")
        return self


class HistoryTurn(BaseModel):
    user: str
    assistant: str


# API.md's event names; any other would never be sent, so it is refused when the webhook is given.
JobEvent = Literal[JOB_EVENT_TYPES]  # type: ignore[valid-type]
IndexEvent = Literal[INDEX_EVENT_TYPES]  # type: ignore[valid-type]


class WebhookSpec(BaseModel):
    """Where a job's events go. The URL's form and literal address are checked where the job is
    created (``services.api.submission.refuse_unreachable_webhook``), the resolved address at each attempt."""

    url: HttpUrl
    events: list[JobEvent] = Field(default_factory=lambda: list(DEFAULT_EVENTS))


class InputRef(RequestBody):
    """Exactly one of ``url``, ``object_key``, ``upload_id``."""

    model_config = ConfigDict(extra="forbid")

    url: HttpUrl | None = None
    object_key: str | None = Field(
        default=None, min_length=1, max_length=MAX_KEY_BYTES,
        description="A key in the tenant's storage, canonical: segments separated by single '/', "
                    "no '.', '..' or empty segment, no backslash or control character.")
    # An id, never a path: it names a row of the tenant's, and its key is built from it.
    upload_id: str | None = Field(default=None, min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_-]+$")

    @field_validator("object_key")
    @classmethod
    def _canonical_key(cls, value: str | None) -> str | None:
        """Refused for its form alone (400), whoever's objects it points at and whether they exist."""
        if value is not None:
            try:
                check_object_key(value)
            except InvalidObjectKey as error:
                raise ValueError(str(error)) from None
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> InputRef:
        given = [name for name in ("url", "object_key", "upload_id") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of url, object_key, upload_id")
        return self


class JobInput(InputRef):
    items: list[InputRef] | None = Field(default=None, min_length=1, max_length=MAX_JOB_MEDIA)

    @model_validator(mode="after")
    def _exactly_one(self) -> JobInput:
        given = [name for name in ("url", "object_key", "upload_id", "items") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of url, object_key, upload_id, items")
        return self

    def refs(self) -> list[InputRef]:
        return self.items if self.items is not None else [InputRef(url=self.url, object_key=self.object_key, upload_id=self.upload_id)]


class JobSpec(RequestBody):
    """The fields common to both body forms of ``POST /v1/jobs``."""

    model_config = ConfigDict(extra="forbid")

    task: JobTask
    prompt: str | None = Field(default=None, max_length=32_000)
    history: list[HistoryTurn] | None = None
    system: str | None = Field(
        default=None, max_length=32_000,
        description="Task chat only: the system message, in place of the model's own (an extension of API.md).")
    model: str | None = None
    options: JobOptions = Field(default_factory=JobOptions)
    stream: bool = False
    webhook: WebhookSpec | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(value, ensure_ascii=False).encode()) > MAX_METADATA_BYTES:
            raise ValueError(f"metadata is limited to {MAX_METADATA_BYTES} bytes of JSON")
        return value

    @model_validator(mode="after")
    def _task_fields(self) -> JobSpec:
        if self.history and self.task is not JobTask.chat:
            raise ValueError("history is only for task chat")
        if self.system is not None and self.task is not JobTask.chat:
            raise ValueError("system is only for task chat")
        if self.task in (JobTask.vqa, JobTask.grounding, JobTask.chat, JobTask.video_qa) and not (self.prompt or "").strip():
            raise ValueError(f"task {self.task.value} needs a prompt")
        return self


class JobCreate(JobSpec):
    """The JSON body form: the spec plus where its media already is."""

    input: JobInput | None = None


class MediaItemPublic(BaseModel):
    """One input item. Media given by ``url`` shows only its URL until the worker has fetched it."""

    url: str | None = None
    object_key: str | None
    content_type: str | None
    size_bytes: int | None
    sha256: str | None
    width: int | None
    height: int | None
    duration_s: float | None
    fps: float | None


class JobError(BaseModel):
    code: str
    message: str


class BatchLinePublic(BaseModel):
    """The OpenAI-compatible batch a job was made from, and its input line (an extension of API.md)."""

    id: str
    custom_id: str | None
    line: int


class JobPublic(BaseModel):
    id: str
    status: JobStatus
    task: JobTask
    model: str
    prompt: str | None
    history: list[HistoryTurn] | None = None
    system: str | None = None
    batch: BatchLinePublic | None = None
    options: dict[str, Any]
    metadata: dict[str, Any]
    input: dict[str, list[MediaItemPublic]]
    result: dict[str, Any] | None
    error: JobError | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobsPublic(BaseModel):
    data: list[JobPublic]
    next_cursor: str | None


class ImagePlanPublic(BaseModel):
    width: int
    height: int
    tile_grid: tuple[int, int]
    tiles: int


class FramePublic(BaseModel):
    index: int
    time_s: float


class PlanPublic(BaseModel):
    prompt: str
    images: list[ImagePlanPublic]
    frames: list[FramePublic]
    image_tokens: int
    model: str
    # The model's positions and what the prompt takes of them (text and image tokens; null where the
    # API cannot count them): input_tokens + max_new_tokens must fit context_length.
    input_tokens: int | None = None
    context_length: int | None = None


class UploadCreate(RequestBody):
    model_config = ConfigDict(extra="forbid")

    filename: str = Field(min_length=1, max_length=255)
    content_type: str = Field(min_length=1, max_length=100)
    size_bytes: int = Field(gt=0)


class UploadPublic(BaseModel):
    upload_id: str
    url: str
    method: Literal["PUT"] = "PUT"
    headers: dict[str, str]
    expires_at: datetime


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: dict[str, Any]


class ErrorPublic(BaseModel):
    """API.md's error shape (OpenAPI only: errors.py writes it)."""

    error: ErrorDetail


class ModelPublic(BaseModel):
    id: str
    family: str
    llm: str
    template: str
    params: int
    max_tiles: int
    default: bool
    # Extension: "original" (the cards' remote-code layout, mapped by vlmq) or "native" ("-hf").
    format: str
    # Extensions: OpenAI's model object fields, so the openai client's models.list() reads them too.
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "vlmq"


class ModelsPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelPublic]


MAX_INDEX_VIDEOS = 10_000


class IndexWebhookSpec(BaseModel):
    url: HttpUrl
    events: list[IndexEvent] = Field(default_factory=lambda: list(INDEX_EVENT_TYPES))


class IndexVideoRef(InputRef):
    """One video of an index: exactly one of ``url``, ``object_key``, ``upload_id``."""

    external_id: str | None = Field(default=None, min_length=1, max_length=512)


class VideoIndexSpec(RequestBody):
    """The fields of ``POST /v1/video-indexes`` other than the videos (the multipart ``request`` part)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=255)
    segment_s: float = Field(default=10.0, ge=1.0, le=600.0)
    frames_per_segment: int = Field(default=4, ge=1, le=16)
    prompt: str | None = Field(default=None, max_length=4000)
    model: str | None = None
    max_new_tokens: int = Field(default=128, ge=1, le=1024)
    webhook: IndexWebhookSpec | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        return JobSpec._small_metadata(value)


class VideoIndexCreate(VideoIndexSpec):
    videos: list[IndexVideoRef] = Field(min_length=1, max_length=MAX_INDEX_VIDEOS)


class IndexCountsPublic(BaseModel):
    videos_total: int
    videos_done: int
    videos_failed: int
    segments_done: int


class VideoIndexPublic(BaseModel):
    id: str
    name: str
    status: Literal["queued", "running", "succeeded", "failed", "canceled"]
    model: str
    prompt: str | None
    segment_s: float
    frames_per_segment: int
    metadata: dict[str, Any]
    counts: IndexCountsPublic
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class IndexVideoPublic(BaseModel):
    external_id: str
    status: Literal["queued", "running", "succeeded", "failed", "canceled"]
    input: dict[str, Any]
    error: JobError | None
    duration_s: float | None
    segments_total: int | None
    segments_done: int


class IndexVideosPublic(BaseModel):
    data: list[IndexVideoPublic]
    next_cursor: str | None


class SegmentPublic(BaseModel):
    external_id: str
    start_s: float
    end_s: float
    text: str | None
    thumbnail_url: str | None


class SegmentsPublic(BaseModel):
    data: list[SegmentPublic]
    next_cursor: str | None


class ScoredSegmentPublic(SegmentPublic):
    score: float


class SearchPublic(BaseModel):
    data: list[ScoredSegmentPublic]
