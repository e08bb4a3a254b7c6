"""Grounding answers → pixel boxes. Never raises: malformed or truncated output yields what parses."""

from __future__ import annotations

import re
from dataclasses import dataclass

_TAG = re.compile(r"<ref>(?P<ref>.*?)</ref>|<box>(?P<box>.*?)(?:</box>|$)", re.DOTALL)
_NUMBER = r"\s*(-?\d+(?:\.\d+)?)\s*"
_BOX = re.compile(r"\[" + ",".join([_NUMBER] * 4) + r"\]")
NORM_SCALE = 1000


@dataclass(frozen=True)
class GroundingBox:
    label: str
    box: tuple[float, float, float, float]
    box_norm: tuple[int, int, int, int]

    def as_dict(self) -> dict:
        return {"label": self.label, "box": list(self.box), "box_norm": list(self.box_norm)}


def _clamp(value: float, upper: float) -> float:
    return min(max(value, 0.0), upper)


def parse_boxes(text: str, *, width: int, height: int, default_label: str) -> list[GroundingBox]:
    """Every box of every ``<ref>…</ref><box>[[…], …]</box>``; a box with no ref before it is
    labelled with the requested phrase. 0..1000 coordinates → pixels of the original image."""
    boxes: list[GroundingBox] = []
    label = default_label
    for match in _TAG.finditer(text):
        if match.group("ref") is not None:
            label = match.group("ref").strip()
            continue
        for numbers in _BOX.findall(match.group("box") or ""):
            x1, y1, x2, y2 = (float(number) for number in numbers)
            pixel = (
                _clamp(x1 / NORM_SCALE * width, width),
                _clamp(y1 / NORM_SCALE * height, height),
                _clamp(x2 / NORM_SCALE * width, width),
                _clamp(y2 / NORM_SCALE * height, height),
            )
            norm = tuple(int(round(_clamp(value, NORM_SCALE))) for value in (x1, y1, x2, y2))
            boxes.append(GroundingBox(label, pixel, norm))  # type: ignore[arg-type]
    return boxes
