"""How a tuned network's classifiers do, as served (mirror-averaged, as photo-search heads)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ml.tuned.config import CLASSIFIERS
from ml.tuned.network import TunedBackbone, TunedNetwork


def raw_probabilities(
    network: TunedNetwork, base: Any, maps: np.ndarray, colours: np.ndarray
) -> dict[str, np.ndarray]:
    """Each classifier's own probabilities (as served: mirror-averaged, no temperature) for
    stored maps [n, views, h, w, c]."""
    vectors = TunedBackbone(network, base, keep_exports=False).embed_maps(maps, colours)
    raw = TunedNetwork(
        network.top_weights,
        network.classifiers,
        network.classes,
        {k: v for k, v in network.meta.items() if k != "temperatures"},
    ).headset({})
    return {name: raw.heads[name].predict(vectors) for name in CLASSIFIERS}


def score_network(
    network: TunedNetwork,
    base: Any,
    maps: np.ndarray,
    colours: np.ndarray,
    labels: Mapping[str, Sequence[str | None]],
) -> dict[str, float]:
    """Accuracy of each classifier (as served: mirror-averaged, as heads) on labelled maps."""
    out = {}
    for name, probs in raw_probabilities(network, base, maps, colours).items():
        predicted = np.asarray(network.classes[name], dtype=object)[probs.argmax(axis=1)]
        truth = np.asarray([lab if lab else None for lab in labels[name]], dtype=object)
        known = np.asarray([t is not None for t in truth])
        out[name] = (
            float(np.mean(predicted[known] == truth[known])) if known.any() else float("nan")
        )
    return out
