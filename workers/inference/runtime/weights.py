"""Read a checkpoint's safetensors shards through a weight plan, one tensor at a time.

Tensors are produced lazily: transformers' loader materialises each entry (``entry[...]``) only
when it places it on its device, so a checkpoint larger than host memory still loads shard by
shard instead of being copied whole first.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from workers.inference.runtime.original_checkpoint import Piece


class LazyPiece:
    """A native parameter's value, read from its stored tensor when first indexed."""

    def __init__(self, handle, piece: Piece):
        self.handle, self.piece = handle, piece

    def materialize(self) -> torch.Tensor:
        rows = self.piece.rows
        if rows is None:
            return self.handle.get_tensor(self.piece.source)
        stored = self.handle.get_slice(self.piece.source)
        if isinstance(rows[0], int):  # (part, parts): an even split of the rows
            part, parts = rows
            size = stored.get_shape()[0] // parts
            return stored[part * size : (part + 1) * size]
        return torch.cat([stored[start:stop] for start, stop in rows])

    def __getitem__(self, index):
        return self.materialize()[index]


def shard_files(path: Path) -> dict[str, Path]:
    """Stored tensor name → the safetensors file that holds it (single file or sharded index)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: path / file for name, file in weight_map.items()}
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {path} (.bin checkpoints are not loaded: they unpickle code)")
    names: dict[str, Path] = {}
    for file in files:
        with safe_open(file, framework="pt") as handle:
            names.update(dict.fromkeys(handle.keys(), file))
    return names


class PlannedStateDict:
    """Open shards and the lazy native state dict they feed; close when the model is loaded."""

    def __init__(self, path: Path):
        self.files = shard_files(path)
        self._handles: dict[Path, object] = {}

    def source_names(self) -> list[str]:
        return list(self.files)

    def lazy(self, plan: dict[str, Piece]) -> dict[str, LazyPiece]:
        return {target: LazyPiece(self._handle(self.files[piece.source]), piece) for target, piece in plan.items()}

    def _handle(self, file: Path):
        if file not in self._handles:
            self._handles[file] = safe_open(file, framework="pt")
        return self._handles[file]

    def __enter__(self) -> PlannedStateDict:
        return self

    def __exit__(self, *_exc) -> None:
        self._handles.clear()
