"""vlmq's loader, prompts and preprocessing against golden data made by upstream InternVL's own code.

tests/data/golden holds, per seed architecture, a tiny original-format checkpoint saved by upstream's
instantiated model classes, and upstream's prompts, input ids, first-step logits and greedy tokens
for an image, a video and a text question (see its README). Nothing there was computed by vlmq, so a
wrong mapping, template, tokenizer setting or preprocessing step shows up here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from workers.inference.fixtures.original import original_tensor_shapes
from workers.inference.runtime.checkpoint import read_checkpoint
from workers.inference.runtime.model import InternVLRuntime, _Prepared
from workers.inference.runtime.prompts import build_prompt, expand_image_placeholders
from workers.inference.runtime.requests import GenerationRequest
from workers.inference.runtime.tiling import image_to_pixel_values

GOLDEN = Path(__file__).parent / "data" / "golden"
# The four seeds, then the rest of the family: InternViT-6B vision with InternLM2 (26B) and Llama (76B).
MODELS = [
    "internvl2-1b", "mini-internvl-chat-4b-v1-5", "internvl2-8b", "internvl2_5-4b", "internvl2-26b", "internvl2-76b",
]
CASES = ["image", "video", "text"]
VIDEO_QUESTION = "What happens in the video?"
LOGIT_TOLERANCE = 1e-4


def _golden(model_id: str) -> dict:
    return json.loads((GOLDEN / model_id / "golden.json").read_text())


@pytest.fixture(scope="module")
def runtimes() -> dict[str, InternVLRuntime]:
    loaded: dict[str, InternVLRuntime] = {}
    for model_id in MODELS:
        loaded[model_id] = InternVLRuntime.load(GOLDEN / model_id / "checkpoint")
    return loaded


def _prepared(runtime: InternVLRuntime, case_name: str, case: dict) -> _Prepared:
    """What vlmq feeds the model for a golden case, built only by vlmq's own code."""
    if case_name == "image":
        image = Image.open(GOLDEN / "media" / case["media"][0])
        return runtime.prepare(GenerationRequest("caption", None, [image], max_tiles=case["max_num"], max_new_tokens=16))
    if case_name == "text":
        return runtime.prepare(GenerationRequest("chat", case["question"], [], max_new_tokens=16))
    # Video: each frame is one tile; the frames are numbered on the first user turn.
    frames = [image_to_pixel_values(Image.open(GOLDEN / "media" / name), 1) for name in case["media"]]
    prompt = build_prompt(
        runtime.template, question=VIDEO_QUESTION, n_frames=len(frames), system_message=runtime.checkpoint.system_message
    )
    request = GenerationRequest("video_qa", VIDEO_QUESTION, [], max_new_tokens=16)
    text = expand_image_placeholders(prompt, [len(tiles) for tiles in frames])
    return _Prepared(request, text, np.concatenate(frames), len(frames), 0.0, runtime.tokenizer(text).input_ids)


def _unexpanded(prepared: _Prepared) -> str:
    """The prompt with each ``<img>…</img>`` block folded back to ``<image>``, as golden ``query``."""
    text, pieces = prepared.text, []
    while "<img>" in text:
        before, _, rest = text.partition("<img>")
        pieces.append(before + "<image>")
        text = rest.partition("</img>")[2]
    return "".join(pieces) + text


@pytest.mark.parametrize("model_id", MODELS)
@pytest.mark.parametrize("case_name", CASES)
def test_prompt_ids_and_pixels_match_upstream(runtimes, model_id, case_name):
    # given upstream's record of a case, and vlmq's input for the same media and question
    case = _golden(model_id)["cases"][case_name]
    prepared = _prepared(runtimes[model_id], case_name, case)

    # then the chat-template text, the token ids (BOS included or not) and the tiles are upstream's
    assert _unexpanded(prepared) == case["query"]
    assert runtimes[model_id].tokenizer(prepared.text).input_ids == case["input_ids"]
    if case_name == "text":
        assert prepared.pixel_values is None
    else:
        assert list(prepared.pixel_values.shape) == case["pixel_values_shape"]
        means = prepared.pixel_values.astype(np.float64).mean(axis=(2, 3))  # float32 sums drift
        np.testing.assert_allclose(means, np.array(case["pixel_values_tile_channel_means"]), atol=1e-5)


@pytest.mark.parametrize("model_id", MODELS)
@pytest.mark.parametrize("case_name", CASES)
def test_first_step_logits_and_greedy_tokens_match_upstream(runtimes, model_id, case_name):
    # given a seed architecture's upstream-saved checkpoint, loaded by vlmq without remote code
    runtime = runtimes[model_id]
    case = _golden(model_id)["cases"][case_name]
    expected = load_file(GOLDEN / model_id / "logits.safetensors")[case_name]
    prepared = _prepared(runtime, case_name, case)

    # when vlmq runs the case's first step
    input_ids = torch.tensor([case["input_ids"]])
    media = {} if prepared.pixel_values is None else {"pixel_values": torch.from_numpy(prepared.pixel_values)}
    with torch.inference_mode():
        logits = runtime.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **media).logits[0, -1]

    # then every logit of the vocabulary is upstream's within 1e-4
    assert logits.shape == expected.shape
    assert (logits - expected).abs().max().item() <= LOGIT_TOLERANCE

    # and vlmq's own generation path (KV cache, stop token) produces upstream's greedy tokens
    result = runtime.engine.submit(prepared).result()
    stop = case["stop_index"]
    assert result.token_ids == (case["greedy_tokens"] if stop is None else case["greedy_tokens"][: stop + 1])


@pytest.mark.parametrize("model_id", MODELS)
def test_the_fixture_builders_tensor_table_is_what_upstream_saves(model_id):
    # given the config of an upstream-saved checkpoint
    directory = GOLDEN / model_id / "checkpoint"
    config = json.loads((directory / "config.json").read_text())
    stored = {name: tuple(tensor.shape) for name, tensor in load_file(directory / "model.safetensors").items()}
    # then vlmq's fixture builder would write exactly the same tensor names and shapes
    assert original_tensor_shapes(config) == stored


@pytest.mark.parametrize("model_id", MODELS)
def test_golden_checkpoints_are_the_original_format_with_their_templates(model_id):
    checkpoint = read_checkpoint(GOLDEN / model_id / "checkpoint")
    golden = _golden(model_id)
    assert checkpoint.format == "internvl_chat" and checkpoint.template.name == golden["template"]
