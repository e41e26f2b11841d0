"""Shopper-like training views: each catalogue photo made into photos a shopper might take
of the product (``ml.wild``: another background, light, angle, blur, JPEG) and prepared as
photo search prepares an upload (``ml.foreground``: cut to the product, its background made
transparent), so the tuned network also learns from what it will be shown.

Their feature maps at the cut and the colour descriptors of the prepared photos are kept
together in one half-float row per catalogue photo (views x (maps, descriptor)), in a store
of their own, and redone only for photos that change, like the studio maps.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image

from ml.colour import ColourDescriptor
from ml.foreground import prepare_query_and_box
from ml.preprocess import ImageSource, load_image
from ml.tuned.feature_maps import FeatureMaps
from ml.wild import make_wild

# Made at this size: photo search shrinks an upload to the network's input before anything
# else (``worker.jobs.photo_search.read_query``), so more pixels would only cost time.
MADE_SIZE = (240, 320)
# First word of every view's seed: these photos never share a random stream with the
# evaluation's shopper photos, which are seeded by (seed, product id).
SEED_DOMAIN = 0x5F0B
VERSION = 1


def view_seed(photo: Image.Image, view: int) -> list[int]:
    """The seed of one made view of a photo: its pixels decide it, not where or how it is
    stored."""
    pixels = np.ascontiguousarray(np.asarray(photo)).tobytes()
    digest = int.from_bytes(hashlib.sha256(pixels).digest()[:8], "little")
    return [SEED_DOMAIN, digest, view]


def shopper_photos(image: ImageSource, views: int, input_size: int) -> list[Image.Image]:
    """``views`` shopper-like photos of a catalogue photo's product, each as photo search
    would embed it (the same photo always gives the same views)."""
    photo = load_image(image)
    return [
        prepare_query_and_box(
            make_wild(photo, view_seed(photo, v), size=MADE_SIZE).jpeg, None, max_side=input_size
        )[0]
        for v in range(views)
    ]


class ShopperViews:
    """Feature maps at the cut and colour descriptors of shopper-like views of photos."""

    def __init__(self, backbone: Any, cut: str, views: int, threads: int | None = None) -> None:
        if views < 1:
            raise ValueError("shopper views must be at least 1")
        # The frozen lower layers, one view per made photo (no mirror image: the made photos
        # vary far more than a mirror would add).
        self.maps = FeatureMaps(backbone, cut, mirror=False)
        self.views = views
        self.colour = ColourDescriptor()
        self.threads = threads or os.cpu_count() or 1
        self.map_size = int(np.prod(self.maps.shape))

    @property
    def store_id(self) -> str:
        """Name of the store that keeps these views for a catalogue."""
        base = self.maps.backbone.model_id
        cut = self.maps.cut.replace("_", "-")
        return f"{base}.shoppers-{cut}-{self.views}-v{VERSION}"

    @property
    def row_size(self) -> int:
        """Numbers per catalogue photo: views x (maps, colour descriptor)."""
        return self.views * (self.map_size + self.colour.dim)

    def compute(self, images: Sequence[ImageSource], batch_size: int = 64) -> np.ndarray:
        """float16 [n, row_size]: each photo's views' maps and colour descriptors."""
        size = self.maps.backbone.input_size
        with ThreadPoolExecutor(self.threads) as pool:
            made = list(pool.map(lambda img: shopper_photos(img, self.views, size), images))
        flat: list[Any] = [view for views in made for view in views]
        maps = self.maps.compute(flat, batch_size).reshape(len(images), self.views, -1)
        colours = self.colour.describe(flat).reshape(len(images), self.views, -1)
        return np.concatenate([maps, colours.astype(np.float16)], axis=2).reshape(len(images), -1)

    def split(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(maps [n, views, h, w, c] float16, colour descriptors [n, views, d] float32) of
        stored rows."""
        rows = np.asarray(rows).reshape(len(rows), self.views, -1)
        maps = rows[:, :, : self.map_size].reshape(len(rows), self.views, *self.maps.shape)
        return maps, rows[:, :, self.map_size :].astype(np.float32)
