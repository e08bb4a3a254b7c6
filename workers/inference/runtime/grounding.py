"""Grounding answers → pixel boxes. Never raises: malformed or truncated output yields what parses."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

NORM_SCALE = 1000
# Upstream's RefCOCO evaluation divides by 1000 only when the four numbers sum to 4 or more; a smaller
# sum is taken as fractions of the image (0..1). Kept so that a single box lands where upstream puts it;
# a real 0..1000 box that small (every coordinate under 4, at the very corner) does not occur.
FRACTION_SUM_BELOW = 4

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_COORDINATES = ("x1", "y1", "x2", "y2")
# A closed ``<ref>`` (one that runs into another tag before ``</ref>`` is no label), or one
# ``[x1, y1, x2, y2]`` list. Boxes are read wherever such a list appears, tags or not, as upstream's
# evaluation reads them: so an answer cut off before ``</box>``, or one that never wrote ``<box>``,
# still gives its complete boxes. Lists of 3 or 5 numbers never match and are skipped.
_TOKEN = re.compile(
    r"<ref>(?P<ref>(?:(?!</?ref>|</?box>).)*?)</ref>"
    + r"|\[\s*"
    + r"\s*,\s*".join(f"(?P<{name}>{_NUMBER})" for name in _COORDINATES)
    + r"\s*\]",
    re.DOTALL,
)


@dataclass(frozen=True)
class GroundingBox:
    label: str
    box: tuple[float, float, float, float]
    box_norm: tuple[int, int, int, int]

    def as_dict(self) -> dict:
        return {"label": self.label, "box": list(self.box), "box_norm": list(self.box_norm)}


def _clamp(value: float, upper: float) -> float:
    return min(max(value, 0.0), upper)


def _to_box(label: str, values: list[float], width: int, height: int) -> GroundingBox | None:
    if not all(math.isfinite(value) for value in values):
        return None  # a number too large for a float
    if sum(values) >= FRACTION_SUM_BELOW:
        fractions, norm_values = [value / NORM_SCALE for value in values], values
    else:
        fractions, norm_values = values, [value * NORM_SCALE for value in values]
    # Coordinates stay in the order the model wrote them (x2 < x1 is kept, not swapped): upstream's
    # evaluation reads them as given and never reorders them; we only clamp them to the image.
    x1, y1, x2, y2 = fractions
    pixel = (
        _clamp(x1 * width, width),
        _clamp(y1 * height, height),
        _clamp(x2 * width, width),
        _clamp(y2 * height, height),
    )
    norm = tuple(int(round(_clamp(value, NORM_SCALE))) for value in norm_values)
    return GroundingBox(label, pixel, norm)  # type: ignore[arg-type]


def parse_boxes(text: str | None, *, width: int, height: int, default_label: str) -> list[GroundingBox]:
    """Every box of every ``<ref>label</ref><box>[[x1, y1, x2, y2], …]</box>``, in order.

    A box takes the label of the latest closed ``<ref>`` before it; with none (or an empty one) it is
    labelled with the requested phrase. 0..1000 coordinates become pixels of the original image
    (``x / 1000 · width``), clamped to the image; ``box_norm`` is the 0..1000 box, clamped and rounded.
    """
    if not isinstance(text, str):
        return []
    boxes: list[GroundingBox] = []
    label = default_label
    for match in _TOKEN.finditer(text):
        ref = match.group("ref")
        if ref is not None:
            label = ref.strip() or default_label
            continue
        box = _to_box(label, [float(match.group(name)) for name in _COORDINATES], width, height)
        if box is not None:
            boxes.append(box)
    return boxes
