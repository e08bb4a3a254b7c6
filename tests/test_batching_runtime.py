"""Unlike requests in one generate call on the tiny model: each keeps its own limit, sampling and
stop; a request that breaks fails alone; out-of-memory splits the batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

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

    # then one generate call served them all, and none generated past its own max_new_tokens
    assert len({result.batch_id for result in results}) == 1 and {r.batch_size for r in results} == {4}
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


def test_a_request_that_breaks_the_model_fails_alone_after_the_batch_is_retried_singly(runtime, monkeypatch):
    # given a model that raises whenever the poisoned prompt is in its batch (the stand-in for a bad input)
    real_generate = runtime.model.generate

    def generate(*args, **kwargs):
        texts = runtime.tokenizer.batch_decode(kwargs["input_ids"])
        if any("poison" in text for text in texts):
            raise RuntimeError("CUDA error: device-side assert triggered (simulated)")
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(runtime.model, "generate", generate)
    requests = mixed_requests()
    requests[2].prompt = "poison"
    outcomes = runtime.run_isolated(requests, [None] * 4)
    # then only the poisoned request failed; the others ran one at a time and succeeded
    assert isinstance(outcomes[2], RuntimeError)
    assert [outcome.batch_size for i, outcome in enumerate(outcomes) if i != 2] == [1, 1, 1]


def test_out_of_memory_splits_the_batch_until_it_fits(runtime, monkeypatch):
    # given a GPU that fits two requests at a time
    real_generate, sizes = runtime.model.generate, []

    def generate(*args, **kwargs):
        sizes.append(len(kwargs["input_ids"]))
        if sizes[-1] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(runtime.model, "generate", generate)
    results = runtime.run(mixed_requests())
    # then the batch of four was halved once, and every request has its result
    assert sizes == [4, 2, 2] and [result.batch_size for result in results] == [2, 2, 2, 2]
