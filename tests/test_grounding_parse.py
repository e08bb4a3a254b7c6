"""Grounding answers → labelled pixel boxes: literal answers, literal boxes (REFERENCE.md, "Grounding").

Images are 1000×500 unless a case says otherwise, so a 0..1000 x is its own pixel value and y halves.
"""

from __future__ import annotations

import pytest

from workers.inference.runtime.grounding import parse_boxes

PHRASE = "the phrase"

CASES = [
    pytest.param(
        "<ref>dog</ref><box>[[100, 200, 300, 400]]</box>",
        (1000, 500),
        [("dog", (100.0, 100.0, 300.0, 200.0))],
        id="single-box",
    ),
    pytest.param(
        "<ref>the cat</ref><box>[[100, 200, 500, 800]]</box>",
        (640, 480),
        [("the cat", (64.0, 96.0, 320.0, 384.0))],
        id="reference-example-640x480",
    ),
    pytest.param(
        "<ref>a dog</ref><box>[[0, 0, 500, 1000]]</box> and <ref>a cat</ref><box>[[500, 0, 1000, 1000]]</box>",
        (1000, 500),
        [("a dog", (0.0, 0.0, 500.0, 500.0)), ("a cat", (500.0, 0.0, 1000.0, 500.0))],
        id="several-refs",
    ),
    pytest.param(
        "<ref>dogs</ref><box>[[10, 20, 30, 40], [50, 60, 70, 80]]</box>",
        (1000, 500),
        [("dogs", (10.0, 10.0, 30.0, 20.0)), ("dogs", (50.0, 30.0, 70.0, 40.0))],
        id="several-boxes-per-ref",
    ),
    pytest.param(
        "<box>[[100, 100, 200, 200]]</box>",
        (1000, 500),
        [(PHRASE, (100.0, 50.0, 200.0, 100.0))],
        id="box-without-ref",
    ),
    pytest.param(
        "<box>[[0, 0, 10, 10]]</box><ref>cat</ref><box>[[20, 20, 40, 40]]</box><box>[[60, 60, 80, 80]]</box>",
        (1000, 500),
        [(PHRASE, (0.0, 0.0, 10.0, 5.0)), ("cat", (20.0, 10.0, 40.0, 20.0)), ("cat", (60.0, 30.0, 80.0, 40.0))],
        id="ref-labels-the-boxes-after-it",
    ),
    pytest.param(
        "<ref>cup</ref><box>[[100.5, 250.5, 300.25, 400.75]]</box>",
        (1000, 500),
        [("cup", (100.5, 125.25, 300.25, 200.375))],
        id="floats",
    ),
    pytest.param(
        "<ref>x</ref><box>[[-20, -5, 1200, 1500]]</box>",
        (1000, 500),
        [("x", (0.0, 0.0, 1000.0, 500.0))],
        id="negative-and-over-1000-clamped",
    ),
    pytest.param(
        "<ref>flipped</ref><box>[[800, 600, 200, 100]]</box>",
        (1000, 500),
        [("flipped", (800.0, 300.0, 200.0, 50.0))],
        id="x2-before-x1-kept-in-order",
    ),
    pytest.param("<ref>cut</ref><box>[[10, 20, 30", (1000, 500), [], id="truncated-mid-number"),
    pytest.param(
        "<ref>cut</ref><box>[[10, 20, 30, 40], [50, 6",
        (1000, 500),
        [("cut", (10.0, 10.0, 30.0, 20.0))],
        id="truncated-in-second-box",
    ),
    pytest.param(
        "<ref>bird</ref><box>[[10,20,30,40]",
        (1000, 500),
        [("bird", (10.0, 10.0, 30.0, 20.0))],
        id="truncated-before-closing-box-tag",
    ),
    pytest.param("<ref>the tall tree", (1000, 500), [], id="unclosed-ref"),
    pytest.param(
        "<ref>the tall tree<box>[[100, 100, 200, 200]]</box>",
        (1000, 500),
        [(PHRASE, (100.0, 50.0, 200.0, 100.0))],
        id="unclosed-ref-before-a-box-is-no-label",
    ),
    pytest.param("]]<box>[[,,]]</ref><ref><box>[[a, b, c, d]]</box>[[[", (1000, 500), [], id="garbage"),
    pytest.param("", (1000, 500), [], id="empty"),
    pytest.param("I cannot see any cat in this image.", (1000, 500), [], id="no-tags"),
    pytest.param(
        "<ref>a</ref><box>[[1, 2, 3]]</box><ref>b</ref><box>[[10, 20, 30, 40, 50]]</box>"
        "<ref>c</ref><box>[[100, 200, 300, 400]]</box>",
        (1000, 500),
        [("c", (100.0, 100.0, 300.0, 200.0))],
        id="three-and-five-numbers-skipped",
    ),
    pytest.param(
        "<ref>\n  a red car \n</ref>\n<box>[ [ 100 ,\n 200 , 300 , 400 ] ]</box>\n",
        (1000, 500),
        [("a red car", (100.0, 100.0, 300.0, 200.0))],
        id="spaces-and-newlines",
    ),
    pytest.param(
        "<ref> </ref><box>[[0, 0, 1000, 1000]]</box>",
        (1000, 500),
        [(PHRASE, (0.0, 0.0, 1000.0, 500.0))],
        id="empty-ref-falls-back-to-phrase",
    ),
    pytest.param(
        "[[100, 200, 300, 400]]",
        (1000, 500),
        [(PHRASE, (100.0, 100.0, 300.0, 200.0))],
        id="bare-list-without-tags-read-like-upstream",
    ),
    pytest.param(
        "<ref>x</ref><box>[[0.1, 0.2, 0.5, 0.8]]</box>",
        (1000, 500),
        [("x", (100.0, 100.0, 500.0, 400.0))],
        id="sum-below-4-read-as-fractions-like-upstream",
    ),
    pytest.param("<ref>x</ref><box>[[1e999, 0, 10, 10]]</box>", (1000, 500), [], id="overflowing-number-skipped"),
]


@pytest.mark.parametrize("answer, size, expected", CASES)
def test_an_answer_gives_exactly_these_labelled_pixel_boxes(answer, size, expected):
    # given an answer and the original image size
    width, height = size
    # when it is parsed
    parsed = parse_boxes(answer, width=width, height=height, default_label=PHRASE)
    # then every box that parses is there, in order, with its label and pixel box
    assert [(box.label, box.box) for box in parsed] == expected


@pytest.mark.parametrize("answer", [None, 42, b"<box>[[1, 2, 3, 4]]</box>"])
def test_input_that_is_not_text_gives_no_boxes(answer):
    assert parse_boxes(answer, width=1000, height=500, default_label=PHRASE) == []


def test_box_norm_is_the_0_to_1000_box_clamped_and_rounded():
    # given out-of-range and fractional coordinates (rounding is Python's half-to-even)
    answer = "<ref>x</ref><box>[[-50.5, 100.5, 1200, 999.6]]</box>"
    # when parsed
    (box,) = parse_boxes(answer, width=1000, height=500, default_label=PHRASE)
    # then box_norm keeps the 0..1000 scale, clamped
    assert box.box_norm == (0, 100, 1000, 1000)
    assert box.as_dict() == {"label": "x", "box": [0.0, 50.25, 1000.0, 499.8], "box_norm": [0, 100, 1000, 1000]}


def test_a_fractional_box_reports_its_box_norm_on_the_0_to_1000_scale():
    (box,) = parse_boxes("<box>[[0.1, 0.2, 0.5, 0.8]]</box>", width=1000, height=500, default_label=PHRASE)
    assert box.box_norm == (100, 200, 500, 800)


@pytest.mark.parametrize(
    "answer, size, upstream_box",
    [
        # Upstream's RefCOCO evaluation: first [[…]], float(), /1000 when the sum is ≥ 4, × (w, h, w, h).
        ("<ref>the cat</ref><box>[[100, 200, 500, 800]]</box>", (640, 480), (64.0, 96.0, 320.0, 384.0)),
        ("<ref>a man</ref><box>[[12, 345, 678, 999]]</box>", (1000, 2000), (12.0, 690.0, 678.0, 1998.0)),
        ("<ref>sign</ref><box>[[250.5, 0, 750, 500]]</box>", (2000, 1000), (501.0, 0.0, 1500.0, 500.0)),
        ("<ref>tiny</ref><box>[[1, 1, 1, 1]]</box>", (1000, 1000), (1.0, 1.0, 1.0, 1.0)),
        ("<ref>whole</ref><box>[[0, 0, 1, 1]]</box>", (640, 480), (0.0, 0.0, 640.0, 480.0)),
    ],
)
def test_a_single_in_range_box_lands_where_upstream_evaluation_puts_it(answer, size, upstream_box):
    width, height = size
    (box,) = parse_boxes(answer, width=width, height=height, default_label=PHRASE)
    assert box.box == upstream_box
