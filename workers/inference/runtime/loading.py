"""Load a checkpoint's tokenizer and model onto devices, never executing code shipped inside it."""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass

import torch
from transformers import (
    AutoTokenizer,
    InternVLConfig,
    InternVLForConditionalGeneration,
    PreTrainedConfig,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as transformers_logging

from workers.inference.runtime.checkpoint import (
    ORIGINAL_FORMAT,
    CheckpointError,
    CheckpointInfo,
)
from workers.inference.runtime.device_map import ModelDoesNotFit, plan_device_map
from workers.inference.runtime.original_checkpoint import (
    OriginalCheckpointError,
    native_config,
    plan_weights,
)
from workers.inference.runtime.prompts import IMAGE_CONTEXT
from workers.inference.runtime.weights import PlannedStateDict

log = logging.getLogger("vlmq.worker")
# Per-tensor progress bars would flood the worker's log; load time is logged once instead.
transformers_logging.disable_progress_bar()

# Tokenizer classes that exist only as remote code in the checkpoint; vlmq loads their files itself.
_REMOTE_TOKENIZER_CLASSES = {"InternLM2Tokenizer", "InternLM2TokenizerFast"}


@dataclass(frozen=True)
class LoadOptions:
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1"…
    dtype: str = "auto"  # "auto": bf16 on GPU, fp32 on CPU
    load_in_8bit: bool = False
    max_gpu_memory_fraction: float = 0.9


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on a GPU that supports it (Ampere and later), else fp16 there; fp32 on CPU."""
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, dtype)


def attention_implementation(device: torch.device, dtype: torch.dtype) -> str:
    """flash-attention 2 only where it runs: the package installed, a GPU of compute capability 8.0
    or later, and a half dtype; PyTorch's SDPA everywhere else."""
    if (device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)
            and importlib.util.find_spec("flash_attn") is not None
            and torch.cuda.get_device_capability(device) >= (8, 0)):
        return "flash_attention_2"
    return "sdpa"


def load_tokenizer(checkpoint: CheckpointInfo):
    path = checkpoint.path
    config_path = path / "tokenizer_config.json"
    tokenizer_class = json.loads(config_path.read_text()).get("tokenizer_class") if config_path.is_file() else None
    if tokenizer_class in _REMOTE_TOKENIZER_CLASSES:
        tokenizer = _load_internlm2_tokenizer(path, tokenizer_class)
    else:
        # config.json carries an auto_map: without an explicit False transformers asks interactively.
        # An empty config keeps AutoTokenizer from reading config.json, whose model_type
        # ("internvl_chat") it does not know; tokenizer_config.json names the class.
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False, config=PreTrainedConfig())
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_internlm2_tokenizer(path, tokenizer_class: str):
    """A tokenizer.json is a complete fast tokenizer; the real checkpoints ship tokenizer.model only,
    which vlmq's own SentencePiece class reads the way upstream's remote class does."""
    if (path / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(path)
    if (path / "tokenizer.model").is_file():
        from workers.inference.runtime.sentencepiece_tokenizer import (
            InternLM2SentencePieceTokenizer,
        )

        return InternLM2SentencePieceTokenizer.from_pretrained(path)
    raise CheckpointError(
        f"{path} names the remote-code tokenizer {tokenizer_class} but has neither tokenizer.json nor "
        "tokenizer.model; vlmq does not run checkpoint code"
    )


def _device_map(checkpoint: CheckpointInfo, device: torch.device, dtype: torch.dtype, options: LoadOptions) -> dict:
    """One device, or (``auto`` with several GPUs) the LLM's layers split over all of them."""
    if device.type != "cuda" or device.index is not None or torch.cuda.device_count() <= 1:
        return {"": device.index if device.type == "cuda" and device.index is not None else str(device)}
    free = [torch.cuda.mem_get_info(index)[0] for index in range(torch.cuda.device_count())]
    return split_over_gpus(checkpoint, free, dtype=dtype, headroom=options.max_gpu_memory_fraction)


def split_over_gpus(checkpoint: CheckpointInfo, free_bytes: list[int], *, dtype: torch.dtype, headroom: float) -> dict:
    """The device map for GPUs with ``free_bytes`` each; a model that cannot fit is a clear error."""
    element = torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 1
    sizes = checkpoint.sizes
    try:
        return plan_device_map(
            checkpoint.num_layers,
            free_bytes,
            layer_bytes=sizes.largest_layer_params * element or None,
            gpu0_fixed_bytes=sizes.other_params * element,
            headroom=headroom,
        )
    except ModelDoesNotFit as error:
        raise CheckpointError(f"{checkpoint.path.name} does not fit on the GPUs: {error}") from None


def _quantization(options: LoadOptions, device: torch.device) -> dict:
    if not options.load_in_8bit:
        return {}
    if device.type != "cuda" or importlib.util.find_spec("bitsandbytes") is None:
        raise CheckpointError("8-bit loading needs a GPU and the bitsandbytes package")
    from transformers import BitsAndBytesConfig

    # The vision tower and projector stay in bf16: they are small and quantising them costs accuracy.
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_8bit=True, llm_int8_skip_modules=["vision_tower", "multi_modal_projector", "lm_head"]
        )
    }


def load_model(checkpoint: CheckpointInfo, tokenizer, options: LoadOptions | None = None):
    options = options or LoadOptions()
    device = pick_device(options.device)
    dtype = pick_dtype(options.dtype, device)
    common = {
        "dtype": dtype,
        "device_map": _device_map(checkpoint, device, dtype, options),
        "attn_implementation": attention_implementation(device, dtype),
        **_quantization(options, device),
    }
    if checkpoint.format != ORIGINAL_FORMAT:
        model = InternVLForConditionalGeneration.from_pretrained(checkpoint.path, trust_remote_code=False, **common)
        return model.eval()
    original = json.loads((checkpoint.path / "config.json").read_text())
    try:
        config = InternVLConfig(**native_config(original, image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_CONTEXT)))
        with PlannedStateDict(checkpoint.path) as stored:
            plan = plan_weights(stored.source_names(), original)
            model, info = InternVLForConditionalGeneration.from_pretrained(
                None, config=config, state_dict=stored.lazy(plan), output_loading_info=True, **common
            )
    except OriginalCheckpointError as error:
        raise CheckpointError(f"{checkpoint.path}: {error}") from None
    problems = {kind: sorted(info.get(kind) or []) for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(problems.values()):
        raise CheckpointError(f"{checkpoint.path}: weights do not match the mapped model: {problems}")
    return model.eval()
