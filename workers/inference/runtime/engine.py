"""Continuous batching: one long-lived engine per loaded model, stepped by one loop thread.

Each step of an engine:
1. rows whose stop signal fired (cancel, lost lease, time out, drain) leave, with what they made;
2. waiting requests are admitted into free capacity: at most ``max_rows`` rows, a KV-cache token
   budget (a row reserves its prompt and its whole ``max_new_tokens``, so a running row never has
   to be evicted for lack of room), and a bound on the prompt tokens and tiles prefilled per step,
   so a long prompt stalls the running rows for one prefill at most (a bound per step, not chunked
   prefill). The tiles of everything admitted in one step go through the vision tower in one call;
   each prompt is then prefilled alone (no padding) and its cache copied into a row slot;
3. one decode step for every running row at once (``RowSlots``: each row at its own position);
4. a row that stops (its stop token, its own ``max_new_tokens``) leaves at once and its future is
   resolved, while its batch-mates go on and new requests take its place.

Greedy rows produce exactly the tokens they would alone: the prefill is the row's own, and the
decode step's mask hides every other row's and every unused position.

GPU failures: out of memory leaves the ``except`` block first (inside it the traceback keeps the
failed attempt's tensors alive), collects garbage and empties the allocator's cache, then shrinks
the admission budget and puts the newest admissions (or, in a decode step, the newest row) back
at the head of the queue; a request that does not fit alone is retried with half its tiles. A
sticky CUDA error ends every row with ``DeviceLost`` and calls ``on_device_lost`` (the worker exits
its pool process there).
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from workers.inference.runtime.device_faults import DeviceLost, is_sticky_device_error
from workers.inference.runtime.requests import GenerationResult
from workers.inference.runtime.sampling import next_tokens
from workers.inference.runtime.slots import RowSlots

log = logging.getLogger("vlmq.worker")

OOM_RETRIES = 3  # a request alone out of memory: retried with half its tiles, this many times
STREAM_INTERVAL_S = 0.05  # a streaming row's text is decoded and offered at most this often


@dataclass(frozen=True)
class EngineOptions:
    max_rows: int = 8  # rows decoded together (VLMQ_BATCH_MAX_JOBS; 1 = one job at a time)
    kv_tokens: int = 65_536  # KV-cache tokens the running rows may reserve (prompt + max_new_tokens)
    prefill_tokens: int = 8192  # prompt tokens prefilled per step (at least one request)
    prefill_tiles: int = 48  # tiles through the vision tower per step (at least one request)


@dataclass
class _Row:
    prepared: object  # the runtime's prepared request: text, ids, pixels, tiles
    stop: Callable[[], bool] | None
    future: Future
    on_admitted: Callable[[], None] | None = None
    tokens: list[int] = field(default_factory=list)
    slot: int | None = None
    group: str = ""
    group_size: int = 1
    admitted_at: float = 0.0
    steps: int = 0
    rows_seen: int = 0
    oom_retries: int = 0
    last_offer: float = 0.0

    @property
    def request(self):
        return self.prepared.request

    @property
    def reserved(self) -> int:
        return len(self.prepared.input_ids) + self.request.max_new_tokens


class Engine:
    """One model's rows. ``submit`` from any thread; ``step`` only from the loop's thread."""

    def __init__(self, runtime, options: EngineOptions, name: str = "model"):
        self.runtime, self.options, self.name = runtime, options, name
        self.kv_tokens = options.kv_tokens
        self.prefill_tiles = options.prefill_tiles
        self.waiting: deque[_Row] = deque()
        self.running: list[_Row] = []  # index == slot
        self.slots: RowSlots | None = None
        self.lock = threading.Lock()
        self.loop: EngineLoop | None = None
        self.stats = EngineStats()
        self._pending: list[_Row] = []  # admitted this step, not yet in a slot
        self.refusal: BaseException | None = None  # set once the engine takes nothing new
        self._calm_steps = 0  # decode steps since the last out-of-memory error

    # -- from any thread ------------------------------------------------------------------------

    def submit(self, prepared, stop: Callable[[], bool] | None = None,
               on_admitted: Callable[[], None] | None = None) -> Future:
        """``on_admitted`` is called (on the engine's thread) when the row begins decoding."""
        return self.submit_all([prepared], [stop], [on_admitted])[0]

    def submit_all(self, prepared: list, stops: list[Callable[[], bool] | None],
                   on_admitted: list[Callable[[], None] | None] | None = None) -> list[Future]:
        """Requests that arrived together, queued at once (so one step can admit them together)."""
        announcers = on_admitted or [None] * len(prepared)
        rows = [_Row(item, stop, Future(), on_admitted=announce)
                for item, stop, announce in zip(prepared, stops, announcers, strict=True)]
        with self.lock:
            if self.refusal is not None:  # handing back: nothing new is admitted any more
                for row in rows:
                    row.future.set_exception(self.refusal)
                return [row.future for row in rows]
            self.waiting.extend(rows)
        if self.loop is not None:
            self.loop.wake()
        return [row.future for row in rows]

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def backlog(self) -> tuple[int, int]:
        """(rows, KV tokens) submitted and not yet admitted."""
        with self.lock:
            return len(self.waiting), sum(row.reserved for row in self.waiting)

    def hand_back_waiting(self, error: BaseException) -> None:
        """Every row not yet admitted, and every one submitted from now on, ends with ``error`` (a
        worker shutting down hands them back)."""
        with self.lock:
            rows, self.waiting, self.refusal = list(self.waiting), deque(), error
        for row in rows:
            _resolve(row.future, error=error)
        if self.loop is not None:
            self.loop.backlog_shrank()

    # -- the loop's thread ----------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> None:
        self._drop_stopped()
        failure = None
        try:
            self._admit()
            if self.running:
                self._decode()
        except torch.OutOfMemoryError as error:
            failure = error
        except Exception as error:
            if is_sticky_device_error(error):
                raise
            log.exception("a decode step of %s failed: its rows fail", self.name)
            for row in list(self.running):
                self._leave(row, error=error)
        if failure is not None:  # out of the except block: the failed step's tensors are free now
            self._recover_from_out_of_memory(failure)

    def fail_running(self, error: BaseException) -> None:
        """Every running row ends with ``error``, without touching the device (its context may be
        dead, or the slots in a state a broken step left)."""
        rows, self.running, self.slots = self.running, [], None
        for row in rows:
            row.slot = None
            _resolve(row.future, error=error)

    def fail_everything(self, error: BaseException) -> None:
        self.fail_running(error)
        self.hand_back_waiting(error)

    # -- admission ------------------------------------------------------------------------------

    def _admit(self) -> None:
        group = self._take_admissions()
        if not group:
            return
        if self.loop is not None:
            self.loop.backlog_shrank()
        group_id, now = uuid.uuid4().hex[:12], time.perf_counter()
        for row in group:
            row.group, row.group_size, row.admitted_at = group_id, len(group), now
            if row.on_admitted is not None:
                row.on_admitted()
        self._pending = group  # what an out-of-memory error in this step hands back
        features = self._vision(group)
        for row, row_features in zip(group, features, strict=True):
            if isinstance(row_features, Exception):
                self._leave(row, error=row_features)
                continue
            try:
                self._prefill(row, row_features)
            except torch.OutOfMemoryError:
                raise
            except Exception as error:  # this request breaks the model: it fails alone
                if is_sticky_device_error(error):
                    raise
                self._leave(row, error=error)
        self._pending = []

    def _take_admissions(self) -> list[_Row]:
        reserved = sum(row.reserved for row in self.running)
        group, prompt_tokens, tiles = [], 0, 0
        with self.lock:
            while self.waiting and len(self.running) + len(group) < self.options.max_rows:
                row = self.waiting[0]
                first = not group
                fits = reserved + row.reserved <= self.kv_tokens or (not self.running and first)
                bounded = first or (prompt_tokens + len(row.prepared.input_ids) <= self.options.prefill_tokens
                                    and tiles + row.prepared.tiles <= self.prefill_tiles)
                if not (fits and bounded):
                    break
                self.waiting.popleft()
                group.append(row)
                reserved += row.reserved
                prompt_tokens += len(row.prepared.input_ids)
                tiles += row.prepared.tiles
        return group

    def _vision(self, group: list[_Row]) -> list[torch.Tensor | Exception | None]:
        """Every row's image features, from one vision call over the tiles of the whole group; if
        that call breaks, each row's tiles again alone, so a poisoned one fails alone."""
        with_pixels = [row for row in group if row.prepared.pixel_values is not None]
        features: dict[int, torch.Tensor | Exception] = {}
        if with_pixels:
            try:
                encoded = self._encode(np.concatenate([row.prepared.pixel_values for row in with_pixels]))
                sizes = [len(row.prepared.pixel_values) for row in with_pixels]
                for row, part in zip(with_pixels, torch.split(encoded, sizes), strict=True):
                    features[id(row)] = part
            except torch.OutOfMemoryError:
                raise
            except Exception as error:
                if is_sticky_device_error(error):
                    raise
                if len(with_pixels) == 1:
                    features = {id(with_pixels[0]): error}
                else:
                    features = {id(row): self._encode_alone(row) for row in with_pixels}
        return [features.get(id(row)) for row in group]

    def _encode_alone(self, row: _Row) -> torch.Tensor | Exception:
        try:
            return self._encode(row.prepared.pixel_values)
        except torch.OutOfMemoryError:
            raise
        except Exception as error:
            if is_sticky_device_error(error):
                raise
            return error

    @torch.inference_mode()
    def _encode(self, pixels: np.ndarray) -> torch.Tensor:
        model = self.runtime.model
        config = model.config
        output = model.model.get_image_features(
            pixel_values=self.runtime.to_device(pixels), vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy, return_dict=True)
        return output.pooler_output

    @torch.inference_mode()
    def _prefill(self, row: _Row, features: torch.Tensor | None) -> None:
        ids = torch.tensor([row.prepared.input_ids], device=self.runtime.device)
        media = {"mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=features)}} \
            if features is not None else {}
        output = self.runtime.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True,
                                    logits_to_keep=1, **media)
        token = next_tokens(output.logits[:, -1], [row.request.temperature], [row.request.top_p])[0]
        row.tokens.append(token)
        if self._finished(row):
            return self._leave(row)
        if self.slots is None:
            self.slots = self._slots_like(output.cache)
        row.slot = self.slots.admit(output.cache)
        self.running.append(row)
        self._offer_text(row)

    def _slots_like(self, cache) -> RowSlots:
        keys = cache.layers[0].keys
        static = keys.device.type == "cuda"
        # On a GPU, slots for the whole budget at once, so shapes stay put while rows come and go.
        # (2k to 8k tokens each: a static step reads every slot's whole length; a longer row grows them all)
        length = min(max(self.kv_tokens // self.options.max_rows, 2048), 8192) if static else 256
        return RowSlots(layers=len(cache.layers), kv_heads=keys.shape[1], head_dim=keys.shape[3],
                        slots=self.options.max_rows, length=length, dtype=keys.dtype, device=keys.device, static=static)

    # -- decoding -------------------------------------------------------------------------------

    @torch.inference_mode()
    def _decode(self) -> None:
        started = time.perf_counter()
        rows = self.running
        positions, mask = self.slots.begin_step()
        mask = self.runtime.decode_mask(mask)
        ids = torch.tensor([[row.tokens[-1]] for row in rows], device=self.runtime.device)
        with self.runtime.decode_attention():
            output = self.runtime.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=self.slots,
                                        use_cache=True, logits_to_keep=1)
        self.slots.end_step()
        chosen = next_tokens(output.logits[:, -1], [row.request.temperature for row in rows],
                             [row.request.top_p for row in rows])
        self.stats.decode_step(len(rows), time.perf_counter() - started)
        self._regrow_budget()
        for row, token in zip(list(rows), chosen, strict=True):
            row.tokens.append(token)
            row.steps += 1
            row.rows_seen += len(chosen)
            if self._finished(row):
                self._leave(row)
            else:
                self._offer_text(row)

    def _regrow_budget(self) -> None:
        """A budget shrunk by an out-of-memory error grows back by a tenth every 256 calm steps
        (the memory may have been another process's, or a fragmented cache's)."""
        self._calm_steps += 1
        if self._calm_steps % 256 == 0 and self.kv_tokens < self.options.kv_tokens:
            self.kv_tokens = min(self.options.kv_tokens, self.kv_tokens + max(1, self.options.kv_tokens // 10))
            self.prefill_tiles = min(self.options.prefill_tiles, self.prefill_tiles * 2)

    def _finished(self, row: _Row) -> bool:
        return row.tokens[-1] == self.runtime.stop_token_id or len(row.tokens) >= row.request.max_new_tokens

    def _drop_stopped(self) -> None:
        for row in list(self.running):
            if row.stop is not None and row.stop():
                self._leave(row)
        with self.lock:
            stopped = [row for row in self.waiting if row.stop is not None and row.stop()]
            for row in stopped:
                self.waiting.remove(row)
        for row in stopped:
            self._leave(row)

    def _leave(self, row: _Row, *, error: BaseException | None = None) -> None:
        """The row ends now: its slot goes to the next admission, its future gets its outcome."""
        self._release(row)
        if error is not None:
            return _resolve(row.future, error=error)
        _resolve(row.future, result=self._result(row))

    def _release(self, row: _Row) -> None:
        if row.slot is None:
            return
        index, row.slot = row.slot, None
        moved = self.slots.release(index)
        if moved is not None:  # the last row now lives in the freed slot
            mover = self.running[moved]
            self.running[index], mover.slot = mover, index
        self.running.pop()

    def _preempt(self, row: _Row) -> None:
        """Out of the batch and back to the head of the queue, to start over when there is room."""
        self._release(row)
        row.tokens, row.steps, row.rows_seen = [], 0, 0
        with self.lock:
            self.waiting.appendleft(row)

    def _result(self, row: _Row) -> GenerationResult:
        runtime = self.runtime
        tokens = runtime.kept_tokens(row.tokens[: row.request.max_new_tokens])
        text = runtime.text_of(tokens).strip()
        finished = time.perf_counter()
        return GenerationResult(
            text=text, input_tokens=len(row.prepared.input_ids), output_tokens=len(tokens), tiles=row.prepared.tiles,
            preprocess_ms=row.prepared.preprocess_ms,
            inference_ms=(finished - (row.admitted_at or finished)) * 1000,
            boxes=runtime.boxes(row.request, text), token_ids=tokens, batch_id=row.group, batch_size=row.group_size,
            finish_reason=runtime.finish_reason(tokens, row.request.max_new_tokens),
            mean_rows=round(row.rows_seen / row.steps, 2) if row.steps else 1.0,
        )

    def _offer_text(self, row: _Row) -> None:
        sink = row.request.text_sink
        if sink is None or time.perf_counter() - row.last_offer < STREAM_INTERVAL_S:
            return
        row.last_offer = time.perf_counter()
        sink(self.runtime.text_of(self.runtime.kept_tokens(row.tokens)).lstrip())

    # -- out of memory --------------------------------------------------------------------------

    def _recover_from_out_of_memory(self, error: torch.OutOfMemoryError) -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.stats.out_of_memory += 1
        self._calm_steps = 0
        pending, self._pending = self._pending, []
        pending = [row for row in pending if not row.future.done() and row.slot is None]
        reserved = sum(row.reserved for row in self.running)
        if pending:  # the newest admissions go back to the head of the queue, behind a smaller budget
            self.kv_tokens = max(reserved, min(self.kv_tokens, reserved + sum(r.reserved for r in pending)) * 3 // 4)
            self.prefill_tiles = max(1, min(self.prefill_tiles, sum(r.prepared.tiles for r in pending)) // 2)
            if len(pending) == 1 and not self.running:
                return self._retry_with_fewer_tiles(pending[0], error)
            with self.lock:
                self.waiting.extendleft(reversed(pending))
            log.warning("%s: out of memory admitting %d requests: budget now %d KV tokens, %d tiles per step",
                        self.name, len(pending), self.kv_tokens, self.prefill_tiles)
            return
        if len(self.running) <= 1:  # one row alone cannot decode
            for row in list(self.running):
                self._leave(row, error=error)
            return
        newest = max(self.running, key=lambda row: row.admitted_at)
        self._preempt(newest)
        self.kv_tokens = max(1, reserved - newest.reserved)
        log.warning("%s: out of memory decoding %d rows: the newest starts over, budget now %d KV tokens",
                    self.name, len(self.running) + 1, self.kv_tokens)

    def _retry_with_fewer_tiles(self, row: _Row, error: torch.OutOfMemoryError) -> None:
        request = row.request
        if request.max_tiles <= 1 or row.oom_retries >= OOM_RETRIES:
            return _resolve(row.future, error=error)
        fewer = dataclasses.replace(request, max_tiles=max(1, request.max_tiles // 2),
                                    max_tiles_total=max(1, request.max_tiles_total // 2) if request.max_tiles_total else None)
        log.warning("out of memory: retrying with at most %d tiles per image", fewer.max_tiles)
        try:
            prepared = self.runtime.prepare(fewer)
        except Exception as failure:
            return _resolve(row.future, error=failure)
        retry = _Row(prepared, row.stop, row.future, on_admitted=row.on_admitted, oom_retries=row.oom_retries + 1)
        with self.lock:
            self.waiting.appendleft(retry)


def _resolve(future: Future, *, result=None, error: BaseException | None = None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


@dataclass
class EngineStats:
    steps: int = 0
    row_steps: int = 0
    decode_s: float = 0.0
    out_of_memory: int = 0

    def decode_step(self, rows: int, seconds: float) -> None:
        self.steps += 1
        self.row_steps += rows
        self.decode_s += seconds

    @property
    def mean_rows(self) -> float:
        return self.row_steps / self.steps if self.steps else 0.0


class EngineLoop:
    """The thread that steps every engine of a process in turn (one step each per round, so the
    models it serves share the device fairly) and sleeps while none has work."""

    def __init__(self, on_device_lost: Callable[[BaseException], None] | None = None):
        self.engines: list[Engine] = []
        self.on_device_lost = on_device_lost
        self._wake = threading.Condition()
        self._room = threading.Condition()  # notified when the backlog shrinks
        self._thread: threading.Thread | None = None
        self.started = time.perf_counter()
        self.idle_s = 0.0
        self._reported = time.perf_counter()
        self.dead: BaseException | None = None

    def attach(self, engine: Engine) -> Engine:
        engine.loop = self
        self.engines.append(engine)
        return engine

    def wake(self) -> None:
        if self._thread is None:
            self._start()
        with self._wake:
            self._wake.notify_all()

    def idle(self) -> bool:
        return not any(engine.has_work() for engine in self.engines)

    def backlog_shrank(self) -> None:
        with self._room:
            self._room.notify_all()

    def wait_for_room(self, fits: Callable[[int, int], bool], timeout_s: float) -> bool:
        """Blocks until ``fits(rows, tokens)`` of the backlog (re-checked whenever admissions take
        from it) or ``timeout_s`` passes; returns whether it fits."""
        with self._room:
            return self._room.wait_for(lambda: fits(*self.backlog()), timeout=timeout_s)

    def backlog(self) -> tuple[int, int]:
        rows = tokens = 0
        for engine in self.engines:
            engine_rows, engine_tokens = engine.backlog()
            rows, tokens = rows + engine_rows, tokens + engine_tokens
        return rows, tokens

    def idle_share(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.idle_s / elapsed if elapsed > 0 else 0.0

    def _start(self) -> None:
        with self._wake:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="vlmq-engine", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        for turn in itertools.count():
            engine = self.engines[turn % len(self.engines)]
            if self.idle():
                waited = time.perf_counter()
                with self._wake:
                    self._wake.wait_for(lambda: not self.idle(), timeout=0.5)
                self.idle_s += time.perf_counter() - waited
                continue
            if not engine.has_work():
                continue
            try:
                engine.step()
                self._report_now_and_then()
            except Exception as error:
                if is_sticky_device_error(error):
                    self._device_lost(error)
                    return
                log.exception("engine %s broke: its running rows fail", engine.name)
                engine.fail_running(error)

    def _report_now_and_then(self, every_s: float = 5.0) -> None:
        """What the engines did so far, in the worker's log (read by bench/worker_throughput.py)."""
        now = time.perf_counter()
        if now - self._reported < every_s:
            return
        self._reported = now
        for engine in self.engines:
            stats = engine.stats
            log.info("engine %s: %d decode steps, %.2f mean rows, idle share %.3f", engine.name, stats.steps,
                     stats.mean_rows, self.idle_share())

    def _device_lost(self, error: BaseException) -> None:
        log.critical("the device context is lost (%s): every row fails over to another attempt", error)
        self.dead = error
        for engine in self.engines:
            engine.fail_everything(DeviceLost(str(error)))
        if self.on_device_lost is not None:
            self.on_device_lost(error)


_process_loop: EngineLoop | None = None
_process_lock = threading.Lock()


def process_loop() -> EngineLoop:
    """This process's engine loop: every loaded model's engine is stepped by it."""
    global _process_loop
    with _process_lock:
        if _process_loop is None:
            _process_loop = EngineLoop()
        return _process_loop
