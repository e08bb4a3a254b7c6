"""The dtype and attention a GPU gets, decided on CPU by standing in for what torch reports about the
device (the one stand-in here: no GPU is reachable)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from workers.inference.runtime import loading

CUDA = torch.device("cuda")


@pytest.fixture()
def gpu(monkeypatch):
    """A GPU of a chosen generation, and flash-attention installed."""
    state = {"capability": (9, 0)}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: state["capability"] >= (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: state["capability"])
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "flash_attn" else real_find_spec(name, *a))
    return state


def test_an_ampere_or_later_gpu_gets_bf16_and_flash_attention(gpu):
    dtype = loading.pick_dtype("auto", CUDA)
    assert dtype == torch.bfloat16 and loading.attention_implementation(CUDA, dtype) == "flash_attention_2"


def test_an_older_gpu_gets_fp16_and_sdpa(gpu):
    # given a Turing GPU (compute capability 7.5: no bf16, no flash-attention 2)
    gpu["capability"] = (7, 5)
    dtype = loading.pick_dtype("auto", CUDA)
    assert dtype == torch.float16 and loading.attention_implementation(CUDA, dtype) == "sdpa"


def test_flash_attention_needs_a_half_dtype_and_the_cpu_gets_fp32_and_sdpa(gpu):
    assert loading.attention_implementation(CUDA, torch.float32) == "sdpa"
    cpu = torch.device("cpu")
    assert loading.pick_dtype("auto", cpu) == torch.float32
    assert loading.attention_implementation(cpu, torch.float32) == "sdpa"
