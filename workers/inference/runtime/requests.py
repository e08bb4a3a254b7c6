"""The runtime's batch-first interface: a list of requests in, a list of results out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image


@dataclass
class GenerationRequest:
    task: str
    prompt: str | None
    images: list[Image.Image]
    max_tiles: int = 12
    max_tiles_total: int | None = None
    multi_image: str = "numbered"
    history: list[tuple[str, str]] = field(default_factory=list)
    system_message: str | None = None  # None: the checkpoint's own
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float | None = None
    # A video: its sampled frames, each already one 448×448 tile (RGB uint8 H×W×3), in order.
    frames: list = field(default_factory=list)
    # Streaming: called with the text generated so far, as it grows (between decode steps).
    text_sink: Callable[[str], None] | None = None


@dataclass
class GenerationResult:
    text: str
    input_tokens: int
    output_tokens: int
    tiles: int
    preprocess_ms: float
    inference_ms: float
    boxes: list[dict] | None = None
    token_ids: list[int] = field(default_factory=list)  # generated, up to and including the stop token
    batch_id: str = ""  # the generate call that produced it, shared by its batch-mates
    batch_size: int = 1
    finish_reason: str = "stop"  # "length": max_new_tokens ran out before the model stopped
    mean_rows: float = 1.0  # mean rows of the decode steps it took part in
