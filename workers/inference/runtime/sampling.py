"""The next token of every running row, each with its own sampling: greedy (temperature 0, the
argmax, exactly what greedy search picks alone) or tempered and cut to its top-p nucleus."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def next_tokens(logits: torch.Tensor, temperatures: Sequence[float], top_ps: Sequence[float | None]) -> list[int]:
    """``logits``: ``[rows, vocab]`` of the last position of each row."""
    chosen = logits.argmax(dim=-1).tolist()
    for row, (temperature, top_p) in enumerate(zip(temperatures, top_ps, strict=True)):
        if temperature <= 0:
            continue
        scores = logits[row].float() / temperature
        if top_p is not None and top_p < 1.0:
            ordered, order = scores.sort(descending=True)
            probabilities = ordered.softmax(-1)
            # Drop tokens once the mass before them already reached top_p (the best always stays).
            dropped = probabilities.cumsum(-1) - probabilities >= top_p
            scores[order[dropped]] = -float("inf")
        chosen[row] = int(torch.multinomial(scores.softmax(-1), 1))
    return chosen
