"""The API's torch-free token count is the worker's tokenizer's, for every tokenizer kind vlmq loads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from shared.token_count import token_counter
from workers.inference.fixtures.tokenizers import FAMILIES, build_tokenizer
from workers.inference.runtime.loading import load_tokenizer

GOLDEN_SENTENCEPIECE = Path(__file__).parent / "data" / "golden_tokenizer" / "internlm2"
TEXTS = [
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n<img></img>\nWhat is é 中文? 😀<|im_end|>\n"
    "<|im_start|>assistant\n",
    " leading space", "", "<s>inside</s>", "Image-1: <image>\n<ref>the cat</ref><box>[[1, 2, 3, 4]]</box>",
    "Tell me about item number 7 again, please. " * 50,
]


@pytest.fixture(scope="module", params=[*FAMILIES, "sentencepiece"])
def tokenizer_dir(request, tmp_path_factory) -> Path:
    if request.param == "sentencepiece":
        return GOLDEN_SENTENCEPIECE
    directory = tmp_path_factory.mktemp(request.param)
    build_tokenizer(directory, request.param)
    return directory


@pytest.mark.parametrize("text", TEXTS, ids=[f"text{index}" for index in range(len(TEXTS))])
def test_the_count_is_the_number_of_ids_the_worker_encodes(tokenizer_dir, text):
    # given the worker's tokenizer of a checkpoint and the API's counter of the same files
    worker = load_tokenizer(SimpleNamespace(path=tokenizer_dir))

    # then they agree on every text, special and added tokens included
    assert token_counter(tokenizer_dir).count(text) == len(worker(text).input_ids)


def test_the_counter_loads_without_torch(tokenizer_dir):
    code = ("import sys; from pathlib import Path; from shared.token_count import token_counter; "
            f"token_counter(Path({str(tokenizer_dir)!r})).count('hi'); print(json.dumps('torch' in sys.modules))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) is False
