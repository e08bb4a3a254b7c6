"""Original InternVL checkpoints → native classes: every weight placed once, traps avoided, refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers import InternVLConfig, InternVLForConditionalGeneration

from workers.inference.fixtures.original import (
    ALL_ARCHITECTURES,
    FAMILY_ARCHITECTURES,
    SEED_ARCHITECTURES,
    build_original_checkpoint,
    original_config,
)
from workers.inference.runtime.checkpoint import CheckpointError, read_checkpoint
from workers.inference.runtime.device_map import cards_layer_split
from workers.inference.runtime.loading import LoadOptions, load_model, load_tokenizer, split_over_gpus
from workers.inference.runtime.model import InternVLRuntime
from workers.inference.runtime.original_checkpoint import (
    OriginalCheckpointError,
    internlm2_wqkv_rows,
    native_config,
    plan_weights,
)
from workers.inference.runtime.requests import GenerationRequest
from workers.inference.runtime.weights import LazyPiece, PlannedStateDict


def _native_parameter_names(config: dict) -> set[str]:
    with torch.device("meta"):
        model = InternVLForConditionalGeneration(InternVLConfig(**native_config(config, image_token_id=3)))
    return set(model.state_dict())


GOLDEN = Path(__file__).parent / "data" / "golden"


@pytest.fixture(scope="module")
def family_model_dirs(tmp_path_factory) -> dict[str, Path]:
    """The larger family members' layouts: InternViT-6B's vision encoder, a Llama LLM."""
    root = tmp_path_factory.mktemp("family")
    return {model_id: build_original_checkpoint(root / model_id, model_id) for model_id in FAMILY_ARCHITECTURES}


def _checkpoint_dir(model_id, saved_by, seed_model_dirs, family_model_dirs) -> Path:
    if saved_by == "upstream":
        return GOLDEN / model_id / "checkpoint"
    return (seed_model_dirs | family_model_dirs)[model_id]


@pytest.mark.parametrize(
    "model_id, saved_by",
    [(model_id, "vlmq fixture") for model_id in sorted(ALL_ARCHITECTURES)]
    + [(path.parent.name, "upstream") for path in sorted(GOLDEN.glob("*/checkpoint"))],
)
def test_every_original_weight_lands_in_exactly_one_native_parameter(
    seed_model_dirs, family_model_dirs, model_id, saved_by
):
    # given a tiny original-format checkpoint (vlmq's fixture, or saved by upstream's classes)
    path = _checkpoint_dir(model_id, saved_by, seed_model_dirs, family_model_dirs)
    config = json.loads((path / "config.json").read_text())
    with safe_open(path / "model.safetensors", framework="pt") as handle:
        stored = {name: handle.get_slice(name).get_shape() for name in handle.keys()}

    # when its weights are planned onto the native model
    plan = plan_weights(list(stored), config)

    # then the plan fills every native parameter and invents none
    assert set(plan) == _native_parameter_names(config)
    # and every stored tensor is used, its rows split over its targets without overlap or gap
    rows_used: dict[str, list[tuple[int, int]]] = {name: [] for name in stored}
    for piece in plan.values():
        rows = stored[piece.source][0]
        if piece.rows is None:
            rows_used[piece.source].append((0, rows))
        elif isinstance(piece.rows[0], int):
            part, parts = piece.rows
            rows_used[piece.source].append((part * rows // parts, (part + 1) * rows // parts))
        else:
            rows_used[piece.source].extend(piece.rows)
    for name, ranges in rows_used.items():
        covered = sorted(ranges)
        assert covered and covered[0][0] == 0 and covered[-1][1] == stored[name][0], name
        assert all(a[1] == b[0] for a, b in zip(covered, covered[1:], strict=False)), name


def test_internlm2_fused_wqkv_splits_back_into_the_q_k_v_it_was_built_from():
    # given q, k and v projections built separately (4 query heads sharing 2 key/value heads)
    heads, kv_heads, head_dim, hidden = 4, 2, 3, 5
    groups = heads // kv_heads
    q = torch.arange(heads * head_dim * hidden, dtype=torch.float32).reshape(heads * head_dim, hidden)
    k = 1000 + torch.arange(kv_heads * head_dim * hidden, dtype=torch.float32).reshape(kv_heads * head_dim, hidden)
    v = 2000 + torch.arange(kv_heads * head_dim * hidden, dtype=torch.float32).reshape(kv_heads * head_dim, hidden)
    # and fused the way InternLM2 stores them: per key/value head, its queries, then its k, then its v
    blocks = []
    for kv_head in range(kv_heads):
        blocks.append(q[kv_head * groups * head_dim : (kv_head + 1) * groups * head_dim])
        blocks.append(k[kv_head * head_dim : (kv_head + 1) * head_dim])
        blocks.append(v[kv_head * head_dim : (kv_head + 1) * head_dim])
    wqkv = torch.cat(blocks)

    # when the fused tensor is split by the loader's row ranges
    rows = internlm2_wqkv_rows(heads=heads, kv_heads=kv_heads, head_dim=head_dim)
    split = {name: torch.cat([wqkv[start:stop] for start, stop in ranges]) for name, ranges in rows.items()}

    # then q, k and v come back exactly, and a contiguous q|k|v split would not
    assert torch.equal(split["q"], q) and torch.equal(split["k"], k) and torch.equal(split["v"], v)
    assert not torch.equal(wqkv[: heads * head_dim], q)


def test_the_lazy_reader_splits_the_stored_wqkv_like_the_known_answer(seed_model_dirs):
    # given the stored wqkv of the tiny InternLM2 checkpoint
    path = seed_model_dirs["internvl2-8b"]
    config = json.loads((path / "config.json").read_text())
    llm = config["llm_config"]
    with PlannedStateDict(path) as stored:
        plan = plan_weights(stored.source_names(), config)
        lazy = stored.lazy(plan)
        # when the native q/k/v of layer 0 are read
        q, k, v = (lazy[f"model.language_model.layers.0.self_attn.{name}_proj.weight"][...] for name in "qkv")
        whole = lazy["model.language_model.embed_tokens.weight"]
        fused = stored._handle(stored.files["language_model.model.layers.0.attention.wqkv.weight"]).get_tensor(
            "language_model.model.layers.0.attention.wqkv.weight"
        )
    # then they are the grouped blocks of the fused tensor
    head_dim = llm["hidden_size"] // llm["num_attention_heads"]
    grouped = fused.reshape(llm["num_key_value_heads"], -1, head_dim, llm["hidden_size"])
    assert torch.equal(q, grouped[:, :-2].reshape(-1, llm["hidden_size"]))
    assert torch.equal(k, grouped[:, -2].reshape(-1, llm["hidden_size"]))
    assert torch.equal(v, grouped[:, -1].reshape(-1, llm["hidden_size"]))
    assert isinstance(whole, LazyPiece)


def test_config_translation_avoids_the_known_traps():
    # given the original configs of the four seed architectures
    configs = {model_id: original_config(seed) for model_id, seed in SEED_ARCHITECTURES.items()}

    # when they are translated
    native = {model_id: native_config(config, image_token_id=7) for model_id, config in configs.items()}

    # then nothing is tied, the vision encoder keeps upstream's norms, and no remote-code switch leaks
    for translated in native.values():
        assert translated["tie_word_embeddings"] is False and translated["text_config"]["tie_word_embeddings"] is False
        assert translated["vision_config"]["use_mean_pooling"] is True
        assert translated["vision_config"]["norm_type"] == "layer_norm"
        assert translated["image_seq_length"] == 256
        assert not {"auto_map", "attn_implementation", "architectures"} & set(translated["text_config"])
    internlm2 = native["internvl2-8b"]["text_config"]
    assert internlm2["model_type"] == "llama"
    assert internlm2["rope_parameters"] == {"rope_type": "dynamic", "rope_theta": 1000000.0, "factor": 2.0}
    assert native["internvl2-1b"]["text_config"]["rope_parameters"] == {"rope_type": "default", "rope_theta": 1e6}
    # and Phi-3's LongRoPE ("su") scales attention by sqrt(1 + ln(131072/4096) / ln(4096)) ≈ 1.19
    phi3 = native["mini-internvl-chat-4b-v1-5"]["text_config"]["rope_parameters"]
    assert phi3["rope_type"] == "longrope" and phi3["attention_factor"] == pytest.approx(1.1902380714238083)


def test_phi3_yarn_keeps_upstreams_own_attention_factor():
    config = original_config(SEED_ARCHITECTURES["mini-internvl-chat-4b-v1-5"])
    config["llm_config"]["rope_scaling"]["type"] = "yarn"
    rope = native_config(config, image_token_id=7)["text_config"]["rope_parameters"]
    assert rope["attention_factor"] == pytest.approx(0.1 * torch.log(torch.tensor(32.0)).item() + 1.0)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c.update(ps_version="v1"), "ps_version='v1'"),
        (lambda c: c["llm_config"].update(architectures=["MistralForCausalLM"]), "MistralForCausalLM"),
        (lambda c: c["llm_config"].update(rope_scaling={"type": "mystery", "factor": 2.0}), "mystery"),
    ],
)
def test_original_checkpoints_that_cannot_be_expressed_are_refused(change, message):
    config = original_config(SEED_ARCHITECTURES["internvl2-1b"])
    change(config)
    with pytest.raises(OriginalCheckpointError, match=message):
        native_config(config, image_token_id=7)


def test_a_stored_tensor_no_rule_knows_is_refused_not_dropped():
    config = original_config(SEED_ARCHITECTURES["internvl2-1b"])
    with pytest.raises(OriginalCheckpointError, match="vision_model.extra.weight"):
        plan_weights(["mlp1.0.weight", "vision_model.extra.weight"], config)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"]}, "model_type='llava'.*Llava"),
        ({"model_type": "internvl_chat", "llm_config": {}}, "without a chat template"),
        ({"model_type": "internvl_chat", "template": "vicuna_v1.1", "llm_config": {}}, "unknown chat template"),
    ],
)
def test_checkpoint_directories_that_are_not_internvl_are_refused_by_name(tmp_path, config, message):
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(tmp_path)


def test_a_remote_code_tokenizer_without_its_files_is_refused_not_executed(seed_model_dirs, tmp_path):
    # given an InternLM2 checkpoint whose tokenizer class exists only as remote code, and no vocabulary
    copy = tmp_path / "internvl2-8b"
    shutil.copytree(seed_model_dirs["internvl2-8b"], copy)
    (copy / "tokenizer.model").unlink()
    # when it is loaded, then the error says what is missing
    with pytest.raises(CheckpointError, match="remote-code tokenizer InternLM2Tokenizer but has neither"):
        load_tokenizer(read_checkpoint(copy))


@pytest.mark.parametrize("model_id, bos", [("internvl2-1b", None), ("internvl2-8b", "<s>"), ("mini-internvl-chat-4b-v1-5", "<s>")])
def test_family_tokenizers_keep_chat_markup_whole_and_prepend_bos_like_the_real_ones(seed_model_dirs, model_id, bos):
    tokenizer = load_tokenizer(read_checkpoint(seed_model_dirs[model_id]))
    template = SEED_ARCHITECTURES[model_id].template
    stop = {"Hermes-2": "<|im_end|>", "internlm2-chat": "<|im_end|>", "phi3-chat": "<|end|>"}[template]
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(f"<img><IMG_CONTEXT></img><ref>a</ref><box>{stop}").input_ids)
    assert tokens[0] == bos if bos else tokens[0] == "<img>"
    markup = ["<img>", "<IMG_CONTEXT>", "</img>", "<ref>", "</ref>", "<box>", stop]
    assert [token for token in tokens if token in markup] == markup


def test_a_loaded_original_checkpoint_has_no_randomly_initialised_parameter(seed_model_dirs):
    # given the tiny InternVL2-8B checkpoint loaded through the product's loader
    checkpoint = read_checkpoint(seed_model_dirs["internvl2-8b"])
    model = load_model(checkpoint, load_tokenizer(checkpoint))
    # then every native parameter equals a stored value (the head is the stored `output`)
    with safe_open(checkpoint.path / "model.safetensors", framework="pt") as handle:
        assert torch.equal(model.lm_head.weight, handle.get_tensor("language_model.output.weight"))
        assert torch.equal(
            model.model.multi_modal_projector.linear_2.bias, handle.get_tensor("mlp1.3.bias")
        )
        cls_token = handle.get_tensor("vision_model.embeddings.class_embedding")
    assert torch.equal(model.model.vision_tower.embeddings.cls_token, cls_token)
    assert model.config.tie_word_embeddings is False


def test_a_seed_model_is_split_over_gpus_by_the_cards_rule_and_a_model_too_big_is_refused(seed_model_dirs):
    # given the tiny InternVL2-1B checkpoint (2 LLM layers) and two GPUs with plenty of free memory
    checkpoint = read_checkpoint(seed_model_dirs["internvl2-1b"])
    assert checkpoint.num_layers == 2 and checkpoint.sizes.largest_layer_params > 0

    # when it is planned in bf16
    device_map = split_over_gpus(checkpoint, [80 << 30, 80 << 30], dtype=torch.bfloat16, headroom=0.9)

    # then the vision side, embeddings, head and the last layer sit on GPU 0, as the cards place them
    assert device_map["model.vision_tower"] == 0 and device_map["lm_head"] == 0
    assert [device_map[f"model.language_model.layers.{layer}"] for layer in range(2)] == cards_layer_split(2, 2)
    # and GPUs with almost no free memory give a clear error instead of an out-of-memory crash
    with pytest.raises(CheckpointError, match="does not fit on the GPUs"):
        split_over_gpus(checkpoint, [4 << 10, 4 << 10], dtype=torch.bfloat16, headroom=0.9)


def test_eight_bit_loading_without_a_gpu_is_a_clear_error(seed_model_dirs):
    checkpoint = read_checkpoint(seed_model_dirs["internvl2-1b"])
    with pytest.raises(CheckpointError, match="8-bit loading needs a GPU"):
        load_model(checkpoint, load_tokenizer(checkpoint), LoadOptions(device="cpu", load_in_8bit=True))


@pytest.mark.parametrize("model_id", sorted(FAMILY_ARCHITECTURES))
def test_the_larger_family_layouts_load_and_generate(family_model_dirs, model_id):
    # given InternVL2-26B's layout (InternViT-6B: RMSNorm, q/k norms, no qkv bias) or a Llama LLM
    checkpoint = read_checkpoint(family_model_dirs[model_id])
    runtime = InternVLRuntime(checkpoint, load_model(checkpoint, load_tokenizer(checkpoint)), load_tokenizer(checkpoint))
    # when an image question runs, then it answers with the requested number of tokens at most
    (result,) = runtime.run([GenerationRequest("caption", None, [Image.new("RGB", (500, 300), "red")], max_tiles=2,
                                               max_new_tokens=3)])
    assert result.tiles == 3 and 1 <= result.output_tokens <= 3
    assert runtime.model.model.vision_tower.config.use_qk_norm is True


def test_the_bf16_path_runs_on_cpu_with_an_original_checkpoint(seed_model_dirs):
    # given InternVL2-8B's layout loaded in bfloat16, the dtype a GPU gets
    checkpoint = read_checkpoint(seed_model_dirs["internvl2-8b"])
    tokenizer = load_tokenizer(checkpoint)
    runtime = InternVLRuntime(checkpoint, load_model(checkpoint, tokenizer, LoadOptions(device="cpu", dtype="bfloat16")), tokenizer)
    # when an image question runs, then pixels follow the weights' dtype and an answer comes back
    assert runtime.dtype == torch.bfloat16 and runtime.model.lm_head.weight.dtype == torch.bfloat16
    (result,) = runtime.run([GenerationRequest("vqa", "Red?", [Image.new("RGB", (64, 64), "red")], max_new_tokens=2)])
    assert 1 <= result.output_tokens <= 2 and result.tiles == 1
