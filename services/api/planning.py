"""``POST /v1/jobs/plan``: what a job would feed the model, computed without the model."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool

from services.api.context_budget import prompt_budget
from services.api.ingest import media_failure_error
from services.api.schemas import FramePublic, ImagePlanPublic, JobSpec, PlanPublic
from shared.config.settings import ApiSettings
from shared.media import StoredMedia
from shared.storage import ObjectStore
from shared.video import SampledFrame
from workers.frames.extract import ExtractionFailed, plan_frames
from workers.inference.runtime.checkpoint import CheckpointInfo
from workers.inference.runtime.prompts import build_prompt, plan_images, question_for
from workers.inference.runtime.tiling import TOKENS_PER_TILE


def plan_job(
    spec: JobSpec, media: list[StoredMedia], *, model_id: str, checkpoint: CheckpointInfo,
    frames: list[SampledFrame] | None = None,
) -> PlanPublic:
    """The exact prompt and tiles. A video's ``frames`` (sampled from the probed video) are one
    448×448 tile each. Counts the prompt's tokens: call it off the event loop."""
    images = [item for item in media if item.is_image]
    frames = frames or []
    n_frames = len(frames)
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
        system_message=checkpoint.system_message if spec.system is None else spec.system,
    )
    image_tokens = TOKENS_PER_TILE * (sum(plan.tiles for plan in plans) + n_frames)
    # Refused as the job would be: a plan that answers 200 is a job that fits.
    budget = prompt_budget(spec, checkpoint, n_media=len(media))
    input_tokens = budget.check_image_tokens(image_tokens) if budget is not None else None
    return PlanPublic(
        prompt=prompt,
        images=[
            ImagePlanPublic(width=plan.width, height=plan.height, tile_grid=plan.tile_grid, tiles=plan.tiles)
            for plan in plans
        ],
        frames=[FramePublic(index=frame.index, time_s=frame.time_s) for frame in frames],
        image_tokens=image_tokens,
        model=model_id,
        input_tokens=input_tokens,
        context_length=budget.context_length if budget is not None else checkpoint.context_length,
    )


async def sample_plan_frames(store: ObjectStore, object_key: str, options: dict, *, settings: ApiSettings) -> list[SampledFrame]:
    """The frames a video job would sample, from the stored video (probed, not decoded)."""
    try:
        return await run_in_threadpool(plan_frames, store, object_key, options, settings=settings)
    except ExtractionFailed as failure:
        raise media_failure_error(failure.code, failure.message, transient=failure.transient) from None
