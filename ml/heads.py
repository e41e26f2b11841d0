"""Classifier heads on cached backbone embeddings: train with Keras, serve with NumPy.

A head is a small Keras model (standardise, dense ReLU layer, dropout, softmax) trained on
the L2-normalised embeddings of one backbone with one of the catalogue's labels. Photo search
uses three:

* ``sub``: the sub-category (Topwear, Shoes, Watches...);
* ``type``: the "derived type", gender + article type (``Men|Shirts``), decoded either over
  all classes at once ("joint") or among the classes of the predicted sub-category
  ("within_sub"), whichever scores better on the validation split;
* ``colour``: the base colour.

Classes with fewer than ``min_count`` examples are merged into one ``(other)`` class before
the split: a class seen twice cannot be learnt or measured, and the merge keeps a stratified
split possible. Predicting ``(other)`` means "none of the common classes" and photo search
then does not narrow on that head.

Training needs Keras (imported inside ``fit_head``); serving does not: a saved head is its
weights in an ``.npz`` file and ``Head.predict`` is two matrix products in NumPy, well under
a millisecond per photo. The Keras model is saved beside the weights (``<name>.keras``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Bumped whenever training or decoding changes in a way that changes predictions.
HEAD_VERSION = 1
OTHER = "(other)"
TYPE_SEPARATOR = "|"
HEAD_NAMES = ("sub", "type", "colour")
DECODINGS = ("joint", "within_sub")


# -- labels and splits ---------------------------------------------------------------------


def merge_rare(labels: Sequence[str | None], min_count: int) -> np.ndarray:
    """Labels as an object array, classes with fewer than ``min_count`` examples -> ``OTHER``.

    Missing labels (None or empty) stay None: those rows are left out of that head.
    """
    if min_count < 1:
        raise ValueError("min_count must be at least 1")
    clean = [lab if lab else None for lab in labels]
    counts = Counter(lab for lab in clean if lab is not None)
    return np.asarray(
        [None if lab is None else (lab if counts[lab] >= min_count else OTHER) for lab in clean],
        dtype=object,
    )


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
    """Validation figures of one head."""

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


# -- one head --------------------------------------------------------------------------------


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


class Head:
    """A trained classifier over embeddings; ``predict`` gives class probabilities."""

    def __init__(self, name: str, classes: Sequence[str], params: Mapping[str, np.ndarray]):
        self.name = name
        self.classes = list(classes)
        self.params = {k: np.asarray(v, np.float32) for k, v in params.items()}
        hidden = {"mean", "scale", "w1", "b1", "w2", "b2"}
        linear = {"mean", "scale", "w2", "b2"}
        if set(self.params) not in (hidden, linear):
            raise ValueError(
                f"head {name!r} needs parameters {sorted(hidden)} (or, linear, {sorted(linear)})"
            )
        if self.params["w2"].shape[1] != len(self.classes):
            raise ValueError(f"head {name!r}: {len(self.classes)} classes but a different output")

    @property
    def dim(self) -> int:
        """The embedding dimension the head expects."""
        return self.params["w1" if "w1" in self.params else "w2"].shape[0]

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        """Class probabilities float32 [n, classes] for embeddings [n, dim] (or one [dim])."""
        x = np.atleast_2d(np.asarray(embeddings, np.float32))
        if x.shape[1] != self.dim:
            raise ValueError(
                f"head {self.name!r} expects {self.dim}-d embeddings, got {x.shape[1]}"
            )
        p = self.params
        h = (x - p["mean"]) / p["scale"]
        if "w1" in p:  # one hidden ReLU layer; a tuned network's classifiers are linear
            h = np.maximum(h @ p["w1"] + p["b1"], 0.0)
        logits = h @ p["w2"] + p["b2"]
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


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
    steps = config.epochs * int(np.ceil(len(x_train) / config.batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, max(steps, 1))
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss="sparse_categorical_crossentropy",
    )
    model.fit(
        x_train,
        y_train,
        batch_size=config.batch_size,
        epochs=config.epochs,
        shuffle=True,
        verbose=0,
    )
    if keras_path is not None:
        model.save(keras_path)
    w1, b1 = model.get_layer("hidden").get_weights()
    w2, b2 = model.get_layer("probabilities").get_weights()
    return Head(
        name, classes, {"mean": mean, "scale": scale, "w1": w1, "b1": b1, "w2": w2, "b2": b2}
    )


# -- the set of heads photo search uses ------------------------------------------------------


@dataclass
class Prediction:
    """One head's answer for one photo."""

    label: str
    confidence: float

    @property
    def is_other(self) -> bool:
        """True when the head only knows it is none of the common classes."""
        return self.label == OTHER


@dataclass
class HeadSet:
    """The sub-category, derived-type and colour heads of one backbone model id."""

    model_id: str
    heads: dict[str, Head]
    decoding: str = "joint"
    type_to_sub: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> str:
        """Head version plus a digest of the weights: part of every result's model id."""
        return self.meta.get("heads_id", f"heads{HEAD_VERSION}")

    def predict(self, embedding: np.ndarray) -> dict[str, Prediction]:
        """Predictions of every head for one embedding [dim]."""
        out: dict[str, Prediction] = {}
        probs = {name: head.predict(embedding)[0] for name, head in self.heads.items()}
        for name in ("sub", "colour"):
            if name in probs:
                i = int(np.argmax(probs[name]))
                out[name] = Prediction(self.heads[name].classes[i], float(probs[name][i]))
        if "type" in probs:
            label, conf = decode_type(
                probs["type"],
                self.heads["type"].classes,
                self.decoding,
                self.type_to_sub,
                out.get("sub"),
            )
            out["type"] = Prediction(label, conf)
        return out

    def save(self, folder: str | os.PathLike, keras_dir: str | os.PathLike | None = None) -> Path:
        """Write the heads into ``folder`` atomically (a new folder swapped in by renames).

        ``keras_dir`` holds the trained Keras models (``<name>.keras``) to keep beside them.
        """
        from .folders import replace_folder

        def fill(tmp: Path) -> None:
            digest = hashlib.sha256()
            for name, head in sorted(self.heads.items()):
                path = tmp / f"{name}.npz"
                np.savez(path, **head.params)
                digest.update(path.read_bytes())
                (tmp / f"{name}.classes.json").write_text(json.dumps(head.classes))
            for keras_file in Path(keras_dir).glob("*.keras") if keras_dir else []:
                shutil.copy2(keras_file, tmp / keras_file.name)
            meta = {
                **self.meta,
                "model_id": self.model_id,
                "head_version": HEAD_VERSION,
                "heads_id": f"heads{HEAD_VERSION}-{digest.hexdigest()[:8]}",
                "decoding": self.decoding,
                "type_to_sub": self.type_to_sub,
                "heads": sorted(self.heads),
                "saved_at": time.time(),
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
            self.meta = meta

        return replace_folder(folder, fill)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> HeadSet:
        """Read heads written by ``save`` (FileNotFoundError when none were trained)."""
        folder = Path(folder)
        meta = json.loads((folder / "meta.json").read_text())
        heads = {}
        for name in meta["heads"]:
            classes = json.loads((folder / f"{name}.classes.json").read_text())
            with np.load(folder / f"{name}.npz") as params:
                heads[name] = Head(name, classes, {k: params[k] for k in params.files})
        return cls(
            model_id=meta["model_id"],
            heads=heads,
            decoding=meta.get("decoding", "joint"),
            type_to_sub=meta.get("type_to_sub", {}),
            meta=meta,
        )


def decode_type(
    probs: np.ndarray,
    classes: Sequence[str],
    decoding: str,
    type_to_sub: Mapping[str, str],
    sub: Prediction | None,
) -> tuple[str, float]:
    """The derived type and its confidence, jointly or within the predicted sub-category.

    Within a sub-category the confidence is P(sub) x P(type | sub), so an unsure
    sub-category makes the type unsure too.
    """
    if decoding not in DECODINGS:
        raise ValueError(f"decoding must be one of {DECODINGS}")
    if decoding == "within_sub" and sub is not None and not sub.is_other:
        mask = np.asarray([type_to_sub.get(c) == sub.label for c in classes])
        if mask.any():
            masked = np.where(mask, probs, 0.0)
            i = int(np.argmax(masked))
            return classes[i], float(sub.confidence * masked[i] / masked.sum())
    i = int(np.argmax(probs))
    return classes[i], float(probs[i])


def majority_sub(types: Sequence[str], subs: Sequence[str]) -> dict[str, str]:
    """Each derived type's most common sub-category (a few catalogue rows disagree)."""
    counts: dict[str, Counter] = {}
    for t, s in zip(types, subs, strict=True):
        if t is not None and s is not None:
            counts.setdefault(t, Counter())[s] += 1
    return {t: c.most_common(1)[0][0] for t, c in counts.items()}


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


def derived_type(gender: str | None, article_type: str | None) -> str | None:
    """The "derived type" label: gender and article type, e.g. ``Men|Shirts``."""
    if not gender or not article_type:
        return None
    return f"{gender}{TYPE_SEPARATOR}{article_type}"


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
    missing = set(HEAD_NAMES) - set(labels)
    if missing:
        raise ValueError(f"labels for {sorted(missing)} are missing")
    for name in HEAD_NAMES:
        if len(labels[name]) != len(x):
            raise ValueError(f"{name}: {len(labels[name])} labels for {len(x)} embeddings")
    merged = {name: merge_rare(labels[name], min_count) for name in HEAD_NAMES}
    strat = np.asarray([str(v) for v in merged["type"]])
    train_idx, val_idx = stratified_split(strat, val_fraction, config.seed)
    heads: dict[str, Head] = {}
    scores: dict[str, Scores] = {}
    val_probs: dict[str, np.ndarray] = {}
    val_rows: dict[str, np.ndarray] = {}
    for name in HEAD_NAMES:
        y_all = merged[name]
        has = np.asarray([v is not None for v in y_all])
        classes = sorted({v for v in y_all if v is not None})
        if len(classes) < 2:
            raise ValueError(f"{name}: need at least two classes to train a head")
        index = {c: i for i, c in enumerate(classes)}
        y = np.asarray([index[v] if v is not None else -1 for v in y_all])
        tr = train_idx[has[train_idx]]
        va = val_idx[has[val_idx]]
        if progress:
            progress(name)
        keras_path = None if keras_dir is None else Path(keras_dir) / f"{name}.keras"
        head = fit_head(name, x, y, classes, tr, config, keras_path)
        heads[name] = head
        probs = head.predict(x[va])
        val_probs[name], val_rows[name] = probs, va
        scores[name] = score(y[va], probs.argmax(axis=1))

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
    headset = HeadSet(model_id, heads, decoding, type_to_sub, meta)
    report = TrainReport(
        scores=scores,
        decoding_scores=decoding_scores,
        decoding=decoding,
        seconds=time.perf_counter() - started,
        train_rows=len(train_idx),
        val_rows=len(val_idx),
        merged={name: int(np.sum(merged[name] == OTHER)) for name in HEAD_NAMES},
    )
    return headset, report


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
