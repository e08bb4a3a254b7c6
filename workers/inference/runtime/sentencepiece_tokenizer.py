"""InternLM2's tokenizer (InternVL2-2B/-8B/-26B…), without the remote code its checkpoints ship.

Those checkpoints carry only ``tokenizer.model`` (SentencePiece) and name ``InternLM2Tokenizer``, a
class that exists only as code inside the checkpoint. Its behaviour is small: SentencePiece
encoding of the text between added tokens, ``<s>`` prepended, and a decoder that hands runs of
ordinary pieces to SentencePiece. transformers' SentencePiece backend does the encoding the same
way; the decoding rule is written here. Both are checked against upstream's class on golden data
(tests/data/golden_tokenizer).
"""

from __future__ import annotations

from transformers.tokenization_utils_sentencepiece import SentencePieceBackend


class InternLM2SentencePieceTokenizer(SentencePieceBackend):
    def __init__(self, vocab_file: str, *, add_bos_token: bool = True, add_eos_token: bool = False, **kwargs):
        kwargs.setdefault("unk_token", "<unk>")
        kwargs.setdefault("bos_token", "<s>")
        kwargs.setdefault("eos_token", "</s>")
        kwargs.setdefault("pad_token", "</s>")
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        pattern = {(True, False): "bos", (True, True): "bos_eos", (False, True): "eos"}.get((add_bos_token, add_eos_token))
        # ``legacy``: SentencePiece sees each text run as it is, dummy prefix included, as upstream.
        super().__init__(vocab_file=vocab_file, legacy=True, special_tokens_pattern=pattern, **kwargs)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Upstream's rule: special tokens verbatim, each run of ordinary pieces through
        SentencePiece, and a space before every run or special token that follows ordinary text
        or starts the string (SentencePiece strips the word-start space of each run it decodes).

        Upstream then adds a prefix space for a first piece "without" one and drops the first
        character; its test compares a piece with a set of ids and is always true, so the two
        cancel out and are left out here.
        """
        text, run, previous_special = "", [], False
        special = set(self.all_special_tokens)
        for token in tokens:
            if token in special:
                if not previous_special:
                    text += " "
                text += self.sp_model.decode(run) + token
                run, previous_special = [], True
            else:
                run.append(token)
                previous_special = False
        # Upstream applies transformers' punctuation clean-up here whatever the tokenizer's setting.
        return self.clean_up_tokenization(text + self.sp_model.decode(run))
