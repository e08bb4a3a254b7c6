"""The frames worker's share of OpenAI-compatible batches (``shared.batches.progress`` owns their states).

- ``expand_batch`` streams the input file from storage and turns each line into an ordinary chat
  job, ``batch_chunk_lines`` lines per transaction: the jobs, their media rows, the lines that could
  not become jobs (``batch_line_errors``) and the read position commit together, so a re-run
  (a crash, a duplicate message) resumes after the last committed line and never makes a job twice.
  It pauses while the tenant has ``batch_queued_jobs`` jobs queued: a big batch is fed to the
  queues as they drain instead of burying everyone's interactive jobs.
- ``settle_batch`` finishes what can be finished: a batch whose jobs all ended is finalized; a
  cancelling or expired one has its open jobs cancelled. Either way the output and error files are
  written (streamed, in line order) before the last status change, under ids derived from the
  batch's, so writing them twice writes the same objects.
- ``BatchSweeper`` (a thread in the worker's main process) settles every unfinished batch each
  ``batch_sweep_s`` and hands on expansions nobody is doing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Select, func, insert, select
from sqlalchemy.exc import IntegrityError

from services.api.context_budget import checkpoint_for, prompt_budget
from services.api.errors import ApiError
from services.api.openai.chat_request import (
    ChatCompletionRequest,
    chat_job,
    request_refusal,
)
from services.api.openai.completions import completion_object, failed_job_error
from services.api.openai.images import ImageRefused, images_media
from services.api.submission import check_media_fits_task, job_rows
from shared.batches.documents import job_counts
from shared.batches.lines import jsonl_lines
from shared.batches.progress import (
    ACTIVE,
    CANCELLED,
    CANCELLING,
    COMPLETED,
    EXPIRED,
    FAILED,
    FINAL,
    FINALIZING,
    IN_PROGRESS,
    begin_finalizing,
    claim_expansion,
    finish_expansion,
    mark_expired,
    open_job_ids,
    pause_expansion,
    record_lines,
    settle,
)
from shared.config.settings import FramesSettings
from shared.db.engine import session_scope
from shared.db.media_rows import insert_media_ignoring_duplicates
from shared.db.models import Batch, BatchLineError, Job, JobResult, StoredFile, utcnow
from shared.jobs import JobStatus, StaleTransition, cancel_job
from shared.media import WriteBlocks
from shared.metrics import record
from shared.periodic import PeriodicPass
from shared.storage import ObjectNotFound, ObjectStore, file_key

log = logging.getLogger("vlmq.batches")
Publish = Callable[[list[dict[str, Any]]], None]  # job rows, after their transaction committed
PAGE = 500
MAX_BATCH_ERRORS = 100  # line errors listed on a batch that failed because no line could run


@dataclass
class _Chunk:
    jobs: list[dict[str, Any]] = field(default_factory=list)
    media: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    read_before: int = 0  # the batch's read position this chunk continues from
    last_line: int = 0

    def __len__(self) -> int:
        return len(self.jobs) + len(self.errors)


class _LineRefused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class _Stopped(Exception):
    """The batch stopped taking lines (cancelled or expired), or another expander wrote these lines."""


# ---------------------------------------------------------------------------------------------- expand


def expand_batch(batch_id: str, *, settings: FramesSettings, store: ObjectStore, publish: Publish) -> str:
    database_url = settings.resolved_database_url
    with session_scope(database_url) as session:
        batch = claim_expansion(session, batch_id, lease_s=settings.batch_lease_s)
        if batch is None:
            return "skipped"
        tenant_id, endpoint, lines_read = batch.tenant_id, batch.endpoint, batch.lines_read
        source = session.get(StoredFile, batch.input_file_id)
        seen = set(session.scalars(select(Job.custom_id).where(Job.batch_id == batch_id)))
        seen |= set(session.scalars(select(BatchLineError.custom_id).where(BatchLineError.batch_id == batch_id)))
    if source is None:
        return _fail(database_url, batch_id, "file_not_found", f"the input file {batch.input_file_id} was deleted")
    if _queue_full(database_url, tenant_id, settings):
        return _pause(database_url, batch_id)
    chunk = _Chunk(read_before=lines_read)
    try:
        for number, raw in jsonl_lines(store.iter_chunks(source.object_key),
                                       max_line_bytes=settings.openai_max_request_bytes):
            if number <= lines_read:
                continue
            _take_line(chunk, number, raw, tenant_id=tenant_id, endpoint=endpoint, seen=seen,
                       settings=settings, store=store)
            if len(chunk) >= settings.batch_chunk_lines:
                _commit(database_url, batch_id, chunk, settings, publish)
                chunk = _Chunk(read_before=chunk.last_line)
                if _queue_full(database_url, tenant_id, settings):
                    return _pause(database_url, batch_id)
        if len(chunk):
            _commit(database_url, batch_id, chunk, settings, publish)
    except _Stopped:
        return "stopped"
    except ObjectNotFound:
        return _fail(database_url, batch_id, "file_not_found", "the input file is gone from storage")
    with session_scope(database_url) as session:
        finish_expansion(session, batch_id)
    return "expanded"


def _take_line(chunk: _Chunk, number: int, raw: bytes | None, *, tenant_id: str, endpoint: str, seen: set,
               settings: FramesSettings, store: ObjectStore) -> None:
    chunk.last_line = number
    custom_id = None
    try:
        if raw is None:
            raise _LineRefused("line_too_long", f"the line is longer than {settings.openai_max_request_bytes} bytes")
        try:
            line = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise _LineRefused("invalid_json", f"the line is not JSON: {error}") from None
        except RecursionError:
            raise _LineRefused("invalid_json", "the line nests too deeply") from None
        if not isinstance(line, dict):
            raise _LineRefused("invalid_request", "a line must be a JSON object")
        custom_id = line.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id or len(custom_id) > 512 or "\x00" in custom_id:
            custom_id = None
            raise _LineRefused("invalid_custom_id", "custom_id must be a string of 1 to 512 characters")
        if custom_id in seen:
            duplicate, custom_id = custom_id, None  # the error line must not claim the first line's id
            raise _LineRefused("duplicate_custom_id", f"custom_id {duplicate!r} is used by an earlier line")
        seen.add(custom_id)
        if line.get("method") != "POST" or line.get("url") != endpoint:
            raise _LineRefused("invalid_url", f"every line of this batch must be a POST to {endpoint}")
        job, media_rows = _job_for(line.get("body"), tenant_id=tenant_id, settings=settings, store=store)
    except _LineRefused as refusal:
        chunk.errors.append({"line": number, "custom_id": custom_id, "code": refusal.code,
                             "message": f"line {number}: {refusal.message}"})
        return
    job.update(batch_line=number, custom_id=custom_id)  # and batch_id, when the chunk is written
    chunk.jobs.append(job)
    for row in media_rows:
        chunk.media[(row["tenant_id"], row["object_key"])] = row


def _job_for(body: Any, *, tenant_id: str, settings: FramesSettings,
             store: ObjectStore) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The same reading as POST /v1/chat/completions gives a request, as a job row and media rows."""
    if not isinstance(body, dict):
        raise _LineRefused("invalid_request", "body must be a chat completion request object")
    try:
        request = _validated(body)
        if request.stream:
            raise _LineRefused("invalid_request", "stream is not available in a batch")
        wanted = chat_job(request)
    except ValidationError as error:
        raise _LineRefused("invalid_request", request_refusal(error).message) from None
    model_id = wanted.spec.model
    if model_id not in settings.model_sources:
        raise _LineRefused("model_not_found", f"unknown model {model_id!r}; see GET /v1/models")
    try:
        media = images_media(wanted.image_urls, store=store, tenant_id=tenant_id, settings=settings)
        check_media_fits_task(wanted.spec, media)
        # As POST /v1/chat/completions refuses it: a line that cannot fit the context never runs.
        budget = prompt_budget(wanted.spec, checkpoint_for(settings, model_id), n_media=len(media))
        if budget is not None:
            budget.check(media)
    except ImageRefused as refusal:
        raise _LineRefused(refusal.code, refusal.message) from None
    except ApiError as error:
        raise _LineRefused(error.code, error.message) from None
    return job_rows(tenant_id=tenant_id, spec=wanted.spec, model_id=model_id, media=media)


def _validated(body: dict) -> ChatCompletionRequest:
    try:
        return ChatCompletionRequest.model_validate(body)
    except RecursionError:  # a body nested past Python's stack: refused, never a poisoned chunk
        raise _LineRefused("invalid_request", "the body nests too deeply") from None


def _commit(database_url: str, batch_id: str, chunk: _Chunk, settings: FramesSettings, publish: Publish) -> None:
    for job in chunk.jobs:
        job["batch_id"] = batch_id
    try:
        with session_scope(database_url) as session:
            # The read position first: a second expander of these lines waits here, then stops.
            if not record_lines(session, batch_id, read_before=chunk.read_before, lines_read=chunk.last_line,
                                invalid=len(chunk.errors), lease_s=settings.batch_lease_s):
                raise _Stopped()  # rolls the chunk back with the session
            connection = session.connection()
            if chunk.jobs:
                connection.execute(insert(Job.__table__), chunk.jobs)
            if chunk.media:
                connection.execute(insert_media_ignoring_duplicates(connection), list(chunk.media.values()))
            if chunk.errors:
                connection.execute(insert(BatchLineError.__table__),
                                   [{"batch_id": batch_id, **error} for error in chunk.errors])
    except IntegrityError:  # another expander's rows for these lines are in: it carries on, this one stops
        raise _Stopped() from None
    for job in chunk.jobs:
        record.job_created(job["task"], job["model"])
    if chunk.jobs:
        publish(chunk.jobs)


def _queue_full(database_url: str, tenant_id: str, settings: FramesSettings) -> bool:
    with session_scope(database_url) as session:
        queued = session.scalar(select(func.count()).select_from(Job).where(
            Job.tenant_id == tenant_id, Job.status == JobStatus.queued.value))
    return queued >= settings.batch_queued_jobs


def _pause(database_url: str, batch_id: str) -> str:
    with session_scope(database_url) as session:
        pause_expansion(session, batch_id, resume_after_s=2.0)
    return "paused"


def _fail(database_url: str, batch_id: str, code: str, message: str) -> str:
    with session_scope(database_url) as session:
        settle(session, batch_id, final_status=FAILED, output_file_id=None, error_file_id=None,
               errors=[{"code": code, "message": message, "param": "input_file_id", "line": None}])
    return "failed"


# ---------------------------------------------------------------------------------------------- settle


def settle_batch(batch_id: str, *, settings: FramesSettings, store: ObjectStore) -> str:
    """Whatever the batch is ready for now; returns what was done (for logs and tests)."""
    database_url = settings.resolved_database_url
    with session_scope(database_url) as session:
        batch = session.get(Batch, batch_id)
        if batch is None or batch.status in FINAL:
            return "final"
        window_over = batch.expired_at is None and batch.expires_at < utcnow()
        if batch.status in ACTIVE and window_over and mark_expired(session, batch_id):
            log.info("batch %s expired", batch_id)
        batch = session.get(Batch, batch_id, populate_existing=True)
        status, expanded, expired = batch.status, batch.expanded, batch.expired_at is not None
        finalizing_since = batch.finalizing_at
    if status == CANCELLING or (status in ACTIVE and expired):
        _cancel_open_jobs(database_url, batch_id)
        return _write_files(database_url, store, batch_id, CANCELLED if status == CANCELLING else EXPIRED)
    if status == IN_PROGRESS and expanded:
        with session_scope(database_url) as session:
            counts = job_counts(session, batch_id)
            if any(counts.get(open_status, 0) for open_status in (JobStatus.queued.value, JobStatus.running.value)):
                return "running"
            if not counts:  # not one line could run
                return _write_files(database_url, store, batch_id, FAILED)
            if not begin_finalizing(session, batch_id):
                return "raced"
        return _write_files(database_url, store, batch_id, COMPLETED)
    if status == FINALIZING and finalizing_since < utcnow() - timedelta(seconds=settings.batch_lease_s):
        return _write_files(database_url, store, batch_id, COMPLETED)  # its finalizer died
    return "waiting"


def _cancel_open_jobs(database_url: str, batch_id: str) -> None:
    while True:
        with session_scope(database_url) as session:
            job_ids = open_job_ids(session, batch_id, limit=PAGE)
            for job_id in job_ids:
                try:
                    with session.begin_nested():
                        cancel_job(session, job_id)
                except StaleTransition:
                    pass  # it ended meanwhile
        if len(job_ids) < PAGE:
            return


def _write_files(database_url: str, store: ObjectStore, batch_id: str, final_status: str) -> str:
    with session_scope(database_url) as session:
        batch = session.get(Batch, batch_id)
        tenant_id, stem = batch.tenant_id, batch.id.removeprefix("batch_")
    output = _JsonlWriter(store, tenant_id, f"file-{stem}-output")
    errors = _JsonlWriter(store, tenant_id, f"file-{stem}-errors")
    first_errors: list[dict[str, Any]] = []
    try:
        for number, kind, line in _result_lines(database_url, batch_id, final_status):
            (output if kind == "output" else errors).add(line)
            if kind == "line_error" and len(first_errors) < MAX_BATCH_ERRORS:
                first_errors.append({"code": line["error"]["code"], "message": line["error"]["message"],
                                     "param": None, "line": number})
        written = [writer.complete() for writer in (output, errors)]
    except BaseException:
        output.abort()
        errors.abort()
        raise
    with session_scope(database_url) as session:
        for row in written:
            if row is not None and session.get(StoredFile, row.id) is None:
                session.add(row)
        settled = settle(session, batch_id, final_status=final_status,
                         output_file_id=written[0].id if written[0] else None,
                         error_file_id=written[1].id if written[1] else None,
                         errors=first_errors if final_status == FAILED else None)
        if not settled:
            session.rollback()
            return "raced"
    log.info("batch %s %s", batch_id, final_status)
    return final_status


def _result_lines(database_url: str, batch_id: str, final_status: str) -> Iterator[tuple[int, str, dict]]:
    """(line, "output" | "error" | "line_error", the line's object) in input order: jobs and the
    lines that never became jobs, merged, a page at a time."""
    jobs, line_errors = _job_pages(database_url, batch_id), _line_error_pages(database_url, batch_id)
    job, line_error = next(jobs, None), next(line_errors, None)
    while job is not None or line_error is not None:
        if line_error is None or (job is not None and job.batch_line < line_error.line):
            yield job.batch_line, *_job_line(job, final_status)
            job = next(jobs, None)
        else:
            yield line_error.line, "line_error", {
                "id": f"batch_req_{batch_id.removeprefix('batch_')}_{line_error.line}",
                "custom_id": line_error.custom_id, "response": None,
                "error": {"code": line_error.code, "message": line_error.message}}
            line_error = next(line_errors, None)


def _job_line(job, final_status: str) -> tuple[str, dict]:
    line: dict[str, Any] = {"id": f"batch_req_{job.id.removeprefix('job_')}", "custom_id": job.custom_id,
                            "response": None, "error": None}
    if job.status == JobStatus.succeeded.value:
        line["response"] = {"status_code": 200, "request_id": job.id,
                            "body": completion_object(job.id, job.created_at, job.model, job.result)}
        return "output", line
    if job.status == JobStatus.canceled.value and final_status in (CANCELLED, EXPIRED):
        code = "batch_expired" if final_status == EXPIRED else "batch_cancelled"
        reason = "the batch's completion window ended" if final_status == EXPIRED else "the batch was cancelled"
        line["error"] = {"code": code, "message": f"{reason} before this request ran"}
        return "error", line
    status_code, body = failed_job_error(job.id, job.status, job.error)
    line["response"] = {"status_code": status_code, "request_id": job.id, "body": body}
    return "error", line


def _job_pages(database_url: str, batch_id: str) -> Iterator[Any]:
    return _keyset_pages(database_url, lambda after: (
        select(Job.id, Job.batch_line, Job.custom_id, Job.status, Job.error, Job.created_at, Job.model,
               JobResult.result)
        .outerjoin(JobResult, JobResult.job_id == Job.id)
        .where(Job.batch_id == batch_id, Job.batch_line > after)
        .order_by(Job.batch_line)
    ), position=lambda row: row.batch_line)


def _line_error_pages(database_url: str, batch_id: str) -> Iterator[Any]:
    return _keyset_pages(database_url, lambda after: (
        select(BatchLineError.line, BatchLineError.custom_id, BatchLineError.code, BatchLineError.message)
        .where(BatchLineError.batch_id == batch_id, BatchLineError.line > after)
        .order_by(BatchLineError.line)
    ), position=lambda row: row.line)


def _keyset_pages(database_url: str, query_after: Callable[[int], Select], *,
                  position: Callable[[Any], int]) -> Iterator[Any]:
    """Every row of ``query_after(position)``, a page per short transaction, never all at once."""
    after = 0
    while True:
        with session_scope(database_url) as session:
            rows = session.execute(query_after(after).limit(PAGE)).all()
        yield from rows
        if len(rows) < PAGE:
            return
        after = position(rows[-1])


class _JsonlWriter:
    """One result file, streamed to storage; no file at all when it gets no line."""

    def __init__(self, store: ObjectStore, tenant_id: str, file_id: str) -> None:
        self.store, self.tenant_id, self.file_id = store, tenant_id, file_id
        self.key = file_key(tenant_id, file_id)
        self.size, self.lines = 0, 0
        self._writer, self._blocks = None, WriteBlocks()

    def add(self, line: dict) -> None:
        data = (json.dumps(line, ensure_ascii=False, separators=(",", ":"), default=str) + "\n").encode()
        if self._writer is None:
            self._writer = self.store.open_writer(self.key)
        self.size, self.lines = self.size + len(data), self.lines + 1
        if (block := self._blocks.add(data)) is not None:
            self._writer.write(block)

    def complete(self) -> StoredFile | None:
        if self._writer is None:
            return None
        self._writer.write(self._blocks.take())
        self._writer.complete()
        self._writer = None
        suffix = self.file_id.rsplit("-", 1)[1]
        return StoredFile(id=self.file_id, tenant_id=self.tenant_id, purpose="batch_output",
                          filename=f"batch_{self.file_id.split('-')[1]}_{suffix}.jsonl", object_key=self.key,
                          size_bytes=self.size, line_count=self.lines)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None


# --------------------------------------------------------------------------------------------- sweeper


class BatchSweeper(PeriodicPass):
    """Each pass: settle every unfinished batch, and publish the expansion of any active batch that
    nobody is expanding (its message was lost, its worker died, or it paused for the queue)."""

    name = "vlmq-batch-sweeper"
    HAND_ON_AFTER_S = 30.0  # a published expansion not yet claimed is not published again before this

    def __init__(self, settings: FramesSettings, store: ObjectStore, publish_expansion: Callable[[str], None]):
        super().__init__(settings.batch_sweep_s, log)
        self.settings, self.store, self.publish_expansion = settings, store, publish_expansion
        self._published: dict[str, tuple[float, Any]] = {}  # batch id → (when, the lease it saw)

    def run_once(self) -> dict[str, str]:
        now = utcnow()
        with session_scope(self.settings.resolved_database_url) as session:
            batches = session.execute(
                select(Batch.id, Batch.status, Batch.expanded, Batch.expand_lease_expires_at, Batch.created_at)
                .where(Batch.status.not_in(FINAL)).order_by(Batch.id).limit(1000)
            ).all()
        outcomes = {}
        self._published = {batch_id: at for batch_id, at in self._published.items()
                           if batch_id in {batch.id for batch in batches}}
        for batch in batches:
            idle = batch.expand_lease_expires_at is None or batch.expand_lease_expires_at < now
            if batch.status in ACTIVE and not batch.expanded and idle and self._may_publish(batch):
                self.publish_expansion(batch.id)
            outcomes[batch.id] = settle_batch(batch.id, settings=self.settings, store=self.store)
        return outcomes

    def _may_publish(self, batch) -> bool:
        """Not while a message published for the same lease may still be on its way: a lease that
        changed since (an expander claimed it, then paused or died) is worth a new message at once."""
        last = self._published.get(batch.id)
        if last is not None and last[1] == batch.expand_lease_expires_at and \
                time.monotonic() - last[0] < self.HAND_ON_AFTER_S:
            return False
        self._published[batch.id] = (time.monotonic(), batch.expand_lease_expires_at)
        return True

