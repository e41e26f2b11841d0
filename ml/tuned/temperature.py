"""Each classifier's confidence temperature, so that a confidence reads as a probability."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ml.tuned.config import class_indices
from ml.tuned.network import TunedNetwork
from ml.tuned.scoring import raw_probabilities


def fit_temperature(log_probs: np.ndarray, y: np.ndarray) -> float:
    """The temperature T minimising the negative log-likelihood of softmax(log_probs / T)
    on labelled rows (``y`` class indices; -1 rows are left out); 1 when none is labelled.

    Label smoothing trains a classifier towards 0.9 rather than 1 for the right class, so
    its raw confidences run low; photo search narrows only when a confidence reaches a
    threshold, which then means something only once the confidences are calibrated."""
    log_probs = np.asarray(log_probs, np.float64)
    y = np.asarray(y, np.int64)
    known = y >= 0
    if not known.any():
        return 1.0
    z, y = log_probs[known], y[known]
    z = z - z.max(axis=1, keepdims=True)  # each row's largest is 0, so is it in z / t

    def nll(t: float) -> float:
        s = z / t
        return float(np.mean(np.log(np.exp(s).sum(axis=1)) - s[np.arange(len(y)), y]))

    # A coarse grid in log T, then golden-section search around its best point.
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 61))
    best = int(np.argmin([nll(t) for t in grid]))
    lo, hi = np.log(grid[max(best - 1, 0)]), np.log(grid[min(best + 1, len(grid) - 1)])
    ratio = (np.sqrt(5.0) - 1) / 2
    for _ in range(40):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if nll(float(np.exp(a))) < nll(float(np.exp(b))):
            hi = b
        else:
            lo = a
    return round(float(np.exp((lo + hi) / 2)), 4)


def fit_temperatures(
    network: TunedNetwork,
    base: Any,
    maps: np.ndarray,
    colours: np.ndarray,
    labels: Mapping[str, Sequence[str | None]],
) -> dict[str, float]:
    """Each classifier's temperature, fitted on labelled maps it was not trained on."""
    return {
        name: fit_temperature(
            np.log(np.maximum(probs, 1e-30)), class_indices(network.classes[name], labels[name])
        )
        for name, probs in raw_probabilities(network, base, maps, colours).items()
    }
