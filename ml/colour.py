"""A colour descriptor of the product in a photo: what shoppers see, which ImageNet features ignore.

Catalogue photos show one product on a plain (usually white) background. The descriptor:

1. keeps the product's pixels: where the photo carries a transparency mask (a shopper's
   photo after ``ml.foreground.prepare_query``), its opaque pixels; otherwise it estimates
   the background colour from the photo's border (the median of its frame) and keeps the
   pixels clearly different from it; a photo that is nearly all background (a white shirt
   on white) falls back to its non-white pixels, then to all;
2. converts those pixels to CIELAB (sRGB, D65), where Euclidean distance follows perceived
   colour difference;
3. counts them on a fine Lab grid, then spreads each fine bin over a coarse grid of Lab
   centres with Gaussian weights (soft binning: two nearly equal reds never fall into
   different bins and lose all similarity);
4. takes the square root (so the cosine of two descriptors is their Bhattacharyya
   coefficient, and one dominant colour does not drown the rest) and L2-normalises.

``fuse`` combines it with an image embedding so that cosine on the result is
``(1 - w) * cos(embedding) + w * cos(colour)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .preprocess import ImageSource, load_image

DESCRIPTOR_VERSION = 1
# Photos larger than this (longer side) are shrunk first: colour needs no detail.
MAX_SIDE = 128


@dataclass(frozen=True)
class ColourConfig:
    """Grid and thresholds of the descriptor (its model id is derived from them)."""

    background_distance: float = 28.0  # RGB distance from the border colour that counts as product
    min_foreground: float = 0.03  # below this share of pixels, fall back to non-white pixels
    fine_l: int = 10
    fine_ab: int = 24
    centres_l: tuple[float, ...] = (12.0, 32.0, 52.0, 72.0, 90.0)
    centres_ab: tuple[float, ...] = (-60.0, -40.0, -20.0, 0.0, 20.0, 40.0, 60.0, 80.0)
    sigma: float = 13.0

    @property
    def model_id(self) -> str:
        """``colour-lab<centres>-v<version>``: names the descriptor's store."""
        dim = len(self.centres_l) * len(self.centres_ab) ** 2
        return f"colour-lab{dim}-v{DESCRIPTOR_VERSION}"


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 or [0, 1] float sRGB [..., 3] -> CIELAB [..., 3] (D65 white)."""
    c = np.asarray(rgb, np.float64)
    if np.asarray(rgb).dtype == np.uint8:
        c = c / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array(
        [
            [0.4124564, 0.3575761, 0.1804375],
            [0.2126729, 0.7151522, 0.0721750],
            [0.0193339, 0.1191920, 0.9503041],
        ]
    )
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    lab = np.empty_like(f)
    lab[..., 0] = 116 * f[..., 1] - 16
    lab[..., 1] = 500 * (f[..., 0] - f[..., 1])
    lab[..., 2] = 200 * (f[..., 1] - f[..., 2])
    return lab


def foreground_pixels(
    rgb: np.ndarray, config: ColourConfig = ColourConfig(), mask: np.ndarray | None = None
) -> np.ndarray:
    """The product's pixels uint8 [m, 3] of an RGB photo [h, w, 3] (background left out):
    those of ``mask`` (bool [h, w]) when it holds enough of them, else told from the border."""
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB array [h, w, 3], got {arr.shape}")
    if mask is not None and np.mean(mask) >= config.min_foreground:
        return arr[np.asarray(mask, bool)]
    frame = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]]).astype(np.float32)
    background = np.median(frame, axis=0)
    pixels = arr.reshape(-1, 3)
    distance = np.linalg.norm(pixels.astype(np.float32) - background, axis=1)
    mask = distance > config.background_distance
    if mask.mean() < config.min_foreground:
        mask = pixels.min(axis=1) < 250  # a near-white product: everything not pure white
        if mask.mean() < config.min_foreground:
            mask = np.ones(len(pixels), bool)
    return pixels[mask]


class ColourDescriptor:
    """Maps photos to L2-normalised soft Lab colour histograms of their product pixels."""

    def __init__(self, config: ColourConfig = ColourConfig()) -> None:
        self.config = config
        c = config
        self._fine_l_edges = np.linspace(0.0, 100.0, c.fine_l + 1)
        self._fine_ab_edges = np.linspace(-100.0, 100.0, c.fine_ab + 1)
        mid_l = (self._fine_l_edges[:-1] + self._fine_l_edges[1:]) / 2
        mid_ab = (self._fine_ab_edges[:-1] + self._fine_ab_edges[1:]) / 2
        fine = np.stack(np.meshgrid(mid_l, mid_ab, mid_ab, indexing="ij"), -1).reshape(-1, 3)
        centres = np.stack(
            np.meshgrid(c.centres_l, c.centres_ab, c.centres_ab, indexing="ij"), -1
        ).reshape(-1, 3)
        d2 = ((fine[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
        kernel = np.exp(-d2 / (2 * c.sigma**2))
        # Each fine bin hands out exactly its own count, however far the nearest centre is.
        self._kernel = (kernel / kernel.sum(axis=1, keepdims=True)).astype(np.float32)
        self.dim = len(centres)
        self.model_id = config.model_id
        # Fine bin of every RGB colour at 6 bits per channel: decoding a photo's pixels to
        # bins is then one table look-up (colour bins are far wider than the lost 2 bits).
        levels = (np.arange(64) << 2) + 2
        grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
        self._lut = self._fine_bins(srgb_to_lab(grid.astype(np.uint8)))

    def _fine_bins(self, lab: np.ndarray) -> np.ndarray:
        """Fine-grid bin number of each Lab colour."""
        c = self.config
        il = np.clip(np.digitize(lab[..., 0], self._fine_l_edges) - 1, 0, c.fine_l - 1)
        ia = np.clip(np.digitize(lab[..., 1], self._fine_ab_edges) - 1, 0, c.fine_ab - 1)
        ib = np.clip(np.digitize(lab[..., 2], self._fine_ab_edges) - 1, 0, c.fine_ab - 1)
        return ((il * c.fine_ab + ia) * c.fine_ab + ib).astype(np.int32)

    def fine_counts(self, pixels: np.ndarray) -> np.ndarray:
        """Pixel counts float32 [fine bins] of uint8 RGB pixels [m, 3] on the fine Lab grid."""
        p = np.asarray(pixels, np.uint8).reshape(-1, 3) >> 2
        codes = (p[:, 0].astype(np.int32) << 12) | (p[:, 1].astype(np.int32) << 6) | p[:, 2]
        return np.bincount(self._lut[codes], minlength=self._kernel.shape[0]).astype(np.float32)

    def histogram(self, pixels: np.ndarray) -> np.ndarray:
        """Soft Lab histogram float32 [dim] (sums to 1; zeros for no pixels) of RGB pixels [m, 3]."""
        fine = self.fine_counts(pixels)
        total = fine.sum()
        if total == 0:
            return np.zeros(self.dim, np.float32)
        return ((fine / total) @ self._kernel).astype(np.float32)

    def describe(self, images: Sequence[ImageSource]) -> np.ndarray:
        """float32 [n, dim] L2-normalised descriptors of photos (paths, bytes, PIL, arrays)."""
        if isinstance(images, str | bytes) or not isinstance(images, Sequence | np.ndarray):
            raise ValueError("expected a sequence of images; wrap a single image in a list")
        fine = np.zeros((len(images), self._kernel.shape[0]), np.float32)
        for i, source in enumerate(images):
            rgb, mask = _pixels_and_mask(source)
            counts = self.fine_counts(foreground_pixels(rgb, self.config, mask))
            fine[i] = counts / max(counts.sum(), 1.0)
        out = np.sqrt(np.maximum(fine @ self._kernel, 0.0))  # one product for the whole batch
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


def _pixels_and_mask(source: ImageSource) -> tuple[np.ndarray, np.ndarray | None]:
    """A photo's RGB pixels (no larger than ``MAX_SIDE``) and, for a PIL image or array with
    an alpha channel, its opaque pixels as the product mask (None otherwise: files and
    bytes are read as RGB, as every catalogue photo is)."""
    if isinstance(source, np.ndarray) and source.ndim == 3 and source.shape[2] == 4:
        source = Image.fromarray(np.asarray(source, np.uint8), "RGBA")
    if isinstance(source, Image.Image) and source.mode in ("RGBA", "LA", "PA"):
        img = source.convert("RGBA")  # colours as they are, not laid on white
        if max(img.size) > MAX_SIDE:
            img.thumbnail((MAX_SIDE, MAX_SIDE))
        arr = np.asarray(img)
        return np.ascontiguousarray(arr[..., :3]), arr[..., 3] >= 128
    img = load_image(source)
    if max(img.size) > MAX_SIDE:
        img.thumbnail((MAX_SIDE, MAX_SIDE))
    return np.asarray(img), None


def fuse(embedding: np.ndarray, colour: np.ndarray, weight: float) -> np.ndarray:
    """Unit rows whose cosine is (1 - weight) * embedding cosine + weight * colour cosine.

    Both inputs must be L2-normalised row for row; the result is [n, d_e + d_c].
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError("weight must be between 0 and 1")
    embedding = np.atleast_2d(np.asarray(embedding, np.float32))
    colour = np.atleast_2d(np.asarray(colour, np.float32))
    if len(embedding) != len(colour):
        raise ValueError("embedding and colour rows differ in number")
    return np.concatenate(
        [np.sqrt(1.0 - weight) * embedding, np.sqrt(weight) * colour], axis=1
    ).astype(np.float32)
