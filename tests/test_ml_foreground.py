"""Finding the product in a photo (``ml.foreground``) and what photo search embeds."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ml import foreground, wild
from ml.backbones import get_backbone
from ml.colour import ColourDescriptor
from ml.foreground import box_iou

SIZE = (120, 160)  # width, height: what photo search reads an upload at, about


def pasted(kind: str, seed: int, colour=(200, 40, 40)) -> tuple[Image.Image, tuple]:
    """A garment-like shape with a little shading pasted on a background of ``kind``;
    with its box (relative x, y, w, h)."""
    rng = np.random.default_rng(seed)
    w, h = SIZE
    canvas = wild.background(kind, rng, w, h)
    bw, bh = int(rng.integers(35, 60)), int(rng.integers(50, 90))
    x, y = int(rng.integers(5, w - bw - 5)), int(rng.integers(5, h - bh - 5))
    shade = np.linspace(0.8, 1.0, bh, dtype=np.float32)[:, None, None]
    canvas[y : y + bh, x : x + bw] = np.asarray(colour, np.float32) / 255 * shade
    arr = np.clip(canvas * 255 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(arr), (x / w, y / h, bw / w, bh / h)


@pytest.mark.parametrize(
    "kind,colour",
    [
        ("plain", (200, 40, 40)),
        ("gradient", (20, 20, 30)),
        ("noise", (240, 240, 240)),
        ("stripes", (200, 40, 40)),
        ("checks", (30, 140, 60)),
        ("wood", (30, 60, 200)),
        ("bed", (20, 20, 30)),
        ("room", (230, 200, 30)),
    ],
)
def test_the_box_finds_a_product_on_a_coloured_or_textured_background(kind, colour):
    scores = []
    for seed in range(3):
        photo, truth = pasted(kind, seed, colour)
        found = foreground.estimate(photo)
        scores.append(box_iou(found.box, truth))
    assert min(scores) > 0.7, scores


def test_a_studio_photo_on_white_gives_the_product_box():
    arr = np.full((80, 60, 3), 255, np.uint8)
    arr[20:70, 10:40] = (30, 60, 200)
    found = foreground.estimate(Image.fromarray(arr))
    assert found.found and box_iou(found.box, (10 / 60, 20 / 80, 30 / 60, 50 / 80)) > 0.8


def test_a_photo_of_nothing_is_kept_whole():
    flat = Image.new("RGB", SIZE, (120, 100, 80))
    found = foreground.estimate(flat)
    assert not found.found and found.box == (0.0, 0.0, 1.0, 1.0)
    assert foreground.prepare_query(flat).mode == "RGB"  # nothing to cut: the photo as it is


def test_prepare_query_cuts_to_the_product_and_clears_the_background():
    photo, (x, y, w, h) = pasted("stripes", 1)
    prepared = foreground.prepare_query(photo)
    assert prepared.mode == "RGBA"
    # about the product's size plus the margin, not the photo's
    assert prepared.width < 0.8 * photo.width and prepared.height < 0.8 * photo.height
    alpha = np.asarray(prepared.getchannel("A"))
    assert alpha[alpha.shape[0] // 2, alpha.shape[1] // 2] == 255  # the product stays
    assert alpha[0, 0] == 0  # the stripes outside it go


def test_a_crop_box_changes_what_is_embedded():
    # Two products side by side: the crop box picks the right-hand one.
    arr = np.full((160, 240, 3), (90, 120, 90), np.uint8)
    arr[40:130, 20:100] = (200, 40, 40)
    arr[30:140, 140:220] = (30, 60, 200)
    photo = Image.fromarray(arr)
    backbone = get_backbone("tiny")
    whole = foreground.prepare_query(photo)
    right = foreground.prepare_query(photo, crop=(0.5, 0.0, 0.5, 1.0))
    r, g, b = np.asarray(right.convert("RGB"))[right.height // 2, right.width // 2].tolist()
    assert b > 150 and b > 2 * g and b > 2 * r  # the blue one (brightened: the photo is dim)
    a, b = backbone.embed([whole, right])
    assert float(a @ b) < 0.999
    colours = ColourDescriptor().describe([whole, right])
    assert float(colours[0] @ colours[1]) < 0.9


@pytest.mark.parametrize("box", [(0.1, 0.1, 0.0, 0.5), (0.0, 0.0, 1.0), (np.nan, 0, 1, 1)])
def test_a_bad_crop_box_is_refused(box):
    with pytest.raises(ValueError, match="crop box"):
        foreground.prepare_query(Image.new("RGB", SIZE), crop=box)


def test_the_colour_descriptor_reads_the_mask_when_the_photo_has_one():
    # Left half red, right half blue; only the red half opaque.
    arr = np.zeros((80, 60, 4), np.uint8)
    arr[:, :30, :3] = (200, 30, 30)
    arr[:, 30:, :3] = (30, 30, 200)
    arr[:, :30, 3] = 255
    red = np.full((80, 60, 3), (200, 30, 30), np.uint8)
    descriptor = ColourDescriptor()
    masked, plain_red = descriptor.describe([Image.fromarray(arr, "RGBA"), red])
    assert float(masked @ plain_red) > 0.999


def test_the_colour_of_a_photo_without_a_mask_is_unchanged(tmp_path):
    # Catalogue photos are files without transparency: read from the border as always.
    arr = np.full((80, 60, 3), 255, np.uint8)
    arr[20:60, 15:45] = (30, 140, 60)
    path = tmp_path / "p.jpg"
    Image.fromarray(arr).save(path)
    descriptor = ColourDescriptor()
    from_file, from_image = descriptor.describe([str(path), Image.open(path)])
    assert np.allclose(from_file, from_image)


def test_a_photo_on_white_is_embedded_as_it_is():
    # An uploaded catalogue photo must embed as its stored self (the same-photo level).
    arr = np.full((80, 60, 3), 255, np.uint8)
    arr[20:70, 10:40] = (30, 60, 200)
    photo = Image.fromarray(arr)
    assert foreground.estimate(photo).on_white
    prepared = foreground.prepare_query(photo)
    assert prepared.mode == "RGB" and np.array_equal(np.asarray(prepared), arr)


def test_the_product_box_is_relative_to_the_whole_photo():
    photo, truth = pasted("noise", 2)
    _, box = foreground.prepare_query_and_box(photo)
    assert box_iou(box, truth) > 0.7
    # Inside a crop box of the right half, the box is still in whole-photo units.
    arr = np.full((160, 240, 3), (90, 120, 90), np.uint8)
    arr[30:140, 140:220] = (30, 60, 200)
    _, inside = foreground.prepare_query_and_box(Image.fromarray(arr), crop=(0.5, 0, 0.5, 1))
    assert box_iou(inside, (140 / 240, 30 / 160, 80 / 240, 110 / 160)) > 0.8
    # Nothing cut, no box: a photo of nothing, a photo on white.
    assert foreground.prepare_query_and_box(Image.new("RGB", SIZE, (120, 100, 80)))[1] is None
    assert foreground.prepare_query_and_box(Image.new("RGB", SIZE, (255, 255, 255)))[1] is None
