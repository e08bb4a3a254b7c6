"""Count a checkpoint's prompt tokens from its tokenizer files, without torch or transformers.

The API must refuse prompts that cannot fit the model's context before they reach a GPU, and it
never imports torch (which transformers pulls in). A ``tokenizer.json`` is read with ``tokenizers``,
the library transformers' fast tokenizers wrap; a checkpoint that ships only SentencePiece's
``tokenizer.model`` (InternLM2's) is read with ``sentencepiece`` the way the worker's tokenizer
reads it: the text split at added tokens, each run encoded as it is, ``<s>`` first.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path


class TokenizerFilesMissing(Exception):
    """The directory holds neither tokenizer.json nor tokenizer.model."""


class TokenCounter:
    def count(self, text: str) -> int:
        """How many ids the worker's tokenizer gives ``text`` (special tokens added, as it encodes)."""
        raise NotImplementedError


class _FastTokenizerCounter(TokenCounter):
    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(path))

    def count(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=True).ids)


class _SentencePieceCounter(TokenCounter):
    def __init__(self, model_path: Path, config: dict) -> None:
        import sentencepiece

        self._model = sentencepiece.SentencePieceProcessor(model_file=str(model_path))
        added = [entry["content"] for entry in (config.get("added_tokens_decoder") or {}).values()]
        added += [token for token in (config.get("additional_special_tokens") or []) if isinstance(token, str)]
        added += [config[name] for name in ("bos_token", "eos_token", "unk_token", "pad_token")
                  if isinstance(config.get(name), str)]
        # Longest first: a token that begins another must not split it.
        pattern = "|".join(re.escape(token) for token in sorted(set(added), key=len, reverse=True))
        self._split = re.compile(f"({pattern})") if pattern else None
        self._bos = 1 if config.get("add_bos_token", True) else 0
        self._eos = 1 if config.get("add_eos_token", False) else 0

    def count(self, text: str) -> int:
        pieces = self._split.split(text) if self._split else [text]
        total = self._bos + self._eos
        for index, piece in enumerate(pieces):
            if index % 2:  # an added token: one id
                total += 1
            elif piece:
                total += len(self._model.encode(piece))
        return total


@lru_cache(maxsize=16)
def token_counter(directory: Path) -> TokenCounter:
    """The counter of a checkpoint directory, loaded once per process."""
    if (directory / "tokenizer.json").is_file():
        return _FastTokenizerCounter(directory / "tokenizer.json")
    if (directory / "tokenizer.model").is_file():
        config_path = directory / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        return _SentencePieceCounter(directory / "tokenizer.model", config)
    raise TokenizerFilesMissing(f"{directory} holds neither tokenizer.json nor tokenizer.model")
