"""``POST /v1/jobs/plan``: what a job would feed the model, computed without the model."""

from __future__ import annotations

from services.api.schemas import ImagePlanPublic, JobSpec, PlanPublic
from shared.media import StoredMedia
from workers.inference.runtime.checkpoint import CheckpointInfo
from workers.inference.runtime.prompts import build_prompt, plan_images, question_for
from workers.inference.runtime.tiling import TOKENS_PER_TILE


def plan_job(spec: JobSpec, media: list[StoredMedia], *, model_id: str, checkpoint: CheckpointInfo) -> PlanPublic:
    """The exact prompt and tiles. A video's frames are one 448×448 tile each; which frames are
    sampled needs the decoded video and is not part of the plan yet (``frames`` stays empty)."""
    images = [item for item in media if item.is_image]
    n_frames = spec.options.num_frames if spec.task.value.startswith("video_") else 0
    plans = plan_images(
        [(item.width, item.height) for item in images],  # type: ignore[misc]
        max_tiles=spec.options.max_tiles,
        max_tiles_total=spec.options.max_tiles_total,
    )
    prompt = build_prompt(
        checkpoint.template,
        question=question_for(spec.task.value, spec.prompt),
        n_images=len(images),
        n_frames=n_frames,
        multi_image=spec.options.multi_image,
        history=[(turn.user, turn.assistant) for turn in spec.history or []],
        system_message=checkpoint.system_message,
    )
    return PlanPublic(
        prompt=prompt,
        images=[
            ImagePlanPublic(width=plan.width, height=plan.height, tile_grid=plan.tile_grid, tiles=plan.tiles)
            for plan in plans
        ],
        frames=[],
        image_tokens=TOKENS_PER_TILE * (sum(plan.tiles for plan in plans) + n_frames),
        model=model_id,
    )
