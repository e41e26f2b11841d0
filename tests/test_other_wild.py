"""The second shopper-photo maker (``bench/_other_wild.py``), kept apart from ``ml.wild`` so
robustness can be measured on photos of a family tuning never sees."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bench import _other_wild as other


def studio_photo(path, colour=(30, 60, 200), backdrop=(255, 255, 255)):
    """A 60x80 catalogue-like photo: a shirt-ish shape with a white print, on a backdrop."""
    arr = np.empty((80, 60, 3), np.uint8)
    arr[:] = backdrop
    arr[15:70, 12:48] = colour
    arr[30:40, 25:35] = 255  # a white print inside the product stays product
    Image.fromarray(arr).save(path)
    return path


def test_same_seed_same_bytes_other_seed_other_photo(tmp_path):
    photo = studio_photo(tmp_path / "1.png")
    shelf = [studio_photo(tmp_path / "2.png", colour=(200, 40, 40))]
    first = other.make_other(photo, (0, 1), shelf)
    again = other.make_other(photo, (0, 1), shelf)
    assert first.jpeg == again.jpeg and first.box == again.box and first.recipe == again.recipe
    assert other.make_other(photo, (1, 1), shelf).jpeg != first.jpeg
    image = Image.open(io.BytesIO(first.jpeg))
    assert image.format == "JPEG" and image.size in other.FRAMES


@pytest.mark.parametrize("seed", range(6))
def test_the_box_is_where_the_product_is(tmp_path, seed):
    photo = studio_photo(tmp_path / "1.png", colour=(230, 10, 10))
    result = other.make_other(photo, (seed, 7), [photo])
    x, y, w, h = result.box
    assert x >= 0 and y >= 0 and x + w <= 1.0001 and y + h <= 1.0001 and w * h > 0.02
    assert abs(result.recipe["angle"]) <= 15 and result.recipe["scene"] in other.SCENES
    arr = np.asarray(Image.open(io.BytesIO(result.jpeg)).convert("RGB")).astype(int)
    red = (arr[..., 0] - arr[..., 1:].max(axis=2)) > 40
    H, W = red.shape
    inside = np.zeros_like(red)
    inside[int(y * H) : int((y + h) * H), int(x * W) : int((x + w) * W)] = True
    assert red[inside].mean() > 0.3  # the product fills a good part of its box


def test_the_cut_keeps_prints_and_drops_a_greying_backdrop(tmp_path):
    # Studio backdrops are often a little grey at the edge: the cut still finds the product.
    photo = studio_photo(tmp_path / "1.png", backdrop=(200, 198, 194))
    with Image.open(photo) as im:
        product, mask = other.product_and_mask(im)
    assert product.size == mask.size == (36, 55)
    assert np.asarray(mask).min() == 255  # the white print is product, not backdrop
