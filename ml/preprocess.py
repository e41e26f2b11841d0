"""The one image preprocessing path shared by training, indexing and serving.

Every image becomes RGB (EXIF orientation applied, transparency composited on white), is
resized so its longer side fills the model input, and is padded with white to a square.
Catalogue photos are products on white backgrounds, so white padding adds no new content,
and keeping the aspect ratio keeps long items (jeans, watches) recognisable.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeAlias, TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

ImageSource: TypeAlias = (
    str | bytes | bytearray | memoryview | os.PathLike | Image.Image | np.ndarray
)

T = TypeVar("T")

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


@contextlib.contextmanager
def _decoding(label: str) -> Iterator[None]:
    """Pillow's errors while opening or decoding ``label``, as one clear ValueError each."""
    try:
        yield
    except UnidentifiedImageError as exc:
        raise ValueError(f"cannot decode image: {label} is not a supported image format") from exc
    except Image.DecompressionBombError as exc:
        raise ValueError(f"image is too large to open safely: {label}") from exc
    except (OSError, SyntaxError) as exc:
        # Pillow reports truncated or malformed files as OSError/SyntaxError.
        raise ValueError(f"cannot decode image {label}: {exc}") from exc


def _open_and_convert(fh: io.IOBase, label: str) -> Image.Image:
    with _decoding(label), Image.open(fh) as im:
        im.load()
        return _to_rgb(_upright(im))


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


_END = object()


def read_ahead(items: Iterable[T]) -> Iterator[T]:
    """Yield ``items`` while the next one is produced on a background thread: photos of the
    next batch are decoded while the network runs on this one (both release the GIL)."""
    it = iter(items)
    with ThreadPoolExecutor(1, thread_name_prefix="read-ahead") as pool:
        pending = pool.submit(next, it, _END)
        while True:
            item = pending.result()
            if item is _END:
                return
            pending = pool.submit(next, it, _END)
            yield item


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


# EXIF orientations that turn the photo a quarter (its width and height swap when upright).
_QUARTER_TURNS = {5, 6, 7, 8}
# Scales a JPEG decoder can decode at (DCT scaling), largest first.
_DCT_SCALES = (8, 4, 2, 1)
# A photo decoded small keeps at least this many times the size it is resized to next.
REDUCING_GAP = 2


def load_image_reduced(
    source: str | os.PathLike | bytes,
    size: int,
    box: Sequence[float] | None = None,
    max_side: int | None = None,
) -> Image.Image:
    """Open a photo file or bytes as ``load_image`` does (upright RGB), decoded no larger
    than its use needs: the part inside ``box`` (relative x, y, w, h of the upright photo;
    None: the whole photo) is about to be resized to ``size`` pixels on its longer side, so
    it keeps ``REDUCING_GAP`` times that (or all the photo has); the whole photo is at most
    about ``max_side`` pixels on its longer side when that is given (it wins: a tiny box on
    a huge photo costs no more than that).

    A JPEG is decoded at 1/2, 1/4 or 1/8 of its size where that still leaves enough (DCT
    scaling: the decoder skips most of the work, and a 12-megapixel photo never exists in
    memory at full size); any photo is then shrunk by the remaining whole factor (a box
    average, ``Image.reduce``). The gap is Pillow's own for ``thumbnail``: both steps average
    whole blocks of pixels, and a resize right after them by less than two loses detail a
    network notices (1500x2000 photos decoded at 1/8 for a 160-pixel network embedded at
    cosine 0.90-0.995 to a full decode on efficientnet_lite0, at 1/4 above 0.998). The
    result is the whole photo; the caller crops and makes the final resize. Errors as
    ``load_image``'s.
    """
    for name, value in (("size", size), ("max_side", 1 if max_side is None else max_side)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise ValueError("cannot decode image: the data is empty")
        fh, label = io.BytesIO(bytes(source)), "image data"
    elif isinstance(source, str | os.PathLike):
        label = os.fspath(source)
        if not os.path.isfile(label):
            raise FileNotFoundError(f"image file not found: {label}")
        fh = open(label, "rb")  # noqa: SIM115 - closed below, whatever happens
    else:
        raise TypeError(f"expected a path or bytes, got {type(source).__name__}")

    def factor(width: int, height: int) -> int:
        # The largest whole factor that leaves the box its pixels on its longer side.
        x, y, w, h = (0.0, 0.0, 1.0, 1.0) if box is None else (float(v) for v in box)
        box_w = max(0.0, min(1.0, x + w) - max(0.0, x)) * width
        box_h = max(0.0, min(1.0, y + h) - max(0.0, y)) * height
        found = int(max(box_w, box_h) // (REDUCING_GAP * size))
        if max_side is not None:
            found = max(found, -(-max(width, height) // max_side))
        return max(1, min(found, width, height))

    with _decoding(label), fh, Image.open(fh) as im:
        if im.format in ("JPEG", "MPO"):
            # Decide from the header, before any pixel is decoded; the box is upright.
            width, height = im.size
            if _orientation(im) in _QUARTER_TURNS:
                width, height = height, width
            scale = next(s for s in _DCT_SCALES if s <= factor(width, height))
            if scale > 1:  # draft before turning upright: it scales both sides alike
                im.draft(None, (max(1, im.width // scale), max(1, im.height // scale)))
        im.load()
        image = _to_rgb(_upright(im))
    rest = factor(*image.size)
    return image.reduce(rest) if rest > 1 else image


def _orientation(im: Image.Image) -> int:
    """A photo's EXIF orientation (1, upright, when it has none or it cannot be read)."""
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block: ``_upright`` leaves it as is too
        return 1
