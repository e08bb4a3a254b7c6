"""Build a tiny random-weight InternVL checkpoint offline, for tests and the demo.

    python -m workers.inference.tiny_model DIR                      # native "-hf" format
    python -m workers.inference.tiny_model DIR --like internvl2-8b  # original format of a seed model

The native one is a transformers InternVL checkpoint (config.json, model.safetensors); the others
are in the original format of a seed model (see ``fixtures/original.py``). Each carries a byte-level
BPE tokenizer trained here with ``tokenizers`` and its family's special tokens, so prompts tokenize
as they would with a real checkpoint. Their answers are meaningless; their shape is not.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from workers.inference.fixtures.original import (
    SEED_ARCHITECTURES,
    build_original_checkpoint,
)
from workers.inference.fixtures.tokenizers import build_tokenizer

# (vision, language) dimensions by size. "tiny" is the tests' model; "small" (29M parameters: a
# 4-layer 256-wide vision encoder, an 8-layer 512-wide decoder)
# is for CPU benchmarks; the others are the real InternVL 2.5 shapes (InternViT-300M with
# Qwen2.5-0.5B / Qwen2.5-3B / an InternLM2.5-7B-sized decoder) for GPU benchmarks, random weights.
SIZES = {
    "tiny": ({"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
             {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2}),
    "small": ({"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024},
              {"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 8, "num_attention_heads": 8,
               "num_key_value_heads": 2}),
    "1b": ({"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096},
           {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
            "num_key_value_heads": 2, "vocab_size": 151674}),
    "4b": ({"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096},
           {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
            "num_key_value_heads": 2, "vocab_size": 151674}),
    "8b": ({"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096},
           {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 8, "vocab_size": 92553}),
}


def build_tiny_model(directory: Path, *, template: str = "internvl2_5", seed: int = 0, size: str = "tiny",
                     max_position_embeddings: int = 32768) -> Path:
    """A native checkpoint of random weights, of the dimensions ``SIZES[size]`` names (a smaller
    ``max_position_embeddings`` makes a context boundary cheap to reach in tests)."""
    import torch
    from transformers import (
        AutoTokenizer,
        InternVLConfig,
        InternVLForConditionalGeneration,
    )

    directory.mkdir(parents=True, exist_ok=True)
    build_tokenizer(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
    vision, text = SIZES[size]
    config = InternVLConfig(
        vision_config={**vision, "image_size": 448, "patch_size": 14},
        text_config={
            "model_type": "qwen2",
            "vocab_size": len(tokenizer),
            "max_position_embeddings": max_position_embeddings,
            "tie_word_embeddings": False,
            "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
            "pad_token_id": tokenizer.pad_token_id,
            **text,
        },
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=256,
        downsample_ratio=0.5,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config).eval()
    model.save_pretrained(directory)
    _record_template(directory, template)
    return directory


def _record_template(directory: Path, template: str) -> None:
    """Original InternVL checkpoints name their chat template in config.json; so does this one."""
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config["template"] = template
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--template", default="internvl2_5", help="chat template of the native checkpoint")
    parser.add_argument("--like", choices=sorted(SEED_ARCHITECTURES), help="original format of this seed model")
    parser.add_argument("--if-missing", action="store_true", help="do nothing if DIR already has a model")
    arguments = parser.parse_args()
    if arguments.if_missing and (arguments.directory / "config.json").exists():
        return
    if arguments.like:
        print(build_original_checkpoint(arguments.directory, arguments.like))
    else:
        print(build_tiny_model(arguments.directory, template=arguments.template))


if __name__ == "__main__":
    main()
