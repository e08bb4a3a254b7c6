#!/usr/bin/env python
"""Generate vlmq's golden test data with the InternVL project's OWN model classes.

NOT RUN BY TESTS. The tests only read what this script wrote (the tiny checkpoints, golden.json,
logits.safetensors, media/). Re-running it needs an upstream checkout of OpenGVLab/InternVL given
on the command line; this script imports upstream's code from there and contains none of it:

    python tests/data/golden/generate_golden.py --upstream /path/to/InternVL \
        --upstream-commit <sha> --pythonpath <folder holding einops> [--out tests/data/golden]

Requirements: the project's venv (torch, transformers 5.x, tokenizers, safetensors, pillow, numpy)
plus the pure-python package ``einops`` (upstream's InternLM2 attention calls ``einops.rearrange``);
``--pythonpath DIR`` adds a folder holding it (e.g. ``pip install --target DIR einops``).
torchvision, timm, peft, cv2, imageio, decord and flash-attn are NOT needed: small stand-ins are
installed in ``sys.modules`` (see ``install_shims``), none of them on the computation path except
the torchvision one, which reproduces exactly the four eval transforms upstream's
``build_transform`` uses (PIL bicubic resize, ToTensor, Normalize, Lambda/Compose).

What it does, per seed model (internvl2-1b, mini-internvl-chat-4b-v1-5, internvl2-8b,
internvl2_5-4b, internvl2-26b, internvl2-76b):
  1. builds a config dict with the keys of the real checkpoint's config.json but tiny sizes,
     instantiates upstream's InternVLChatConfig / InternVLChatModel from it (use_flash_attn=False,
     fp32, CPU, eval), overwrites EVERY parameter with seeded random values (no zero/one tensors),
  2. saves weights with save_pretrained(safe_serialization=True) and writes config.json as the real
     checkpoints store it (4.37-era layout: rope_theta, attn_implementation/auto_map traps, ...),
     plus a tiny tokenizer from the project's own builder,
  3. re-reads the directory with upstream's InternVLChatConfig.from_pretrained, builds upstream's
     InternVLChatModel from it, loads model.safetensors (strict) and checks it reproduces the
     in-memory model bit for bit (so config.json + weights are what upstream reads),
  4. runs upstream's chat() for the cases image / video / text with card-style preprocessing
     (upstream build_transform + dynamic_preprocess), replacing only the final
     ``language_model.generate`` by an exact greedy loop (full forward without cache each step,
     argmax of the last position, 16 new tokens, no stopping), and records prompt, input_ids,
     tokens, first-step logits; for the Qwen2 models it also checks the unmodified chat() with
     transformers' own generate (KV cache) gives the same tokens and response.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import shutil
import sys
import types
from pathlib import Path

N_NEW_TOKENS = 16
VOCAB_SIZE = 640
IMAGE_QUESTION = "Please describe the image shortly."
VIDEO_QUESTION = "What happens in the video?"
TEXT_QUESTION = "Hello, who are you?"
IMAGE_MAX_NUM = 6
VIDEO_MAX_NUM = 1
N_FRAMES = 4


# ----------------------------------------------------------------------------------------------
# compatibility shims (transformers 5 and missing optional packages)
# ----------------------------------------------------------------------------------------------

SHIM_NOTES: list[str] = []


def _stub(name: str, **attrs):
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def install_shims() -> None:
    import numpy as np
    import torch
    import transformers  # noqa: F401  (first, so its package probes never see the stand-ins below)
    from PIL import Image
    from torch import nn

    # timm: upstream's InternViT imports timm.models.layers.DropPath; with drop_path_rate 0 it uses
    # nn.Identity instead, so DropPath is never instantiated here.
    class DropPath(nn.Module):
        def __init__(self, drop_prob: float = 0.0):
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x):  # eval-mode DropPath is the identity
            if self.training and self.drop_prob > 0:
                raise RuntimeError("stub DropPath: training not supported")
            return x

    _stub("timm")
    _stub("timm.models")
    _stub("timm.models.layers", DropPath=DropPath)
    SHIM_NOTES.append("timm: stub module with an eval-only DropPath (never instantiated: drop_path_rate 0)")

    # peft: imported at module level by modeling_internvl_chat (LoRA wrappers, unused here).
    def _no_peft(*_a, **_k):
        raise RuntimeError("peft is not available in the golden generator")

    _stub("peft", LoraConfig=_no_peft, get_peft_model=_no_peft)
    SHIM_NOTES.append("peft: stub module (LoRA is off: use_backbone_lora = use_llm_lora = 0)")

    # cv2 / imageio / decord: imported at module level by internvl/train/dataset.py for video and
    # augmentation helpers that are not used (frames are read as PNG files with PIL).
    for name in ("cv2", "imageio", "decord"):
        def _unavailable(*_a, _name=name, **_k):
            raise RuntimeError(f"{_name} is not available in the golden generator")
        _stub(name, VideoReader=_unavailable, imread=_unavailable, cpu=_unavailable)
    SHIM_NOTES.append("cv2, imageio, decord: stub modules (imported by train/dataset.py, unused)")

    # torchvision: never installed here. upstream build_transform(is_train=False) composes
    # Lambda(convert RGB) -> Resize((448, 448), BICUBIC) -> ToTensor -> Normalize(mean, std).
    # These reproduce torchvision's PIL code paths exactly: Resize of a PIL image with an (h, w)
    # size calls img.resize((w, h), PIL BICUBIC) (a same-size resize returns the image unchanged;
    # PIL's own same-size resize is a copy, i.e. identical pixels); ToTensor views the uint8 bytes
    # as HWC, permutes to CHW and does .to(float32).div(255); Normalize does
    # tensor.sub_(mean[:, None, None]).div_(std[:, None, None]) with float32 mean/std.
    class InterpolationMode:
        NEAREST = "nearest"
        BILINEAR = "bilinear"
        BICUBIC = "bicubic"

    _PIL_FILTERS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}

    class Compose:
        def __init__(self, transforms):
            self.transforms = transforms

        def __call__(self, img):
            for t in self.transforms:
                img = t(img)
            return img

    class Lambda:
        def __init__(self, fn):
            self.fn = fn

        def __call__(self, img):
            return self.fn(img)

    class Resize:
        def __init__(self, size, interpolation=InterpolationMode.BILINEAR):
            assert isinstance(size, (tuple, list)) and len(size) == 2, "only (h, w) sizes are shimmed"
            self.size = (int(size[0]), int(size[1]))
            self.interpolation = interpolation

        def __call__(self, img):
            h, w = self.size
            if img.size == (w, h):
                return img
            return img.resize((w, h), _PIL_FILTERS[self.interpolation])

    class ToTensor:
        def __call__(self, pic):
            assert pic.mode == "RGB", pic.mode
            arr = np.array(pic, np.uint8, copy=True)
            img = torch.from_numpy(arr).view(pic.size[1], pic.size[0], len(pic.getbands()))
            return img.permute((2, 0, 1)).contiguous().to(dtype=torch.get_default_dtype()).div(255)

    class Normalize:
        def __init__(self, mean, std, inplace=False):
            self.mean, self.std = mean, std

        def __call__(self, tensor):
            tensor = tensor.clone()
            mean = torch.as_tensor(self.mean, dtype=tensor.dtype)[:, None, None]
            std = torch.as_tensor(self.std, dtype=tensor.dtype)[:, None, None]
            return tensor.sub_(mean).div_(std)

    def _train_only(*_a, **_k):
        raise RuntimeError("training transforms are not shimmed")

    transforms = _stub(
        "torchvision.transforms",
        Compose=Compose, Lambda=Lambda, Resize=Resize, ToTensor=ToTensor, Normalize=Normalize,
        RandomChoice=_train_only, InterpolationMode=InterpolationMode,
    )
    functional = _stub("torchvision.transforms.functional", InterpolationMode=InterpolationMode)
    transforms.functional = functional
    tv = _stub("torchvision", transforms=transforms)
    tv.__path__ = []  # behave like a package
    transforms.__path__ = []
    # Only upstream's modules may see these stand-ins: import them now, then take them out of
    # sys.modules again so that transformers' own package probes never find a fake torchvision.
    import internvl.model.internvl_chat  # noqa: F401
    import internvl.train.dataset  # noqa: F401
    for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional",
                 "cv2", "imageio", "decord", "peft", "timm", "timm.models", "timm.models.layers"):
        del sys.modules[name]
    SHIM_NOTES.append(
        "torchvision: minimal torchvision.transforms (Compose, Lambda, Resize[PIL bicubic], ToTensor, "
        "Normalize) reproducing torchvision's PIL code path exactly, for upstream build_transform"
    )


def patch_upstream_for_transformers5() -> None:
    """Small run-time fixes so upstream's 4.3x-era code runs under transformers 5."""
    from internvl.model.internvl_chat import modeling_internvl_chat as mic

    original_init = mic.InternVLChatModel.__init__

    def __init__(self, config, vision_model=None, language_model=None, use_flash_attn=True):
        # Upstream asks for eager attention by setting `llm_config.attn_implementation = "eager"`
        # (a plain attribute). transformers 5's Qwen2/Llama classes read `_attn_implementation`
        # instead and would keep the checkpoint's "flash_attention_2" and fail to import flash-attn.
        # Express upstream's intent under the new attribute name. (InternLM2 and Phi-3 are
        # upstream's own classes and switch to eager themselves.)
        if not (use_flash_attn and mic.has_flash_attn):
            config.llm_config._attn_implementation = "eager"
        original_init(self, config, vision_model=vision_model, language_model=language_model,
                      use_flash_attn=use_flash_attn)

    mic.InternVLChatModel.__init__ = __init__

    # transformers 5 expects `_tied_weights_keys` as a {tied: source} dict (it calls .keys()); the
    # 4.3x-era classes give a list. Same meaning (only used when tie_word_embeddings is true, which
    # upstream never sets): the output head may be tied to the input embeddings.
    from internvl.model.internlm2.modeling_internlm2 import InternLM2ForCausalLM
    from internvl.model.phi3.modeling_phi3 import Phi3ForCausalLM

    Phi3ForCausalLM._tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    InternLM2ForCausalLM._tied_weights_keys = {"output.weight": "model.tok_embeddings.weight"}
    SHIM_NOTES.append(
        "Phi3ForCausalLM/InternLM2ForCausalLM._tied_weights_keys: list -> transformers 5 dict form "
        "(save_pretrained calls .keys(); nothing is tied: tie_word_embeddings is false)"
    )
    SHIM_NOTES.append(
        "InternVLChatModel.__init__ wrapper: with use_flash_attn=False also sets "
        "llm_config._attn_implementation='eager' (transformers 5 ignores upstream's "
        "`attn_implementation` attribute for its own Qwen2 class)"
    )


# ----------------------------------------------------------------------------------------------
# configs: the real checkpoints' config.json layout, tiny sizes
# ----------------------------------------------------------------------------------------------

# Keys every 4.37-era PretrainedConfig.to_dict() writes (present in the real llm_config blocks).
def _legacy_generic(dtype: str = "float32") -> dict:
    return {
        "add_cross_attention": False, "bad_words_ids": None, "begin_suppress_tokens": None,
        "chunk_size_feed_forward": 0, "cross_attention_hidden_size": None, "decoder_start_token_id": None,
        "diversity_penalty": 0.0, "do_sample": False, "early_stopping": False,
        "encoder_no_repeat_ngram_size": 0, "exponential_decay_length_penalty": None,
        "finetuning_task": None, "forced_bos_token_id": None, "forced_eos_token_id": None,
        "id2label": {"0": "LABEL_0", "1": "LABEL_1"}, "is_decoder": False, "is_encoder_decoder": False,
        "label2id": {"LABEL_0": 0, "LABEL_1": 1}, "length_penalty": 1.0, "max_length": 20,
        "min_length": 0, "no_repeat_ngram_size": 0, "num_beam_groups": 1, "num_beams": 1,
        "num_return_sequences": 1, "output_attentions": False, "output_hidden_states": False,
        "output_scores": False, "prefix": None, "problem_type": None, "pruned_heads": {},
        "remove_invalid_values": False, "repetition_penalty": 1.0, "return_dict": True,
        "return_dict_in_generate": False, "sep_token_id": None, "suppress_tokens": None,
        "task_specific_params": None, "temperature": 1.0, "tf_legacy_loss": False,
        "tie_encoder_decoder": False, "tokenizer_class": None, "top_k": 50, "top_p": 1.0,
        "torch_dtype": dtype, "torchscript": False, "transformers_version": "4.37.2",
        "typical_p": 1.0, "use_bfloat16": False,
    }


def vision_config(name_or_path: str | None = None) -> dict:
    """InternViT-300M-448px(-V2_5) keys (config of InternVL2-1B/8B verbatim), tiny sizes."""
    cfg = {
        "architectures": ["InternVisionModel"],
        "attention_dropout": 0.0, "drop_path_rate": 0.0, "dropout": 0.0, "hidden_act": "gelu",
        "hidden_size": 32, "image_size": 448, "initializer_factor": 1.0, "initializer_range": 0.02,
        "intermediate_size": 64, "layer_norm_eps": 1e-06, "model_type": "intern_vit_6b",
        "norm_type": "layer_norm", "num_attention_heads": 2, "num_channels": 3,
        "num_hidden_layers": 2, "output_attentions": False, "output_hidden_states": False,
        "patch_size": 14, "qk_normalization": False, "qkv_bias": True, "return_dict": True,
        "torch_dtype": "float32", "transformers_version": "4.37.2", "use_bfloat16": False,
        "use_flash_attn": True,
    }
    if name_or_path:
        cfg["_name_or_path"] = name_or_path
    return cfg


def vision_config_6b() -> dict:
    """InternViT-6B-448px-V1-5 keys and non-size values (vision_config of InternVL2-26B/40B/76B):
    RMSNorm instead of LayerNorm (weights only), q/k RMSNorm over all heads, no qkv bias,
    initializer_factor 0.1, initializer_range 1e-10; tiny sizes as vision_config()."""
    cfg = vision_config()
    cfg.update({"initializer_factor": 0.1, "initializer_range": 1e-10, "norm_type": "rms_norm",
                "qk_normalization": True, "qkv_bias": False})
    return cfg


def top_config(llm: dict, vision: dict, template: str) -> dict:
    return {
        "_commit_hash": None,
        "architectures": ["InternVLChatModel"],
        "auto_map": {
            "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
            "AutoModel": "modeling_internvl_chat.InternVLChatModel",
            "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel",
        },
        "downsample_ratio": 0.5, "dynamic_image_size": True, "force_image_size": 448,
        "llm_config": llm, "max_dynamic_patch": 12, "min_dynamic_patch": 1,
        "model_type": "internvl_chat", "ps_version": "v2", "select_layer": -1, "template": template,
        "torch_dtype": "float32", "use_backbone_lora": 0, "use_llm_lora": 0, "use_thumbnail": True,
        "vision_config": vision,
    }


TINY_LLM = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
            "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": VOCAB_SIZE}


def config_internvl2_1b() -> dict:
    llm = _legacy_generic()
    llm.update({
        "_name_or_path": "Qwen/Qwen2-0.5B-Instruct", "architectures": ["Qwen2ForCausalLM"],
        "_attn_implementation": "flash_attention_2", "attention_dropout": 0.0,
        "bos_token_id": 0, "eos_token_id": 2,  # tiny ids of <|endoftext|> / <|im_end|>
        "hidden_act": "silu", "initializer_range": 0.02, "max_position_embeddings": 32768,
        "max_window_layers": 24, "model_type": "qwen2", "pad_token_id": None, "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": False,
        "use_cache": True, "use_sliding_window": False, **TINY_LLM,
    })
    return top_config(llm, vision_config(), "Hermes-2")


def config_mini_internvl_4b_v1_5() -> dict:
    head_dim = TINY_LLM["hidden_size"] // TINY_LLM["num_attention_heads"]
    # LongRoPE rescale factors, head_dim/2 each, deliberately far from 1 (short ones are used for
    # prompts up to original_max_position_embeddings tokens, long ones beyond).
    short_factor = [1.0, 1.05, 1.2, 1.4, 1.7, 2.0, 2.5, 3.0]
    long_factor = [1.1, 1.3, 1.8, 2.6, 3.9, 5.5, 7.7, 10.1]
    assert len(short_factor) == len(long_factor) == head_dim // 2
    llm = _legacy_generic()
    llm.update({
        "_name_or_path": "microsoft/Phi-3-mini-128k-instruct", "architectures": ["Phi3ForCausalLM"],
        "attn_implementation": "flash_attention_2",
        "auto_map": {"AutoConfig": "configuration_phi3.Phi3Config",
                     "AutoModelForCausalLM": "modeling_phi3.Phi3ForCausalLM"},
        "attention_dropout": 0.0, "bos_token_id": 1, "embd_pdrop": 0.0,
        "eos_token_id": 3, "pad_token_id": 3,  # tiny id of <|endoftext|> (32000 in the real one)
        "hidden_act": "silu", "initializer_range": 0.02, "max_position_embeddings": 131072,
        "model_type": "phi3", "original_max_position_embeddings": 4096, "resid_pdrop": 0.0,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {"long_factor": long_factor, "short_factor": short_factor, "type": "su"},
        "rope_theta": 10000.0, "sliding_window": 262144, "tie_word_embeddings": False,
        "transformers_version": "4.40.1", "use_cache": True, **TINY_LLM,
    })
    return top_config(llm, vision_config(), "phi3-chat")


def config_internvl2_8b() -> dict:
    llm = _legacy_generic()
    llm.update({
        "_name_or_path": "internlm/internlm2_5-7b-chat", "architectures": ["InternLM2ForCausalLM"],
        "attn_implementation": "flash_attention_2",
        "auto_map": {"AutoConfig": "configuration_internlm2.InternLM2Config",
                     "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
                     "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"},
        "bias": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
        "hidden_act": "silu", "initializer_range": 0.02, "max_position_embeddings": 32768,
        "model_type": "internlm2", "pretraining_tp": 1, "rms_norm_eps": 1e-05,
        "rope_scaling": {"factor": 2.0, "type": "dynamic"}, "rope_theta": 1000000,
        "tie_word_embeddings": False, "use_cache": True, **TINY_LLM,
    })
    return top_config(llm, vision_config(), "internlm2-chat")


def config_internvl2_5_4b() -> dict:
    llm = _legacy_generic()
    llm.update({
        "_name_or_path": "Qwen/Qwen2.5-3B-Instruct", "architectures": ["Qwen2ForCausalLM"],
        "_attn_implementation": "flash_attention_2", "attention_dropout": 0.0,
        "bos_token_id": 0, "eos_token_id": 2,
        "hidden_act": "silu", "initializer_range": 0.02, "max_position_embeddings": 32768,
        "max_window_layers": 70, "model_type": "qwen2", "pad_token_id": None, "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": False,
        "use_cache": True, "use_sliding_window": False, **TINY_LLM,
    })
    llm["num_hidden_layers"] = 3
    return top_config(llm, vision_config("OpenGVLab/InternViT-300M-448px-V2_5"), "internvl2_5")


def config_internvl2_26b() -> dict:
    llm = _legacy_generic()
    llm.update({
        "_name_or_path": "internlm/internlm2-chat-20b", "architectures": ["InternLM2ForCausalLM"],
        "attn_implementation": "flash_attention_2",
        "auto_map": {"AutoConfig": "configuration_internlm2.InternLM2Config",
                     "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
                     "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"},
        "bias": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
        "hidden_act": "silu", "initializer_range": 0.02, "max_position_embeddings": 32768,
        "model_type": "internlm2", "rms_norm_eps": 1e-05,
        "rope_scaling": {"factor": 3.0, "type": "dynamic"}, "rope_theta": 1000000,
        "tie_word_embeddings": False, "use_cache": True, **TINY_LLM,
    })
    # GQA 4:1 (the real 20B has 48 heads / 8 KV heads, 6:1); the 8B seed model covers 2:1
    llm.update({"num_attention_heads": 8, "num_key_value_heads": 2})
    return top_config(llm, vision_config_6b(), "internlm2-chat")


def config_internvl2_76b() -> dict:
    llm = _legacy_generic()
    llm.update({
        "_name_or_path": "NousResearch/Hermes-2-Theta-Llama-3-70B", "architectures": ["LlamaForCausalLM"],
        "_attn_implementation": "flash_attention_2", "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 0, "eos_token_id": 2,  # tiny qwen2-family ids of <|endoftext|> / <|im_end|>
        "hidden_act": "silu", "initializer_range": 0.02, "max_position_embeddings": 8192,
        "model_type": "llama", "pad_token_id": None, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
        "rope_scaling": None, "rope_theta": 500000.0, "tie_word_embeddings": False,
        "use_cache": True, **TINY_LLM,
    })
    # GQA 4:1 (the real 70B has 64 heads / 8 KV heads, 8:1)
    llm.update({"num_attention_heads": 8, "num_key_value_heads": 2})
    return top_config(llm, vision_config_6b(), "internlm2-chat")


MODELS = [
    # name, config builder, tokenizer family, seed, provenance of the key layout
    # (the seeds of internvl2-26b / -76b were picked among 5 candidates each, 10xx5 / 10xx6, for
    # large top-2 logit margins in every case: the first candidates had margins down to 0.0009)
    ("internvl2-1b", config_internvl2_1b, "qwen2", 1001,
     "keys and non-size values as in a copy of the real InternVL2-1B config.json (llm_config "
     "'_attn_implementation': 'flash_attention_2', sliding_window 32768, no top-level "
     "tie_word_embeddings); sizes tiny, token ids those of the tiny tokenizer, torch_dtype float32"),
    ("mini-internvl-chat-4b-v1-5", config_mini_internvl_4b_v1_5, "phi3", 1002,
     "NOT verified against the real file (none found): the common InternVL config layout with "
     "Phi-3-mini-128k-instruct llm_config keys as remembered (su/LongRoPE, max_position_embeddings "
     "131072, original 4096, sliding_window 262144, attn_implementation + auto_map as upstream "
     "writes them); LongRoPE factors made up"),
    ("internvl2-8b", config_internvl2_8b, "internlm2", 1003,
     "keys and non-size values as in a copy of the real InternVL2-8B config.json (llm_config "
     "attn_implementation flash_attention_2, auto_map, rope_scaling dynamic 2.0, rope_theta 1e6, "
     "bias false, max_position_embeddings 32768); sizes tiny, torch_dtype float32"),
    ("internvl2_5-4b", config_internvl2_5_4b, "qwen2", 1004,
     "NOT verified against the real file (none found): InternVL2-1B's layout with "
     "Qwen2.5-3B-Instruct llm_config values (max_window_layers 70, rope_theta 1e6), V2_5 vision "
     "_name_or_path, template internvl2_5, 3 LLM layers"),
    ("internvl2-26b", config_internvl2_26b, "internlm2", 1045,
     "keys and non-size values as in a (third-party, transcribed) copy of the real InternVL2-26B "
     "config.json: llm_config internlm2-chat-20b with attn_implementation flash_attention_2, auto_map, "
     "rope_scaling dynamic 3.0, rope_theta 1e6, bias false, max_position_embeddings 32768, no "
     "pretraining_tp; vision_config InternViT-6B-448px-V1-5 (norm_type rms_norm, qk_normalization true, "
     "qkv_bias false, initializer_factor 0.1, initializer_range 1e-10); sizes tiny with 8 heads / "
     "2 KV heads (head_dim 8), torch_dtype float32"),
    ("internvl2-76b", config_internvl2_76b, "qwen2", 1046,
     "NOT verified against the real file (none found): InternVL2-Llama3-76B layout assumed as the "
     "common InternVL layout with a transformers-4.37 LlamaConfig llm_config carrying "
     "Hermes-2-Theta-Llama-3-70B's known values (rope_theta 500000, rope_scaling null, "
     "max_position_embeddings 8192, rms_norm_eps 1e-5, attention_bias false, pretraining_tp 1) and "
     "'_attn_implementation' as in InternVL2-1B's transformers-class LLM; vision_config as "
     "internvl2-26b (InternViT-6B-448px-V1-5); template internlm2-chat as upstream's own "
     "InternVL2-Llama3-76B fine-tuning scripts set it (--conv_style internlm2-chat); tokenizer is the "
     "tiny qwen2 family (ChatML tokens, no BOS), not Llama-3's; 8 heads / 2 KV heads"),
]

NOTES = {
    "internvl2-26b": {
        "dynamic_rope": "upstream InternLM2DynamicNTKScalingRotaryEmbedding (factor 3.0) changes the base "
                        "only when the sequence exceeds max_position_embeddings (32768); all cases are "
                        "shorter, so plain RoPE with theta 1e6 applies",
        "wqkv_layout": "[kv_heads=2, heads/kv_heads + 2 = 6, head_dim=8, hidden=64] flattened: per kv "
                       "group its 4 query heads, then its key head, then its value head",
        "vision": "InternViT-6B style: norm1/norm2 are RMSNorm (weight only, eps 1e-6), attn.q_norm / "
                  "attn.k_norm are RMSNorm over all heads' concatenated q / k (hidden 32) before the "
                  "head split, attn.qkv has no bias (attn.proj has one)",
    },
    "internvl2-76b": {
        "tokenizer": "the real InternVL2-Llama3-76B uses Llama-3's tokenizer (ChatML tokens of "
                     "Hermes-2-Theta, <|begin_of_text|> BOS added by the tokenizer); the project's tiny "
                     "tokenizer builder has no Llama-3 family, so this uses the qwen2 family "
                     "(<|endoftext|>, <|im_start|>, <|im_end|>, NO BOS): input_ids carry no BOS",
        "template": "internlm2-chat, as in upstream's internvl_chat/shell/internvl2.0/2nd_finetune/"
                    "internvl2_76b_hermes2_llama3_70b_dynamic_res_2nd_finetune_{full,lora}.sh "
                    "(--conv_style, which internvl_chat_finetune.py stores as config.template); for "
                    "inference identical to Hermes-2 (same system message, roles and sep <|im_end|>)",
        "rope": "transformers' LlamaForCausalLM, default RoPE, rope_theta 500000 (llm_config level)",
        "vision": "as internvl2-26b (InternViT-6B style: RMSNorm, q/k norm, no qkv bias)",
    },
    "mini-internvl-chat-4b-v1-5": {
        "longrope_su_attention_factor": math.sqrt(1 + math.log(131072 / 4096) / math.log(4096)),
        "longrope": "upstream Phi3SuScaledRotaryEmbedding: inv_freq = 1/(factor_i * theta^(2i/d)) with "
                    "short_factor while max(position_ids)+1 <= 4096 (all cases here), long_factor beyond; "
                    "cos and sin are multiplied by sqrt(1 + ln(131072/4096)/ln(4096)) at every position",
    },
    "internvl2-8b": {
        "dynamic_rope": "upstream InternLM2DynamicNTKScalingRotaryEmbedding changes the base only when "
                        "the sequence exceeds max_position_embeddings (32768); all cases are shorter, so "
                        "plain RoPE with theta 1e6 applies",
        "wqkv_layout": "[kv_heads=2, heads/kv_heads + 2 = 4, head_dim=16, hidden=64] flattened: per kv "
                       "group its 2 query heads, then its key head, then its value head",
    },
}


# ----------------------------------------------------------------------------------------------
# media
# ----------------------------------------------------------------------------------------------

def make_media(media_dir: Path) -> dict:
    import numpy as np
    from PIL import Image, ImageDraw

    media_dir.mkdir(parents=True, exist_ok=True)
    # image: 700x500, gradients plus shapes
    w, h = 700, 500
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([
        (xx * 255 // (w - 1)),
        (yy * 255 // (h - 1)),
        ((xx + yy) * 255 // (w + h - 2))[::-1, :],
    ], axis=-1).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    d = ImageDraw.Draw(img)
    d.rectangle([60, 50, 260, 210], fill=(220, 30, 40))
    d.ellipse([380, 90, 620, 330], fill=(30, 60, 220))
    d.polygon([(120, 460), (330, 280), (480, 470)], fill=(250, 220, 20))
    d.line([(0, 0), (699, 499)], fill=(255, 255, 255), width=7)
    for i in range(0, 700, 50):
        d.rectangle([i, 480, i + 24, 499], fill=(0, 0, 0) if (i // 50) % 2 else (255, 255, 255))
    img.save(media_dir / "image.png", format="PNG")

    # video: 4 frames 320x240, a green disc moving over a changing gradient
    for k in range(N_FRAMES):
        fw, fh = 320, 240
        yy, xx = np.mgrid[0:fh, 0:fw]
        frame = np.stack([
            ((xx + 40 * k) % 256),
            np.full_like(xx, 40 + 50 * k),
            (yy * 255 // (fh - 1)),
        ], axis=-1).astype(np.uint8)
        fimg = Image.fromarray(frame, "RGB")
        fd = ImageDraw.Draw(fimg)
        cx, cy = 50 + 70 * k, 80 + 25 * k
        fd.ellipse([cx - 30, cy - 30, cx + 30, cy + 30], fill=(20, 200, 60))
        fd.rectangle([250 - 30 * k, 20, 300 - 30 * k, 60], fill=(240, 240, 240))
        fimg.save(media_dir / f"frame{k + 1}.png", format="PNG")

    names = ["image.png"] + [f"frame{k + 1}.png" for k in range(N_FRAMES)]
    return {n: hashlib.sha256((media_dir / n).read_bytes()).hexdigest() for n in names}


# ----------------------------------------------------------------------------------------------
# model construction
# ----------------------------------------------------------------------------------------------

def randomize_parameters(model, seed: int) -> list[str]:
    """Overwrite every parameter with seeded random values; return the rule used per tensor."""
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed)
    rules = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            module_name, _, pname = name.rpartition(".")
            module = model.get_submodule(module_name)
            cls = type(module).__name__
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if pname in ("ls1", "ls2"):
                val, rule = 1.0 + 0.1 * noise, "layerscale 1+0.1n"
            elif "Norm" in cls and pname == "weight":
                val, rule = 1.0 + 0.1 * noise, "norm weight 1+0.1n"
            elif pname == "bias":
                val, rule = 0.1 * noise, "bias 0.1n"
            elif isinstance(module, nn.Embedding):
                val, rule = 0.5 * noise, "embedding 0.5n"
            elif pname in ("class_embedding", "position_embedding"):
                val, rule = 0.5 * noise, "vit embedding 0.5n"
            elif isinstance(module, (nn.Linear, nn.Conv2d)) and pname == "weight":
                fan_in = p[0].numel()
                gain = 2.0 if module_name.endswith(("lm_head", "output")) else 1.0
                val, rule = gain / math.sqrt(fan_in) * noise, f"weight {gain}/sqrt(fan_in)"
            else:
                raise RuntimeError(f"no randomisation rule for {name} ({cls})")
            p.copy_(val.to(p.dtype))
            rules.append(f"{name}: {rule}")
    # sanity: nothing constant, nothing shared, nothing duplicated
    seen = {}
    for name, p in model.named_parameters():
        assert p.numel() < 2 or p.std().item() > 1e-3, name
        assert not torch.all(p == 0) and not torch.all(p == 1), name
        key = hashlib.sha256(p.detach().contiguous().numpy().tobytes()).hexdigest()
        assert key not in seen, f"{name} duplicates {seen[key]}"
        seen[key] = name
    return rules


def build_model(cfg_dict: dict, seed: int):
    import torch
    from internvl.model.internvl_chat import InternVLChatConfig, InternVLChatModel

    torch.manual_seed(seed)
    config = InternVLChatConfig(**copy.deepcopy(cfg_dict))
    model = InternVLChatModel(config, use_flash_attn=False).to(torch.float32).eval()
    randomize_parameters(model, seed)
    return model


# ----------------------------------------------------------------------------------------------
# preprocessing (card-style load_image / load_video with upstream functions)
# ----------------------------------------------------------------------------------------------

def load_image(path: Path, max_num: int):
    import torch
    from internvl.train.dataset import build_transform, dynamic_preprocess
    from PIL import Image

    image = Image.open(path).convert("RGB")
    transform = build_transform(is_train=False, input_size=448)
    tiles = dynamic_preprocess(image, image_size=448, use_thumbnail=True, max_num=max_num)
    return torch.stack([transform(t) for t in tiles])


def tensor_sha256(t) -> str:
    return hashlib.sha256(t.detach().contiguous().float().numpy().tobytes()).hexdigest()


# ----------------------------------------------------------------------------------------------
# running upstream chat() with an exact greedy loop in place of language_model.generate
# ----------------------------------------------------------------------------------------------

class RecordingTokenizer:
    """Passes everything to the tokenizer; records the text chat() tokenizes."""

    def __init__(self, tokenizer):
        self._tok = tokenizer
        self.calls: list[str] = []

    def __call__(self, text, *args, **kwargs):
        self.calls.append(text)
        return self._tok(text, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tok, name)


def run_case(model, tokenizer, pixel_values, question, num_patches_list):
    import torch

    rec: dict = {}
    lm = model.language_model
    original_generate = model.generate
    original_extract = model.extract_feature

    def generate_wrapper(pixel_values=None, input_ids=None, attention_mask=None, **kwargs):
        rec["input_ids"] = input_ids[0].tolist()
        rec["eos_token_id"] = kwargs.get("eos_token_id")
        return original_generate(pixel_values=pixel_values, input_ids=input_ids,
                                 attention_mask=attention_mask, **kwargs)

    def extract_wrapper(pv):
        out = original_extract(pv)
        rec["vit_embeds"] = out.detach().clone()
        return out

    def greedy(inputs_embeds=None, attention_mask=None, eos_token_id=None, max_new_tokens=None, **_kw):
        embed = lm.get_input_embeddings()
        embeds = inputs_embeds
        tokens, margins, first_logits = [], [], None
        for step in range(N_NEW_TOKENS):
            mask = torch.ones(embeds.shape[:2], dtype=torch.long)
            out = lm(inputs_embeds=embeds, attention_mask=mask, use_cache=False, return_dict=True)
            logits = out.logits[0, -1].float()
            if step == 0:
                first_logits = logits.clone()
            top2 = torch.topk(logits, 2)
            margins.append(float(top2.values[0] - top2.values[1]))
            nxt = int(torch.argmax(logits))
            tokens.append(nxt)
            embeds = torch.cat([embeds, embed(torch.tensor([[nxt]]))], dim=1)
        stop = tokens.index(eos_token_id) if eos_token_id in tokens else None
        rec.update(greedy_tokens=tokens, margins=margins, first_logits=first_logits, stop_index=stop,
                   inputs_embeds_len=int(inputs_embeds.shape[1]))
        # what transformers' generate returns to chat(): the new tokens, up to and including EOS
        returned = tokens if stop is None else tokens[: stop + 1]
        return torch.tensor([returned], dtype=torch.long)

    recorder = RecordingTokenizer(tokenizer)
    model.generate = generate_wrapper
    model.extract_feature = extract_wrapper
    lm.generate = greedy
    try:
        with torch.no_grad():
            response = model.chat(recorder, pixel_values, question,
                                  dict(max_new_tokens=N_NEW_TOKENS, do_sample=False),
                                  num_patches_list=num_patches_list)
    finally:
        del model.generate, model.extract_feature, lm.generate
    assert len(recorder.calls) == 1
    rec["prompt"] = recorder.calls[0]
    rec["response"] = response
    return rec


def prequery(model, question, has_media):
    """The query chat() builds before <image> expansion, rebuilt from upstream's template."""
    from internvl.conversation import get_conv_template

    if has_media and "<image>" not in question:
        question = "<image>\n" + question
    template = get_conv_template(model.template)
    template.system_message = model.system_message
    template.append_message(template.roles[0], question)
    template.append_message(template.roles[1], None)
    return template.get_prompt(), template.sep.strip()


def run_all_cases(model, tokenizer, media_dir: Path):
    import torch

    cases = {}
    # image
    pv = load_image(media_dir / "image.png", IMAGE_MAX_NUM)
    rec = run_case(model, tokenizer, pv, IMAGE_QUESTION, None)
    cases["image"] = dict(question=IMAGE_QUESTION, media=["image.png"], max_num=IMAGE_MAX_NUM,
                          use_thumbnail=True, num_patches_list=[int(pv.shape[0])], pixel_values=pv, **rec)
    # video: each frame one tile (max_num 1, no thumbnail)
    frames = [load_image(media_dir / f"frame{k + 1}.png", VIDEO_MAX_NUM) for k in range(N_FRAMES)]
    npl = [int(f.shape[0]) for f in frames]
    pv = torch.cat(frames)
    question = "".join(f"Frame{i + 1}: <image>\n" for i in range(len(npl))) + VIDEO_QUESTION
    rec = run_case(model, tokenizer, pv, question, npl)
    cases["video"] = dict(question=question, media=[f"frame{k + 1}.png" for k in range(N_FRAMES)],
                          max_num=VIDEO_MAX_NUM, use_thumbnail=True, num_patches_list=npl, pixel_values=pv, **rec)
    # text
    rec = run_case(model, tokenizer, None, TEXT_QUESTION, None)
    cases["text"] = dict(question=TEXT_QUESTION, media=[], max_num=None, use_thumbnail=None,
                         num_patches_list=[], pixel_values=None, **rec)

    for name, case in cases.items():
        query, stop_token = prequery(model, case["question"], bool(case["media"]))
        case["query"] = query
        case["stop_token"] = stop_token
        # chat()'s own un-expansion (query_to_print) must give the same text
        shown = case["prompt"].replace("<IMG_CONTEXT>", "").replace("<img></img>", "<image>")
        assert shown == query, (name, shown, query)
        expected = query
        for n in case["num_patches_list"]:
            expected = expected.replace("<image>", "<img>" + "<IMG_CONTEXT>" * model.num_image_token * n + "</img>", 1)
        assert expected == case["prompt"], name
    return cases


def check_against_transformers_generate(model, tokenizer, cases, media_dir: Path) -> None:
    """Unpatched upstream chat() (transformers' generate, KV cache, stop at EOS) must give the
    greedy loop's tokens. Only possible where the LLM class has `generate` under transformers 5
    (its own Qwen2); upstream's Phi-3 and InternLM2 classes no longer inherit GenerationMixin."""
    import torch

    lm = model.language_model
    original = lm.generate
    for name, case in cases.items():
        captured = {}

        def capture(*args, **kwargs):
            captured["out"] = original(*args, **kwargs)
            return captured["out"]

        lm.generate = capture
        try:
            with torch.no_grad():
                response = model.chat(tokenizer, case["pixel_values"], case["question"],
                                      dict(max_new_tokens=N_NEW_TOKENS, do_sample=False),
                                      num_patches_list=case["num_patches_list"] or None)
        finally:
            del lm.generate
        expected = case["greedy_tokens"]
        if case["stop_index"] is not None:
            expected = expected[: case["stop_index"] + 1]
        assert captured["out"][0].tolist() == expected, (name, captured["out"][0].tolist(), expected)
        assert response == case["response"], (name, response, case["response"])


def compare_runs(a: dict, b: dict, label: str) -> float:
    worst = 0.0
    for name in a:
        assert a[name]["input_ids"] == b[name]["input_ids"], (label, name)
        assert a[name]["greedy_tokens"] == b[name]["greedy_tokens"], (label, name)
        diff = float((a[name]["first_logits"] - b[name]["first_logits"]).abs().max())
        worst = max(worst, diff)
    return worst


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------

def describe_llm(model, name: str) -> None:
    """Print which upstream code paths the LLM runs (rotary class, attention class, theta)."""
    lm = model.language_model
    layer = lm.model.layers[0]
    attn = getattr(layer, "self_attn", None) or getattr(layer, "attention")
    rotary = getattr(attn, "rotary_emb", None) or getattr(lm.model, "rotary_emb", None)
    print(f"   {name}: {type(lm).__name__}, attention {type(attn).__name__}, rotary {type(rotary).__name__}, "
          f"attn impl {getattr(lm.config, '_attn_implementation', None)}/{getattr(lm.config, 'attn_implementation', None)}",
          flush=True)


def dumps(obj, indent: int = 1, level: int = 0) -> str:
    """JSON with one line per key, but lists of scalars (ids, shapes, tokens) kept on one line."""
    pad, inner = " " * (indent * level), " " * (indent * (level + 1))
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{inner}{json.dumps(str(k), ensure_ascii=False)}: {dumps(v, indent, level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)):
        if all(not isinstance(x, (dict, list, tuple)) for x in obj):
            return json.dumps(list(obj), ensure_ascii=False)
        return "[\n" + ",\n".join(inner + dumps(x, indent, level + 1) for x in obj) + "\n" + pad + "]"
    return json.dumps(obj, ensure_ascii=False)


def param_summary(state_dict) -> dict:
    groups: dict[str, list] = {}
    for name, t in state_dict.items():
        parts = name.split(".")
        prefix = ".".join(parts[:2]) if parts[0] == "language_model" else parts[0]
        groups.setdefault(prefix, []).append([name, list(t.shape)])
    return groups


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--upstream", required=True, type=Path,
                    help="checkout of OpenGVLab/InternVL (the folder holding internvl_chat/)")
    ap.add_argument("--upstream-commit", default=None, help="commit of that checkout (else read from its .git)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    ap.add_argument("--repo", type=Path, default=None, help="vlmq repository root (for the tokenizer builder)")
    ap.add_argument("--pythonpath", action="append", default=[], help="extra import folder (e.g. one holding einops)")
    args = ap.parse_args()

    upstream_pkg = args.upstream / "internvl_chat"
    assert (upstream_pkg / "internvl" / "model" / "internvl_chat" / "modeling_internvl_chat.py").exists(), upstream_pkg
    repo = args.repo or Path(__file__).resolve().parents[3]
    assert (repo / "workers" / "inference" / "fixtures" / "tokenizers.py").exists(), repo
    commit = args.upstream_commit
    if commit is None:
        import subprocess
        commit = subprocess.check_output(["git", "-C", str(args.upstream), "rev-parse", "HEAD"], text=True).strip()

    for extra in reversed(args.pythonpath):
        sys.path.insert(0, extra)
    sys.path.insert(0, str(upstream_pkg))
    sys.path.insert(1, str(repo))

    import einops  # noqa: F401  (required by upstream InternLM2; fail early if missing)
    import torch
    import transformers

    install_shims()
    from safetensors.torch import load_file, save_file
    from transformers import PreTrainedTokenizerFast

    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    torch.use_deterministic_algorithms(True)

    from internvl.model.internvl_chat import InternVLChatConfig, InternVLChatModel
    from workers.inference.fixtures.tokenizers import build_tokenizer

    patch_upstream_for_transformers5()

    out = args.out
    media_dir = out / "media"
    media_sha = make_media(media_dir)

    index = {"upstream": {"repo": "OpenGVLab/InternVL", "commit": commit},
             "models": [], "media_sha256": media_sha}
    for name, builder, family, seed, provenance in MODELS:
        print(f"== {name}", flush=True)
        model_dir = out / name
        ckpt = model_dir / "checkpoint"
        if model_dir.exists():
            shutil.rmtree(model_dir)
        ckpt.mkdir(parents=True)

        cfg_dict = builder()
        model = build_model(cfg_dict, seed)

        # weights exactly as upstream's save_pretrained writes them; config.json as the real
        # checkpoints store it (transformers 5 would write rope_parameters/dtype etc. instead)
        model.save_pretrained(ckpt, safe_serialization=True)
        tf5_config = json.loads((ckpt / "config.json").read_text())
        (ckpt / "config.json").write_text(json.dumps(cfg_dict, indent=2, sort_keys=True) + "\n")
        build_tokenizer(ckpt, family)
        tokenizer = PreTrainedTokenizerFast.from_pretrained(ckpt)
        assert len(tokenizer) <= VOCAB_SIZE

        saved = load_file(ckpt / "model.safetensors")
        expected_sd = {k: v for k, v in model.state_dict().items()}
        assert set(saved) == set(expected_sd), set(saved) ^ set(expected_sd)
        for k, v in saved.items():
            assert torch.equal(v, expected_sd[k]), k
        head = "language_model.output.weight" if family == "internlm2" else "language_model.lm_head.weight"
        emb = ("language_model.model.tok_embeddings.weight" if family == "internlm2"
               else "language_model.model.embed_tokens.weight")
        assert head in saved and emb in saved and not torch.equal(saved[head], saved[emb])

        cases = run_all_cases(model, tokenizer, media_dir)
        cases_again = run_all_cases(model, tokenizer, media_dir)
        assert compare_runs(cases, cases_again, "rerun") == 0.0

        # upstream's own config reader on the written config.json, upstream's model class, and the
        # written weights (strict) must reproduce the in-memory model. (Not from_pretrained: under
        # transformers 5 it builds the model on the meta device and leaves the non-persistent rotary
        # buffers of upstream's InternLM2 class -- inv_freq, cos_cached, sin_cached -- as garbage.)
        reloaded = InternVLChatModel(InternVLChatConfig.from_pretrained(ckpt), use_flash_attn=False)
        missing, unexpected = reloaded.load_state_dict(load_file(ckpt / "model.safetensors"), strict=True)
        assert not missing and not unexpected
        reloaded.to(torch.float32).eval()
        reload_diff = compare_runs(cases, run_all_cases(reloaded, tokenizer, media_dir), "reload")
        assert reload_diff == 0.0, reload_diff
        describe_llm(reloaded, name)
        del reloaded

        checked_generate = hasattr(model.language_model, "generate")
        if checked_generate:
            check_against_transformers_generate(model, tokenizer, cases, media_dir)

        golden_cases = {}
        logits = {}
        for cname, c in cases.items():
            golden_cases[cname] = {
                "question": c["question"],
                "media": c["media"],
                "max_num": c["max_num"],
                "use_thumbnail": c["use_thumbnail"],
                "num_patches_list": c["num_patches_list"],
                "query": c["query"],
                "prompt_sha256": hashlib.sha256(c["prompt"].encode()).hexdigest(),
                "prompt_num_chars": len(c["prompt"]),
                "input_ids": c["input_ids"],
                "num_input_ids": len(c["input_ids"]),
                "num_img_context_tokens": c["input_ids"].count(tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")),
                "pixel_values_shape": None if c["pixel_values"] is None else list(c["pixel_values"].shape),
                "pixel_values_sha256_f32": None if c["pixel_values"] is None else tensor_sha256(c["pixel_values"]),
                "pixel_values_tile_channel_means": None if c["pixel_values"] is None else
                    [[round(float(x), 7) for x in tile.mean(dim=(1, 2))] for tile in c["pixel_values"]],
                "greedy_tokens": c["greedy_tokens"],
                "greedy_text": tokenizer.decode(c["greedy_tokens"], skip_special_tokens=False),
                "stop_token": c["stop_token"],
                "stop_token_id": c["eos_token_id"],
                "stop_index": c["stop_index"],
                "response": c["response"],
                "top2_margins": [round(m, 6) for m in c["margins"]],
                "min_top2_margin": round(min(c["margins"]), 6),
                "first_step_top5": [[int(i), round(float(c["first_logits"][i]), 6)]
                                    for i in torch.topk(c["first_logits"], 5).indices],
            }
            logits[cname] = c["first_logits"].contiguous()
            if c["pixel_values"] is not None:
                logits[f"{cname}.vit_embeds_tile0"] = c["vit_embeds"][0].float().contiguous()
        save_file(logits, model_dir / "logits.safetensors", metadata={"upstream_commit": commit})

        sd = model.state_dict()
        lm_cfg = model.config.llm_config
        golden = {
            "model": name,
            "upstream": {"repo": "OpenGVLab/InternVL", "commit": commit},
            "generator": "tests/data/golden/generate_golden.py",
            "transformers_version": transformers.__version__,
            "torch_version": torch.__version__,
            "checkpoint_dir": "checkpoint",
            "config_provenance": provenance,
            "tokenizer_family": family,
            "seed": seed,
            "llm_architecture": lm_cfg.architectures[0],
            "template": model.template,
            "system_message": model.system_message,
            "num_image_token": model.num_image_token,
            "img_context_token_id": tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
            "n_new_tokens": N_NEW_TOKENS,
            "greedy": "full forward without cache per step, argmax of the last position, no stopping",
            "logits_file": "logits.safetensors",
            "logits_keys": sorted(logits),
            "media_sha256": {m: media_sha[m] for c in cases.values() for m in c["media"]},
            "reload_max_abs_logit_diff": reload_diff,
            "greedy_loop_checked_against_transformers_generate": checked_generate,
            "tf5_save_pretrained_config_differs_in": sorted(
                k for k in set(tf5_config) | set(cfg_dict) if tf5_config.get(k) != cfg_dict.get(k)),
            "notes": NOTES.get(name, {}),
            "cases": golden_cases,
        }
        (model_dir / "golden.json").write_text(dumps(golden) + "\n")
        index["models"].append({"name": name, "params": param_summary(sd)})
        print(f"   ok: {sum(p.numel() for p in model.parameters())} params, reload diff {reload_diff}", flush=True)

    index["shims"] = SHIM_NOTES
    (out / "index.json").write_text(dumps(index) + "\n")


if __name__ == "__main__":
    main()
