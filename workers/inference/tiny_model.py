"""Build a tiny random-weight InternVL checkpoint offline, for tests and the demo.

    python -m workers.inference.tiny_model DIR

It is a native transformers InternVL checkpoint (config.json, model.safetensors) with a byte-level
BPE tokenizer trained here with ``tokenizers`` and carrying InternVL's special tokens, so prompts
tokenize as they would with a real checkpoint. Its answers are meaningless; their shape is not.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from workers.inference.runtime.templates import INTERNVL2_5_SYSTEM, INTERNVL2_SYSTEM

# Special tokens of the Qwen2-based InternVL tokenizers: chat control tokens, then the media and
# grounding markup InternVL adds.
CONTROL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MARKUP_TOKENS = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]

_CORPUS = [
    "Please describe the image shortly.",
    "Please describe the image in detail.",
    "What is in the picture? A red square on a white background, next to a blue circle.",
    "Please provide the bounding box coordinate of the region this sentence describes:",
    "The cat sits on the mat. A dog runs in the park. Two people walk along the beach at sunset.",
    "0 1 2 3 4 5 6 7 8 9 10 100 250 500 750 1000 [[12, 34, 567, 890]]",
    "system user assistant Image-1: Image-2: Frame1: Frame2:",
    INTERNVL2_SYSTEM,
    INTERNVL2_5_SYSTEM,
]


def build_tokenizer(directory: Path, *, vocab_size: int = 600) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=CONTROL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        padding_side="left",
        model_max_length=32768,
    )
    # Markup tokens are added tokens (never split) but not "special": grounding answers keep
    # their <ref>/<box> markup when decoded with skip_special_tokens, as with the real tokenizers.
    fast.add_tokens(MARKUP_TOKENS, special_tokens=False)
    fast.save_pretrained(directory)


def build_tiny_model(directory: Path, *, template: str = "internvl2_5", seed: int = 0) -> Path:
    import torch
    from transformers import AutoTokenizer, InternVLConfig, InternVLForConditionalGeneration

    directory.mkdir(parents=True, exist_ok=True)
    build_tokenizer(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
    config = InternVLConfig(
        vision_config={
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "image_size": 448,
            "patch_size": 14,
        },
        text_config={
            "model_type": "qwen2",
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 32768,
            "tie_word_embeddings": False,
            "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
            "pad_token_id": tokenizer.pad_token_id,
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
    parser.add_argument("--template", default="internvl2_5")
    parser.add_argument("--if-missing", action="store_true", help="do nothing if DIR already has a model")
    arguments = parser.parse_args()
    if arguments.if_missing and (arguments.directory / "config.json").exists():
        return
    print(build_tiny_model(arguments.directory, template=arguments.template))


if __name__ == "__main__":
    main()
