"""Golden tokenization from upstream's own InternLM2Tokenizer (NOT run by tests).

    python tests/data/golden_tokenizer/generate_golden_tokenizer.py UPSTREAM_INTERNLM2_DIR

UPSTREAM_INTERNLM2_DIR is OpenGVLab/InternVL's internvl_chat/internvl/model/internlm2 (it holds
tokenization_internlm2.py, the class InternVL2-2B/-8B/-26B ship as remote code). The only shim:
transformers 5 moved ``PreTrainedTokenizer`` out of ``transformers.tokenization_utils``.
The tokenizer files are vlmq's tiny SentencePiece fixture (written once by
``build_sentencepiece_tokenizer`` and committed); what is golden is how upstream's class encodes
and decodes with them.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEXTS = [
    "<|im_start|>system\n你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
    "<|im_end|><|im_start|>user\n<img><IMG_CONTEXT><IMG_CONTEXT></img>\nPlease describe the image shortly.<|im_end|>"
    "<|im_start|>assistant\n",
    "<|im_start|>user\nFrame1: <image>\nFrame2: <image>\nWhat happens?<|im_end|><|im_start|>assistant\n",
    "Please provide the bounding box coordinate of the region this sentence describes: <ref>the cat</ref>",
    "<ref>the cat</ref><box>[[100, 200, 500, 800]]</box>",
    "Hello  world\n\n 123 [[12, 34]]",
    " leading space and trailing  ",
    "The cat sits , on the mat . Isn't it ? Yes !",
    "emoji 🙂 and tab\tand ü",
    "",
]


def main() -> None:
    from transformers.tokenization_python import PreTrainedTokenizer

    sys.modules["transformers.tokenization_utils"] = types.SimpleNamespace(PreTrainedTokenizer=PreTrainedTokenizer)
    sys.path.insert(0, sys.argv[1])
    import tokenization_internlm2

    tokenizer = tokenization_internlm2.InternLM2Tokenizer.from_pretrained(str(HERE / "internlm2"))
    cases = []
    for text in TEXTS:
        ids = tokenizer(text).input_ids
        cases.append(
            {
                "text": text,
                "input_ids": ids,
                "tokens": tokenizer.convert_ids_to_tokens(ids),
                "decoded": tokenizer.decode(ids),
                "decoded_skip_special": tokenizer.decode(ids, skip_special_tokens=True),
                "decoded_without_bos_skip_special": tokenizer.decode(ids[1:], skip_special_tokens=True),
            }
        )
    golden = {"generator": "upstream InternLM2Tokenizer (tokenization_internlm2.py)", "cases": cases}
    (HERE / "internlm2" / "golden.json").write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
