"""The duplicate threshold: the embedding cosine above which two photos count as near duplicates.

It is chosen from three kinds of pairs, measured on a model's stored embeddings and the
catalogue itself (the worker's duplicate-threshold job gathers them):

* positives: re-encoded and rescaled copies of catalogue photos (:func:`reencoded_copies`)
  compared with the stored vector of their original, which is what a re-upload looks like;
  without a backbone at hand, the pairs of byte-identical photos stand in;
* random negatives: random pairs of products with different photos;
* nearest negatives: for sampled products, the closest product showing a different picture.
  Its cosine is what a genuinely new photo scores against the whole catalogue, so the share
  of them above the threshold is the share of new uploads that would be flagged wrongly.

:func:`choose_threshold` takes the larger of the random negatives' 99.99th percentile and
the nearest negatives' 98th percentile (at most 2% of new photos flagged); when the
positives' 1st percentile lies above that, the midpoint of the gap.

Plain NumPy and Pillow, no Flask.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

TARGET_FALSE_ALARMS = 1e-4
# Share of genuinely new photos that may be flagged as possible duplicates.
TARGET_ALARM_RATE = 0.02
RECALL_QUANTILE = 0.01
MAX_POSITIVE_PAIRS = 100_000


def pairs_within_groups(groups: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """All (i, j) pairs inside each group of rows, at most MAX_POSITIVE_PAIRS of them."""
    pairs = [
        (int(g[a]), int(g[b])) for g in groups for a in range(len(g)) for b in range(a + 1, len(g))
    ]
    arr = np.asarray(pairs, np.int64).reshape(-1, 2)
    if len(arr) > MAX_POSITIVE_PAIRS:
        arr = arr[rng.choice(len(arr), MAX_POSITIVE_PAIRS, replace=False)]
    return arr


def choose_threshold(
    positives: np.ndarray,
    negatives: np.ndarray,
    nearest: np.ndarray | None = None,
    *,
    target: float = TARGET_FALSE_ALARMS,
    alarm_rate: float = TARGET_ALARM_RATE,
) -> dict[str, Any]:
    """The threshold and the numbers behind it, from positive, random and nearest negatives."""
    if len(negatives) == 0:
        raise ValueError(
            "the duplicate threshold needs negative pairs (products with different photos)"
        )
    neg_hi = float(np.quantile(negatives, 1 - target))
    stats: dict[str, Any] = {
        "negatives": int(len(negatives)),
        "negative_mean": round(float(negatives.mean()), 4),
        "negative_q999": round(float(np.quantile(negatives, 0.999)), 4),
        "negative_q9999": round(neg_hi, 4),
        "negative_max": round(float(negatives.max()), 4),
        "positives": int(len(positives)),
    }
    floor, rule = neg_hi, "random negatives' 99.99th percentile"
    if nearest is not None and len(nearest):
        near_hi = float(np.quantile(nearest, 1 - alarm_rate))
        stats["nearest"] = int(len(nearest))
        stats["nearest_median"] = round(float(np.median(nearest)), 4)
        stats["nearest_q98"] = round(near_hi, 4)
        if near_hi > floor:
            floor, rule = near_hi, f"nearest negatives' {100 * (1 - alarm_rate):g}th percentile"
    threshold = floor
    if len(positives):
        pos_lo = float(np.quantile(positives, RECALL_QUANTILE))
        stats["positive_q01"] = round(pos_lo, 4)
        stats["positive_median"] = round(float(np.median(positives)), 4)
        if pos_lo > floor:
            threshold, rule = (floor + pos_lo) / 2, f"midpoint between the {rule} and the positives"
        stats["recall"] = round(float(np.mean(positives >= threshold)), 4)
    stats["false_alarms_random"] = float(np.mean(negatives >= threshold))
    if nearest is not None and len(nearest):
        stats["false_alarms_new_photo"] = round(float(np.mean(nearest >= threshold)), 4)
    stats["threshold"] = round(float(threshold), 4)
    stats["rule"] = rule
    return stats


def reencoded_copies(photo: str) -> list[Image.Image]:
    """A catalogue photo as a re-upload might look: re-encoded, doubled, shrunk."""
    with Image.open(photo) as img:
        img = img.convert("RGB")
    out = []
    w, h = img.size
    for size, quality in (
        ((w, h), 70),
        ((w * 2, h * 2), 85),
        ((max(8, w * 3 // 4), max(8, h * 3 // 4)), 90),
    ):
        buf = io.BytesIO()
        img.resize(size, Image.Resampling.LANCZOS).save(buf, "JPEG", quality=quality)
        out.append(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return out
