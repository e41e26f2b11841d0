"""Shopper-like photos made from catalogue photos, reproducibly for a seed.

A catalogue photo shows one product, centred, on white. A shopper's photo shows it off-centre
and turned, on a bed, a floor or a patterned cloth, under warm or dim light, blurred a little
and saved as a JPEG. ``make_wild`` turns the first into the second:

1. the product is cut from its background with a soft alpha mask (the background is the
   near-border-colour region connected to the border, so white prints inside a garment stay);
2. a background is drawn (plain colour, gradient, noise texture, stripes, checks, tiles, a
   wood floor, a bed sheet with folds, or a wall above a floor), sometimes with other objects
   on it;
3. the product is scaled, placed, turned up to 15 degrees and seen slightly in perspective,
   with a soft shadow under it sometimes;
4. the light changes (colour temperature, exposure, contrast, gamma, vignetting, a lamp's
   gradient), then blur, sensor noise and JPEG quality.

Every random choice comes from one ``numpy.random.Generator`` seeded by the caller, and the
image operations are deterministic, so a seed gives the same bytes on every run. The result
carries the pasted product's box, which is what a foreground estimate should find.

Worker tier only (it needs OpenCV); Flask-free.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from PIL import Image

from .preprocess import ImageSource, load_image

# (width, height) of a made photo: a phone photo's shape, small enough to make thousands.
OUTPUT_SIZE = (480, 640)
MAX_ROTATION_DEG = 15.0
BACKGROUNDS = (
    "plain",
    "gradient",
    "noise",
    "stripes",
    "checks",
    "tiles",
    "wood",
    "bed",
    "room",
)
# A studio pixel this close (max channel difference) to the border colour may be background.
CUT_TOLERANCE = 14


@dataclass(frozen=True)
class WildPhoto:
    """A made photo: JPEG bytes, the product's box (relative x, y, w, h) and what was drawn."""

    jpeg: bytes
    box: tuple[float, float, float, float]
    recipe: dict[str, Any] = field(default_factory=dict)


def make_wild(
    image: ImageSource, seed: int | Sequence[int], size: tuple[int, int] = OUTPUT_SIZE
) -> WildPhoto:
    """A shopper-like photo of a catalogue photo's product (same seed, same bytes)."""
    rng = np.random.default_rng(seed)
    width, height = size
    rgb, alpha = cut_out(image)
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    canvas = background(kind, rng, width, height)
    clutter = int(rng.random() < 0.3) * int(rng.integers(1, 4))
    _add_objects(canvas, rng, clutter)
    product, matte, recipe = _place(rgb, alpha, rng, width, height)
    if rng.random() < 0.5:
        _cast_shadow(canvas, matte, rng)
    a = matte[..., None]
    photo = canvas * (1.0 - a) + product * a
    recipe |= {"background": kind, "objects": clutter}
    recipe |= _relight(photo, rng)
    photo, finish = _finish(photo, rng, recipe["contrast"], recipe["gamma"])
    recipe |= finish
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, "JPEG", quality=recipe["jpeg_quality"])
    ys, xs = np.nonzero(matte > 0.5)
    box = (
        xs.min() / width,
        ys.min() / height,
        (xs.max() + 1 - xs.min()) / width,
        (ys.max() + 1 - ys.min()) / height,
    )
    return WildPhoto(buffer.getvalue(), tuple(round(float(v), 5) for v in box), recipe)


# -- the product --------------------------------------------------------------------------------


def cut_out(image: ImageSource) -> tuple[np.ndarray, np.ndarray]:
    """A studio photo's product: RGB float32 [h, w, 3] in 0..1 and alpha float32 [h, w],
    both cropped to the product."""
    arr = np.asarray(load_image(image), np.uint8)
    frame = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    colour = np.median(frame, axis=0)
    distance = np.abs(arr.astype(np.float32) - colour).max(axis=2)
    near = (distance <= CUT_TOLERANCE).astype(np.uint8)
    _, labels = cv2.connectedComponents(near, connectivity=4)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    outside = np.isin(labels, edge[edge > 0])
    product = ~outside
    if product.mean() < 0.02:  # a product the colour of its background: keep the photo
        product = np.ones_like(product)
    # One pixel in from the edge: the studio's anti-aliased rim would show as a white halo.
    inner = cv2.erode(product.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    if inner.sum() >= 0.5 * product.sum():
        product = inner
    soft = np.clip(distance / (2.0 * CUT_TOLERANCE), 0.0, 1.0)
    alpha = np.where(product, np.maximum(soft, product & ~_rim(product)), 0.0).astype(np.float32)
    ys, xs = np.nonzero(product)
    crop = np.s_[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    return arr[crop].astype(np.float32) / 255.0, alpha[crop]


def _rim(mask: np.ndarray) -> np.ndarray:
    """The outermost pixels of a mask (where its alpha may stay soft)."""
    eroded = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8))
    return mask & ~eroded.astype(bool)


def _place(
    rgb: np.ndarray, alpha: np.ndarray, rng: np.random.Generator, width: int, height: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The product warped onto the canvas (RGB, alpha) and how: scale, centre, angle, tilt."""
    h, w = alpha.shape
    fill = float(rng.uniform(0.35, 0.85))  # the product height, share of the canvas height
    scale = min(fill * height / h, 0.9 * width / w)
    angle = float(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    tilt = float(rng.uniform(0.0, 0.08))
    half = np.array([[-w, -h], [w, -h], [w, h], [-w, h]], np.float32) / 2.0
    theta = np.deg2rad(angle)
    turn = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]], np.float32)
    corners = (half * scale) @ turn.T
    corners += rng.uniform(-tilt, tilt, corners.shape).astype(np.float32) * scale * max(w, h)
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    room_x = max(width - (hi[0] - lo[0]), 1.0)
    room_y = max(height - (hi[1] - lo[1]), 1.0)
    corners += np.array(
        [rng.uniform(0, room_x) - lo[0], rng.uniform(0, room_y) - lo[1]], np.float32
    )
    source = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    warp = cv2.getPerspectiveTransform(source, corners)
    flags = cv2.INTER_LINEAR
    product = cv2.warpPerspective(rgb, warp, (width, height), flags=flags)
    # A 60x80 mask enlarged ten times has staircase edges: blur it at its own size, enlarge,
    # then sharpen the ramp back, which leaves smooth contours a pixel or two wide.
    smooth = cv2.GaussianBlur(alpha, (0, 0), 0.7)
    matte = cv2.warpPerspective(smooth, warp, (width, height), flags=flags)
    matte = np.clip((matte - 0.5) * 4.0 + 0.5, 0.0, 1.0)
    recipe = {"scale": round(scale, 3), "angle": round(angle, 2), "tilt": round(tilt, 3)}
    return product, matte, recipe


def _cast_shadow(canvas: np.ndarray, matte: np.ndarray, rng: np.random.Generator) -> None:
    """Darken the background under and beside the product, in place."""
    h, w = matte.shape
    shift = np.float32([[1, 0, rng.uniform(-0.03, 0.03) * w], [0, 1, rng.uniform(0, 0.04) * h]])
    shadow = cv2.warpAffine(matte, shift, (w, h))
    sigma = float(rng.uniform(0.01, 0.04)) * h
    shadow = cv2.GaussianBlur(shadow, (0, 0), sigma)
    canvas *= 1.0 - float(rng.uniform(0.15, 0.45)) * shadow[..., None]


# -- backgrounds --------------------------------------------------------------------------------


def background(kind: str, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A background of one of ``BACKGROUNDS``: float32 [height, width, 3] in 0..1."""
    if kind not in BACKGROUNDS:
        raise ValueError(f"unknown background {kind!r}; choose from {', '.join(BACKGROUNDS)}")
    draw = {
        "plain": _plain,
        "gradient": _gradient,
        "noise": _noise_texture,
        "stripes": _stripes,
        "checks": _checks,
        "tiles": _tiles,
        "wood": _wood,
        "bed": _bed,
        "room": _room,
    }[kind]
    out = draw(rng, width, height).astype(np.float32)
    if rng.random() < 0.25:  # out of focus behind the product
        out = cv2.GaussianBlur(out, (0, 0), float(rng.uniform(1.0, 4.0)))
    return np.clip(out, 0.0, 1.0)


def _colour(rng: np.random.Generator, light: tuple[float, float] = (0.15, 1.0)) -> np.ndarray:
    """A random colour (float RGB): any hue, often muted, lightness in ``light``."""
    hsv = np.array(
        [[[rng.uniform(0, 180), 255 * rng.uniform(0, 1) ** 1.5, 255 * rng.uniform(*light)]]],
        np.float32,
    )
    rgb = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
    return rgb.reshape(3).astype(np.float32) / 255.0


def _noise(rng: np.random.Generator, width: int, height: int, cells: int) -> np.ndarray:
    """Smooth value noise [height, width] in about 0..1, ``cells`` cells across."""
    grid = rng.random((max(2, cells * height // width), max(2, cells))).astype(np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


def _fractal(rng: np.random.Generator, width: int, height: int, octaves: int = 4) -> np.ndarray:
    """Noise summed over octaves, normalised to 0..1."""
    base = int(rng.integers(2, 8))
    total = sum(_noise(rng, width, height, base * 2**o) / 2**o for o in range(octaves))
    return (total - total.min()) / max(float(total.max() - total.min()), 1e-6)


def _mix(t: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel blend of two colours by t [h, w] in 0..1."""
    return a * (1.0 - t[..., None]) + b * t[..., None]


def _plain(rng, width, height) -> np.ndarray:
    shade = 1.0 + 0.08 * (_noise(rng, width, height, 2) - 0.5)
    return _colour(rng) * shade[..., None] * np.ones((height, width, 1), np.float32)


def _gradient(rng, width, height) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    if rng.random() < 0.5:
        theta = rng.uniform(0, 2 * np.pi)
        t = xs * np.cos(theta) + ys * np.sin(theta)
    else:
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        t = np.hypot(xs - cx, ys - cy)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return _mix(t, _colour(rng), _colour(rng))


def _noise_texture(rng, width, height) -> np.ndarray:
    t = _fractal(rng, width, height, octaves=int(rng.integers(2, 6)))
    grain = rng.normal(0, rng.uniform(0.0, 0.08), (height, width)).astype(np.float32)
    return _mix(np.clip(t + grain, 0, 1), _colour(rng), _colour(rng))


def _bands(rng, width, height, period: float, theta: float) -> np.ndarray:
    """Stripe phase 0..1 at each pixel for stripes ``period`` px apart at angle ``theta``."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return ((xs * np.cos(theta) + ys * np.sin(theta)) / period) % 1.0


def _stripes(rng, width, height) -> np.ndarray:
    theta = rng.choice([0.0, np.pi / 2, rng.uniform(0, np.pi)])
    phase = _bands(rng, width, height, rng.uniform(8, 90), theta)
    colours = [_colour(rng) for _ in range(int(rng.integers(2, 4)))]
    index = np.minimum((phase * len(colours)).astype(int), len(colours) - 1)
    out = np.stack(colours)[index]
    return cv2.GaussianBlur(out, (0, 0), float(rng.uniform(0.3, 2.0)))


def _checks(rng, width, height) -> np.ndarray:
    period = rng.uniform(12, 80)
    theta = rng.uniform(-0.2, 0.2)
    a = _bands(rng, width, height, period, theta) < 0.5
    b = _bands(rng, width, height, period, theta + np.pi / 2) < 0.5
    base, line = _colour(rng), _colour(rng)
    t = (a.astype(np.float32) + b.astype(np.float32)) / 2.0  # gingham: overlaps darker
    return _mix(t, base, line)


def _tiles(rng, width, height) -> np.ndarray:
    size = rng.uniform(30, 120)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    grout = ((xs % size) < 3) | ((ys % size) < 3)
    tile = _colour(rng, (0.4, 1.0))
    jitter = _noise(rng, width, height, int(width / size) + 1)[..., None] * 0.1
    out = tile * (0.95 + jitter) * np.ones((height, width, 1), np.float32)
    out[grout] = _colour(rng)
    return out


def _wood(rng, width, height) -> np.ndarray:
    plank = rng.uniform(40, 110)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    across, along = (xs, ys) if rng.random() < 0.5 else (ys, xs)
    row = (across // plank).astype(int)
    tones = rng.uniform(0.75, 1.15, row.max() + 2).astype(np.float32)
    grain_src = rng.random((height // 8 + 2, 6)).astype(np.float32)
    grain = cv2.resize(grain_src, (width, height), interpolation=cv2.INTER_CUBIC)
    if across is ys:
        grain = cv2.resize(grain_src.T, (width, height), interpolation=cv2.INTER_CUBIC)
    seams = ((across % plank) < 2) | ((along + row * 137) % (plank * 6) < 2)
    wood = np.array([0.55, 0.38, 0.22], np.float32) * rng.uniform(0.6, 1.5)
    out = wood * (tones[row] * (0.85 + 0.3 * grain))[..., None]
    out[seams] *= 0.6
    return out


def _bed(rng, width, height) -> np.ndarray:
    sheet = _colour(rng, (0.6, 1.0))
    folds = _fractal(rng, width, height, octaves=2)
    weave = rng.normal(0, 0.015, (height, width)).astype(np.float32)
    shade = 0.75 + 0.3 * folds + weave
    return sheet * shade[..., None]


def _room(rng, width, height) -> np.ndarray:
    horizon = int(height * rng.uniform(0.25, 0.7))
    wall = _plain(rng, width, height) if rng.random() < 0.5 else _gradient(rng, width, height)
    floor = _wood(rng, width, height) if rng.random() < 0.5 else _noise_texture(rng, width, height)
    out = wall.copy()
    out[horizon:] = floor[horizon:]
    out[max(horizon - 6, 0) : horizon] = _colour(rng)  # a skirting board
    return out


def _add_objects(canvas: np.ndarray, rng: np.random.Generator, count: int) -> None:
    """Other things in the frame (boxes, plates, cushions), in place: often cut by its edge."""
    height, width = canvas.shape[:2]
    for _ in range(count):
        colour = tuple(float(c) for c in _colour(rng))
        w, h = rng.uniform(0.1, 0.35) * width, rng.uniform(0.08, 0.3) * height
        cx = rng.choice([rng.uniform(-0.1, 0.2), rng.uniform(0.8, 1.1)]) * width
        cy = rng.uniform(0, 1) * height
        layer = np.zeros((height, width), np.float32)
        if rng.random() < 0.5:
            cv2.ellipse(
                layer,
                (int(cx), int(cy)),
                (int(w / 2), int(h / 2)),
                rng.uniform(0, 180),
                0,
                360,
                1.0,
                -1,
            )
        else:
            cv2.rectangle(
                layer,
                (int(cx - w / 2), int(cy - h / 2)),
                (int(cx + w / 2), int(cy + h / 2)),
                1.0,
                -1,
            )
        layer = cv2.GaussianBlur(layer, (0, 0), 1.0)[..., None]
        canvas[:] = canvas * (1.0 - layer) + np.array(colour, np.float32) * layer


# -- light and camera ---------------------------------------------------------------------------


def _relight(photo: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    """Colour temperature, exposure, a lamp's gradient and vignetting, in place; the tone
    curve (contrast, gamma) is chosen here and applied by ``_finish``, after the sensor."""
    height, width = photo.shape[:2]
    warmth = float(rng.uniform(-0.08, 0.22))
    exposure = float(rng.uniform(0.45, 1.15))
    theta = rng.uniform(0, 2 * np.pi)
    lamp_strength, vignette_strength = rng.uniform(0.0, 0.4, 2)
    # Light varies smoothly: work it out on a coarse grid and enlarge it.
    ys, xs = np.mgrid[0:1:33j, 0:1:25j].astype(np.float32) - 0.5
    lamp = 1.0 + lamp_strength * (xs * np.cos(theta) + ys * np.sin(theta))
    vignette = 1.0 - vignette_strength * 2.0 * (xs**2 + ys**2)
    gain = cv2.resize((exposure * lamp * vignette).astype(np.float32), (width, height))
    balance = np.array([1.0 + warmth, 1.0 + warmth / 4, 1.0 - warmth], np.float32)
    photo *= gain[..., None] * balance
    return {
        "warmth": round(warmth, 3),
        "exposure": round(exposure, 3),
        "contrast": round(float(rng.uniform(0.7, 1.3)), 3),
        "gamma": round(float(rng.uniform(0.8, 1.25)), 3),
    }


def _finish(
    photo: np.ndarray, rng: np.random.Generator, contrast: float, gamma: float
) -> tuple[np.ndarray, dict[str, Any]]:
    """Blur (focus or motion), sensor noise, the tone curve and the JPEG quality: uint8
    [h, w, 3] and how."""
    blur = float(rng.uniform(0.0, 2.0))
    if rng.random() < 0.2:
        length = int(rng.integers(3, 10))
        kernel = np.zeros((length, length), np.float32)
        kernel[length // 2] = 1.0 / length
        turn = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), rng.uniform(0, 180), 1)
        kernel = cv2.warpAffine(kernel, turn, (length, length))
        photo = cv2.filter2D(photo, -1, kernel / max(float(kernel.sum()), 1e-6))
        blur = -float(length)  # negative: a motion blur of this many pixels
    elif blur > 0.3:
        photo = cv2.GaussianBlur(photo, (0, 0), blur)
    noise = float(rng.uniform(0.0, 0.03))
    photo = photo + noise * rng.standard_normal(photo.shape, dtype=np.float32)
    quality = int(rng.integers(35, 96))
    levels = np.linspace(0.0, 1.0, 256)
    curve = np.clip((levels - 0.5) * contrast + 0.5, 0.0, 1.0) ** gamma
    lut = np.clip(curve * 255.0 + 0.5, 0, 255).astype(np.uint8)
    out = cv2.LUT(np.clip(photo * 255.0 + 0.5, 0, 255).astype(np.uint8), lut)
    return out, {"blur": round(blur, 2), "noise": round(noise, 3), "jpeg_quality": quality}
