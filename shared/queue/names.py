"""Queue and task names, shared by the producers (API) and the consumers (workers)."""

from __future__ import annotations

from shared.jobs.states import JobTask

INFERENCE_QUEUE = "vlmq.inference"
# Webhook deliveries have a queue and a process of their own (services/notifier).
NOTIFY_QUEUE = "vlmq.notify"
DELIVER_TASK = "vlmq.notify.deliver"


# Video jobs are first sent here: a CPU worker (workers/frames) decodes and samples their frames
# so the GPU worker never waits on a decoder, then hands the job on to its model's queue.
FRAMES_QUEUE = "vlmq.frames"
PREPARE_FRAMES_TASK = "vlmq.frames.prepare"
# Video indexes: the frames worker cuts each video into segments (stored as batches of tiles), and
# inference workers caption one batch per task on the index model's queue.
INDEX_VIDEO_TASK = "vlmq.frames.index_video"
CAPTION_SEGMENTS_TASK = "vlmq.inference.caption_segments"
# OpenAI-compatible batches: the frames worker reads the input file and makes one job per line, and
# settles batches (cancel, expire, write the output and error files); its sweeper rings both again.
EXPAND_BATCH_TASK = "vlmq.frames.expand_batch"
SETTLE_BATCH_TASK = "vlmq.frames.settle_batch"


def route_for(task: JobTask | str, model_id: str, *, prepared: bool) -> tuple[str, str]:
    """(task name, queue) a job's id is published to: a video job without frames goes to the frames
    worker, every other job to its model's queue."""
    if JobTask(task).is_video and not prepared:
        return PREPARE_FRAMES_TASK, FRAMES_QUEUE
    return task_name_for(task), queue_for(model_id)


def queue_for(model_id: str) -> str:
    """Each model has its own queue, so a worker consumes only the jobs of the models it loaded."""
    return f"{INFERENCE_QUEUE}.{model_id}"


# Every kind of job is run by one Celery task, so the inference worker can batch a queue's jobs
# together whatever their task (workers/inference/celery_app.py).
RUN_JOB_TASK = "vlmq.inference.run"


def task_name_for(task: JobTask | str) -> str:
    """The Celery task that runs a job of this kind: the same for every kind."""
    JobTask(task)  # an unknown task is a bug of the caller's
    return RUN_JOB_TASK
