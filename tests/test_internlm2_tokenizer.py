"""InternLM2's SentencePiece tokenizer, read without its remote code, against upstream's own class."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workers.inference.runtime.sentencepiece_tokenizer import InternLM2SentencePieceTokenizer

GOLDEN = Path(__file__).parent / "data" / "golden_tokenizer" / "internlm2"
CASES = json.loads((GOLDEN / "golden.json").read_text())["cases"]


@pytest.fixture(scope="module")
def tokenizer():
    return InternLM2SentencePieceTokenizer.from_pretrained(GOLDEN)


@pytest.mark.parametrize("case", CASES, ids=[f"case{index}" for index in range(len(CASES))])
def test_encoding_and_decoding_match_upstreams_internlm2_tokenizer(tokenizer, case):
    # given a text upstream's InternLM2Tokenizer encoded and decoded with the same tokenizer.model
    ids = tokenizer(case["text"]).input_ids
    # then vlmq's tokenizer gives the same ids (with <s> first) and the same decoded strings
    assert ids == case["input_ids"] and ids[0] == tokenizer.bos_token_id
    assert tokenizer.convert_ids_to_tokens(ids) == case["tokens"]
    assert tokenizer.decode(ids) == case["decoded"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == case["decoded_skip_special"]
    assert tokenizer.decode(ids[1:], skip_special_tokens=True) == case["decoded_without_bos_skip_special"]


def test_chat_and_media_tokens_are_single_pieces(tokenizer):
    for token in ("<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<ref>", "</ref>", "<box>"):
        assert tokenizer.convert_ids_to_tokens(tokenizer(token, add_special_tokens=False).input_ids) == [token]
