"""Shopper-like training views for the tuned network (``ml.tuned.shoppers``)."""

from __future__ import annotations

import io
from itertools import islice

import numpy as np
import pytest
from PIL import Image

from ml.backbones import get_backbone
from ml.colour import ColourDescriptor
from ml.tuned.config import TuneConfig
from ml.tuned.feature_maps import FeatureMaps
from ml.tuned.shoppers import ShopperViews, shopper_photos
from ml.tuned.training import _random_batches, train_network


def studio_photo(seed: int, colour=(200, 30, 30)) -> bytes:
    """A 60x80 catalogue-like JPEG: a coloured block on white."""
    rng = np.random.default_rng(seed)
    arr = np.full((80, 60, 3), 255, np.uint8)
    top, left = rng.integers(5, 15), rng.integers(5, 12)
    arr[top : top + 50, left : left + 36] = colour
    out = io.BytesIO()
    Image.fromarray(arr).save(out, "JPEG", quality=95)
    return out.getvalue()


def test_views_are_shopper_photos_as_photo_search_prepares_them():
    photo = studio_photo(0)
    views = shopper_photos(photo, 3, 32)
    again = shopper_photos(photo, 3, 32)
    assert len(views) == 3 and max(views[0].size) <= 32
    for a, b in zip(views, again, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))  # the photo's bytes decide them
    assert not np.array_equal(np.asarray(views[0]), np.asarray(views[1]))
    other = shopper_photos(studio_photo(1), 1, 32)[0]
    assert np.array_equal(
        np.asarray(shopper_photos(Image.open(io.BytesIO(photo)), 1, 32)[0]), np.asarray(views[0])
    )
    assert not np.array_equal(np.asarray(views[0]), np.asarray(other))
    # not a white studio photo any more: the made photo's background was cut away
    # (transparent) or, where nothing stood out, is there in colour
    first = np.asarray(views[0].convert("RGBA"))
    assert first[..., 3].min() < 255 or first[..., :3].min() < 200


def test_stored_rows_hold_each_views_maps_and_colour_descriptor():
    tiny = get_backbone("tiny")
    views = ShopperViews(tiny, "conv1", 2, threads=2)
    assert not views.maps.mirror and views.maps.views == 1
    assert "shoppers-conv1-2" in views.store_id and views.store_id.startswith(tiny.model_id)
    photos = [studio_photo(i) for i in range(3)]
    rows = views.compute(photos)
    assert rows.dtype == np.float16 and rows.shape == (3, views.row_size)
    maps, colours = views.split(rows)
    assert maps.shape == (3, 2, 16, 16, 16) and colours.shape == (3, 2, ColourDescriptor().dim)
    np.testing.assert_allclose(np.linalg.norm(colours, axis=2), 1.0, atol=2e-3)
    made = shopper_photos(photos[1], 2, tiny.input_size)
    expected = views.maps.unflatten(views.maps.compute(made))[:, 0]
    np.testing.assert_allclose(maps[1], expected, atol=2e-3)
    np.testing.assert_allclose(colours[1], ColourDescriptor().describe(made), atol=2e-3)


def batches(share: float, shoppers):
    maps = np.zeros((8, 2, 4, 4, 3), np.float16)
    colours = np.zeros((8, 5), np.float32)
    targets = {name: np.zeros(8, np.int64) for name in ("sub", "type", "colour")}
    config = TuneConfig(batch_size=8, shift=0, shopper_views=2, shopper_share=share)
    return _random_batches(maps, colours, targets, config, shoppers)


def test_the_configured_share_of_rows_takes_a_shopper_view():
    shopper_maps = np.ones((8, 2, 4, 4, 3), np.float16)
    shopper_maps[:, 1] = 2
    shopper_colours = np.ones((8, 2, 5), np.float32)
    (x, c), _ = next(batches(1.0, (shopper_maps, shopper_colours)))
    assert set(np.unique(x)) <= {1.0, 2.0} and (c == 1).all()
    (x, c), _ = next(batches(0.0, (shopper_maps, shopper_colours)))
    assert (x == 0).all() and (c == 0).all()
    taken = [
        (x.reshape(8, -1)[:, 0] > 0).mean()
        for (x, _), _ in islice(batches(0.5, (shopper_maps, shopper_colours)), 50)
    ]
    assert 0.35 < np.mean(taken) < 0.65


def test_training_with_shopper_views_and_their_settings():
    tiny = get_backbone("tiny")
    photos = [
        studio_photo(i, colour) for i, colour in enumerate([(200, 30, 30), (30, 30, 200)] * 4)
    ]
    labels = {
        "sub": ["Topwear", "Bottomwear"] * 4,
        "type": ["Men|Shirts", "Women|Jeans"] * 4,
        "colour": ["Red", "Blue"] * 4,
    }
    fm = FeatureMaps(tiny, "conv1", mirror=True)
    maps = fm.unflatten(fm.compute(photos))
    colours = ColourDescriptor().describe(photos)
    views = ShopperViews(tiny, "conv1", 1)
    shoppers = views.split(views.compute(photos))
    config = TuneConfig(epochs=1, batch_size=4, min_count=2, shopper_views=1)
    network, report = train_network(tiny, maps, colours, labels, config, shoppers=shoppers)
    assert report.rows == 8 and network.config.shopper_views == 1
    with pytest.raises(ValueError, match="shopper views"):
        train_network(tiny, maps, colours, labels, config, shoppers=(shoppers[0][:3], shoppers[1]))
    # Studio-only settings keep the form (and so the model ids) networks had before.
    assert "shopper_views" not in TuneConfig().as_dict()
    assert TuneConfig(shopper_views=2).as_dict()["shopper_share"] == 0.5
    with pytest.raises(ValueError, match="shopper"):
        TuneConfig(shopper_views=-1)
    with pytest.raises(ValueError, match="shopper"):
        TuneConfig(shopper_share=1.5)
