"""A second maker of shopper-like photos, written apart from ``ml.wild`` on purpose.

The shop's own maker (``ml.wild``) also makes the shopper-like views tuning can learn from
(``TUNE_SHOPPER_VIEWS``), so a network taught with them is measured on photos of a family
it has seen. This maker shares none of its code or choices, so that ``model evaluate --wild
DIR`` on its photos tells how far the robustness carries to photos made another way:

- the product is cut by flooding the backdrop from the photo's edge (Pillow), with a hard edge;
- the scenes are other catalogue products on a shelf seen out of focus, folded fabric with a
  weave, and a wall meeting a floor, none of which ``ml.wild`` draws;
- the product is turned with Pillow (up to 15 degrees), squeezed or stretched by up to 12 %
  instead of tilted, and may be cut by the frame's edge;
- light is one of five illuminants (tungsten, shade, fluorescent, flash, daylight) with
  exposure, highlights clipped, a soft shadow ring around the product and vignetting;
- the camera softens by shrinking and enlarging, adds noise that grows with brightness, and
  saves a JPEG at quality 30-92 in one of three frame sizes, portrait or landscape.

The same seed and photo give the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SEED_DOMAIN = 0x07E2
FRAMES = ((480, 640), (600, 800), (640, 480))
SCENES = ("shelf", "fabric", "room")
ILLUMINANTS = {
    "tungsten": (1.18, 1.0, 0.72),
    "shade": (0.88, 0.97, 1.14),
    "fluorescent": (0.95, 1.06, 0.93),
    "flash": (1.02, 1.0, 1.0),
    "daylight": (1.0, 1.0, 0.98),
}
BACKDROP_TOLERANCE = 24  # how far a backdrop pixel may be from the frame's colour
CLOSE = 5  # pixels: gaps in a product's outline this wide are closed
GREY_SPREAD = 16  # a backdrop pixel's largest difference between channels
GREY_TOLERANCE = 40
MARK = (255, 0, 255)  # the flood's colour (no studio backdrop is magenta)


@dataclass(frozen=True)
class OtherPhoto:
    jpeg: bytes
    box: tuple[float, float, float, float]  # where the product is: relative x, y, w, h
    recipe: dict[str, Any] = field(default_factory=dict)


def product_and_mask(photo: Image.Image) -> tuple[Image.Image, Image.Image]:
    """The product cropped from its studio photo and its hard mask ("L", 255 inside)."""
    rgb = photo.convert("RGB")
    pixels = np.array(rgb)
    edge = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    backdrop_colour = tuple(int(v) for v in np.median(edge, axis=0))
    # Studio backdrops brighten towards the middle: grey a little further from the frame's
    # colour counts as backdrop too.
    grey = np.ptp(pixels, axis=2) <= GREY_SPREAD
    distance = np.abs(pixels.astype(np.int16) - np.asarray(backdrop_colour, np.int16)).max(axis=2)
    pixels[grey & (distance <= GREY_TOLERANCE)] = backdrop_colour
    # Flood the backdrop from a one-pixel frame of its colour around the photo: what the flood
    # reaches is backdrop, whatever it cannot reach is the product.
    padded = Image.new("RGB", (rgb.width + 2, rgb.height + 2), backdrop_colour)
    padded.paste(Image.fromarray(pixels), (1, 1))
    ImageDraw.floodfill(padded, (0, 0), MARK, thresh=BACKDROP_TOLERANCE)
    reached = np.all(np.asarray(padded) == MARK, axis=2)[1:-1, 1:-1]
    mask = Image.fromarray(np.where(reached, 0, 255).astype(np.uint8))
    # A white product leaks into a white backdrop: close the outline, then fill what it
    # encloses.
    mask = mask.filter(ImageFilter.MaxFilter(CLOSE)).filter(ImageFilter.MinFilter(CLOSE))
    framed = Image.new("L", (rgb.width + 2, rgb.height + 2), 0)
    framed.paste(mask, (1, 1))
    ImageDraw.floodfill(framed, (0, 0), 128)
    mask = framed.crop((1, 1, rgb.width + 1, rgb.height + 1)).point(
        lambda v: 0 if v == 128 else 255
    )
    box = mask.getbbox()
    if box is None or (box[2] - box[0]) * (box[3] - box[1]) < 0.03 * rgb.width * rgb.height:
        mask, box = Image.new("L", rgb.size, 255), (0, 0, rgb.width, rgb.height)
    return rgb.crop(box), mask.crop(box)


def make_other(
    photo_path: str | Path, seed: Sequence[int], neighbours: Sequence[str | Path]
) -> OtherPhoto:
    """A shopper-like photo of a catalogue photo's product; ``neighbours`` are other catalogue
    photos the shelf scene may show."""
    rng = np.random.default_rng([SEED_DOMAIN, *seed])
    with Image.open(photo_path) as im:
        product, mask = product_and_mask(im)
    width, height = FRAMES[int(rng.integers(len(FRAMES)))]
    scene = SCENES[int(rng.integers(len(SCENES)))]
    canvas = _scene(scene, rng, width, height, neighbours)

    angle = float(rng.uniform(-15.0, 15.0))
    squeeze = float(rng.uniform(0.88, 1.12))
    fill = float(rng.uniform(0.4, 0.9))
    scale = min(fill * height / product.height, 0.95 * width / (product.width * squeeze))
    size = (max(1, round(product.width * scale * squeeze)), max(1, round(product.height * scale)))
    product = product.resize(size, Image.Resampling.BICUBIC).rotate(
        angle, Image.Resampling.BICUBIC, expand=True
    )
    mask = mask.resize(size, Image.Resampling.BILINEAR).rotate(
        angle, Image.Resampling.BILINEAR, expand=True
    )
    mask = mask.filter(ImageFilter.GaussianBlur(0.8))
    # Mostly inside the frame, now and then cut by its edge (up to a tenth of the product).
    spill_x, spill_y = 0.1 * product.width, 0.1 * product.height
    x = int(rng.uniform(-spill_x, max(width - product.width + spill_x, -spill_x + 1)))
    y = int(rng.uniform(-spill_y, max(height - product.height + spill_y, -spill_y + 1)))
    ring = Image.new("L", (width, height), 0)
    ring.paste(mask, (x + int(rng.integers(-6, 7)), y + int(rng.integers(0, 12))), mask)
    ring = ring.filter(ImageFilter.GaussianBlur(float(rng.uniform(6, 18))))
    shade = 1.0 - float(rng.uniform(0.1, 0.4)) * np.asarray(ring, np.float32)[..., None] / 255
    canvas = Image.fromarray(
        np.clip(np.asarray(canvas, np.float32) * shade, 0, 255).astype(np.uint8)
    )
    canvas.paste(product, (x, y), mask)
    placed = Image.new("L", (width, height), 0)
    placed.paste(mask, (x, y), mask)

    illuminant = list(ILLUMINANTS)[int(rng.integers(len(ILLUMINANTS)))]
    exposure = float(rng.uniform(0.5, 1.4))
    pixels = np.asarray(canvas, np.float32) / 255.0
    pixels = pixels * np.asarray(ILLUMINANTS[illuminant], np.float32) * exposure
    ys, xs = np.mgrid[-1 : 1 : complex(0, height), -1 : 1 : complex(0, width)].astype(np.float32)
    vignette = 1.0 - float(rng.uniform(0.0, 0.35)) * (xs**2 + ys**2) / 2
    pixels = np.clip(pixels * vignette[..., None], 0.0, 1.0)  # highlights clip, as a sensor does
    noise = float(rng.uniform(0.0, 0.04))
    pixels += noise * np.sqrt(pixels + 0.01) * rng.standard_normal(pixels.shape).astype(np.float32)
    out = Image.fromarray((np.clip(pixels, 0.0, 1.0) * 255 + 0.5).astype(np.uint8))
    soften = float(rng.uniform(1.0, 2.5))
    if soften > 1.3:
        small = (max(1, round(width / soften)), max(1, round(height / soften)))
        out = out.resize(small, Image.Resampling.BILINEAR).resize((width, height))
    quality = int(rng.integers(30, 93))
    buffer = BytesIO()
    out.save(buffer, "JPEG", quality=quality, subsampling=int(rng.integers(0, 3)))
    left, top, right, bottom = placed.point(lambda v: 255 if v > 127 else 0).getbbox() or (
        0,
        0,
        width,
        height,
    )
    box = (left / width, top / height, (right - left) / width, (bottom - top) / height)
    recipe = {
        "frame": [width, height],
        "scene": scene,
        "angle": round(angle, 2),
        "squeeze": round(squeeze, 3),
        "fill": round(fill, 3),
        "illuminant": illuminant,
        "exposure": round(exposure, 3),
        "noise": round(noise, 3),
        "soften": round(soften, 2),
        "jpeg_quality": quality,
    }
    return OtherPhoto(buffer.getvalue(), tuple(round(v, 5) for v in box), recipe)


def _scene(
    kind: str,
    rng: np.random.Generator,
    width: int,
    height: int,
    neighbours: Sequence[str | Path],
) -> Image.Image:
    if kind == "shelf":
        return _shelf(rng, width, height, neighbours)
    if kind == "fabric":
        return _fabric(rng, width, height)
    return _room(rng, width, height)


def _shelf(
    rng: np.random.Generator, width: int, height: int, neighbours: Sequence[str | Path]
) -> Image.Image:
    """Other products side by side on shelves, out of focus behind the product."""
    shelf = tuple(int(v) for v in rng.integers(90, 230, 3))
    canvas = Image.new("RGB", (width, height), shelf)
    rows = int(rng.integers(2, 4))
    row_height = height // rows
    for r in range(rows):
        x = int(rng.integers(-40, 0))
        while x < width and len(neighbours):
            path = neighbours[int(rng.integers(len(neighbours)))]
            with Image.open(path) as im:
                item = im.convert("RGB")
            h = int(row_height * rng.uniform(0.7, 0.95))
            w = max(1, round(item.width * h / item.height))
            canvas.paste(item.resize((w, h)), (x, r * row_height + (row_height - h)))
            x += w + int(rng.integers(0, 25))
        ImageDraw.Draw(canvas).rectangle(
            (0, (r + 1) * row_height - 8, width, (r + 1) * row_height), fill=shelf
        )
    return canvas.filter(ImageFilter.GaussianBlur(float(rng.uniform(3, 9))))


def _fabric(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A bedspread or a rug: a weave in one or two colours, with soft folds."""
    base = rng.uniform(0.2, 0.95, 3).astype(np.float32)
    thread = np.clip(base * rng.uniform(0.6, 1.3, 3), 0, 1).astype(np.float32)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    period = float(rng.uniform(3, 9))
    weave = (np.sin(xs * 2 * np.pi / period) * np.sin(ys * 2 * np.pi / period) > 0)[..., None]
    cloth = np.where(weave, base, thread)
    folds = np.zeros((height, width), np.float32)
    for _ in range(int(rng.integers(2, 6))):
        theta = rng.uniform(0, np.pi)
        freq = rng.uniform(1.0, 4.0) * 2 * np.pi / max(width, height)
        folds += np.sin((xs * np.cos(theta) + ys * np.sin(theta)) * freq + rng.uniform(0, 6.3))
    light = 0.8 + 0.2 * folds / max(float(np.abs(folds).max()), 1e-6)
    return Image.fromarray((np.clip(cloth * light[..., None], 0, 1) * 255).astype(np.uint8))


def _room(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A painted wall meeting a floor with boards or tiles, with grain."""
    horizon = int(height * rng.uniform(0.3, 0.7))
    wall = rng.uniform(0.4, 0.95, 3)
    floor = rng.uniform(0.15, 0.75, 3)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    pixels = np.where((ys < horizon)[..., None], wall, floor).astype(np.float32)
    step = float(rng.uniform(25, 70))
    lines = (np.abs(((xs + 0.4 * (ys - horizon)) % step) - step / 2) < 1.2) & (ys >= horizon)
    pixels[lines] *= 0.7
    grain = rng.standard_normal((height // 8 + 1, width // 8 + 1)).astype(np.float32)
    grain = np.asarray(
        Image.fromarray(grain).resize((width, height), Image.Resampling.BILINEAR), np.float32
    )
    pixels *= 1.0 + 0.05 * grain[..., None]
    return Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8))
