"""What a checkpoint directory holds, read from its JSON files without importing torch."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from workers.inference.runtime.templates import ChatTemplate, get_template

# Native "-hf" checkpoints carry no template name; they are conversions of InternVL 2.5 and later.
DEFAULT_TEMPLATE = "internvl2_5"


class CheckpointError(Exception):
    """A model directory that vlmq cannot serve; the message names what was found."""


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    family: str
    llm: str
    template: ChatTemplate
    system_message: str | None
    params: int

    def describe(self, model_id: str, *, is_default: bool, max_tiles: int = 40) -> dict:
        return {
            "id": model_id,
            "family": self.family,
            "llm": self.llm,
            "template": self.template.name,
            "params": self.params,
            "max_tiles": max_tiles,
            "default": is_default,
        }


def _count_safetensors_params(path: Path) -> int:
    """Sum of tensor sizes from each safetensors header (the header is JSON; no weights read)."""
    total = 0
    for file in sorted(path.glob("*.safetensors")):
        with open(file, "rb") as handle:
            (header_size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(header_size))
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for dimension in entry["shape"]:
                count *= dimension
            total += count
    return total


def read_checkpoint(path: Path) -> CheckpointInfo:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"no config.json in {path}; build one with `python -m workers.inference.tiny_model {path}`")
    config = json.loads(config_path.read_text())
    model_type = config.get("model_type")
    if model_type != "internvl":
        raise CheckpointError(
            f"{path} holds model_type={model_type!r}; vlmq serves native InternVL checkpoints (model_type 'internvl')"
        )
    text_config = config.get("text_config") or {}
    llm = (text_config.get("architectures") or [None])[0] or text_config.get("model_type", "unknown")
    return CheckpointInfo(
        path=path,
        family="internvl",
        llm=llm,
        template=get_template(config.get("template", DEFAULT_TEMPLATE)),
        system_message=config.get("system_message"),
        params=_count_safetensors_params(path),
    )
