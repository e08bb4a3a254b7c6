"""Whole prompts, written out by hand from REFERENCE.md ("Prompt building"), for each chat template.

Every expected string is literal: the template's system part and separator, the media prefix on the first
user turn, each turn as ``role + message + sep``, and the open assistant role last.
"""

from __future__ import annotations

import pytest

from workers.inference.runtime.prompts import build_prompt, expand_image_placeholders, media_prefix, question_for
from workers.inference.runtime.templates import INTERNVL2_5_SYSTEM, INTERNVL2_SYSTEM, get_template

# Copied from REFERENCE.md, not imported: a typo in templates.py must fail here.
SYS2 = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
SYS25 = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"

CAPTION = "Please describe the image shortly."

# What each case sends to build_prompt (besides the template).
CASES = {
    "caption": dict(question=question_for("caption", None), n_images=1),
    "numbered": dict(question="What differs?", n_images=2),
    "combined": dict(question="What differs?", n_images=2, multi_image="combined"),
    "video": dict(question=question_for("video_caption", None), n_frames=3),
    "text_only": dict(question="Hi there", n_images=0),
    "history": dict(
        question="Is it asleep?",
        n_images=1,
        history=[("What is in the image?", "A cat."), ("What colour is it?", "Black.")],
    ),
    "empty_answer": dict(question="Another one.", n_images=0, history=[("Tell me a joke.", "")]),
    "system_override": dict(question="Describe", n_images=1, system_message="Answer briefly."),
    "empty_system": dict(question="Hi there", n_images=0, system_message=""),
}

HERMES_2 = {
    "caption": f"<|im_start|>system\n{SYS2}<|im_end|><|im_start|>user\n<image>\n{CAPTION}<|im_end|>"
    "<|im_start|>assistant\n",
    "numbered": f"<|im_start|>system\n{SYS2}<|im_end|><|im_start|>user\nImage-1: <image>\nImage-2: <image>\n"
    "What differs?<|im_end|><|im_start|>assistant\n",
    "combined": f"<|im_start|>system\n{SYS2}<|im_end|><|im_start|>user\n<image>\nWhat differs?<|im_end|>"
    "<|im_start|>assistant\n",
    "video": f"<|im_start|>system\n{SYS2}<|im_end|><|im_start|>user\nFrame1: <image>\nFrame2: <image>\n"
    f"Frame3: <image>\n{CAPTION}<|im_end|><|im_start|>assistant\n",
    "text_only": f"<|im_start|>system\n{SYS2}<|im_end|><|im_start|>user\nHi there<|im_end|><|im_start|>assistant\n",
    "history": f"<|im_start|>system\n{SYS2}<|im_end|><|im_start|>user\n<image>\nWhat is in the image?<|im_end|>"
    "<|im_start|>assistant\nA cat.<|im_end|><|im_start|>user\nWhat colour is it?<|im_end|>"
    "<|im_start|>assistant\nBlack.<|im_end|><|im_start|>user\nIs it asleep?<|im_end|><|im_start|>assistant\n",
    "empty_answer": f"<|im_start|>system\n{SYS2}<|im_end|><|im_start|>user\nTell me a joke.<|im_end|>"
    "<|im_start|>assistant\n<|im_start|>user\nAnother one.<|im_end|><|im_start|>assistant\n",
    "system_override": "<|im_start|>system\nAnswer briefly.<|im_end|><|im_start|>user\n<image>\nDescribe<|im_end|>"
    "<|im_start|>assistant\n",
    "empty_system": "<|im_start|>system\n<|im_end|><|im_start|>user\nHi there<|im_end|><|im_start|>assistant\n",
}

# REFERENCE.md: internlm2-chat has Hermes-2's system template, roles, separator and system message.
INTERNLM2_CHAT = HERMES_2

PHI3_CHAT = {
    "caption": f"<|system|>\n{SYS2}<|end|><|user|>\n<image>\n{CAPTION}<|end|><|assistant|>\n",
    "numbered": f"<|system|>\n{SYS2}<|end|><|user|>\nImage-1: <image>\nImage-2: <image>\nWhat differs?<|end|>"
    "<|assistant|>\n",
    "combined": f"<|system|>\n{SYS2}<|end|><|user|>\n<image>\nWhat differs?<|end|><|assistant|>\n",
    "video": f"<|system|>\n{SYS2}<|end|><|user|>\nFrame1: <image>\nFrame2: <image>\nFrame3: <image>\n{CAPTION}"
    "<|end|><|assistant|>\n",
    "text_only": f"<|system|>\n{SYS2}<|end|><|user|>\nHi there<|end|><|assistant|>\n",
    "history": f"<|system|>\n{SYS2}<|end|><|user|>\n<image>\nWhat is in the image?<|end|><|assistant|>\nA cat.<|end|>"
    "<|user|>\nWhat colour is it?<|end|><|assistant|>\nBlack.<|end|><|user|>\nIs it asleep?<|end|><|assistant|>\n",
    "empty_answer": f"<|system|>\n{SYS2}<|end|><|user|>\nTell me a joke.<|end|><|assistant|>\n"
    "<|user|>\nAnother one.<|end|><|assistant|>\n",
    "system_override": "<|system|>\nAnswer briefly.<|end|><|user|>\n<image>\nDescribe<|end|><|assistant|>\n",
    "empty_system": "<|system|>\n<|end|><|user|>\nHi there<|end|><|assistant|>\n",
}

INTERNVL2_5 = {
    "caption": f"<|im_start|>system\n{SYS25}<|im_end|>\n<|im_start|>user\n<image>\n{CAPTION}<|im_end|>\n"
    "<|im_start|>assistant\n",
    "numbered": f"<|im_start|>system\n{SYS25}<|im_end|>\n<|im_start|>user\nImage-1: <image>\nImage-2: <image>\n"
    "What differs?<|im_end|>\n<|im_start|>assistant\n",
    "combined": f"<|im_start|>system\n{SYS25}<|im_end|>\n<|im_start|>user\n<image>\nWhat differs?<|im_end|>\n"
    "<|im_start|>assistant\n",
    "video": f"<|im_start|>system\n{SYS25}<|im_end|>\n<|im_start|>user\nFrame1: <image>\nFrame2: <image>\n"
    f"Frame3: <image>\n{CAPTION}<|im_end|>\n<|im_start|>assistant\n",
    "text_only": f"<|im_start|>system\n{SYS25}<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
    "<|im_start|>assistant\n",
    "history": f"<|im_start|>system\n{SYS25}<|im_end|>\n<|im_start|>user\n<image>\nWhat is in the image?<|im_end|>\n"
    "<|im_start|>assistant\nA cat.<|im_end|>\n<|im_start|>user\nWhat colour is it?<|im_end|>\n"
    "<|im_start|>assistant\nBlack.<|im_end|>\n<|im_start|>user\nIs it asleep?<|im_end|>\n<|im_start|>assistant\n",
    "empty_answer": f"<|im_start|>system\n{SYS25}<|im_end|>\n<|im_start|>user\nTell me a joke.<|im_end|>\n"
    "<|im_start|>assistant\n<|im_start|>user\nAnother one.<|im_end|>\n<|im_start|>assistant\n",
    "system_override": "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\n<image>\nDescribe<|im_end|>\n"
    "<|im_start|>assistant\n",
    "empty_system": "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
}

EXPECTED = {"Hermes-2": HERMES_2, "internlm2-chat": INTERNLM2_CHAT, "phi3-chat": PHI3_CHAT, "internvl2_5": INTERNVL2_5}


def test_the_template_system_messages_are_the_reference_ones():
    assert INTERNVL2_SYSTEM == SYS2
    assert INTERNVL2_5_SYSTEM == SYS25
    assert [get_template(name).system_message for name in EXPECTED] == [SYS2, SYS2, SYS2, SYS25]


def test_every_template_has_every_case_written_out():
    assert all(set(expected) == set(CASES) for expected in EXPECTED.values())


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("template_name", list(EXPECTED))
def test_the_prompt_is_exactly_the_reference_text(template_name, case):
    # given a template and a request
    template = get_template(template_name)
    # when the prompt is built
    prompt = build_prompt(template, **CASES[case])
    # then it is, character for character, the text REFERENCE.md describes
    assert prompt == EXPECTED[template_name][case]


def test_video_frames_go_on_the_first_turn_of_a_conversation():
    prompt = build_prompt(
        get_template("internvl2_5"), question="And then?", n_frames=2, history=[("What happens?", "A dog runs.")]
    )
    assert prompt == (
        f"<|im_start|>system\n{SYS25}<|im_end|>\n<|im_start|>user\nFrame1: <image>\nFrame2: <image>\n"
        "What happens?<|im_end|>\n<|im_start|>assistant\nA dog runs.<|im_end|>\n<|im_start|>user\nAnd then?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_a_question_that_already_places_its_image_gets_no_prefix():
    prompt = build_prompt(get_template("phi3-chat"), question="Look: <image>\nWhat is it?", n_images=1)
    assert prompt == f"<|system|>\n{SYS2}<|end|><|user|>\nLook: <image>\nWhat is it?<|end|><|assistant|>\n"


@pytest.mark.parametrize(
    "args, kwargs, expected",
    [
        ((0, "numbered"), {}, ""),
        ((1, "numbered"), {}, "<image>\n"),
        ((3, "numbered"), {}, "Image-1: <image>\nImage-2: <image>\nImage-3: <image>\n"),
        ((3, "combined"), {}, "<image>\n"),
        ((0, "numbered"), {"n_frames": 1}, "Frame1: <image>\n"),
        ((0, "combined"), {"n_frames": 2}, "Frame1: <image>\nFrame2: <image>\n"),
    ],
)
def test_media_prefix(args, kwargs, expected):
    assert media_prefix(*args, **kwargs) == expected


def test_images_and_frames_together_are_refused():
    with pytest.raises(ValueError, match="images or video frames"):
        build_prompt(get_template("internvl2_5"), question="Q", n_images=1, n_frames=2)


def test_the_video_caption_question_defaults_to_the_caption_question():
    assert question_for("video_caption", None) == "Please describe the image shortly."
    assert question_for("video_caption", "What is the panda doing?") == "What is the panda doing?"


def test_placeholders_expand_in_order_history_first_to_256_tokens_per_tile():
    # given two images (2 tiles, then 1) placed on the first turn of a conversation
    prompt = build_prompt(
        get_template("internvl2_5"), question="And this?", n_images=2, history=[("Compare them.", "They match.")]
    )
    # when the placeholders are expanded
    text = expand_image_placeholders(prompt, [2, 1])
    # then each <image> became its own block, in order, with 256 context tokens per tile
    assert text == (
        f"<|im_start|>system\n{SYS25}<|im_end|>\n<|im_start|>user\n"
        "Image-1: <img>" + "<IMG_CONTEXT>" * 512 + "</img>\n"
        "Image-2: <img>" + "<IMG_CONTEXT>" * 256 + "</img>\n"
        "Compare them.<|im_end|>\n<|im_start|>assistant\nThey match.<|im_end|>\n"
        "<|im_start|>user\nAnd this?<|im_end|>\n<|im_start|>assistant\n"
    )
    blocks = [block.split("</img>")[0] for block in text.split("<img>")[1:]]
    assert [block.count("<IMG_CONTEXT>") for block in blocks] == [512, 256]
    assert all(block.replace("<IMG_CONTEXT>", "") == "" for block in blocks)


def test_a_placeholder_in_history_is_expanded_before_one_in_the_question():
    text = expand_image_placeholders("user\n<image>\nFirst\nuser\n<image>\nSecond", [1, 2])
    assert text == (
        "user\n<img>" + "<IMG_CONTEXT>" * 256 + "</img>\nFirst\nuser\n<img>" + "<IMG_CONTEXT>" * 512 + "</img>\nSecond"
    )
