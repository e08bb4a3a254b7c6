"""Load an InternVL checkpoint into transformers' native classes and run batches of requests."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from workers.inference.failures import JobFailure
from workers.inference.runtime.checkpoint import CheckpointInfo, read_checkpoint
from workers.inference.runtime.engine import Engine, EngineOptions, process_loop
from workers.inference.runtime.grounding import parse_boxes
from workers.inference.runtime.loading import LoadOptions, load_model, load_tokenizer
from workers.inference.runtime.prompts import (
    build_prompt,
    expand_image_placeholders,
    question_for,
)
from workers.inference.runtime.requests import GenerationRequest, GenerationResult
from workers.inference.runtime.tiling import (
    image_to_pixel_values,
    normalize_tile,
    tiles_per_image,
)

log = logging.getLogger("vlmq.worker")


@dataclass
class _Prepared:
    request: GenerationRequest
    text: str
    pixel_values: np.ndarray | None
    tiles: int
    preprocess_ms: float
    input_ids: list[int] = field(default_factory=list)


class InternVLRuntime:
    """One loaded model. ``run`` takes a list of requests and returns their results in order."""

    def __init__(self, checkpoint: CheckpointInfo, model, tokenizer):
        self.checkpoint, self.model, self.tokenizer = checkpoint, model, tokenizer
        # Inputs go where the embeddings are; with a device map the first and last stages share it.
        self.device = model.get_input_embeddings().weight.device
        self.dtype = model.model.vision_tower.embeddings.patch_embeddings.projection.weight.dtype
        self.template = checkpoint.template
        self.stop_token_id = tokenizer.convert_tokens_to_ids(self.template.stop_token)
        self.vocab_limit = len(tokenizer)
        self.prepare_threads = 4  # requests of a batch tiled at once (VLMQ_PREPROCESS_THREADS)
        self.model_id = checkpoint.path.name  # the worker names it by its registered model id
        self.engine_options = EngineOptions()  # set before the first request (the worker's settings)
        self._engine: Engine | None = None

    @classmethod
    def load(cls, path: Path, options: LoadOptions | None = None) -> InternVLRuntime:
        checkpoint = read_checkpoint(path)
        tokenizer = load_tokenizer(checkpoint)
        return cls(checkpoint, load_model(checkpoint, tokenizer, options), tokenizer)

    def prepare(self, request: GenerationRequest) -> _Prepared:
        started = time.perf_counter()
        if request.frames:
            return self._prepare_video(request, started)
        n_images = len(request.images)
        cap = tiles_per_image(n_images, request.max_tiles, request.max_tiles_total)
        pixel_arrays = [image_to_pixel_values(image, cap) for image in request.images]
        tiles = [len(array) for array in pixel_arrays]
        combined = request.multi_image == "combined" and n_images > 1
        prompt = build_prompt(
            self.template,
            question=question_for(request.task, request.prompt),
            n_images=n_images,
            multi_image=request.multi_image,
            history=request.history,
            system_message=self.checkpoint.system_message if request.system_message is None else request.system_message,
        )
        text = expand_image_placeholders(prompt, [sum(tiles)] if combined else tiles)
        input_ids = self._tokens_within_context(request, text)
        pixel_values = np.concatenate(pixel_arrays) if pixel_arrays else None
        return _Prepared(request, text, pixel_values, sum(tiles), (time.perf_counter() - started) * 1000, input_ids)

    def _prepare_video(self, request: GenerationRequest, started: float) -> _Prepared:
        """One tile per frame (the frames arrive as 448×448 tiles), ``Frame{i}: <image>`` per frame."""
        pixel_values = np.stack([normalize_tile(Image.fromarray(frame)) for frame in request.frames])
        prompt = build_prompt(
            self.template,
            question=question_for(request.task, request.prompt),
            n_frames=len(request.frames),
            system_message=self.checkpoint.system_message,
        )
        text = expand_image_placeholders(prompt, [1] * len(request.frames))
        input_ids = self._tokens_within_context(request, text)
        return _Prepared(request, text, pixel_values, len(request.frames), (time.perf_counter() - started) * 1000,
                         input_ids)

    def _tokens_within_context(self, request: GenerationRequest, text: str) -> list[int]:
        """The prompt's token ids. The API refuses prompts that cannot fit; one that got here anyway
        (media by URL, whose tiles were unknown until fetched) fails before it holds the GPU."""
        input_ids = list(self.tokenizer(text).input_ids)
        limit = self.checkpoint.context_length
        tokens = len(input_ids)
        if limit and tokens + request.max_new_tokens > limit:
            raise JobFailure(
                "context_length_exceeded",
                f"the prompt is {tokens} tokens and max_new_tokens is {request.max_new_tokens}: more than the "
                f"model's context of {limit}; lower max_tiles or max_new_tokens, or shorten the prompt",
            )
        return input_ids

    def run(self, requests: list[GenerationRequest], should_stop: Callable[[], bool] | None = None) -> list[GenerationResult]:
        """Every request's result, in order; the first request that fails raises. ``should_stop`` is
        polled between decode steps for all of them (see ``run_isolated``)."""
        outcomes = self.run_isolated(requests, [should_stop] * len(requests))
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                raise outcome
        return outcomes  # type: ignore[return-value]

    def run_isolated(self, requests: list[GenerationRequest],
                     stops: list[Callable[[], bool] | None]) -> list[GenerationResult | Exception]:
        """The requests through the engine, each with its own token limit, sampling and stop signal
        (``stops[i]``: canceled, lease lost, time out, shutting down; the row ends at the next decode
        step, the others go on). A request that breaks its preprocessing or the model fails alone:
        its outcome is the exception, the others still get their results."""
        # Tiling and normalising overlap across requests: Pillow's resampler and numpy release the GIL.
        with ThreadPoolExecutor(max_workers=max(1, min(len(requests), self.prepare_threads))) as pool:
            prepared = list(pool.map(self._prepare_or_error, requests))
        ready = [index for index, item in enumerate(prepared) if not isinstance(item, Exception)]
        futures = dict(zip(ready, self.engine.submit_all([prepared[i] for i in ready], [stops[i] for i in ready]),
                           strict=True))
        return [_outcome(futures[index]) if index in futures else item for index, item in enumerate(prepared)]

    @property
    def engine(self) -> Engine:
        """This model's continuous-batching engine, on the process's engine loop (made on first use)."""
        if self._engine is None:
            self._engine = process_loop().attach(Engine(self, self.engine_options, name=self.model_id))
        return self._engine

    def _prepare_or_error(self, request: GenerationRequest) -> _Prepared | Exception:
        try:
            return self.prepare(request)
        except Exception as error:  # bad pixels, a prompt the template refuses: this request only
            return error

    def to_device(self, pixels: np.ndarray) -> torch.Tensor:
        """Cast to the model's dtype on the host (half the bytes to copy for bf16), then on a GPU
        copied from pinned memory without blocking the host."""
        tensor = torch.from_numpy(pixels).to(self.dtype)
        if self.device.type != "cuda":
            return tensor
        return tensor.pin_memory().to(self.device, non_blocking=True)

    def decode_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """The engine's boolean decode mask in the form the attention implementation adds: eager
        attention adds it to the scores, SDPA takes booleans."""
        if self.text_attention() == "eager":
            return torch.zeros(mask.shape, dtype=self.dtype, device=mask.device).masked_fill(~mask, torch.finfo(self.dtype).min)
        return mask

    def text_attention(self) -> str:
        return self.model.config.text_config._attn_implementation

    @contextmanager
    def decode_attention(self):
        """Decode steps attend through a 4-D mask (each row at its own length), which
        flash-attention 2's path does not take: SDPA serves them; prefill keeps flash-attention."""
        config = self.model.config.text_config
        chosen = config._attn_implementation
        if chosen != "flash_attention_2":
            yield
            return
        config._attn_implementation = "sdpa"
        try:
            yield
        finally:
            config._attn_implementation = chosen

    def kept_tokens(self, tokens: list[int]) -> list[int]:
        """Generated ids up to and including the stop token, without padding."""
        if self.stop_token_id in tokens:
            tokens = tokens[: tokens.index(self.stop_token_id) + 1]
        return [token for token in tokens if token != self.tokenizer.pad_token_id]

    def finish_reason(self, tokens: list[int], max_new_tokens: int) -> str:
        ran_out = len(tokens) >= max_new_tokens and (not tokens or tokens[-1] != self.stop_token_id)
        return "length" if ran_out else "stop"

    def text_of(self, tokens: list[int]) -> str:
        # The embedding table is padded past the tokenizer; ids beyond it have no text (and would
        # make a SentencePiece decoder raise).
        decoded = self.tokenizer.decode([t for t in tokens if t < self.vocab_limit], skip_special_tokens=True)
        return decoded.split(self.template.stop_token)[0]

    @staticmethod
    def boxes(request: GenerationRequest, text: str) -> list[dict] | None:
        if request.task != "grounding":
            return None
        image = request.images[0]
        return [
            box.as_dict()
            for box in parse_boxes(text, width=image.width, height=image.height, default_label=request.prompt or "")
        ]


def _outcome(future) -> GenerationResult | Exception:
    try:
        return future.result()
    except Exception as error:
        return error
