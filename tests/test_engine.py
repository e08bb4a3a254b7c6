"""The continuous-batching engine on the tiny model: unlike requests share decode steps, each with
its own limit, sampling and stop; rows join while others decode and leave on their own; a request
that breaks fails alone; out of memory and a lost device behave as a GPU needs."""

from __future__ import annotations

import gc
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support.services import wait_until
from workers.inference.runtime.device_faults import DeviceLost, is_sticky_device_error
from workers.inference.runtime.engine import Engine, EngineLoop, EngineOptions
from workers.inference.runtime.model import InternVLRuntime
from workers.inference.runtime.requests import GenerationRequest


@pytest.fixture(scope="module")
def runtime(tiny_model_dir):
    return InternVLRuntime.load(tiny_model_dir)


def mixed_requests() -> list[GenerationRequest]:
    """A caption, a two-image question, a text-only chat and a video question, each with its own limit."""
    frame = np.full((448, 448, 3), 90, dtype=np.uint8)
    return [
        GenerationRequest("caption", None, [Image.new("RGB", (640, 480), "red")], max_tiles=2, max_new_tokens=3),
        GenerationRequest("vqa", "Same colour?", [Image.new("RGB", (64, 64), "blue"), Image.new("RGB", (300, 200))],
                          max_tiles=1, max_new_tokens=9),
        GenerationRequest("chat", "Say something long.", [], max_new_tokens=17),
        GenerationRequest("video_qa", "What happens?", [], frames=[frame, frame], max_new_tokens=6),
    ]


def test_a_mixed_batch_runs_in_one_call_and_each_request_keeps_its_own_limit(runtime):
    # when four unlike requests run together
    results = runtime.run(mixed_requests())

    # then they were admitted in one step and decoded together, and none generated past its own max_new_tokens
    assert len({result.batch_id for result in results}) == 1 and {r.batch_size for r in results} == {4}
    assert all(result.mean_rows > 1 for result in results)
    assert [r.output_tokens <= limit for r, limit in zip(results, (3, 9, 17, 6), strict=True)] == [True] * 4
    assert results[2].output_tokens == 17 or runtime.stop_token_id in results[2].token_ids
    # and each has its own usage: tiles and prompt lengths differ per request
    assert [result.tiles for result in results] == [1, 2, 0, 2]


def test_greedy_rows_in_a_batch_generate_what_they_generate_alone(runtime):
    # given the same requests alone and together
    alone = [runtime.run([request])[0].token_ids for request in mixed_requests()]
    together = [result.token_ids for result in runtime.run(mixed_requests())]
    # then left padding and per-row limits leave every greedy row's tokens as they were
    assert together == alone


def test_sampled_and_greedy_rows_share_a_batch(runtime):
    # given a greedy row and a sampled one
    greedy, sampled = mixed_requests()[2], mixed_requests()[2]
    sampled.temperature, sampled.top_p = 0.9, 0.8
    torch.manual_seed(0)
    first, second = runtime.run([greedy, sampled])
    # then the greedy row is exactly what greedy search gives alone, in the same call as the sampled one
    assert first.batch_id == second.batch_id
    assert first.token_ids == runtime.run([mixed_requests()[2]])[0].token_ids


def test_one_stopped_row_ends_while_its_batch_mates_go_on(runtime):
    # given a batch where the second request is canceled from the start
    requests = mixed_requests()
    outcomes = runtime.run_isolated(requests, [None, lambda: True, None, None])
    # then it ended at once, and the others ran to their own ends
    assert outcomes[1].output_tokens <= 1
    assert outcomes[2].output_tokens > 1


def test_a_request_that_cannot_be_prepared_fails_alone(runtime):
    # given a video request whose frame is not an image
    requests = mixed_requests()
    requests[3].frames = [np.zeros((3, 3, 5), dtype=np.uint8)]  # five channels: no image at all
    outcomes = runtime.run_isolated(requests, [None] * 4)
    # then its outcome is the error, and the other three still share one call
    assert isinstance(outcomes[3], Exception)
    assert len({outcome.batch_id for outcome in outcomes[:3]}) == 1


def test_a_request_that_breaks_the_model_fails_alone(runtime, monkeypatch):
    # given a model that raises on the poisoned prompt's prefill (the stand-in for a bad input)
    real_forward = runtime.model.forward

    def forward(*args, **kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[1] > 1 and "poison" in runtime.tokenizer.decode(ids[0]):
            raise ValueError("the model cannot take this input (simulated)")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(runtime.model, "forward", forward)
    requests = mixed_requests()
    requests[2].prompt = "poison"
    outcomes = runtime.run_isolated(requests, [None] * 4)
    # then only the poisoned request failed, and the others still ran together
    assert isinstance(outcomes[2], ValueError)
    assert len({outcome.batch_id for i, outcome in enumerate(outcomes) if i != 2}) == 1
    assert all(outcome.output_tokens > 0 for i, outcome in enumerate(outcomes) if i != 2)


def test_requests_admitted_while_others_decode_join_them_and_leave_first(runtime):
    # given a private engine decoding one long chat
    engine = EngineLoop().attach(Engine(runtime, EngineOptions(max_rows=8)))
    long_request = GenerationRequest("chat", "Tell me a long story.", [], max_new_tokens=2000)
    long_alone = runtime.run([GenerationRequest("chat", "Tell me a long story.", [], max_new_tokens=2000)])[0]
    long = engine.submit(runtime.prepare(long_request))
    wait_until(lambda: engine.running and engine.running[0].steps >= 5, timeout_s=60, what="the long row to decode")

    # when short requests arrive one by one while it runs
    shorts = []
    for request in mixed_requests()[:3]:
        shorts.append(engine.submit(runtime.prepare(request)))
        time.sleep(0.02)
    short_results = [future.result(timeout=60) for future in shorts]

    # then each short one finished while the long one was still decoding, beside it
    assert not long.done()
    assert all(result.mean_rows > 1 for result in short_results)
    result = long.result(timeout=120)
    # and every greedy row made exactly the tokens it makes alone
    assert result.token_ids == long_alone.token_ids and result.mean_rows > 1
    alone = [runtime.run([request])[0].token_ids for request in mixed_requests()[:3]]
    assert [r.token_ids for r in short_results] == alone


def _out_of_memory_while(runtime, monkeypatch, too_big) -> list:
    """The vision tower raises torch's OutOfMemoryError while ``too_big(tiles)``; returns every
    call's tile count, and whether an exception was being handled at the time."""
    real, calls = runtime.model.model.get_image_features, []

    def get_image_features(*args, pixel_values, **kwargs):
        calls.append((len(pixel_values), sys.exc_info()[0] is not None))
        if too_big(len(pixel_values)):
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(*args, pixel_values=pixel_values, **kwargs)

    monkeypatch.setattr(runtime.model.model, "get_image_features", get_image_features)
    return calls


def test_out_of_memory_shrinks_the_admission_and_retries_outside_the_except_block(runtime, monkeypatch):
    # given a GPU whose vision tower fits two tiles at a time, and a count of garbage collections
    calls = _out_of_memory_while(runtime, monkeypatch, lambda tiles: tiles > 2)
    collections = []
    real_collect = gc.collect
    monkeypatch.setattr(gc, "collect", lambda *a: collections.append(len(calls)) or real_collect(*a))
    engine = EngineLoop().attach(Engine(runtime, EngineOptions(max_rows=8)))

    # when four requests (5 tiles between them) are admitted together
    futures = engine.submit_all([runtime.prepare(request) for request in mixed_requests()], [None] * 4)
    results = [future.result(timeout=120) for future in futures]

    # then the first admission ran out of memory, garbage was collected before any retry, the
    # retries ran with no exception in flight, within a smaller tile budget, and every request has its result
    assert calls[0][0] == 5 and collections and collections[0] == 1
    assert all(not handling for _tiles, handling in calls[1:]) and all(tiles <= 2 for tiles, _ in calls[1:])
    assert engine.prefill_tiles <= 2 and engine.stats.out_of_memory >= 1
    assert [result.tiles for result in results] == [1, 2, 0, 2]
    alone = [runtime.run([request])[0].token_ids for request in mixed_requests()]
    monkeypatch.undo()
    assert [result.token_ids for result in results] == alone


def test_out_of_memory_in_a_decode_step_puts_the_newest_row_back(runtime, monkeypatch):
    # given a model that runs out of memory the first time it decodes four rows at once
    real_forward, failed = runtime.model.forward, []

    def forward(*args, **kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[0] >= 4 and not failed:
            failed.append(ids.shape[0])
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_forward(*args, **kwargs)

    alone = [runtime.run([request])[0].token_ids for request in mixed_requests()]
    monkeypatch.setattr(runtime.model, "forward", forward)
    engine = EngineLoop().attach(Engine(runtime, EngineOptions(max_rows=8)))
    futures = engine.submit_all([runtime.prepare(request) for request in mixed_requests()], [None] * 4)

    # then the step was retried with fewer rows, and every row still made exactly its greedy tokens
    results = [future.result(timeout=120) for future in futures]
    assert failed == [4] and engine.stats.out_of_memory == 1
    assert [result.token_ids for result in results] == alone


def test_a_sticky_device_error_fails_every_row_over_and_reports_the_lost_device(runtime, monkeypatch):
    # given an engine whose decode step hits a device-side assert (what CUDA raises for ever after)
    real_forward = runtime.model.forward

    def forward(*args, **kwargs):
        if kwargs.get("input_ids") is not None and kwargs["input_ids"].shape[1] == 1:
            raise torch.AcceleratorError("CUDA error: device-side assert triggered (simulated)")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(runtime.model, "forward", forward)
    lost = []
    engine = EngineLoop(on_device_lost=lost.append).attach(Engine(runtime, EngineOptions(max_rows=2)))
    futures = engine.submit_all([runtime.prepare(request) for request in mixed_requests()], [None] * 4)

    # then every row, running or waiting, ends with DeviceLost, and the loop reported the loss once
    for future in futures:
        with pytest.raises(DeviceLost):
            future.result(timeout=60)
    assert len(lost) == 1 and is_sticky_device_error(lost[0])
