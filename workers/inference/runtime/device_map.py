"""Split an InternVL model over several GPUs (REFERENCE.md, "Splitting a model over several GPUs").

The InternVL model cards' ``split_model`` counts GPU 0 as half a GPU, because it also holds the vision
model, and puts the LLM layers on the GPUs in order. The vision model, the projector, the token embeddings,
the final norm, the rotary embedding, the output head and the LAST LLM layer all go on GPU 0, so the
first and last stages of the pipeline share a device.

vlmq keeps that placement for every real layer but, unlike upstream, maps only layers that exist (upstream
writes entries past the last layer, e.g. for 24 layers on 8 GPUs). It also generalises the rule to GPUs
of unequal free memory: each GPU gets a share of the layers in proportion to the memory it can give them.

The map is keyed by transformers' NATIVE module names (``InternVLForConditionalGeneration``), not
upstream's remote-code names, and covers every parameter and buffer exactly once, so it can be passed as
``device_map=`` to ``from_pretrained`` or to accelerate's ``dispatch_model``.

Pure Python: the API process may plan without importing torch.
"""

from __future__ import annotations

import math

# Native module names of transformers' InternVLForConditionalGeneration, checked on tiny Qwen2, Llama
# (InternLM2 converts to Llama) and Phi-3 language models.
LAYER_PREFIX = "model.language_model.layers"
# Everything that is not an LLM layer. Its weight lives on GPU 0 next to the last layer.
GPU0_MODULES = (
    "model.vision_tower",
    "model.multi_modal_projector",
    "model.language_model.embed_tokens",
    "model.language_model.norm",
    "model.language_model.rotary_emb",
    "lm_head",
)

# Free memory measured on identical GPUs differs by a few hundred MiB (CUDA contexts, other processes).
# GPUs within this fraction of the largest count as equal and get the cards' rule unchanged; without a
# tolerance, that noise alone would move layers away from upstream's placement.
SAME_MEMORY_TOLERANCE = 0.05


class ModelDoesNotFit(ValueError):
    """The model's weights cannot be placed within the usable memory of the GPUs."""

    def __init__(self, message: str, *, needed_bytes: int, available_bytes: list[int]):
        super().__init__(message)
        self.needed_bytes = needed_bytes
        self.available_bytes = available_bytes


def cards_layer_split(num_layers: int, world_size: int) -> list[int]:
    """The GPU of each real LLM layer 0..num_layers-1, exactly as the cards' ``split_model`` places it."""
    _require(num_layers >= 1, f"num_layers must be at least 1, got {num_layers}")
    _require(world_size >= 1, f"world_size must be at least 1, got {world_size}")
    return _layer_devices(_cards_layer_counts(num_layers, world_size))


def plan_device_map(
    num_layers: int,
    gpu_free_bytes: list[int],
    *,
    layer_bytes: int | None = None,
    gpu0_fixed_bytes: int = 0,
    headroom: float = 0.9,
) -> dict[str, int]:
    """A ``device_map`` for an InternVL model with ``num_layers`` LLM layers over GPUs 0..n-1.

    ``gpu_free_bytes`` is each GPU's free memory. ``layer_bytes`` is the weight of one LLM layer and
    ``gpu0_fixed_bytes`` that of everything GPU 0 holds besides layers (vision model, projector,
    embeddings, norm, head); without ``layer_bytes`` sizes are unknown and ``gpu0_fixed_bytes`` is unused.
    Only ``headroom`` of free memory is planned for: the rest is left to activations and the KV cache.

    GPUs of (about) equal free memory get the cards' rule exactly. Otherwise each GPU gets layers in
    proportion to the memory it can give them: its free memory, GPU 0 counted at half (as in the rule)
    when sizes are unknown, or minus ``gpu0_fixed_bytes`` when they are known. Layers stay in order:
    GPU 0 takes the first block and the last layer, the other GPUs the blocks between. A GPU that gets no
    layer does not appear in the map. Raises ``ModelDoesNotFit`` when sizes are known and the model
    does not fit.
    """
    layer_devices = plan_layer_split(
        num_layers, gpu_free_bytes, layer_bytes=layer_bytes, gpu0_fixed_bytes=gpu0_fixed_bytes, headroom=headroom
    )
    return device_map_for(layer_devices)


def plan_layer_split(
    num_layers: int,
    gpu_free_bytes: list[int],
    *,
    layer_bytes: int | None = None,
    gpu0_fixed_bytes: int = 0,
    headroom: float = 0.9,
) -> list[int]:
    """The GPU of each LLM layer, as ``plan_device_map`` places it."""
    _validate(num_layers, gpu_free_bytes, layer_bytes, gpu0_fixed_bytes, headroom)
    limits = None
    if layer_bytes is not None:
        limits = _layer_limits(num_layers, gpu_free_bytes, layer_bytes, gpu0_fixed_bytes, headroom)
    if _about_equal(gpu_free_bytes):
        counts = _cards_layer_counts(num_layers, len(gpu_free_bytes))
        if limits is None or all(count <= limit for count, limit in zip(counts, limits)):
            return _layer_devices(counts)
        # The rule would overfill a GPU (GPU 0, when its fixed parts are large): share by memory instead.
    weights = _memory_weights(gpu_free_bytes, layer_bytes, gpu0_fixed_bytes, headroom)
    return _layer_devices(_proportional_layer_counts(num_layers, weights, limits))


def device_map_for(layer_devices: list[int]) -> dict[str, int]:
    """The native module names mapped to GPUs: GPU 0's fixed modules, then one entry per layer."""
    device_map = dict.fromkeys(GPU0_MODULES, 0)
    for layer, device in enumerate(layer_devices):
        device_map[f"{LAYER_PREFIX}.{layer}"] = device
    return device_map


def _cards_layer_counts(num_layers: int, world_size: int) -> list[int]:
    """Layers per GPU under the cards' rule, after the last layer has moved to GPU 0."""
    # Same float expression as upstream, so the ceilings agree with it to the last bit.
    per_gpu = math.ceil(num_layers / (world_size - 0.5))
    capacities = [math.ceil(per_gpu * 0.5)] + [per_gpu] * (world_size - 1)
    counts = []
    remaining = num_layers
    for capacity in capacities:
        # Upstream fills every GPU to capacity, writing layers past the last; vlmq stops at the last.
        counts.append(min(capacity, remaining))
        remaining -= counts[-1]
    last_holder = max(gpu for gpu, count in enumerate(counts) if count)
    counts[last_holder] -= 1
    counts[0] += 1
    return counts


def _layer_devices(counts: list[int]) -> list[int]:
    """Each layer's GPU from layers per GPU: GPU 0 takes the first ``counts[0] - 1`` layers and the last
    one; each other GPU, in order, the next ``counts[gpu]`` layers."""
    devices = [0] * (counts[0] - 1)
    for gpu, count in enumerate(counts[1:], start=1):
        devices += [gpu] * count
    return devices + [0]


def _memory_weights(
    gpu_free_bytes: list[int], layer_bytes: int | None, gpu0_fixed_bytes: int, headroom: float
) -> list[float]:
    """How much of each GPU's memory can hold layers, in any common unit."""
    if layer_bytes is None:
        return [gpu_free_bytes[0] * 0.5, *gpu_free_bytes[1:]]
    return [max(usable, 0.0) for usable in _usable_bytes(gpu_free_bytes, gpu0_fixed_bytes, headroom)]


def _proportional_layer_counts(num_layers: int, weights: list[float], limits: list[int] | None) -> list[int]:
    """Layers per GPU in proportion to ``weights``, none above ``limits``, at least one on GPU 0.

    One layer at a time goes to the GPU furthest below its proportional share (largest remainder, ties
    to the lower GPU), skipping GPUs at their limit.
    """
    total = sum(weights)
    shares = [num_layers * weight / total for weight in weights]
    limits = limits or [num_layers] * len(weights)
    counts = [0] * len(weights)
    counts[0] = 1  # the last layer, which stays with the head on GPU 0
    for _ in range(num_layers - 1):
        open_gpus = [gpu for gpu in range(len(counts)) if counts[gpu] < limits[gpu]]
        gpu = max(open_gpus, key=lambda gpu: (shares[gpu] - counts[gpu], -gpu))
        counts[gpu] += 1
    return counts


def _usable_bytes(gpu_free_bytes: list[int], gpu0_fixed_bytes: int, headroom: float) -> list[int]:
    """Bytes each GPU can give to LLM layers: ``headroom`` of its free memory, less GPU 0's fixed parts."""
    usable = [math.floor(free * headroom) for free in gpu_free_bytes]
    usable[0] -= gpu0_fixed_bytes
    return usable


def _layer_limits(
    num_layers: int, gpu_free_bytes: list[int], layer_bytes: int, gpu0_fixed_bytes: int, headroom: float
) -> list[int]:
    """The most layers each GPU can hold; raises ``ModelDoesNotFit`` when they cannot hold the model."""
    usable = _usable_bytes(gpu_free_bytes, gpu0_fixed_bytes, headroom)
    limits = [max(room // layer_bytes, 0) for room in usable]
    if limits[0] >= 1 and sum(limits) >= num_layers:
        return limits
    needed = gpu0_fixed_bytes + num_layers * layer_bytes
    available = [math.floor(free * headroom) for free in gpu_free_bytes]
    after_fixed = [f", {usable[0]:,} after the fixed parts"] + [""] * (len(limits) - 1)
    per_gpu = "; ".join(
        f"GPU {gpu}: {available[gpu]:,} available{after_fixed[gpu]}, room for {limits[gpu]} layers"
        for gpu in range(len(limits))
    )
    raise ModelDoesNotFit(
        f"the model needs {needed:,} bytes ({num_layers} layers of {layer_bytes:,} bytes, plus "
        f"{gpu0_fixed_bytes:,} bytes of vision model, projector, embeddings and head that GPU 0 must hold "
        f"with the last layer, so at least {gpu0_fixed_bytes + layer_bytes:,} bytes on GPU 0) but the GPUs "
        f"offer {sum(available):,} bytes at {headroom:.0%} of their free memory ({per_gpu})",
        needed_bytes=needed,
        available_bytes=available,
    )


def _about_equal(gpu_free_bytes: list[int]) -> bool:
    largest = max(gpu_free_bytes)
    return largest - min(gpu_free_bytes) <= SAME_MEMORY_TOLERANCE * largest


def _validate(
    num_layers: int, gpu_free_bytes: list[int], layer_bytes: int | None, gpu0_fixed_bytes: int, headroom: float
) -> None:
    _require(num_layers >= 1, f"num_layers must be at least 1, got {num_layers}")
    _require(len(gpu_free_bytes) >= 1, "gpu_free_bytes must name at least one GPU")
    _require(all(free >= 0 for free in gpu_free_bytes), f"free memory cannot be negative: {gpu_free_bytes}")
    _require(layer_bytes is None or layer_bytes > 0, f"layer_bytes must be positive, got {layer_bytes}")
    _require(gpu0_fixed_bytes >= 0, f"gpu0_fixed_bytes cannot be negative, got {gpu0_fixed_bytes}")
    _require(0 < headroom <= 1, f"headroom must be in (0, 1], got {headroom}")
    # Unknown sizes are shared by free memory alone: some GPU must have some.
    _require(layer_bytes is not None or max(gpu_free_bytes) > 0, "every GPU reports 0 bytes free")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
