"""Original InternVL checkpoints (what the model cards load with remote code) → transformers' native
InternVL classes, by translating the config and planning where every stored tensor goes.

No torch here: the plan says which stored tensor (and which slice of it) becomes which native
parameter; ``weights.py`` carries it out. Reading the plan is how tests prove that every original
weight lands in exactly one place and that nothing is invented.

What each translation guards against is in REFERENCE.md, "Loading original checkpoints … traps".
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# --- configuration -------------------------------------------------------------------------------

# Keys of an original llm_config that describe the architecture, per family. Everything else
# (auto_map, attn_implementation, architectures, dtype, training switches) is left behind on
# purpose: passing them through makes transformers demand flash-attn or remote code.
_COMMON_LLM_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "rms_norm_eps",
    "hidden_act",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)
_FAMILY_KEYS = {
    "qwen2": ("use_sliding_window", "sliding_window", "max_window_layers"),
    "phi3": ("original_max_position_embeddings", "sliding_window"),
    "internlm2": (),
    "llama": ("attention_bias", "mlp_bias", "head_dim", "pretraining_tp"),
}
# The LLM classes of the original checkpoints and the native decoder each one becomes
# (Llama: InternVL2-40B / -Llama3-76B).
LLM_FAMILIES = {
    "Qwen2ForCausalLM": "qwen2",
    "Phi3ForCausalLM": "phi3",
    "InternLM2ForCausalLM": "internlm2",
    "LlamaForCausalLM": "llama",
}
_NATIVE_MODEL_TYPE = {"qwen2": "qwen2", "phi3": "phi3", "internlm2": "llama", "llama": "llama"}


class OriginalCheckpointError(ValueError):
    """An original checkpoint this translation cannot express faithfully; the message says why."""


def llm_family(config: dict) -> str:
    llm_config = config.get("llm_config") or {}
    architecture = (llm_config.get("architectures") or [None])[0]
    if architecture not in LLM_FAMILIES:
        raise OriginalCheckpointError(
            f"the checkpoint's LLM is {architecture!r}; vlmq maps {', '.join(LLM_FAMILIES)} onto native classes"
        )
    return LLM_FAMILIES[architecture]


def _rope_parameters(family: str, llm: dict) -> dict:
    theta = float(llm.get("rope_theta", 10000.0))
    scaling = llm.get("rope_scaling") or {}
    kind = scaling.get("type") or scaling.get("rope_type")
    if not kind or kind == "default":
        return {"rope_type": "default", "rope_theta": theta}
    if kind in ("dynamic", "linear"):
        return {"rope_type": kind, "rope_theta": theta, "factor": float(scaling["factor"])}
    if family == "llama" and kind == "llama3":
        keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        return {"rope_type": "llama3", "rope_theta": theta, **{key: scaling[key] for key in keys}}
    if family == "phi3" and kind in ("su", "longrope", "yarn"):
        # Upstream Phi-3 scales cos/sin by an attention factor even for short prompts. transformers
        # maps "su" and "yarn" both to "longrope" with the su factor, so the factor is set here.
        original = int(llm["original_max_position_embeddings"])
        scale = llm["max_position_embeddings"] / original
        if scale <= 1.0:
            attention_factor = 1.0
        elif kind == "yarn":
            attention_factor = 0.1 * math.log(scale) + 1.0
        else:
            attention_factor = math.sqrt(1 + math.log(scale) / math.log(original))
        return {
            "rope_type": "longrope",
            "rope_theta": theta,
            "short_factor": list(scaling["short_factor"]),
            "long_factor": list(scaling["long_factor"]),
            "original_max_position_embeddings": original,
            "factor": scale,
            "attention_factor": attention_factor,
        }
    raise OriginalCheckpointError(f"rope scaling {kind!r} of a {family} LLM has no faithful native equivalent")


def native_text_config(family: str, llm: dict) -> dict:
    text = {key: llm[key] for key in (*_COMMON_LLM_KEYS, *_FAMILY_KEYS[family]) if key in llm}
    text["model_type"] = _NATIVE_MODEL_TYPE[family]
    text["rope_parameters"] = _rope_parameters(family, llm)
    # Upstream never ties the output head to the embeddings; the native default would.
    text["tie_word_embeddings"] = False
    if family == "internlm2":
        text["attention_bias"] = bool(llm.get("bias", False))
        text["mlp_bias"] = False
        text["head_dim"] = llm["hidden_size"] // llm["num_attention_heads"]
    return text


def native_vision_config(vision: dict) -> dict:
    return {
        "hidden_size": vision["hidden_size"],
        "num_hidden_layers": vision["num_hidden_layers"],
        "num_attention_heads": vision["num_attention_heads"],
        "intermediate_size": vision["intermediate_size"],
        "hidden_act": vision.get("hidden_act", "gelu"),
        "image_size": vision.get("image_size", 448),
        "patch_size": vision.get("patch_size", 14),
        "layer_norm_eps": vision.get("layer_norm_eps", 1e-6),
        # Explicit, because the native defaults differ from upstream's config class defaults.
        "attention_bias": bool(vision.get("qkv_bias", True)),
        "use_qk_norm": bool(vision.get("qk_normalization", False)),
        "norm_type": vision.get("norm_type", "rms_norm"),
        # Upstream has no final LayerNorm after the encoder; the native class adds one unless
        # it mean-pools (pooling is never used for InternVL's features).
        "use_mean_pooling": True,
        "layer_scale_init_value": vision.get("initializer_factor", 0.1),
    }


def native_config(config: dict, *, image_token_id: int) -> dict:
    """The native ``InternVLConfig`` keyword arguments for an original checkpoint's config.json."""
    if config.get("ps_version", "v1") != "v2":
        raise OriginalCheckpointError(
            f"ps_version={config.get('ps_version')!r}: the native pixel shuffle is upstream's v2; v1 cannot be expressed"
        )
    family = llm_family(config)
    vision = config["vision_config"]
    image_size = config.get("force_image_size") or vision.get("image_size", 448)
    downsample_ratio = float(config.get("downsample_ratio", 0.5))
    patches_per_side = image_size // vision.get("patch_size", 14)
    return {
        "vision_config": native_vision_config({**vision, "image_size": image_size}),
        "text_config": native_text_config(family, config["llm_config"]),
        "image_token_id": image_token_id,
        "image_seq_length": int(patches_per_side**2 * downsample_ratio**2),
        "downsample_ratio": downsample_ratio,
        "projector_hidden_act": "gelu",
        "vision_feature_layer": int(config.get("select_layer", -1)),
        "vision_feature_select_strategy": "default",
        "tie_word_embeddings": False,
    }


# --- weights -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Piece:
    """Which part of a stored tensor becomes a native parameter.

    ``rows`` is ``None`` for the whole tensor, else ``(part, parts)`` for an even row split
    (fused q|k|v), or a tuple of ``(start, stop)`` row ranges to concatenate (InternLM2's grouped
    wqkv, whose queries, keys and values interleave per key/value head).
    """

    source: str
    rows: tuple | None = None


_VISION_RENAMES = [
    (r"vision_model\.embeddings\.class_embedding", "model.vision_tower.embeddings.cls_token"),
    (r"vision_model\.embeddings\.position_embedding", "model.vision_tower.embeddings.position_embeddings"),
    (
        r"vision_model\.embeddings\.patch_embedding\.(weight|bias)",
        r"model.vision_tower.embeddings.patch_embeddings.projection.\1",
    ),
    (r"vision_model\.encoder\.layers\.(\d+)\.attn\.proj\.", r"model.vision_tower.encoder.layer.\1.attention.projection_layer."),
    (r"vision_model\.encoder\.layers\.(\d+)\.attn\.([qk])_norm\.", r"model.vision_tower.encoder.layer.\1.attention.\2_norm."),
    (r"vision_model\.encoder\.layers\.(\d+)\.mlp\.fc([12])\.", r"model.vision_tower.encoder.layer.\1.mlp.fc\2."),
    (r"vision_model\.encoder\.layers\.(\d+)\.norm1\.", r"model.vision_tower.encoder.layer.\1.layernorm_before."),
    (r"vision_model\.encoder\.layers\.(\d+)\.norm2\.", r"model.vision_tower.encoder.layer.\1.layernorm_after."),
    (r"vision_model\.encoder\.layers\.(\d+)\.ls1", r"model.vision_tower.encoder.layer.\1.lambda_1"),
    (r"vision_model\.encoder\.layers\.(\d+)\.ls2", r"model.vision_tower.encoder.layer.\1.lambda_2"),
]
# mlp1 is Sequential(LayerNorm, Linear, GELU, Linear): index 2 holds no weights.
_PROJECTOR_RENAMES = [
    (r"mlp1\.0\.", "model.multi_modal_projector.layer_norm."),
    (r"mlp1\.1\.", "model.multi_modal_projector.linear_1."),
    (r"mlp1\.3\.", "model.multi_modal_projector.linear_2."),
]
# Qwen2, Phi-3 and Llama already use the native decoder's module names.
_DECODER_RENAMES = [
    (r"language_model\.model\.", "model.language_model."),
    (r"language_model\.lm_head\.", "lm_head."),
]
_INTERNLM2_RENAMES = [
    (r"language_model\.model\.tok_embeddings\.", "model.language_model.embed_tokens."),
    (r"language_model\.model\.layers\.(\d+)\.attention\.wo\.", r"model.language_model.layers.\1.self_attn.o_proj."),
    (r"language_model\.model\.layers\.(\d+)\.feed_forward\.w1\.", r"model.language_model.layers.\1.mlp.gate_proj."),
    (r"language_model\.model\.layers\.(\d+)\.feed_forward\.w3\.", r"model.language_model.layers.\1.mlp.up_proj."),
    (r"language_model\.model\.layers\.(\d+)\.feed_forward\.w2\.", r"model.language_model.layers.\1.mlp.down_proj."),
    (r"language_model\.model\.layers\.(\d+)\.attention_norm\.", r"model.language_model.layers.\1.input_layernorm."),
    (r"language_model\.model\.layers\.(\d+)\.ffn_norm\.", r"model.language_model.layers.\1.post_attention_layernorm."),
    (r"language_model\.model\.norm\.", "model.language_model.norm."),
    (r"language_model\.output\.", "lm_head."),
]
_VISION_QKV = re.compile(r"vision_model\.encoder\.layers\.(\d+)\.attn\.qkv\.(weight|bias)")
_INTERNLM2_WQKV = re.compile(r"language_model\.model\.layers\.(\d+)\.attention\.wqkv\.(weight|bias)")


def internlm2_wqkv_rows(*, heads: int, kv_heads: int, head_dim: int) -> dict[str, tuple[tuple[int, int], ...]]:
    """Row ranges of q, k and v inside InternLM2's fused ``wqkv``.

    Its rows are grouped per key/value head: ``[kv_heads, heads/kv_heads + 2, head_dim]`` — that
    group's queries, then its key, then its value. A contiguous q|k|v split would be wrong.
    """
    groups = heads // kv_heads
    block = (groups + 2) * head_dim
    ranges: dict[str, list[tuple[int, int]]] = {"q": [], "k": [], "v": []}
    for kv_head in range(kv_heads):
        start = kv_head * block
        ranges["q"].append((start, start + groups * head_dim))
        ranges["k"].append((start + groups * head_dim, start + (groups + 1) * head_dim))
        ranges["v"].append((start + (groups + 1) * head_dim, start + block))
    return {name: tuple(rows) for name, rows in ranges.items()}


def _rename(name: str, rules: list[tuple[str, str]]) -> str | None:
    for pattern, replacement in rules:
        renamed, count = re.subn("^" + pattern, replacement, name)
        if count:
            return renamed
    return None


def plan_weights(source_names: list[str], config: dict) -> dict[str, Piece]:
    """Native parameter name → the stored tensor (or slice) it is loaded from.

    Raises on a stored tensor no rule knows: a silently dropped weight changes the model.
    """
    family = llm_family(config)
    llm = config["llm_config"]
    decoder_rules = _INTERNLM2_RENAMES if family == "internlm2" else _DECODER_RENAMES
    rules = _VISION_RENAMES + _PROJECTOR_RENAMES + decoder_rules
    plan: dict[str, Piece] = {}
    unknown = []
    for name in source_names:
        if match := _VISION_QKV.fullmatch(name):
            layer, kind = match.groups()
            for part, proj in enumerate(("q_proj", "k_proj", "v_proj")):
                plan[f"model.vision_tower.encoder.layer.{layer}.attention.{proj}.{kind}"] = Piece(name, (part, 3))
        elif family == "internlm2" and (match := _INTERNLM2_WQKV.fullmatch(name)):
            layer, kind = match.groups()
            heads, kv_heads = llm["num_attention_heads"], llm.get("num_key_value_heads", llm["num_attention_heads"])
            rows = internlm2_wqkv_rows(heads=heads, kv_heads=kv_heads, head_dim=llm["hidden_size"] // heads)
            for letter, ranges in rows.items():
                plan[f"model.language_model.layers.{layer}.self_attn.{letter}_proj.{kind}"] = Piece(name, ranges)
        elif (target := _rename(name, rules)) is not None:
            plan[target] = Piece(name)
        else:
            unknown.append(name)
    if unknown:
        raise OriginalCheckpointError(f"stored tensors no mapping rule knows: {', '.join(sorted(unknown)[:8])}")
    if "lm_head.weight" not in plan and config["llm_config"].get("tie_word_embeddings"):
        # A checkpoint that relied on tying stores no head: the head is a copy of the embeddings.
        plan["lm_head.weight"] = plan["model.language_model.embed_tokens.weight"]
    return plan
