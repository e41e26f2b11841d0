"""The shopper's crop box: the part of an uploaded photo that photo search looks at.

A box is ``(x, y, w, h)`` in relative units of the photo as it is shown (upright): its left
and top edges and its width and height, each in 0..1. The API takes it as ``crop=x,y,w,h``,
the pages as four percentages; both go through ``check_crop``, so one rule decides what a
box may be. A box that is the whole photo is no box at all (``None``): the photo is searched
exactly as uploaded, so a catalogue photo still finds its own product first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Box = tuple[float, float, float, float]

# A side at most this share of the photo is refused: too little left to recognise anything.
MIN_SIDE = 0.05
# Rounding a box drawn in a browser (or typed as percentages) may overshoot an edge slightly.
SLACK = 1e-6
# Within this of every edge, a box is the whole photo.
WHOLE = 1e-3


class InvalidCrop(ValueError):
    """A crop box that cannot be used; ``message`` says why, for the shopper or API client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def check_crop(values: Sequence[float]) -> Box | None:
    """A valid box from four numbers (x, y, w, h in 0..1), or None for the whole photo;
    ``InvalidCrop`` saying what is wrong otherwise."""
    if len(values) != 4:
        raise InvalidCrop(f"a crop box is four numbers x,y,w,h; got {len(values)}.")
    x, y, w, h = (float(v) for v in values)
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in (x, y, w, h)):
        raise InvalidCrop("each of x, y, w and h must be a number from 0 to 1.")
    if w <= MIN_SIDE or h <= MIN_SIDE:
        raise InvalidCrop(f"the width and height must each be more than {MIN_SIDE:g}.")
    if x + w > 1.0 + SLACK or y + h > 1.0 + SLACK:
        raise InvalidCrop("the box must lie within the photo: x + w and y + h at most 1.")
    w, h = min(w, 1.0 - x), min(h, 1.0 - y)
    if x <= WHOLE and y <= WHOLE and w >= 1.0 - WHOLE - x and h >= 1.0 - WHOLE - y:
        return None
    return (round(x, 6), round(y, 6), round(w, 6), round(h, 6))


def parse_crop(text: str | None) -> Box | None:
    """``"x,y,w,h"`` (relative units) as a valid box; None when empty or the whole photo."""
    if text is None or not text.strip():
        return None
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise InvalidCrop("a crop box is four numbers x,y,w,h, e.g. 0.1,0.2,0.5,0.6.") from None
    return check_crop(values)


def from_percent(values: Sequence[float | None]) -> Box | None:
    """Four percentages (x, y, w, h in 0..100) as a valid box; missing ones mean the whole
    photo (a page whose box was never shown sends none)."""
    if any(v is None for v in values):
        return None
    return check_crop([float(v) / 100.0 for v in values])  # type: ignore[arg-type]


def to_percent(box: Sequence[float] | None) -> dict[str, float]:
    """A box as percentages for a page (``x``, ``y``, ``w``, ``h``; the whole photo for None)."""
    x, y, w, h = box if box is not None else (0.0, 0.0, 1.0, 1.0)
    return {k: round(float(v) * 100.0, 2) for k, v in zip("xywh", (x, y, w, h), strict=True)}
