"""The engine's KV cache: one slot per running row, so rows join and leave without touching the
others' caches.

Per layer, one key and one value tensor ``[slots, kv_heads, length, head_dim]``. Running rows
always occupy slots ``0..n-1``: a row that leaves has the last row moved into its slot (one row's
copy), so a decode step reads the first ``n`` slots as a view, never a gather. Each row has its own
length; a decode step writes every row's new key at that row's own position and a 4-D mask hides
what lies past it. With ``static`` (a GPU) the slots are preallocated and every step reads the
full length, so shapes change only with the number of rows; elsewhere the length grows as rows
need it and a step reads only up to the longest row.

Duck-typed to what transformers' attention layers call on a cache (``update``), with a 4-D mask
and explicit position ids passed in, so the model builds neither.
"""

from __future__ import annotations

import torch


class RowSlots:
    def __init__(self, *, layers: int, kv_heads: int, head_dim: int, slots: int, length: int, dtype: torch.dtype,
                 device: torch.device, static: bool = False):
        self.static, self.device, self.dtype = static, device, dtype
        shape = (slots, kv_heads, max(1, length), head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.lengths: list[int] = []  # tokens cached per running row, in slot order
        self._rows: torch.Tensor | None = None
        self._positions: torch.Tensor | None = None
        self._read_length = 0

    @property
    def rows(self) -> int:
        return len(self.lengths)

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def bytes_per_token(self) -> int:
        keys = self.keys[0]
        return 2 * len(self.keys) * keys.shape[1] * keys.shape[3] * keys.element_size()

    def admit(self, cache) -> int:
        """A prefilled row's cache (a transformers cache of batch 1) into the next free slot."""
        slot = self.rows
        if slot >= self.keys[0].shape[0]:
            raise RuntimeError("no free row slot")  # the engine admits no more rows than slots
        length = cache.layers[0].keys.shape[-2]
        self._reserve(length + 1)
        for layer, stored in enumerate(cache.layers):
            self.keys[layer][slot, :, :length] = stored.keys[0]
            self.values[layer][slot, :, :length] = stored.values[0]
        self.lengths.append(length)
        return slot

    def release(self, slot: int) -> int | None:
        """Frees ``slot``; returns the slot whose row moved into it (the last one), or None."""
        last = self.rows - 1
        if slot != last:
            length = self.lengths[last]
            for keys, values in zip(self.keys, self.values, strict=True):
                keys[slot, :, :length] = keys[last, :, :length]
                values[slot, :, :length] = values[last, :, :length]
            self.lengths[slot] = length
        self.lengths.pop()
        return last if slot != last else None

    def begin_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Position ids ``[rows, 1]`` and the 4-D boolean mask for one decode step."""
        self._reserve(max(self.lengths) + 1)
        self._rows = torch.arange(self.rows, device=self.device)
        self._positions = torch.tensor(self.lengths, device=self.device)
        self._read_length = self.capacity if self.static else max(self.lengths) + 1
        columns = torch.arange(self._read_length, device=self.device)
        mask = (columns[None, :] <= self._positions[:, None])[:, None, None, :]
        return self._positions[:, None], mask

    def end_step(self) -> None:
        self.lengths = [length + 1 for length in self.lengths]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *_args, **_kwargs):
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys[self._rows, :, self._positions] = key_states[:, :, 0]
        values[self._rows, :, self._positions] = value_states[:, :, 0]
        return keys[: self.rows, :, : self._read_length], values[: self.rows, :, : self._read_length]

    def get_seq_length(self, _layer_idx: int = 0) -> int:
        return max(self.lengths, default=0)

    def _reserve(self, length: int) -> None:
        """Grows every slot's length to hold ``length`` tokens (doubling, so growth is amortised)."""
        if length <= self.capacity:
            return
        grown = max(length, 2 * self.capacity)
        for tensors in (self.keys, self.values):
            for layer, tensor in enumerate(tensors):
                wider = torch.zeros((*tensor.shape[:2], grown, tensor.shape[3]), dtype=self.dtype, device=self.device)
                wider[:, :, : tensor.shape[2]] = tensor
                tensors[layer] = wider
