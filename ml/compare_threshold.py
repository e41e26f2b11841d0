"""The two-image compare threshold, calibrated on catalogue pairs rather than guessed.

Score: a cosine in [-1, 1] maps linearly to ``(cos + 1) / 2`` in [0, 1]; monotone, so a
threshold on the score is a threshold on the cosine.

Fitting: pairs of catalogue products are drawn at random, half of them "same" (same article
type, gender and colour) and half "different" (any of the three differs). On a first sample
the threshold is the lowest score at which the pairs scoring at or above it reach the target
precision (the most recall that precision allows); a second, independent sample then
measures the precision and recall that threshold really gives. Precision is stated for that
balanced mix (one same pair for each different pair).

The result is stored as ``compare.json`` beside the model's embeddings; ``ml.thresholds``
reads it back.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml.folders import write_json
from ml.thresholds import compare_threshold_file

# The layout of compare.json; bumped when its fields change meaning.
FILE_VERSION = 1


def cosine_to_score(cos: float | np.ndarray) -> float | np.ndarray:
    """Map a cosine in [-1, 1] to a score in [0, 1]: (cos + 1) / 2, clipped."""
    if isinstance(cos, np.ndarray):
        return np.clip((cos.astype(np.float64) + 1.0) / 2.0, 0.0, 1.0)
    return min(1.0, max(0.0, (float(cos) + 1.0) / 2.0))


def sample_pairs(
    keys: Sequence[str], n_pairs: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows a, rows b, same) for ``n_pairs`` distinct-row pairs, half same-key, half not."""
    if n_pairs < 2:
        raise ValueError("n_pairs must be at least 2")
    keys_arr = np.asarray(keys, dtype=object)
    rng = np.random.default_rng(seed)
    _, codes = np.unique(keys_arr.astype(str), return_inverse=True)
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(codes.max() + 2))
    sizes = np.diff(starts)
    groups = np.flatnonzero(sizes >= 2)
    if len(groups) == 0:
        raise ValueError("no key has two products: cannot draw 'same' pairs")
    if len(sizes[sizes > 0]) < 2:
        raise ValueError("every product has the same key: cannot draw 'different' pairs")
    n_same = n_pairs // 2
    # A same pair: a random product whose key has another product, and one of those others.
    eligible = order[np.isin(codes[order], groups)]
    a_same = rng.choice(eligible, n_same)
    grp = codes[a_same]
    offset = rng.integers(0, sizes[grp] - 1)
    b_same = np.empty(n_same, np.int64)
    for i, (a, g, off) in enumerate(zip(a_same, grp, offset, strict=True)):
        members = order[starts[g] : starts[g + 1]]
        others = members[members != a]
        b_same[i] = others[off % len(others)]
    # A different pair: two random products, redrawn until their keys differ.
    n_diff = n_pairs - n_same
    a_diff = rng.integers(0, len(codes), n_diff)
    b_diff = rng.integers(0, len(codes), n_diff)
    clash = codes[a_diff] == codes[b_diff]
    while clash.any():
        b_diff[clash] = rng.integers(0, len(codes), int(clash.sum()))
        clash = codes[a_diff] == codes[b_diff]
    a = np.concatenate([a_same, a_diff])
    b = np.concatenate([b_same, b_diff])
    same = np.concatenate([np.ones(n_same, bool), np.zeros(n_diff, bool)])
    return a, b, same


def pair_scores(vectors: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Compare scores of row pairs of L2-normalised vectors."""
    v = np.asarray(vectors)
    cos = np.einsum("ij,ij->i", np.asarray(v[a], np.float32), np.asarray(v[b], np.float32))
    return cosine_to_score(cos)


def precision_recall_at(
    scores: np.ndarray, same: np.ndarray, threshold: float
) -> tuple[float, float]:
    """Precision and recall of "similar" = score >= threshold."""
    predicted = scores >= threshold
    tp = int(np.sum(predicted & same))
    precision = tp / int(predicted.sum()) if predicted.any() else 1.0
    recall = tp / int(same.sum()) if same.any() else 0.0
    return precision, recall


def threshold_for_precision(scores: np.ndarray, same: np.ndarray, target: float) -> float:
    """The lowest score threshold whose pairs at or above it reach ``target`` precision."""
    if not 0.0 < target <= 1.0:
        raise ValueError("target precision must be in (0, 1]")
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    hits = np.cumsum(same[order])
    precision = hits / np.arange(1, len(s) + 1)
    # Only cut between distinct scores: everything tied at the threshold is "similar" too.
    last_of_tie = np.append(s[1:] != s[:-1], True)
    ok = np.flatnonzero((precision >= target) & last_of_tie)
    if len(ok) == 0:
        return float(min(1.0, s[0] + 1e-6))  # nothing reaches it: only a perfect match would
    return float(s[ok[-1]])


@dataclass(frozen=True)
class CompareThreshold:
    """A fitted compare threshold and how it was obtained."""

    model_id: str
    threshold: float
    target_precision: float
    precision: float
    recall: float
    pairs: int
    rule: str = "same articleType + gender + baseColour"

    def as_dict(self) -> dict:
        """JSON-safe form, as stored in ``compare.json``."""
        return {
            "model_id": self.model_id,
            "version": FILE_VERSION,
            "threshold": round(self.threshold, 6),
            "threshold_cosine": round(2 * self.threshold - 1, 6),
            "target_precision": self.target_precision,
            "heldout_precision": round(self.precision, 4),
            "heldout_recall": round(self.recall, 4),
            "pairs": self.pairs,
            "positive_rule": self.rule,
            "mix": "balanced: one same pair per different pair",
            "score": "(cosine + 1) / 2",
            "calibrated_at": time.time(),
        }


def fit_compare_threshold(
    model_id: str,
    vectors: np.ndarray,
    keys: Sequence[str],
    *,
    target_precision: float = 0.9,
    n_pairs: int = 20000,
    seed: int = 0,
) -> CompareThreshold:
    """Choose the threshold on one pair sample, measure it on another."""
    a, b, same = sample_pairs(keys, n_pairs, seed)
    threshold = threshold_for_precision(pair_scores(vectors, a, b), same, target_precision)
    a2, b2, same2 = sample_pairs(keys, n_pairs, seed + 1)
    precision, recall = precision_recall_at(pair_scores(vectors, a2, b2), same2, threshold)
    return CompareThreshold(model_id, threshold, target_precision, precision, recall, n_pairs)


def save_compare_threshold(model_folder: str | os.PathLike, fitted: CompareThreshold) -> Path:
    """Write ``<model_folder>/<model_id>/compare.json`` atomically."""
    path = compare_threshold_file(model_folder, fitted.model_id)
    return write_json(path, fitted.as_dict(), indent=2, sort_keys=True)
