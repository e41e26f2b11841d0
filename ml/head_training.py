"""Training the photo-search heads (``ml.heads``) with Keras on cached backbone embeddings.

Each head is a small Keras model (standardise, dense ReLU layer, dropout, softmax) trained on
the L2-normalised embeddings of one backbone with one of the catalogue's labels; rare classes
are merged into ``(other)`` first (``ml.labels``). Every head is measured on the same
stratified validation split, and the derived type's decoding ("joint" or "within_sub") is
the one that scores better there.

The trained weights are kept as a NumPy ``Head``; the Keras model is saved beside them
(``<name>.keras``) when a folder is given.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml.fitting import fit_adam_cosine
from ml.heads import DECODINGS, HEAD_NAMES, Head, HeadSet, Prediction, decode_type
from ml.labels import (
    OTHER,
    Scores,
    encode,
    majority_sub,
    merge_rare,
    score,
    stratified_split,
)


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters shared by every head."""

    hidden: int = 512
    dropout: float = 0.5
    epochs: int = 40
    batch_size: int = 512
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return dict(self.__dict__)


def fit_head(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    classes: Sequence[str],
    train_idx: np.ndarray,
    config: TrainConfig = TrainConfig(),
    keras_path: str | os.PathLike | None = None,
) -> Head:
    """Train one head with Keras on rows ``train_idx`` (labels are class indices)."""
    # Keras is heavy and only training needs it; serving a head is NumPy only.
    import keras
    from keras import layers

    keras.utils.set_random_seed(config.seed)
    x_train = np.asarray(x[train_idx], np.float32)
    y_train = np.asarray(y[train_idx], np.int64)
    mean = x_train.mean(axis=0)
    scale = x_train.std(axis=0) + 1e-6
    inputs = keras.Input(shape=(x.shape[1],), name="embedding")
    h = layers.Normalization(mean=mean, variance=scale**2, name="standardise")(inputs)
    h = layers.Dense(
        config.hidden,
        activation="relu",
        name="hidden",
        kernel_regularizer=keras.regularizers.L2(config.weight_decay),
    )(h)
    h = layers.Dropout(config.dropout, name="dropout")(h)
    outputs = layers.Dense(len(classes), activation="softmax", name="probabilities")(h)
    model = keras.Model(inputs, outputs, name=f"head_{name}")
    fit_adam_cosine(
        model,
        x_train,
        y_train,
        loss="sparse_categorical_crossentropy",
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
    )
    if keras_path is not None:
        model.save(keras_path)
    w1, b1 = model.get_layer("hidden").get_weights()
    w2, b2 = model.get_layer("probabilities").get_weights()
    return Head(
        name, classes, {"mean": mean, "scale": scale, "w1": w1, "b1": b1, "w2": w2, "b2": b2}
    )


@dataclass
class TrainReport:
    """What ``train_heads`` measured, per head, on the validation split."""

    scores: dict[str, Scores]
    decoding_scores: dict[str, Scores]
    decoding: str
    seconds: float
    train_rows: int
    val_rows: int
    merged: dict[str, int]


def train_heads(
    model_id: str,
    x: np.ndarray,
    labels: Mapping[str, Sequence[str | None]],
    *,
    min_count: int = 10,
    val_fraction: float = 0.2,
    config: TrainConfig = TrainConfig(),
    keras_dir: str | os.PathLike | None = None,
    progress: Any = None,
) -> tuple[HeadSet, TrainReport]:
    """Train the ``sub``, ``type`` and ``colour`` heads; measure each on a stratified split.

    ``labels`` maps each head name to one label per embedding row. The split is stratified
    on the derived type (the finest label), so every head is measured on the same rows.
    """
    started = time.perf_counter()
    x = np.asarray(x, np.float32)
    _check_labels(labels, len(x))
    merged = {name: merge_rare(labels[name], min_count) for name in HEAD_NAMES}
    strat = np.asarray([str(v) for v in merged["type"]])
    train_idx, val_idx = stratified_split(strat, val_fraction, config.seed)
    heads: dict[str, Head] = {}
    scores: dict[str, Scores] = {}
    val_probs: dict[str, np.ndarray] = {}
    val_rows: dict[str, np.ndarray] = {}
    for name in HEAD_NAMES:
        keras_path = None if keras_dir is None else Path(keras_dir) / f"{name}.keras"
        heads[name], scores[name], val_probs[name], val_rows[name] = _fit_and_score(
            name, x, merged[name], (train_idx, val_idx), config, keras_path, progress
        )

    type_to_sub = majority_sub(list(merged["type"]), list(merged["sub"]))
    decoding_scores = _compare_decodings(heads, merged, val_probs, val_rows, type_to_sub)
    decoding = max(DECODINGS, key=lambda d: decoding_scores[d].accuracy)
    scores["type"] = decoding_scores[decoding]
    meta = {
        "train_config": config.as_dict(),
        "min_count": min_count,
        "val_fraction": val_fraction,
        "train_rows": int(len(train_idx)),
        "val_rows": int(len(val_idx)),
        "validation": {name: s.as_dict() for name, s in scores.items()},
        "decoding_validation": {d: s.as_dict() for d, s in decoding_scores.items()},
    }
    report = TrainReport(
        scores=scores,
        decoding_scores=decoding_scores,
        decoding=decoding,
        seconds=time.perf_counter() - started,
        train_rows=len(train_idx),
        val_rows=len(val_idx),
        merged={name: int(np.sum(merged[name] == OTHER)) for name in HEAD_NAMES},
    )
    return HeadSet(model_id, heads, decoding, type_to_sub, meta), report


def _check_labels(labels: Mapping[str, Sequence[str | None]], rows: int) -> None:
    """Every head has one label per embedding row (a clear ValueError otherwise)."""
    missing = set(HEAD_NAMES) - set(labels)
    if missing:
        raise ValueError(f"labels for {sorted(missing)} are missing")
    for name in HEAD_NAMES:
        if len(labels[name]) != rows:
            raise ValueError(f"{name}: {len(labels[name])} labels for {rows} embeddings")


def _fit_and_score(
    name: str,
    x: np.ndarray,
    merged: np.ndarray,
    split: tuple[np.ndarray, np.ndarray],
    config: TrainConfig,
    keras_path: Path | None,
    progress: Any,
) -> tuple[Head, Scores, np.ndarray, np.ndarray]:
    """One head trained on the labelled training rows and scored on the labelled validation
    rows: (head, scores, validation probabilities, validation rows)."""
    classes, y = encode(merged)
    if len(classes) < 2:
        raise ValueError(f"{name}: need at least two classes to train a head")
    has = y >= 0
    train_idx, val_idx = split
    tr = train_idx[has[train_idx]]
    va = val_idx[has[val_idx]]
    if progress:
        progress(name)
    head = fit_head(name, x, y, classes, tr, config, keras_path)
    probs = head.predict(x[va])
    return head, score(y[va], probs.argmax(axis=1)), probs, va


def _compare_decodings(heads, merged, val_probs, val_rows, type_to_sub) -> dict[str, Scores]:
    """Validation scores of the derived type decoded jointly and within the predicted sub."""
    rows = val_rows["type"]
    sub_pos = {int(r): i for i, r in enumerate(val_rows["sub"])}
    classes = heads["type"].classes
    truth = np.asarray([merged["type"][r] for r in rows], dtype=object)
    out = {}
    for decoding in DECODINGS:
        preds = []
        for i, r in enumerate(rows):
            sub = None
            j = sub_pos.get(int(r))
            if j is not None:
                k = int(np.argmax(val_probs["sub"][j]))
                sub = Prediction(heads["sub"].classes[k], float(val_probs["sub"][j][k]))
            preds.append(decode_type(val_probs["type"][i], classes, decoding, type_to_sub, sub)[0])
        out[decoding] = score(truth, np.asarray(preds, dtype=object))
    return out
