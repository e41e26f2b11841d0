"""The one image preprocessing path shared by training, indexing and serving.

Every image becomes RGB (EXIF orientation applied, transparency composited on white), is
resized so its longer side fills the model input, and is padded with white to a square.
Catalogue photos are products on white backgrounds, so white padding adds no new content,
and keeping the aspect ratio keeps long items (jeans, watches) recognisable.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterable, Sequence
from typing import TypeAlias

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

ImageSource: TypeAlias = (
    str | bytes | bytearray | memoryview | os.PathLike | Image.Image | np.ndarray
)

WHITE = (255, 255, 255)
RESAMPLE = Image.Resampling.BICUBIC

# Modes that carry an alpha channel (premultiplied ones included).
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
# High-bit-depth greyscale modes that ``convert("RGB")`` would clip instead of scale.
_WIDE_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


def load_image(source: ImageSource) -> Image.Image:
    """Open a path, bytes, PIL image or uint8 array as an upright RGB image (transparency on white)."""
    if isinstance(source, Image.Image):
        return _to_rgb(_upright(source))
    if isinstance(source, np.ndarray):
        return _to_rgb(_from_array(source))
    if isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise ValueError("cannot decode image: the data is empty")
        return _open_and_convert(io.BytesIO(bytes(source)), "image data")
    if isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image file not found: {path}")
        with open(path, "rb") as fh:
            return _open_and_convert(fh, path)
    raise TypeError(
        f"expected a path, bytes, a PIL image or a uint8 array, got {type(source).__name__}"
    )


def to_square(img: ImageSource, size: int) -> np.ndarray:
    """Resize keeping the aspect ratio (longer side = size) and pad white to uint8 [size, size, 3]."""
    if not isinstance(size, int | np.integer) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    size = int(size)
    image = load_image(img)
    w, h = image.size
    scale = size / max(w, h)
    new_w = min(size, max(1, round(w * scale)))
    new_h = min(size, max(1, round(h * scale)))
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), RESAMPLE)
    canvas = np.full((size, size, 3), 255, dtype=np.uint8)
    top = (size - new_h) // 2
    left = (size - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = np.asarray(image, dtype=np.uint8)
    return canvas


def batch_to_square(images: Iterable[ImageSource], size: int) -> np.ndarray:
    """Apply :func:`to_square` to each image: uint8 [n, size, size, 3]."""
    if isinstance(images, str | bytes | bytearray | os.PathLike | Image.Image):
        raise TypeError("expected a sequence of images; wrap a single image in a list")
    items: Sequence[ImageSource] = list(images)
    out = np.empty((len(items), size, size, 3), dtype=np.uint8)
    for i, item in enumerate(items):
        out[i] = to_square(item, size)
    return out


def _from_array(arr: np.ndarray) -> Image.Image:
    if arr.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8 in 0..255, got dtype {arr.dtype}")
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))) or 0 in arr.shape:
        raise ValueError(f"an image array must be [h, w], [h, w, 3] or [h, w, 4], got {arr.shape}")
    return Image.fromarray(np.ascontiguousarray(arr))


def _open_and_convert(fh: io.IOBase, label: str) -> Image.Image:
    try:
        with Image.open(fh) as im:
            im.load()
            return _to_rgb(_upright(im))
    except UnidentifiedImageError as exc:
        raise ValueError(f"cannot decode image: {label} is not a supported image format") from exc
    except Image.DecompressionBombError as exc:
        raise ValueError(f"image is too large to open safely: {label}") from exc
    except (OSError, SyntaxError) as exc:
        # Pillow reports truncated or malformed files as OSError/SyntaxError.
        raise ValueError(f"cannot decode image {label}: {exc}") from exc


def _upright(im: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im)
    except Exception as exc:  # noqa: BLE001 - a broken EXIF block must not lose the photo
        logger.warning("ignoring unreadable EXIF orientation: %s", exc)
        return im


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB" and "transparency" not in im.info:
        return im.copy()
    if im.mode in _WIDE_MODES:
        return _wide_to_rgb(im)
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return im.convert("RGB")
    except ValueError as exc:
        raise ValueError(f"unsupported image mode {im.mode!r}") from exc


def _wide_to_rgb(im: Image.Image) -> Image.Image:
    # 16-bit greyscale (and its 32-bit "I" form) spans 0..65535; scale instead of clipping.
    arr = np.asarray(im, dtype=np.float64)
    peak = float(arr.max()) if arr.size else 0.0
    if im.mode.startswith("I;16") or peak > 255:
        arr = arr / 257.0
    grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def iter_square_batches(
    images: Sequence[ImageSource] | np.ndarray, size: int, batch_size: int
) -> Iterable[np.ndarray]:
    """Validate model input and yield uint8 [b, size, size, 3] batches of at most batch_size.

    ``images`` is a sequence of paths, bytes or PIL images, or a uint8 array [n, h, w, 3].
    Images are decoded batch by batch so a whole catalogue never sits in memory at once.
    """
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int | np.integer)
        or batch_size < 1
    ):
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    batch_size = int(batch_size)
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise ValueError(f"image arrays must be uint8 RGB in 0..255, got dtype {images.dtype}")
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"image arrays must have shape [n, height, width, 3], got {images.shape}"
            )
        if images.shape[0] == 0:
            raise ValueError("no images given: the array is empty")
        if images.shape[1] == 0 or images.shape[2] == 0:
            raise ValueError(f"images must be at least 1x1 pixels, got shape {images.shape}")
        for start in range(0, images.shape[0], batch_size):
            chunk = images[start : start + batch_size]
            if chunk.shape[1:3] == (size, size):
                yield np.ascontiguousarray(chunk)
            else:
                yield batch_to_square([Image.fromarray(a) for a in chunk], size)
        return
    if isinstance(images, str | bytes | bytearray | memoryview | os.PathLike | Image.Image):
        raise ValueError("expected a sequence of images; wrap a single image in a list")
    if not isinstance(images, Sequence):
        images = list(images)
    if len(images) == 0:
        raise ValueError("no images given: the sequence is empty")
    for start in range(0, len(images), batch_size):
        yield batch_to_square(images[start : start + batch_size], size)
