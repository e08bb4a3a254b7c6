"""Load an InternVL checkpoint into transformers' native classes and run batches of requests."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import StoppingCriteria, StoppingCriteriaList

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
log = logging.getLogger("vlmq.worker")


def _with_fewer_tiles(request: GenerationRequest) -> GenerationRequest:
    return dataclasses.replace(
        request,
        max_tiles=max(1, request.max_tiles // 2),
        max_tiles_total=max(1, request.max_tiles_total // 2) if request.max_tiles_total else None,
    )


class _PollStop(StoppingCriteria):
    """Ends every sequence of the batch once ``should_stop()`` says so (a safe point: between steps)."""

    def __init__(self, should_stop: Callable[[], bool]):
        self.should_stop = should_stop

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.should_stop(), dtype=torch.bool, device=input_ids.device)


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
            system_message=self.checkpoint.system_message,
        )
        text = expand_image_placeholders(prompt, [sum(tiles)] if combined else tiles)
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
        return _Prepared(request, text, pixel_values, len(request.frames), (time.perf_counter() - started) * 1000)

    def run(self, requests: list[GenerationRequest], should_stop: Callable[[], bool] | None = None) -> list[GenerationResult]:
        """``should_stop`` is polled between decode steps: the jobs were canceled or lost their lease,
        or ran out of time; generation then ends early and the caller discards the results."""
        prepared = [self.prepare(request) for request in requests]
        results: list[GenerationResult | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            groups[request.sampling_key()].append(index)
        for indices in groups.values():
            batch = [prepared[i] for i in indices]
            for index, result in zip(indices, self._generate_fitting(batch, should_stop), strict=True):
                results[index] = result
        return results  # type: ignore[return-value]

    def _generate_fitting(self, batch: list[_Prepared], should_stop) -> list[GenerationResult]:
        """Out of GPU memory: free the cache and try again with half the tiles per image (the
        thumbnail-only single tile at the least), a bounded number of times."""
        for retry in range(OOM_RETRIES + 1):
            try:
                return self._generate(batch, should_stop)
            except torch.OutOfMemoryError:
                smallest = all(item.request.max_tiles <= 1 for item in batch)
                if retry == OOM_RETRIES or smallest:
                    raise
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                batch = [self.prepare(_with_fewer_tiles(item.request)) for item in batch]
                log.warning("out of GPU memory: retrying with at most %d tiles per image", batch[0].request.max_tiles)
        raise AssertionError("unreachable")

    @torch.inference_mode()
    def _generate(self, batch: list[_Prepared], should_stop: Callable[[], bool] | None = None) -> list[GenerationResult]:
        started = time.perf_counter()
        encoded = self.tokenizer([item.text for item in batch], return_tensors="pt", padding=True).to(self.device)
        arrays = [item.pixel_values for item in batch if item.pixel_values is not None]
        # Text-only batches pass no pixel_values at all: the native model would try to encode None.
        media = {"pixel_values": torch.from_numpy(np.concatenate(arrays)).to(self.device, self.dtype)} if arrays else {}
        request = batch[0].request
        sampling = (
            {"do_sample": True, "temperature": request.temperature, "top_p": request.top_p or 1.0}
            if request.temperature > 0
            else {"do_sample": False}
        )
        output = self.model.generate(
            input_ids=encoded["input_ids"],
            attention_mask=encoded["attention_mask"],
            **media,
            max_new_tokens=request.max_new_tokens,
            eos_token_id=self.stop_token_id,
            stopping_criteria=StoppingCriteriaList([_PollStop(should_stop)]) if should_stop else None,
            pad_token_id=self.tokenizer.pad_token_id,
            **sampling,
        )
        new_tokens = output[:, encoded["input_ids"].shape[1] :]
        inference_ms = (time.perf_counter() - started) * 1000
        results = []
        for row, item in enumerate(batch):
            tokens = new_tokens[row].tolist()
            if self.stop_token_id in tokens:
                tokens = tokens[: tokens.index(self.stop_token_id) + 1]
            tokens = [token for token in tokens if token != self.tokenizer.pad_token_id]
            # The embedding table is padded past the tokenizer; ids beyond it have no text (and
            # would make a SentencePiece decoder raise).
            decoded = self.tokenizer.decode([t for t in tokens if t < self.vocab_limit], skip_special_tokens=True)
            text = decoded.split(self.template.stop_token)[0].strip()
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
                )
            )
        return results

    @staticmethod
    def _boxes(request: GenerationRequest, text: str) -> list[dict] | None:
        if request.task != "grounding":
            return None
        image = request.images[0]
        return [
            box.as_dict()
            for box in parse_boxes(text, width=image.width, height=image.height, default_label=request.prompt or "")
        ]
