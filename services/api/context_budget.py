"""Whether a job's prompt fits its model's context: text tokens counted with the checkpoint's own
tokenizer, image tokens from the tile plan, plus ``max_new_tokens``; refused before anything runs.

The prompt is built as the worker builds it (``workers.inference.runtime.model``), so the count is
exact: a prompt that just fits is accepted. Media whose size is not known yet (a URL the worker
fetches) counts as one tile, the least it can be; the worker checks again once it knows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from services.api.errors import ValidationFailed
from services.api.schemas import JobSpec
from shared.config.settings import CommonSettings
from shared.media import PendingUrl, StoredMedia
from shared.token_count import TokenizerFilesMissing, token_counter
from workers.inference.runtime.checkpoint import CheckpointError, CheckpointInfo, read_checkpoint
from workers.inference.runtime.prompts import (
    IMAGE_END,
    IMAGE_PLACEHOLDER,
    IMAGE_START,
    build_prompt,
    question_for,
)
from workers.inference.runtime.sources import resolve_source
from workers.inference.runtime.tiling import TOKENS_PER_TILE, tile_count, tile_grid_for, tiles_per_image

log = logging.getLogger("vlmq.api")


class ContextLengthExceeded(ValidationFailed):
    code = "context_length_exceeded"


@dataclass(frozen=True)
class PromptBudget:
    context_length: int
    text_tokens: int  # the prompt with each image's context tokens left out
    max_new_tokens: int
    max_tiles: int
    max_tiles_total: int | None
    n_frames: int

    def image_tokens(self, media: list[StoredMedia | PendingUrl]) -> int:
        if self.n_frames:
            return TOKENS_PER_TILE * self.n_frames
        images = [item for item in media if item.is_image is not False]
        cap = tiles_per_image(len(images), self.max_tiles, self.max_tiles_total)
        tiles = 0
        for item in images:
            width, height = getattr(item, "width", None), getattr(item, "height", None)
            tiles += tile_count(tile_grid_for(width, height, cap)) if width and height else 1
        return TOKENS_PER_TILE * tiles

    def check(self, media: list[StoredMedia | PendingUrl]) -> int:
        """The prompt's tokens; ContextLengthExceeded when they and max_new_tokens do not fit."""
        return self.check_image_tokens(self.image_tokens(media))

    def check_image_tokens(self, image_tokens: int) -> int:
        input_tokens = self.text_tokens + image_tokens
        if input_tokens + self.max_new_tokens > self.context_length:
            raise ContextLengthExceeded(
                f"the prompt is {input_tokens} tokens ({image_tokens} of them for images) and max_new_tokens is "
                f"{self.max_new_tokens}: {input_tokens + self.max_new_tokens} positions, more than the model's "
                f"context of {self.context_length}; shorten the prompt or history, or lower max_tiles or "
                "max_new_tokens",
                details={"context_length": self.context_length, "input_tokens": input_tokens,
                         "image_tokens": image_tokens, "max_new_tokens": self.max_new_tokens},
            )
        return input_tokens


def prompt_budget(spec: JobSpec, checkpoint: CheckpointInfo | None, *, n_media: int) -> PromptBudget | None:
    """The budget of a job with ``n_media`` inputs, or None where it cannot be told (a checkpoint the
    API cannot read, no context length, no tokenizer files): the worker decides then. Tokenizes the
    whole prompt: call it off the event loop."""
    if checkpoint is None or not checkpoint.context_length:
        return None
    try:
        counter = token_counter(checkpoint.path)
    except TokenizerFilesMissing as missing:
        log.warning("prompt lengths are not checked for %s: %s", checkpoint.path, missing)
        return None
    video = spec.task.is_video
    n_frames = spec.options.num_frames if video else 0
    n_images = 0 if video else n_media
    # As the worker builds it: a video's prompt has no history and the checkpoint's system message.
    prompt = build_prompt(
        checkpoint.template,
        question=question_for(spec.task.value, spec.prompt),
        n_images=n_images,
        n_frames=n_frames,
        multi_image=spec.options.multi_image,
        history=[] if video else [(turn.user, turn.assistant) for turn in spec.history or []],
        system_message=checkpoint.system_message if video or spec.system is None else spec.system,
    )
    # Each placeholder the worker fills becomes <img>, its context tokens, </img>: added tokens that
    # split the text where they stand, so the context tokens add exactly their number.
    filled = n_frames or (1 if n_images > 1 and spec.options.multi_image == "combined" else n_images)
    text = prompt.replace(IMAGE_PLACEHOLDER, IMAGE_START + IMAGE_END, filled)
    return PromptBudget(
        context_length=checkpoint.context_length,
        text_tokens=counter.count(text),
        max_new_tokens=spec.options.max_new_tokens,
        max_tiles=1 if video else spec.options.max_tiles,
        max_tiles_total=spec.options.max_tiles_total,
        n_frames=n_frames,
    )


@lru_cache(maxsize=16)
def _checkpoint_at(source: str, cache_dir: str, download: bool) -> CheckpointInfo | None:
    try:
        path = resolve_source(source, cache_dir=Path(cache_dir), download=download, weights=False)
        return read_checkpoint(path)
    except CheckpointError:
        return None


def checkpoint_for(settings: CommonSettings, model_id: str) -> CheckpointInfo | None:
    """A registered model's checkpoint for processes without the API's catalog (batch expansion)."""
    source = settings.model_sources.get(model_id)
    if source is None:
        return None
    return _checkpoint_at(str(source), str(settings.resolved_hub_cache_dir), settings.hub_download)
