"""Where the product is in a shopper's photo, found on a CPU in a few milliseconds.

Catalogue photos show the product on white, so a white border is background. A shopper's
photo does not: the product lies on a bed, a floor or a patterned cloth. ``estimate`` finds
it without assuming a colour:

1. the photo is shrunk to ``ANALYSIS_SIDE`` pixels on its longer side and smoothed (texture
   grain and JPEG noise average out);
2. the border is taken as a sample of the background: its colours are clustered in CIELAB,
   and a pixel far from every border cluster is probably product (very far: surely);
3. GrabCut (colour models of both sides plus a smoothness term, OpenCV) settles the mask
   from that start, the border fixed as background (on 200 wild photos, thresholding the
   distance alone found boxes of mean IoU 0.70 with the pasted ones, GrabCut 0.80);
4. the product is the largest region of the mask (with the regions close to its size and
   near it: a pair of shoes); a mask that is nearly empty or nearly everything means the
   product could not be told apart, and the whole photo is used.

``prepare_query`` is what photo search applies to an uploaded photo before it is embedded:
the shopper's crop box when given, then the product's box with a margin, the background
outside the product made transparent (see its docstring for why that is the neutral choice);
``prepare_query_and_box`` also gives the product's box, in the whole photo's units.

Worker tier only (it needs OpenCV); Flask-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from .preprocess import ImageSource, load_image

ANALYSIS_SIDE = 96  # longer side of the copy the mask is worked out on
BORDER = 3  # pixels of that copy's frame taken as background
BORDER_CLUSTERS = 6
MIN_CLUSTER_SHARE = 0.02  # a border cluster smaller than this is taken for the product
GRABCUT_ITERATIONS = 1
# A pixel this many border spreads (and at least the minimum, in Lab units) from every
# border colour starts as probably product; past the second pair, surely product.
LIKELY_SPREADS, LIKELY_MIN = 1.2, 8.0
SURE_SPREADS, SURE_MIN = 3.0, 20.0
MIN_SHARE, MAX_SHARE = 0.02, 0.92  # a mask outside these shares of the photo is not believed
# Rows and columns at the ends of the box that run to the photo's edge with the mask thinner
# than this share of its thickest are trimmed: a skirting board running into the product.
THIN_SHARE = 0.15
# A photo whose border is at least this share white (every channel at least the level) is
# on white as catalogue photos are (97 % of them; no wild photo of bench_foreground's).
WHITE_LEVEL, WHITE_BORDER = 230, 0.7
# Shoppers' photos are often dim: without this gain (the catalogue's are lit to white), wild
# photos' gender + articleType accuracy was 3.4 points lower (3,010 wild photos).
MAX_GAIN = 3.0
MARGIN = 0.06  # share of the product box's size added on each side when cropping


@dataclass(frozen=True)
class Foreground:
    """The product's box (relative x, y, w, h), its soft mask (float32 [h, w] in 0..1 over
    the analysed copy), whether a product was found (else box and mask are the photo) and
    whether the photo is on white as catalogue photos are (its border nearly all white)."""

    box: tuple[float, float, float, float]
    mask: np.ndarray
    found: bool
    on_white: bool = False


def estimate(image: ImageSource) -> Foreground:
    """The product's box and mask in a photo (the whole photo when none stands out)."""
    small = _shrink(load_image(image))
    h, w = small.shape[:2]
    on_white = _on_white(small)
    mask = _product_mask(small)
    share = float(mask.mean())
    if not MIN_SHARE <= share <= MAX_SHARE:
        return Foreground((0.0, 0.0, 1.0, 1.0), np.ones((h, w), np.float32), False, on_white)
    x0, x1 = _thick_span(mask.sum(axis=0))
    y0, y1 = _thick_span(mask.sum(axis=1))
    box = (x0 / w, y0 / h, (x1 - x0) / w, (y1 - y0) / h)
    soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 1.0)
    return Foreground(tuple(float(v) for v in box), soft, True, on_white)


def _on_white(small: np.ndarray) -> bool:
    """Whether a (shrunk) photo's border is nearly all white, as a catalogue photo's is."""
    frame = small[_border(*small.shape[:2])]
    return bool((frame.min(axis=1) >= WHITE_LEVEL).mean() >= WHITE_BORDER)


def _exposed(photo: Image.Image) -> Image.Image:
    """The photo brightened as a camera's auto-exposure would: one gain for all channels
    (hues stay), bringing its brightest percent to white; never darker, at most
    ``MAX_GAIN`` (a dark photo's noise is not worth more)."""
    arr = np.asarray(photo)
    top = float(np.percentile(arr.max(axis=2), 99))
    gain = min(255.0 / max(top, 1.0), MAX_GAIN)
    if gain < 1.02:
        return photo
    return Image.fromarray(cv2.convertScaleAbs(arr, alpha=gain))


def _thick_span(profile: np.ndarray) -> tuple[int, int]:
    """[start, end) of a mask's row or column counts; an end that runs to the photo's edge
    thinly (a skirting board, a table's edge) is trimmed to where the mask is thick."""
    present = np.flatnonzero(profile)
    thick = np.flatnonzero(profile >= THIN_SHARE * profile.max())
    start, end = int(present[0]), int(present[-1]) + 1
    reach = BORDER + 2  # the frame itself is always background
    if start <= reach:
        start = int(thick[0])
    if end >= len(profile) - reach:
        end = int(thick[-1]) + 1
    return start, end


def _shrink(image: Image.Image) -> np.ndarray:
    """uint8 RGB [h, w, 3] with the longer side ``ANALYSIS_SIDE`` (never enlarged)."""
    arr = np.asarray(image, np.uint8)
    h, w = arr.shape[:2]
    scale = min(1.0, ANALYSIS_SIDE / max(h, w))
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        arr = cv2.resize(arr, size, interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(arr, (3, 3), 0)


def _border(h: int, w: int) -> np.ndarray:
    """bool [h, w]: the frame ``BORDER`` pixels wide."""
    frame = np.zeros((h, w), bool)
    b = max(1, min(BORDER, h // 4, w // 4))
    frame[:b], frame[-b:], frame[:, :b], frame[:, -b:] = True, True, True, True
    return frame


def _product_mask(rgb: np.ndarray) -> np.ndarray:
    """bool [h, w]: the product's pixels in a small smoothed photo."""
    h, w = rgb.shape[:2]
    if min(h, w) < 8:
        return np.ones((h, w), bool)
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    frame = _border(h, w)
    distance = _distance_to_border_colours(lab, frame)
    # How far the border's own pixels lie from their clusters says how far "far" is: a
    # flat wall needs little, a striped cloth a lot.
    spread = float(np.percentile(distance[frame], 90))
    maybe = (distance > max(LIKELY_SPREADS * spread, LIKELY_MIN)) & ~frame
    if maybe.mean() < 0.005:
        return np.zeros((h, w), bool)
    start = np.full((h, w), cv2.GC_PR_BGD, np.uint8)
    start[maybe] = cv2.GC_PR_FGD
    start[(distance > max(SURE_SPREADS * spread, SURE_MIN)) & ~frame] = cv2.GC_FGD
    start[frame] = cv2.GC_BGD
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # GrabCut's colour models start from k-means: same photo, same mask
    try:
        cv2.grabCut(
            cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
            start,
            None,
            bgd,
            fgd,
            GRABCUT_ITERATIONS,
            cv2.GC_INIT_WITH_MASK,
        )
    except cv2.error:  # a degenerate colour model (e.g. one flat colour): keep the start
        return _main_regions(maybe)
    return _main_regions((start == cv2.GC_FGD) | (start == cv2.GC_PR_FGD))


def _distance_to_border_colours(lab: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """float32 [h, w]: each pixel's Lab distance to the nearest cluster of border colours."""
    samples = lab[frame]
    k = min(BORDER_CLUSTERS, len(samples))
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 10, 1.0)
    cv2.setRNGSeed(0)
    _, labels, centres = cv2.kmeans(samples, k, None, criteria, 1, cv2.KMEANS_PP_CENTERS)
    # A cluster holding a sliver of the border is most likely the product touching the edge.
    counts = np.bincount(labels.ravel(), minlength=k)
    centres = centres[counts >= MIN_CLUSTER_SHARE * len(samples)]
    flat = lab.reshape(-1, 3)
    d2 = ((flat[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    return np.sqrt(d2.min(axis=1)).reshape(lab.shape[:2])


def _main_regions(mask: np.ndarray) -> np.ndarray:
    """The largest connected region of a mask, with regions at least a fifth its size that
    lie within its reach (the other shoe of a pair), holes filled."""
    clean = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(clean, connectivity=8)
    if n <= 1:
        return np.zeros(mask.shape, bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    main = 1 + int(np.argmax(areas))
    x, y, bw, bh = stats[main, :4]
    reach = max(bw, bh)
    keep = [main]
    for label in range(1, n):
        if label == main or stats[label, cv2.CC_STAT_AREA] < 0.2 * areas.max():
            continue
        lx, ly, lw, lh = stats[label, :4]
        gap_x = max(lx - (x + bw), x - (lx + lw), 0)
        gap_y = max(ly - (y + bh), y - (ly + lh), 0)
        if max(gap_x, gap_y) <= 0.5 * reach:
            keep.append(label)
    region = np.isin(labels, keep).astype(np.uint8)
    # Holes (a print the colour of the floor) are product too: whatever the outside cannot
    # reach around the region.
    reached = np.pad(region, 1)
    cv2.floodFill(reached, None, (0, 0), 1)
    return region.astype(bool) | (reached[1:-1, 1:-1] == 0)


# -- what photo search embeds -------------------------------------------------------------------


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes (x, y, w, h), in any one unit."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    return inter / max(aw * ah + bw * bh - inter, 1e-12)


def crop_relative(image: Image.Image, box: Sequence[float]) -> Image.Image:
    """The part of a photo inside a relative box (x, y, w, h in 0..1), clamped to the photo;
    at least one pixel each way."""
    x, y, bw, bh = _checked(box)
    w, h = image.size
    left = min(max(int(np.floor(x * w)), 0), w - 1)
    top = min(max(int(np.floor(y * h)), 0), h - 1)
    right = min(max(int(np.ceil((x + bw) * w)), left + 1), w)
    bottom = min(max(int(np.ceil((y + bh) * h)), top + 1), h)
    return image.crop((left, top, right, bottom))


def prepare_query(image: ImageSource, crop: Sequence[float] | None = None) -> Image.Image:
    """The photo as photo search embeds it: inside the shopper's crop box (relative x, y,
    w, h) when given, cut to the product's box with a margin, the background outside the
    product transparent (RGBA), brightened if it is dim (as a camera's auto-exposure would).

    Transparent, not a flat colour: the backbone's preprocessing lays transparency on white
    (``ml.preprocess``), which is what surrounds every catalogue photo the query is compared
    with, so the query looks like them and the whole pipeline stays unchanged; the colour
    descriptor (``ml.colour``) reads the product's pixels from the alpha channel instead of
    guessing the background from the border. A photo on white already looks like the
    catalogue's (an uploaded catalogue photo must still embed as its stored self, or the
    same-photo level of photo search would miss it): it is returned as it is; a photo whose
    product does not stand out has nothing to cut: it is returned whole (RGB, inside the
    crop box)."""
    return prepare_query_and_box(image, crop)[0]


def prepare_query_and_box(
    image: ImageSource, crop: Sequence[float] | None = None, max_side: int | None = None
) -> tuple[Image.Image, tuple[float, float, float, float] | None]:
    """``prepare_query``'s image and the product's box it cut around, relative to the whole
    photo (x, y, w, h; None when nothing was cut: a photo on white, or no product standing
    out): what a results page can draw, worked out once. ``max_side``: the part searched
    (inside the crop box) is first shrunk to at most this many pixels on its longer side,
    the network's input size: every step after works on no more pixels than it needs."""
    photo = load_image(image)
    outer = (0.0, 0.0, 1.0, 1.0)
    if crop is not None:
        photo = _crop_fitted(photo, crop, max_side)
        outer = _clamped(crop)
    elif max_side is not None and max(photo.size) > max_side:
        photo.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    if _on_white(_shrink(photo)):
        return photo, None
    photo = _exposed(photo)
    found = estimate(photo)
    if not found.found:
        return photo, None
    x, y, bw, bh = found.box
    mx, my = MARGIN * bw, MARGIN * bh
    alpha = cv2.resize(found.mask, photo.size, interpolation=cv2.INTER_LINEAR)
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.clip(alpha * 255.0 + 0.5, 0, 255).astype(np.uint8)))
    ox, oy, ow, oh = outer
    product = (ox + x * ow, oy + y * oh, bw * ow, bh * oh)
    cut = crop_relative(rgba, _clamped((x - mx, y - my, bw + 2 * mx, bh + 2 * my)))
    return cut, tuple(round(v, 4) for v in product)


def _checked(box: Sequence[float]) -> tuple[float, float, float, float]:
    """A relative box (x, y, w, h) as floats; ``ValueError`` unless it has a width and height."""
    if len(box) != 4:
        raise ValueError(f"a crop box is x, y, w, h; got {box!r}")
    x, y, bw, bh = (float(v) for v in box)
    if not all(np.isfinite([x, y, bw, bh])) or bw <= 0 or bh <= 0:
        raise ValueError(f"a crop box needs a positive width and height; got {box!r}")
    return x, y, bw, bh


def _crop_fitted(photo: Image.Image, box: Sequence[float], max_side: int | None) -> Image.Image:
    """``crop_relative``, shrunk to at most ``max_side`` pixels on its longer side. Shrinking
    resamples the box's exact edges (fractions of a pixel), not whole pixels around them: a
    photo decoded small for speed (``ml.preprocess.load_image_reduced``) still gives the box
    a full decode would."""
    x, y, w, h = _clamped(_checked(box))
    width, height = photo.size
    longer = max(w * width, h * height)
    if max_side is None or longer <= max_side or min(w * width, h * height) < 1:
        cut = crop_relative(photo, box)
        if max_side is not None and max(cut.size) > max_side:
            cut.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
        return cut
    scale = max_side / longer
    size = (max(1, round(w * width * scale)), max(1, round(h * height * scale)))
    region = (x * width, y * height, (x + w) * width, (y + h) * height)
    return photo.resize(size, Image.Resampling.BICUBIC, box=region, reducing_gap=2.0)


def _clamped(box: Sequence[float]) -> tuple[float, float, float, float]:
    """A relative box (x, y, w, h) cut to the photo."""
    x0, y0 = max(0.0, float(box[0])), max(0.0, float(box[1]))
    x1, y1 = min(1.0, float(box[0] + box[2])), min(1.0, float(box[1] + box[3]))
    return (x0, y0, max(x1 - x0, 0.0), max(y1 - y0, 0.0))
