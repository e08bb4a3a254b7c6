"""From a job's task, prompt, history and images to the exact text the model sees."""

from __future__ import annotations

from dataclasses import dataclass

from workers.inference.runtime.templates import ChatTemplate
from workers.inference.runtime.tiling import (
    TOKENS_PER_TILE,
    tile_count,
    tile_grid_for,
    tiles_per_image,
)

IMAGE_PLACEHOLDER = "<image>"
IMAGE_START, IMAGE_END, IMAGE_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
CAPTION_QUESTION = "Please describe the image shortly."
# Word for word as upstream's RefCOCO evaluation sends it ("coordinate", singular).
GROUNDING_QUESTION = "Please provide the bounding box coordinate of the region this sentence describes: <ref>{phrase}</ref>"


@dataclass(frozen=True)
class ImagePlan:
    width: int
    height: int
    max_tiles: int
    tile_grid: tuple[int, int]
    tiles: int


def question_for(task: str, prompt: str | None) -> str:
    if task in ("caption", "video_caption"):
        return prompt or CAPTION_QUESTION
    if task == "grounding":
        return GROUNDING_QUESTION.format(phrase=prompt or "")
    return prompt or ""


def media_prefix(n_images: int, multi_image: str, *, n_frames: int = 0) -> str:
    """The placeholders put before the first question: one per image (or one for all, combined),
    or one per video frame. A request carries images or frames, never both."""
    if n_images and n_frames:
        raise ValueError("a prompt carries images or video frames, not both")
    if n_frames:
        # As the cards' video callers number them ("Frame1:", no hyphen); the training code's
        # "Frame-1:" is not what inference sends.
        return "".join(f"Frame{number}: {IMAGE_PLACEHOLDER}\n" for number in range(1, n_frames + 1))
    if n_images == 0:
        return ""
    if n_images == 1 or multi_image == "combined":
        return f"{IMAGE_PLACEHOLDER}\n"
    return "".join(f"Image-{number}: {IMAGE_PLACEHOLDER}\n" for number in range(1, n_images + 1))


def plan_images(
    sizes: list[tuple[int, int]], *, max_tiles: int, max_tiles_total: int | None = None
) -> list[ImagePlan]:
    cap = tiles_per_image(len(sizes), max_tiles, max_tiles_total)
    plans = []
    for width, height in sizes:
        grid = tile_grid_for(width, height, cap)
        plans.append(ImagePlan(width, height, cap, grid, tile_count(grid)))
    return plans


def build_prompt(
    template: ChatTemplate,
    *,
    question: str,
    n_images: int = 0,
    multi_image: str = "numbered",
    history: list[tuple[str, str]] | None = None,
    system_message: str | None = None,
    n_frames: int = 0,
) -> str:
    """The chat-template text with each image (or all, when combined) or video frame as one ``<image>``.

    Media placeholders belong to the first user turn, as upstream stores them in its history; turns
    that already place an ``<image>`` get no prefix (upstream's ``chat()`` adds its ``<image>\\n``
    only to a question without one; OpenAI-style messages place each image in their own turn).
    """
    prefix = media_prefix(n_images, multi_image, n_frames=n_frames)
    turns: list[tuple[str, str | None]] = [(user, assistant) for user, assistant in (history or [])]
    turns.append((question, None))
    first_user = turns[0][0]
    if prefix and not any(IMAGE_PLACEHOLDER in user for user, _ in turns):
        turns[0] = (prefix + first_user, turns[0][1])
    return template.render(turns, system_message=system_message)


def expand_image_placeholders(prompt: str, tiles: list[int]) -> str:
    """Replace the first remaining ``<image>`` for each image with its context tokens, in order."""
    for count in tiles:
        tokens = IMAGE_START + IMAGE_CONTEXT * (TOKENS_PER_TILE * count) + IMAGE_END
        prompt = prompt.replace(IMAGE_PLACEHOLDER, tokens, 1)
    return prompt
