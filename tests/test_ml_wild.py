"""The wild query generator (``ml.wild``): shopper-like photos, reproducible for a seed."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ml import wild


def studio_photo(colour=(30, 60, 200)) -> Image.Image:
    """A 60x80 catalogue-like photo: a shirt-ish shape with a white print, on white."""
    arr = np.full((80, 60, 3), 255, np.uint8)
    arr[15:70, 12:48] = colour
    arr[30:40, 25:35] = 255  # a white print inside the product stays product
    return Image.fromarray(arr)


def test_same_seed_same_bytes_other_seed_other_photo():
    photo = studio_photo()
    first = wild.make_wild(photo, seed=(0, 15970))
    again = wild.make_wild(photo, seed=(0, 15970))
    other = wild.make_wild(photo, seed=(1, 15970))
    assert first.jpeg == again.jpeg and first.box == again.box and first.recipe == again.recipe
    assert other.jpeg != first.jpeg
    image = Image.open(io.BytesIO(first.jpeg))
    assert image.format == "JPEG" and image.size == wild.OUTPUT_SIZE


def test_the_box_is_where_the_product_was_pasted():
    result = wild.make_wild(studio_photo(colour=(220, 20, 20)), seed=3, size=(240, 320))
    x, y, w, h = result.box
    assert x >= 0 and y >= 0 and x + w <= 1.0001 and y + h <= 1.0001
    assert abs(result.recipe["angle"]) <= wild.MAX_ROTATION_DEG
    # The product fills a good part of its box and little outside it (a red product).
    arr = np.asarray(Image.open(io.BytesIO(result.jpeg)).convert("RGB")).astype(int)
    red = (arr[..., 0] - arr[..., 1:].max(axis=2)) > 60
    H, W = red.shape
    inside = np.zeros_like(red)
    inside[int(y * H) : int((y + h) * H), int(x * W) : int((x + w) * W)] = True
    assert red[inside].mean() > 0.4
    assert red[~inside].mean() < 0.05 or result.recipe["background"] != "plain"


def test_the_cut_out_keeps_prints_inside_the_product():
    rgb, alpha = wild.cut_out(studio_photo())
    assert rgb.shape[:2] == alpha.shape
    # cropped to the product (one pixel in from the studio's anti-aliased rim)
    assert alpha.shape[0] <= 55 and alpha.shape[1] <= 36
    assert alpha.mean() > 0.9  # the white print is inside the product, not background


@pytest.mark.parametrize("kind", wild.BACKGROUNDS)
def test_every_background_kind_draws(kind):
    out = wild.background(kind, np.random.default_rng(0), 48, 64)
    assert out.shape == (64, 48, 3) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_an_unknown_background_is_refused():
    with pytest.raises(ValueError, match="unknown background"):
        wild.background("moon", np.random.default_rng(0), 48, 64)
