"""Load an InternVL checkpoint into transformers' native classes and run batches of requests."""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import DynamicCache, StoppingCriteriaList

from workers.inference.failures import JobFailure
from workers.inference.runtime.batching import RowLimits, sampling_arguments
from workers.inference.runtime.checkpoint import CheckpointInfo, read_checkpoint
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

OOM_RETRIES = 3
# Rows are prefilled together while padding them to the longest adds at most this share of tokens.
PADDING_TOLERANCE = 1.25
log = logging.getLogger("vlmq.worker")


def _with_fewer_tiles(request: GenerationRequest) -> GenerationRequest:
    return dataclasses.replace(
        request,
        max_tiles=max(1, request.max_tiles // 2),
        max_tiles_total=max(1, request.max_tiles_total // 2) if request.max_tiles_total else None,
    )


@dataclass
class _Prepared:
    request: GenerationRequest
    text: str
    pixel_values: np.ndarray | None
    tiles: int
    preprocess_ms: float


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
        self._check_context(request, text)
        pixel_values = np.concatenate(pixel_arrays) if pixel_arrays else None
        return _Prepared(request, text, pixel_values, sum(tiles), (time.perf_counter() - started) * 1000)

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
        self._check_context(request, text)
        return _Prepared(request, text, pixel_values, len(request.frames), (time.perf_counter() - started) * 1000)

    def _check_context(self, request: GenerationRequest, text: str) -> None:
        """The API refuses prompts that cannot fit; one that got here anyway (media by URL, whose
        tiles were unknown until fetched) fails before it holds the GPU."""
        limit = self.checkpoint.context_length
        if not limit:
            return
        tokens = len(self.tokenizer(text).input_ids)
        if tokens + request.max_new_tokens > limit:
            raise JobFailure(
                "context_length_exceeded",
                f"the prompt is {tokens} tokens and max_new_tokens is {request.max_new_tokens}: more than the "
                f"model's context of {limit}; lower max_tiles or max_new_tokens, or shorten the prompt",
            )

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
        """The requests as one batch, each with its own token limit, sampling and stop signal
        (``stops[i]``: canceled, lease lost, time out, shutting down; the row ends at the next decode
        step, the others go on). A request that breaks its preprocessing or the model fails alone:
        its outcome is the exception, its batch-mates still get their results."""
        # Tiling and normalising overlap across requests: Pillow's resampler and numpy release the GIL.
        with ThreadPoolExecutor(max_workers=max(1, min(len(requests), self.prepare_threads))) as pool:
            outcomes: list[GenerationResult | Exception | _Prepared] = list(pool.map(self._prepare_or_error, requests))
        ready = [index for index, outcome in enumerate(outcomes) if isinstance(outcome, _Prepared)]
        if ready:
            batch = [outcomes[index] for index in ready]
            for index, outcome in zip(ready, self._generate_isolated(batch, [stops[i] for i in ready]), strict=True):
                outcomes[index] = outcome
        return outcomes  # type: ignore[return-value]

    def _prepare_or_error(self, request: GenerationRequest) -> _Prepared | Exception:
        try:
            return self.prepare(request)
        except Exception as error:  # bad pixels, a prompt the template refuses: this request only
            return error

    def _generate_isolated(self, batch: list[_Prepared], stops) -> list[GenerationResult | Exception]:
        try:
            return self._generate_fitting(batch, stops)
        except Exception as error:
            if len(batch) == 1:
                return [error]
            log.warning("a batch of %d failed (%s: %s): running its requests one at a time",
                        len(batch), type(error).__name__, error)
            return [self._generate_isolated([item], [stop])[0] for item, stop in zip(batch, stops, strict=True)]

    def _generate_fitting(self, batch: list[_Prepared], stops) -> list[GenerationResult]:
        """Out of GPU memory: a batch is split in two and each half tried again; a single request
        is tried again with half the tiles per image (the thumbnail-only single tile at the least),
        a bounded number of times."""
        try:
            return self._generate(batch, stops)
        except torch.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(batch) == 1:
                return self._generate_with_fewer_tiles(batch[0], stops[0])
            half = len(batch) // 2
            log.warning("out of GPU memory with a batch of %d: splitting it", len(batch))
            return self._generate_fitting(batch[:half], stops[:half]) + self._generate_fitting(batch[half:], stops[half:])

    def _generate_with_fewer_tiles(self, item: _Prepared, stop) -> list[GenerationResult]:
        for retry in range(OOM_RETRIES):
            if item.request.max_tiles <= 1:
                break
            item = self.prepare(_with_fewer_tiles(item.request))
            log.warning("out of GPU memory: retrying with at most %d tiles per image", item.request.max_tiles)
            try:
                return self._generate([item], [stop])
            except torch.OutOfMemoryError:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if retry == OOM_RETRIES - 1:
                    raise
        raise torch.OutOfMemoryError("out of GPU memory even with 1 tile per image")

    @torch.inference_mode()
    def _generate(self, batch: list[_Prepared], stops) -> list[GenerationResult]:
        started = time.perf_counter()
        encoded = self.tokenizer([item.text for item in batch], return_tensors="pt", padding=True).to(self.device)
        arrays = [item.pixel_values for item in batch if item.pixel_values is not None]
        # Text-only batches pass no pixel_values at all: the native model would try to encode None.
        requests = [item.request for item in batch]
        prompt_length = encoded["input_ids"].shape[1]
        lengths = encoded["attention_mask"].sum(dim=1).tolist()
        if len(batch) > 1 and prompt_length * len(batch) > PADDING_TOLERANCE * sum(lengths):
            # Prompts of unlike lengths: padded together, the short ones would pay for the longest
            # one's prefill. Each is prefilled alone, and the rows decode together from their caches.
            media = {"past_key_values": self._prefill_each(batch, encoded)}
        else:
            media = {"pixel_values": self._to_device(np.concatenate(arrays))} if arrays else {}
        watchers = [self._text_watcher(request) if request.text_sink else None for request in requests]
        limits = RowLimits(prompt_length, [request.max_new_tokens for request in requests], stops, watchers)
        output = self.model.generate(
            input_ids=encoded["input_ids"],
            attention_mask=encoded["attention_mask"],
            **media,
            max_new_tokens=max(request.max_new_tokens for request in requests),
            eos_token_id=self.stop_token_id,
            stopping_criteria=StoppingCriteriaList([limits]),
            pad_token_id=self.tokenizer.pad_token_id,
            **sampling_arguments(requests),
        )
        new_tokens = output[:, prompt_length:]
        inference_ms = (time.perf_counter() - started) * 1000
        batch_id = uuid.uuid4().hex[:12]
        results = []
        for row, item in enumerate(batch):
            tokens = self._kept_tokens(new_tokens[row].tolist()[: item.request.max_new_tokens])
            text = self._text_of(tokens).strip()
            results.append(
                GenerationResult(
                    text=text,
                    input_tokens=int(encoded["attention_mask"][row].sum()),
                    output_tokens=len(tokens),
                    tiles=item.tiles,
                    preprocess_ms=item.preprocess_ms,
                    inference_ms=inference_ms,
                    boxes=self._boxes(item.request, text),
                    token_ids=tokens,
                    batch_id=batch_id,
                    batch_size=len(batch),
                    finish_reason=self._finish_reason(tokens, item.request.max_new_tokens),
                )
            )
        return results

    def _prefill_each(self, batch: list[_Prepared], encoded) -> DynamicCache:
        """Every row's prompt but its last token through the model alone, unpadded; the caches then
        left-padded to one length and stacked. ``generate`` feeds the last tokens itself, and the
        attention mask (its zeros cover the padding) gives each row its own positions."""
        padded_length = encoded["input_ids"].shape[1] - 1
        per_row = []
        for row, item in enumerate(batch):
            ids = encoded["input_ids"][row][encoded["attention_mask"][row].bool()][:-1].unsqueeze(0)
            media = {"pixel_values": self._to_device(item.pixel_values)} if item.pixel_values is not None else {}
            output = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True,
                                logits_to_keep=1, **media)
            per_row.append(output.past_key_values)
        cache = DynamicCache()
        for layer in range(len(per_row[0].layers)):
            keys, values = [], []
            for row_cache in per_row:
                stored = row_cache.layers[layer]
                padding = (0, 0, padded_length - stored.keys.shape[-2], 0)  # left, along the sequence
                keys.append(torch.nn.functional.pad(stored.keys, padding))
                values.append(torch.nn.functional.pad(stored.values, padding))
            cache.update(torch.cat(keys), torch.cat(values), layer)
        return cache

    def _to_device(self, pixels: np.ndarray) -> torch.Tensor:
        """On a GPU: from pinned memory, converted to the model's dtype there (half the bytes to copy
        for bf16 and the copy does not block the host)."""
        tensor = torch.from_numpy(pixels)
        if self.device.type != "cuda":
            return tensor.to(self.dtype)
        return tensor.pin_memory().to(self.device, non_blocking=True).to(self.dtype)

    def _kept_tokens(self, tokens: list[int]) -> list[int]:
        """Generated ids up to and including the stop token, without padding."""
        if self.stop_token_id in tokens:
            tokens = tokens[: tokens.index(self.stop_token_id) + 1]
        return [token for token in tokens if token != self.tokenizer.pad_token_id]

    def _finish_reason(self, tokens: list[int], max_new_tokens: int) -> str:
        ran_out = len(tokens) >= max_new_tokens and (not tokens or tokens[-1] != self.stop_token_id)
        return "length" if ran_out else "stop"

    def _text_of(self, tokens: list[int]) -> str:
        # The embedding table is padded past the tokenizer; ids beyond it have no text (and would
        # make a SentencePiece decoder raise).
        decoded = self.tokenizer.decode([t for t in tokens if t < self.vocab_limit], skip_special_tokens=True)
        return decoded.split(self.template.stop_token)[0]

    def _text_watcher(self, request: GenerationRequest, interval_s: float = 0.05) -> Callable[[list[int]], None]:
        """The row's text so far, decoded at most every ``interval_s``, to the request's sink."""
        last = [0.0]

        def watch(generated: list[int]) -> None:
            if time.perf_counter() - last[0] >= interval_s:
                last[0] = time.perf_counter()
                request.text_sink(self._text_of(self._kept_tokens(generated)).lstrip())

        return watch

    @staticmethod
    def _boxes(request: GenerationRequest, text: str) -> list[dict] | None:
        if request.task != "grounding":
            return None
        image = request.images[0]
        return [
            box.as_dict()
            for box in parse_boxes(text, width=image.width, height=image.height, default_label=request.prompt or "")
        ]
