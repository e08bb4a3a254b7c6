"""Device-map planning against the InternVL cards' ``split_model`` (REFERENCE.md, "Splitting a model over
several GPUs"), written out literally below, and against a tiny native transformers InternVL model."""

from __future__ import annotations

import math
import random
import subprocess
import sys

import pytest

from workers.inference.runtime.device_map import (
    GPU0_MODULES,
    LAYER_PREFIX,
    ModelDoesNotFit,
    cards_layer_split,
    plan_device_map,
    plan_layer_split,
)

GiB = 2**30
SEED_LAYER_COUNTS = [24, 32, 36]  # InternVL2-1B; Mini-InternVL-Chat-4B-V1-5 and InternVL2-8B; InternVL2_5-4B
LARGER_LAYER_COUNTS = [48, 60, 80]  # 26B-, 40B- and 76B-like language models
WORLD_SIZES = [1, 2, 3, 4, 8]


def upstream_split_model(num_layers: int, world_size: int) -> dict[str, int]:
    """The model cards' split_model, literally (its model loading left out), overflowing entries included."""
    device_map = {}
    num_layers_per_gpu = math.ceil(num_layers / (world_size - 0.5))
    num_layers_per_gpu = [num_layers_per_gpu] * world_size
    num_layers_per_gpu[0] = math.ceil(num_layers_per_gpu[0] * 0.5)
    layer_cnt = 0
    for i, num_layer in enumerate(num_layers_per_gpu):
        for j in range(num_layer):
            device_map[f"language_model.model.layers.{layer_cnt}"] = i
            layer_cnt += 1
    device_map["vision_model"] = 0
    device_map["mlp1"] = 0
    device_map["language_model.model.tok_embeddings"] = 0
    device_map["language_model.model.embed_tokens"] = 0
    device_map["language_model.output"] = 0
    device_map["language_model.model.norm"] = 0
    device_map["language_model.model.rotary_emb"] = 0
    device_map["language_model.lm_head"] = 0
    device_map[f"language_model.model.layers.{num_layers - 1}"] = 0
    return device_map


def upstream_real_layers(num_layers: int, world_size: int) -> list[int]:
    """Upstream's GPU for each layer that exists; entries past the last layer are dropped."""
    device_map = upstream_split_model(num_layers, world_size)
    return [device_map[f"language_model.model.layers.{layer}"] for layer in range(num_layers)]


def layer_devices_of(device_map: dict[str, int]) -> list[int]:
    layers = {int(key.rsplit(".", 1)[1]): gpu for key, gpu in device_map.items() if key.startswith(LAYER_PREFIX)}
    assert sorted(layers) == list(range(len(layers))), "layers must be 0..L-1, each once"
    return [layers[layer] for layer in range(len(layers))]


def layer_counts(layer_devices: list[int], world_size: int) -> list[int]:
    return [layer_devices.count(gpu) for gpu in range(world_size)]


# --- the cards' rule -------------------------------------------------------------------------------------


@pytest.mark.parametrize("world_size", WORLD_SIZES)
@pytest.mark.parametrize("num_layers", SEED_LAYER_COUNTS + LARGER_LAYER_COUNTS)
def test_every_real_layer_is_placed_as_the_literal_upstream_loop_places_it(num_layers, world_size):
    assert cards_layer_split(num_layers, world_size) == upstream_real_layers(num_layers, world_size)


@pytest.mark.parametrize("world_size", WORLD_SIZES)
@pytest.mark.parametrize("num_layers", SEED_LAYER_COUNTS + LARGER_LAYER_COUNTS)
def test_equal_gpus_of_unknown_sizes_get_the_cards_rule(num_layers, world_size):
    device_map = plan_device_map(num_layers, [80 * GiB] * world_size)
    assert layer_devices_of(device_map) == upstream_real_layers(num_layers, world_size)


@pytest.mark.parametrize("world_size", WORLD_SIZES)
@pytest.mark.parametrize("num_layers", SEED_LAYER_COUNTS + LARGER_LAYER_COUNTS)
def test_equal_gpus_with_known_sizes_that_fit_get_the_cards_rule(num_layers, world_size):
    # Sizes that fit even on one GPU: 80 layers of 0.5 GiB and 12 GiB fixed are 52 of 72 usable GiB.
    planned = plan_layer_split(
        num_layers, [80 * GiB] * world_size, layer_bytes=GiB // 2, gpu0_fixed_bytes=12 * GiB, headroom=0.9
    )
    assert planned == upstream_real_layers(num_layers, world_size)


def test_24_layers_on_2_gpus_follow_the_cards_rule():
    # per_gpu = ceil(24 / 1.5) = 16: GPU 0 gets ceil(8) = 8 layers (0-7), GPU 1 16 (8-23); layer 23 then
    # moves to GPU 0: 9 and 15.
    assert cards_layer_split(24, 2) == [0] * 8 + [1] * 15 + [0]
    assert layer_counts(cards_layer_split(24, 2), 2) == [9, 15]


def test_24_layers_on_2_gpus_give_this_native_device_map():
    assert plan_device_map(24, [80 * GiB, 80 * GiB]) == {
        "model.vision_tower": 0,
        "model.multi_modal_projector": 0,
        "model.language_model.embed_tokens": 0,
        "model.language_model.norm": 0,
        "model.language_model.rotary_emb": 0,
        "lm_head": 0,
        **{f"model.language_model.layers.{layer}": 0 for layer in range(8)},
        **{f"model.language_model.layers.{layer}": 1 for layer in range(8, 23)},
        "model.language_model.layers.23": 0,
    }


def test_32_layers_on_2_gpus_follow_the_cards_rule():
    # per_gpu = ceil(32 / 1.5) = 22: GPU 0 gets 11 (0-10), GPU 1 21 (11-31), then 31 moves to GPU 0.
    assert cards_layer_split(32, 2) == [0] * 11 + [1] * 20 + [0]


def test_32_layers_on_4_gpus_follow_the_cards_rule():
    # per_gpu = ceil(32 / 3.5) = 10: 5, 10, 10 and the 7 left (25-31); 31 moves to GPU 0.
    assert cards_layer_split(32, 4) == [0] * 5 + [1] * 10 + [2] * 10 + [3] * 6 + [0]


def test_36_layers_on_3_gpus_follow_the_cards_rule():
    # per_gpu = ceil(36 / 2.5) = 15: 8, 15 and the 13 left (23-35); 35 moves to GPU 0: 9, 15, 12.
    assert cards_layer_split(36, 3) == [0] * 8 + [1] * 15 + [2] * 12 + [0]


def test_24_layers_on_8_gpus_map_only_real_layers_and_leave_the_last_gpu_out():
    # per_gpu = ceil(24 / 7.5) = 4: upstream writes 2 + 7·4 = 30 layer entries for 24 layers; GPU 6 gets
    # 22-23 (23 then moves to GPU 0) and GPU 7 only layers that do not exist.
    upstream = upstream_split_model(24, 8)
    assert sum(key.startswith("language_model.model.layers.") for key in upstream) == 30
    assert upstream["language_model.model.layers.29"] == 7

    device_map = plan_device_map(24, [80 * GiB] * 8)

    assert layer_devices_of(device_map) == [0, 0] + [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4 + [5] * 4 + [6] + [0]
    assert sum(key.startswith(LAYER_PREFIX) for key in device_map) == 24
    assert 7 not in device_map.values()


def test_one_gpu_holds_everything():
    assert cards_layer_split(32, 1) == [0] * 32
    assert set(plan_device_map(32, [80 * GiB]).values()) == {0}
    assert set(plan_device_map(32, [80 * GiB], layer_bytes=GiB, gpu0_fixed_bytes=10 * GiB).values()) == {0}


def test_a_one_layer_model_keeps_its_layer_on_gpu_0():
    assert cards_layer_split(1, 4) == [0] == upstream_real_layers(1, 4)


# --- unequal free memory ---------------------------------------------------------------------------------


def test_80gb_and_40gb_of_unknown_sizes_share_layers_with_gpu_0_at_half_weight():
    # Weights 0.5·80 and 40: 12 layers each; GPU 0's 12 are 0-10 and the last.
    planned = plan_layer_split(24, [80 * GiB, 40 * GiB])
    assert planned == [0] * 11 + [1] * 12 + [0]


def test_24_24_48_gb_of_unknown_sizes_share_layers_by_memory():
    # Weights 12, 24, 48 of 84: shares 4.57, 9.14, 18.29 → 4, 9, 18 and the remaining layer to GPU 0.
    planned = plan_layer_split(32, [24 * GiB, 24 * GiB, 48 * GiB])
    assert layer_counts(planned, 3) == [5, 9, 18]
    assert planned == [0] * 4 + [1] * 9 + [2] * 18 + [0]


def test_80gb_and_40gb_with_known_sizes_share_by_usable_memory():
    # Usable: 90% of 80 less 10 fixed = 62 GiB, 90% of 40 = 36 GiB; shares 30.37 and 17.63 → 30 and 18.
    planned = plan_layer_split(48, [80 * GiB, 40 * GiB], layer_bytes=GiB, gpu0_fixed_bytes=10 * GiB)
    assert planned == [0] * 29 + [1] * 18 + [0]


def test_a_gpu_too_small_for_any_layer_is_left_out_of_the_map():
    # Usable 7, 8 and 1.5 GiB for 2 GiB layers: room for 3, 4 and 0. By share GPU 2 would take one.
    device_map = plan_device_map(
        7, [8 * GiB, 8 * GiB, 3 * GiB // 2], layer_bytes=2 * GiB, gpu0_fixed_bytes=GiB, headroom=1.0
    )
    assert layer_devices_of(device_map) == [0, 0, 1, 1, 1, 1, 0]
    assert 2 not in device_map.values()


def test_a_gpu_with_little_free_memory_of_unknown_sizes_gets_no_layer():
    # Weights 40, 80, 1: shares 7.93, 15.87, 0.20 → 8, 16, 0.
    device_map = plan_device_map(24, [80 * GiB, 80 * GiB, 1 * GiB])
    assert layer_devices_of(device_map) == [0] * 7 + [1] * 16 + [0]
    assert 2 not in device_map.values()


def test_gpus_within_the_tolerance_count_as_equal():
    # Free memory of identical GPUs differs by CUDA contexts; that noise must not move layers.
    assert plan_layer_split(24, [79 * GiB, 80 * GiB]) == cards_layer_split(24, 2)


def test_equal_gpus_whose_gpu_0_the_rule_would_overfill_are_shared_by_memory():
    # The rule puts 9 layers of 2 GiB and 64 GiB fixed = 82 GiB on an 80 GiB GPU 0. Usable memory is 16
    # and 80 GiB: shares 4 and 20.
    planned = plan_layer_split(24, [80 * GiB, 80 * GiB], layer_bytes=2 * GiB, gpu0_fixed_bytes=64 * GiB, headroom=1.0)
    assert planned == [0] * 3 + [1] * 20 + [0]


def test_random_plans_keep_layers_in_order_with_the_last_on_gpu_0_and_within_memory():
    rng = random.Random(0)
    for _ in range(500):
        world_size = rng.randint(1, 8)
        num_layers = rng.randint(1, 100)
        free = [rng.randint(1, 96) * GiB for _ in range(world_size)]
        layer_bytes = rng.choice([None, GiB // 2, GiB, 2 * GiB])
        fixed = rng.choice([0, 2 * GiB, 12 * GiB])
        try:
            planned = plan_layer_split(num_layers, free, layer_bytes=layer_bytes, gpu0_fixed_bytes=fixed)
        except ModelDoesNotFit:
            # Refused only when whole layers cannot fit: GPU 0 lacks room for its fixed parts and the last
            # layer, or the GPUs together lack room for every layer.
            assert layer_bytes is not None
            rooms = [int(0.9 * f) - (fixed if gpu == 0 else 0) for gpu, f in enumerate(free)]
            assert rooms[0] < layer_bytes or sum(max(room // layer_bytes, 0) for room in rooms) < num_layers
            continue
        assert len(planned) == num_layers and planned[-1] == 0
        assert planned[:-1] == sorted(planned[:-1]), "layers stay in GPU order"
        if layer_bytes is not None:
            for gpu, count in enumerate(layer_counts(planned, world_size)):
                assert count * layer_bytes + (fixed if gpu == 0 else 0) <= 0.9 * free[gpu]


# --- does not fit, bad input -----------------------------------------------------------------------------


def test_a_model_larger_than_the_gpus_does_not_fit():
    with pytest.raises(ModelDoesNotFit) as raised:
        plan_device_map(80, [80 * GiB, 80 * GiB], layer_bytes=2 * GiB, gpu0_fixed_bytes=10 * GiB)
    message = str(raised.value)
    assert f"{10 * GiB + 80 * 2 * GiB:,}" in message  # needed
    assert f"GPU 0: {math.floor(80 * GiB * 0.9):,} available" in message
    assert f"GPU 1: {math.floor(80 * GiB * 0.9):,} available" in message
    assert raised.value.needed_bytes == 170 * GiB
    assert isinstance(raised.value, ValueError)


def test_gpu_0_too_small_for_its_fixed_parts_and_the_last_layer_does_not_fit():
    with pytest.raises(ModelDoesNotFit, match="GPU 0"):
        plan_device_map(24, [16 * GiB, 80 * GiB, 80 * GiB], layer_bytes=GiB, gpu0_fixed_bytes=15 * GiB)


def test_one_gpu_too_small_does_not_fit():
    with pytest.raises(ModelDoesNotFit):
        plan_device_map(32, [16 * GiB], layer_bytes=GiB, gpu0_fixed_bytes=GiB)


@pytest.mark.parametrize(
    "arguments",
    [
        {"num_layers": 0, "gpu_free_bytes": [GiB]},
        {"num_layers": 24, "gpu_free_bytes": []},
        {"num_layers": 24, "gpu_free_bytes": [GiB, -1]},
        {"num_layers": 24, "gpu_free_bytes": [0, 0]},
        {"num_layers": 24, "gpu_free_bytes": [GiB], "layer_bytes": 0},
        {"num_layers": 24, "gpu_free_bytes": [GiB], "headroom": 0},
        {"num_layers": 24, "gpu_free_bytes": [GiB], "headroom": 1.5},
        {"num_layers": 24, "gpu_free_bytes": [GiB], "gpu0_fixed_bytes": -1},
    ],
)
def test_nonsense_arguments_are_refused(arguments):
    with pytest.raises(ValueError):
        plan_device_map(**arguments)


def test_importing_the_planner_does_not_import_torch():
    code = "import sys, workers.inference.runtime.device_map; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- a tiny native transformers model --------------------------------------------------------------------

TINY_LAYERS = 5


@pytest.fixture(scope="module", params=["qwen2", "llama", "phi3"])
def tiny_native_model(request):
    """InternVLForConditionalGeneration with a tiny vision tower and a TINY_LAYERS-layer LLM, on meta."""
    import torch
    import transformers
    config = transformers.InternVLConfig(
        vision_config={
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "image_size": 448,
            "patch_size": 14,
        },
        text_config={
            "model_type": request.param,
            "vocab_size": 128,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": TINY_LAYERS,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "tie_word_embeddings": False,
        },
        tie_word_embeddings=False,
    )
    with torch.device("meta"):
        return transformers.InternVLForConditionalGeneration(config)


def owners(name: str, device_map: dict[str, int]) -> list[str]:
    return [key for key in device_map if name == key or name.startswith(key + ".")]


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_the_map_covers_every_parameter_and_buffer_of_a_native_model_exactly_once(tiny_native_model, world_size):
    device_map = plan_device_map(TINY_LAYERS, [80 * GiB] * world_size)
    names = [name for name, _ in tiny_native_model.named_parameters()]
    names += [name for name, _ in tiny_native_model.named_buffers()]

    assert [name for name in names if len(owners(name, device_map)) != 1] == []
    modules = {name for name, _ in tiny_native_model.named_modules()}
    assert set(device_map) <= modules, "every key names a module of the native model"


def test_the_native_model_has_the_modules_the_planner_names(tiny_native_model):
    modules = {name for name, _ in tiny_native_model.named_modules()}
    assert set(GPU0_MODULES) <= modules
    assert {f"{LAYER_PREFIX}.{layer}" for layer in range(TINY_LAYERS)} <= modules
    assert f"{LAYER_PREFIX}.{TINY_LAYERS}" not in modules


def test_accelerate_accepts_the_map_for_a_native_model(tiny_native_model):
    from accelerate.utils import check_device_map
    check_device_map(tiny_native_model, plan_device_map(TINY_LAYERS, [80 * GiB] * 3))
