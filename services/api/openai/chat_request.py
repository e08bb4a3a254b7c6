"""An OpenAI chat completion request, read and turned into a vlmq ``chat`` job.

Both the synchronous route and every line of a batch go through here, so the two agree on what a
request means. The mapping:

- ``system`` and ``developer`` messages become the job's system message (the template's system
  slot), joined in order;
- user and assistant turns become the job's ``history`` and final ``prompt`` (consecutive
  messages of one role are joined); the conversation must end with a user message;
- every ``image_url`` part (a ``data:`` URL or an http(s) URL, fetched by the worker through the
  outbound guard) becomes one of the job's images, in order. Its placeholder goes at the start of
  the message that holds it: ``<image>\\n`` for a lone image, ``Image-N: <image>\\n`` for each of
  several (the cards' multi-image convention, numbered across the whole conversation);
- ``detail: "low"`` on every image means one tile each (the thumbnail), as OpenAI's low detail
  means one fixed-size view; otherwise InternVL's dynamic tiling with its default budget;
- ``max_completion_tokens`` (or the older ``max_tokens``) → ``max_new_tokens``; ``temperature`` and
  ``top_p`` as given. Without ``temperature`` decoding is greedy, as the InternVL cards do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from services.api.errors import ValidationFailed
from services.api.request_body import validation_failure
from services.api.schemas import HistoryTurn, JobOptions, JobSpec, RequestBody
from shared.jobs import JobTask

MAX_NEW_TOKENS = 4096  # JobOptions' own bound
_ROLES_OF_SYSTEM = ("system", "developer")


class ImageUrl(BaseModel):
    model_config = ConfigDict(extra="ignore")

    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["image_url"]
    image_url: ImageUrl


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content if isinstance(part, TextPart))

    def images(self) -> list[ImageUrl]:
        if isinstance(self.content, str):
            return []
        return [part.image_url for part in self.content if isinstance(part, ImagePart)]


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(RequestBody):
    """The fields vlmq implements; any other is refused by name, as OpenAI refuses unknown ones."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=128)
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: Literal[1] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    metadata: dict[str, str] | None = None
    user: str | None = Field(default=None, max_length=256)
    store: bool | None = None  # accepted; every request is stored anyway, as a vlmq job
    seed: int | None = None  # accepted; sampling follows the worker's generator, not a request seed

    @field_validator("messages")
    @classmethod
    def _roles_in_order(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        turns = [message for message in messages if message.role not in _ROLES_OF_SYSTEM]
        if not turns or turns[-1].role != "user":
            raise ValueError("the conversation must end with a user message")
        if turns[0].role != "user":
            raise ValueError("the conversation must start with a user message (after any system messages)")
        for message in messages:
            if message.role != "user" and message.images():
                raise ValueError(f"image_url parts belong to user messages, not {message.role} ones")
        return messages


@dataclass
class ChatJob:
    """What a chat completion request asks of vlmq: the job's spec and its images' URLs, in order."""

    spec: JobSpec
    image_urls: list[str]


def request_refusal(error: ValidationError) -> ValidationFailed:
    """Why a chat request was refused, in OpenAI's words: the top-level fields it does not know are
    named ("Unrecognized request argument supplied: tools"), any other problem as validation says."""
    unknown = [str(item["loc"][0]) for item in error.errors()
               if item["type"] == "extra_forbidden" and len(item["loc"]) == 1]
    if unknown:
        return ValidationFailed(f"Unrecognized request argument supplied: {', '.join(unknown)}",
                                code="unrecognized_argument")
    return validation_failure(error)


def chat_job(request: ChatCompletionRequest) -> ChatJob:
    """The vlmq job for ``request`` (ValidationError when the job's own rules refuse it)."""
    images = [image for message in request.messages for image in message.images()]
    numbered = len(images) > 1
    system = "\n\n".join(m.text() for m in request.messages if m.role in _ROLES_OF_SYSTEM) or None
    turns: list[tuple[str, str]] = []  # (role, text), consecutive messages of one role joined
    next_number = 1
    for message in request.messages:
        if message.role in _ROLES_OF_SYSTEM:
            continue
        text = message.text()
        placed = message.images()
        if placed:
            if numbered:
                prefix = "".join(f"Image-{next_number + offset}: <image>\n" for offset in range(len(placed)))
            else:
                prefix = "<image>\n"
            next_number += len(placed)
            text = prefix + text
        if turns and turns[-1][0] == message.role:
            turns[-1] = (message.role, f"{turns[-1][1]}\n{text}")
        else:
            turns.append((message.role, text))
    history = [HistoryTurn(user=user, assistant=assistant)
               for (_, user), (_, assistant) in zip(turns[:-1:2], turns[1:-1:2], strict=True)]
    options: dict[str, Any] = {
        "max_new_tokens": request.max_completion_tokens or request.max_tokens or JobOptions().max_new_tokens,
        "temperature": request.temperature or 0.0,
        "top_p": request.top_p,
    }
    if images and all(image.detail == "low" for image in images):
        options["max_tiles"] = 1
    metadata: dict[str, Any] = dict(request.metadata or {})
    if request.user:
        metadata.setdefault("user", request.user)
    spec = JobSpec(
        task=JobTask.chat,
        prompt=turns[-1][1],
        history=history or None,
        system=system,
        model=request.model,
        options=JobOptions(**options),
        stream=bool(request.stream),
        metadata=metadata,
    )
    return ChatJob(spec, [image.url for image in images])
