"""What lets unlike requests share one ``generate`` call: each row keeps its own token limit, stop
signal (cancel, lease lost, drain) and sampling (greedy, or its temperature and top-p).

transformers gives ``generate`` one ``max_new_tokens`` and one sampling configuration per call; a
stopping criterion that answers per row, and a logits processor that samples per row, put the
request's own settings back. A row that stops is padded from then on; it keeps its place in the
batch until every row is done (transformers' static batching), so its remaining cost is the padding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import LogitsProcessor, StoppingCriteria

from workers.inference.runtime.requests import GenerationRequest


class RowLimits(StoppingCriteria):
    """Row ``i`` is done once it generated ``max_new_tokens[i]`` tokens or ``stops[i]()`` is true
    (polled between decode steps: a safe point)."""

    def __init__(self, prompt_length: int, max_new_tokens: Sequence[int], stops: Sequence[Callable[[], bool] | None],
                 watchers: Sequence[Callable[[list[int]], None] | None] | None = None):
        self.prompt_length, self.max_new_tokens, self.stops = prompt_length, list(max_new_tokens), list(stops)
        # Streaming rows see their generated ids after every step.
        self.watchers = list(watchers) if watchers else [None] * len(self.stops)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        generated = input_ids.shape[1] - self.prompt_length
        for row, watcher in enumerate(self.watchers):
            if watcher is not None:
                watcher(input_ids[row, self.prompt_length:].tolist())
        done = [generated >= limit or (stop is not None and stop()) for limit, stop in zip(self.max_new_tokens, self.stops,
                                                                                           strict=True)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class RowSampling(LogitsProcessor):
    """Per-row sampling under ``do_sample=True``: a greedy row (temperature 0) keeps only its best
    token, so sampling picks exactly what greedy search would; the others are tempered and cut to
    their top-p nucleus."""

    def __init__(self, temperatures: Sequence[float], top_ps: Sequence[float | None]):
        self.temperatures = list(temperatures)
        self.top_ps = [1.0 if top_p is None else top_p for top_p in top_ps]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.clone()
        for row, (temperature, top_p) in enumerate(zip(self.temperatures, self.top_ps, strict=True)):
            if temperature <= 0:
                best = scores[row].argmax()
                kept = scores[row, best].clone()
                scores[row].fill_(-float("inf"))
                scores[row, best] = kept
                continue
            scores[row] = scores[row] / temperature
            if top_p < 1.0:
                ordered, order = scores[row].sort(descending=True)
                cumulative = ordered.softmax(-1).cumsum(-1)
                # Drop tokens once the mass before them already reached top_p (always keep the best).
                dropped = cumulative - ordered.softmax(-1) >= top_p
                scores[row, order[dropped]] = -float("inf")
        return scores


def sampling_arguments(requests: Sequence[GenerationRequest]) -> dict:
    """``generate`` arguments for these rows: plain greedy search when every row is greedy."""
    if all(request.temperature <= 0 for request in requests):
        return {"do_sample": False}
    # transformers' own warpers off (their defaults would apply on top of ours).
    return {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0,
            "logits_processor": [RowSampling([r.temperature for r in requests], [r.top_p for r in requests])]}
