"""Chat templates, prompt building and grounding parsing, against REFERENCE.md."""

from __future__ import annotations

import pytest

from workers.inference.runtime.grounding import parse_boxes
from workers.inference.runtime.prompts import build_prompt, expand_image_placeholders, question_for
from workers.inference.runtime.templates import INTERNVL2_5_SYSTEM, INTERNVL2_SYSTEM, UnknownTemplate, get_template


def test_the_reference_example_prompt_is_reproduced_exactly():
    prompt = build_prompt(get_template("internvl2_5"), question="Describe", n_images=1)
    assert prompt == (
        f"<|im_start|>system\n{INTERNVL2_5_SYSTEM}<|im_end|>\n<|im_start|>user\n<image>\nDescribe<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


@pytest.mark.parametrize(
    "name, expected",
    [
        ("Hermes-2", f"<|im_start|>system\n{INTERNVL2_SYSTEM}<|im_end|><|im_start|>user\nHi<|im_end|><|im_start|>assistant\n"),
        ("internlm2-chat", f"<|im_start|>system\n{INTERNVL2_SYSTEM}<|im_end|><|im_start|>user\nHi<|im_end|><|im_start|>assistant\n"),
        ("phi3-chat", f"<|system|>\n{INTERNVL2_SYSTEM}<|end|><|user|>\nHi<|end|><|assistant|>\n"),
    ],
)
def test_each_template_renders_its_roles_and_separators(name, expected):
    assert build_prompt(get_template(name), question="Hi", n_images=0) == expected


def test_a_checkpoint_system_message_wins_and_an_empty_one_is_still_emitted():
    template = get_template("internvl2_5")
    assert build_prompt(template, question="Q", n_images=0, system_message="Be brief.").startswith(
        "<|im_start|>system\nBe brief.<|im_end|>\n"
    )
    assert build_prompt(template, question="Q", n_images=0, system_message="").startswith(
        "<|im_start|>system\n<|im_end|>\n"
    )


def test_multi_image_prompts_number_the_images_and_combined_uses_one_placeholder():
    template = get_template("internvl2_5")
    numbered = build_prompt(template, question="Same?", n_images=2)
    combined = build_prompt(template, question="Same?", n_images=2, multi_image="combined")
    assert "user\nImage-1: <image>\nImage-2: <image>\nSame?<|im_end|>" in numbered
    assert "user\n<image>\nSame?<|im_end|>" in combined


def test_history_puts_media_on_the_first_turn_and_keeps_the_empty_answer_quirk():
    template = get_template("internvl2_5")
    prompt = build_prompt(template, question="And now?", n_images=1, history=[("What is it?", ""), ("Sure?", "Yes")])
    assert prompt.endswith(
        "<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n<|im_start|>assistant\n"
        "<|im_start|>user\nSure?<|im_end|>\n<|im_start|>assistant\nYes<|im_end|>\n"
        "<|im_start|>user\nAnd now?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_image_placeholders_expand_in_order_to_256_tokens_per_tile():
    text = expand_image_placeholders("Image-1: <image>\nImage-2: <image>\n", [3, 1])
    first, second = text.split("Image-2: ")
    assert first.count("<IMG_CONTEXT>") == 768 and second.count("<IMG_CONTEXT>") == 256
    assert text.count("<img>") == text.count("</img>") == 2 and "<image>" not in text


def test_task_questions():
    assert question_for("grounding", "a dog") == (
        "Please provide the bounding box coordinate of the region this sentence describes: <ref>a dog</ref>"
    )
    assert question_for("caption", None) == "Please describe the image shortly."
    assert question_for("vqa", "Why?") == "Why?"


def test_an_unknown_template_is_a_named_error():
    with pytest.raises(UnknownTemplate, match="internvl2_5"):
        get_template("vicuna")


def boxes(text, width=1000, height=500, label="the phrase"):
    return [box.as_dict() for box in parse_boxes(text, width=width, height=height, default_label=label)]


def test_a_single_box_becomes_pixels_of_the_original_image():
    assert boxes("<ref>cat</ref><box>[[100, 200, 500, 1000]]</box>") == [
        {"label": "cat", "box": [100.0, 100.0, 500.0, 500.0], "box_norm": [100, 200, 500, 1000]}
    ]


def test_several_boxes_per_ref_and_several_refs():
    parsed = boxes("<ref>dogs</ref><box>[[0,0,10,10],[20,20,30,30]]</box> and <ref>cat</ref><box>[[5, 5, 6, 6]]</box>")
    assert [(item["label"], item["box_norm"]) for item in parsed] == [
        ("dogs", [0, 0, 10, 10]), ("dogs", [20, 20, 30, 30]), ("cat", [5, 5, 6, 6])
    ]


def test_a_box_without_a_ref_belongs_to_the_requested_phrase():
    assert boxes("<box>[[1, 2, 3, 4]]</box>", label="red square")[0]["label"] == "red square"


def test_float_and_out_of_range_coordinates_are_clamped():
    parsed = boxes("<ref>x</ref><box>[[-50.5, 100.5, 1200, 999.9]]</box>")
    assert parsed[0]["box"] == [0.0, 50.25, 1000.0, 499.95]
    assert parsed[0]["box_norm"] == [0, 100, 1000, 1000]


@pytest.mark.parametrize(
    "text, count",
    [
        ("", 0),
        ("no boxes here", 0),
        ("<ref>cut</ref><box>[[1, 2, 3, 4]], [[5, 6", 1),  # truncated mid-answer
        ("<ref>a</ref><box>[[1, 2, 3]]</box>", 0),  # three numbers
        ("<ref>a</ref><box>[[x, y, z, w]]</box>", 0),
        ("<box></box><ref>unclosed", 0),
        ("<ref>a</ref><box>[[1,2,3,4]]</box><box>[[5,6,7,8]]</box>", 2),
    ],
)
def test_malformed_or_truncated_output_yields_what_parses(text, count):
    assert len(boxes(text)) == count
