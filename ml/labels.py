"""The catalogue's labels as classifiers learn them: rare classes merged, classes encoded,
stratified splits and the scores of a prediction.

Classes with fewer than ``min_count`` examples are merged into one ``(other)`` class before
a split: a class seen twice cannot be learnt or measured, and the merge keeps a stratified
split possible. Predicting ``(other)`` means "none of the common classes".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

OTHER = "(other)"
TYPE_SEPARATOR = "|"


def derived_type(gender: str | None, article_type: str | None) -> str | None:
    """The "derived type" label: gender and article type, e.g. ``Men|Shirts``."""
    if not gender or not article_type:
        return None
    return f"{gender}{TYPE_SEPARATOR}{article_type}"


def split_derived_type(label: str) -> tuple[str, str]:
    """(gender, article type) of a derived type label; ``("(other)", "")`` for OTHER."""
    gender, _, article_type = label.partition(TYPE_SEPARATOR)
    return gender, article_type


def merge_rare(labels: Sequence[str | None], min_count: int) -> np.ndarray:
    """Labels as an object array, classes with fewer than ``min_count`` examples -> ``OTHER``.

    Missing labels (None or empty) stay None: those rows are left out of that classifier.
    """
    if min_count < 1:
        raise ValueError("min_count must be at least 1")
    clean = [lab if lab else None for lab in labels]
    counts = Counter(lab for lab in clean if lab is not None)
    return np.asarray(
        [None if lab is None else (lab if counts[lab] >= min_count else OTHER) for lab in clean],
        dtype=object,
    )


def encode(merged: Sequence[str | None]) -> tuple[list[str], np.ndarray]:
    """The sorted classes of (merged) labels and each row's class index, -1 for no label."""
    classes = sorted({v for v in merged if v is not None})
    index = {c: i for i, c in enumerate(classes)}
    return classes, np.asarray([index[v] if v is not None else -1 for v in merged])


def majority_sub(types: Sequence[str], subs: Sequence[str]) -> dict[str, str]:
    """Each derived type's most common sub-category (a few catalogue rows disagree)."""
    counts: dict[str, Counter] = {}
    for t, s in zip(types, subs, strict=True):
        if t is not None and s is not None:
            counts.setdefault(t, Counter())[s] += 1
    return {t: c.most_common(1)[0][0] for t, c in counts.items()}


def stratified_split(
    y: np.ndarray, val_fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, validation): each class split in the same proportion.

    A class with a single example goes to training only (it cannot be measured).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError("val_fraction must be between 0 and 1")
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for cls in np.unique(y):
        rows = np.flatnonzero(y == cls)
        rng.shuffle(rows)
        n_val = 0 if len(rows) < 2 else max(1, round(len(rows) * val_fraction))
        n_val = min(n_val, len(rows) - 1)
        val.append(rows[:n_val])
        train.append(rows[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


@dataclass(frozen=True)
class Scores:
    """Validation figures of one classifier."""

    accuracy: float
    macro_f1: float
    macro_precision: float
    n: int
    classes: int

    def as_dict(self) -> dict[str, float | int]:
        """JSON-safe form."""
        return {
            "accuracy": round(self.accuracy, 4),
            "macro_f1": round(self.macro_f1, 4),
            "macro_precision": round(self.macro_precision, 4),
            "n": self.n,
            "classes": self.classes,
        }


def score(y_true: np.ndarray, y_pred: np.ndarray) -> Scores:
    """Accuracy, macro F1 and macro precision over the classes present in ``y_true``."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError("y_true and y_pred must be 1-D and of equal length")
    if len(y_true) == 0:
        return Scores(0.0, 0.0, 0.0, 0, 0)
    classes = np.unique(y_true)
    f1s, precisions = [], []
    for cls in classes:
        tp = np.sum((y_pred == cls) & (y_true == cls))
        predicted = np.sum(y_pred == cls)
        actual = np.sum(y_true == cls)
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual
        precisions.append(precision)
        f1s.append(0.0 if tp == 0 else 2 * precision * recall / (precision + recall))
    return Scores(
        accuracy=float(np.mean(y_true == y_pred)),
        macro_f1=float(np.mean(f1s)),
        macro_precision=float(np.mean(precisions)),
        n=len(y_true),
        classes=len(classes),
    )
