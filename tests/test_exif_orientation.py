"""EXIF orientation is ignored, as InternVL's model cards ignore it: sizes, tiles and boxes are in the
stored pixel grid, not the rotated view a photo viewer shows."""

from __future__ import annotations

import io

from PIL import Image

from shared.storage import put_bytes
from shared.storage.local import LocalObjectStore
from tests.support.media import submit, wait_for_job
from workers.inference.media import load_images
from workers.inference.runtime.model import InternVLRuntime
from workers.inference.runtime.requests import GenerationRequest

ROTATE_90_CW = 6  # EXIF Orientation: a viewer turns the stored 320×160 grid into a 160×320 view


def rotated_jpeg(width: int = 320, height: int = 160) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = ROTATE_90_CW
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(buffer, format="JPEG", exif=exif)
    return buffer.getvalue()


def test_a_rotated_jpeg_keeps_its_stored_grid_in_the_job_and_the_plan(acme):
    # given a 320×160 JPEG whose EXIF says "rotate 90° clockwise to view"
    image = rotated_jpeg()
    assert Image.open(io.BytesIO(image)).getexif()[0x0112] == ROTATE_90_CW

    # when it is planned and grounded
    plan = submit(acme, {"task": "grounding", "prompt": "the red area"}, image, filename="photo.jpg",
                  path="/v1/jobs/plan")
    created = submit(acme, {"task": "grounding", "prompt": "the red area", "options": {"max_new_tokens": 8}}, image,
                     filename="photo.jpg")

    # then both describe the stored 320×160 grid, and any box lies within it
    assert plan.status_code == 200, plan.text
    assert (plan.json()["images"][0]["width"], plan.json()["images"][0]["height"]) == (320, 160)
    assert created.status_code == 202, created.text
    item = created.json()["input"]["items"][0]
    assert (item["width"], item["height"]) == (320, 160)
    job = wait_for_job(acme, created.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    for box in job["result"]["boxes"]:
        x1, y1, x2, y2 = box["box"]
        assert 0 <= x1 <= x2 <= 320 and 0 <= y1 <= y2 <= 160


def test_a_box_over_the_whole_rotated_image_is_the_stored_grid(tmp_path):
    # given the rotated JPEG in storage, loaded as the worker loads a job's images
    store = LocalObjectStore(tmp_path)
    put_bytes(store, "tenants/acme/media/rotated", rotated_jpeg())
    (image,) = load_images(store, [{"object_key": "tenants/acme/media/rotated"}])

    # when the model's answer boxes the whole image (0..1000 on both axes)
    request = GenerationRequest(task="grounding", prompt="the red area", images=[image])
    (box,) = InternVLRuntime.boxes(request, "<ref>the red area</ref><box>[[0, 0, 1000, 1000]]</box>")

    # then the box is the stored 320×160 grid, not the 160×320 view
    assert image.size == (320, 160)
    assert box["box"] == [0, 0, 320, 160]
