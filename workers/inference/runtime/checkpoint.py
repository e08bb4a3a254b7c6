"""What a checkpoint directory holds, read from its JSON files without importing torch."""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from workers.inference.runtime.original_checkpoint import LLM_FAMILIES
from workers.inference.runtime.templates import ChatTemplate, get_template

# Native "-hf" checkpoints carry no template name; they are conversions of InternVL 2.5 and later.
DEFAULT_TEMPLATE = "internvl2_5"


class CheckpointError(Exception):
    """A model directory that vlmq cannot serve; the message names what was found."""


# config.json model_type → how vlmq loads it.
ORIGINAL_FORMAT = "internvl_chat"  # the cards' remote-code checkpoints, mapped onto native classes
NATIVE_FORMAT = "internvl"  # transformers' own "-hf" checkpoints, loaded as they are


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    format: str
    family: str
    llm: str
    template: ChatTemplate
    system_message: str | None
    num_layers: int
    sizes: WeightSizes
    # The LLM's positions (max_position_embeddings): prompt, image tokens and new tokens together.
    context_length: int | None = None

    @property
    def params(self) -> int:
        return self.sizes.params

    def describe(self, model_id: str, *, is_default: bool, max_tiles: int = 40) -> dict:
        return {
            "id": model_id,
            "family": self.family,
            "llm": self.llm,
            "template": self.template.name,
            "format": "original" if self.format == ORIGINAL_FORMAT else "native",
            "params": self.params,
            "max_tiles": max_tiles,
            "default": is_default,
        }


# An LLM layer's tensors, in the original and the native naming.
_LLM_LAYER = re.compile(r"^(?:language_model\.model|model\.language_model)\.layers\.(\d+)\.")


@dataclass(frozen=True)
class WeightSizes:
    """Parameter counts from the safetensors headers (JSON; no weights read)."""

    params: int = 0
    largest_layer_params: int = 0  # one LLM layer; they are all alike
    other_params: int = 0  # vision, projector, embeddings, head: what GPU 0 holds besides layers


def read_weight_sizes(path: Path) -> WeightSizes:
    per_layer: dict[int, int] = {}
    other = 0
    for file in sorted(path.glob("*.safetensors")):
        with open(file, "rb") as handle:
            (header_size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(header_size))
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            count = math.prod(entry["shape"])
            if match := _LLM_LAYER.match(name):
                per_layer[int(match.group(1))] = per_layer.get(int(match.group(1)), 0) + count
            else:
                other += count
    return WeightSizes(other + sum(per_layer.values()), max(per_layer.values(), default=0), other)


def read_checkpoint(path: Path) -> CheckpointInfo:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"no config.json in {path}; build one with `python -m workers.inference.tiny_model {path}`")
    config = json.loads(config_path.read_text())
    model_type = config.get("model_type")
    if model_type == ORIGINAL_FORMAT:
        text_config = config.get("llm_config") or {}
        if "template" not in config:
            raise CheckpointError(f"{path} is an original InternVL checkpoint without a chat template name")
        template_name = config["template"]
    elif model_type == NATIVE_FORMAT:
        text_config = config.get("text_config") or {}
        template_name = config.get("template", DEFAULT_TEMPLATE)
    else:
        architectures = ", ".join(config.get("architectures") or []) or "none"
        raise CheckpointError(
            f"{path} holds model_type={model_type!r} (architectures: {architectures}); vlmq serves original "
            f"InternVL checkpoints (model_type {ORIGINAL_FORMAT!r}) and native ones ({NATIVE_FORMAT!r})"
        )
    architecture = (text_config.get("architectures") or [None])[0]
    llm = LLM_FAMILIES.get(architecture) or text_config.get("model_type") or architecture or "unknown"
    try:
        template = get_template(template_name)
    except KeyError as error:
        raise CheckpointError(f"{path}: {error.args[0]}") from None
    return CheckpointInfo(
        path=path,
        format=model_type,
        family="internvl",
        llm=llm,
        template=template,
        system_message=config.get("system_message"),
        num_layers=int(text_config.get("num_hidden_layers", 0)),
        sizes=read_weight_sizes(path),
        context_length=int(positions) if (positions := text_config.get("max_position_embeddings")) else None,
    )
