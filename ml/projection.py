"""A catalogue-tuned embedding: projection heads trained on frozen backbone features.

ImageNet features group photos by what ImageNet cares about; shoppers expect "similar" to mean
the same kind of product (gender + article type) in the same colour. Two small projections
learn that from the catalogue's own labels, on the cached embeddings (plus the colour
descriptor of ``ml.colour``), in a minute or two on a CPU:

* the *type* projection maps to a 128-d unit vector trained with a cosine-softmax loss with
  an additive margin (CosFace) over gender + article type. The margin makes the nearest
  wrong class (the hard negative: Men's vs Women's shirts, Tshirts vs Tops) pay until it is
  clearly further than the right one, which is what a triplet or supervised-contrastive
  loss with hard negatives aims at, without mining triplets;
* the *colour* projection maps to a 32-d unit vector trained the same way over base colour.

The retrieval vector concatenates the backbone embedding, the two projections and the
colour descriptor, each scaled by the square root of its weight, so its cosine is the
weighted sum of the parts' cosines: mostly "same type", then "same colour", with the raw
embedding ordering look-alikes within that. Each projection is also a classifier (the
nearest class vector), used for the photo-search heads comparison.

Training needs Keras (imported inside the training functions); serving is NumPy only.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ml.fitting import fit_adam_cosine
from ml.folders import write_json
from ml.labels import encode, merge_rare

PROJECTION_VERSION = 1
BRANCHES = ("type", "colour")


@dataclass(frozen=True)
class ProjectionConfig:
    """Hyper-parameters of both projections."""

    type_dim: int = 128
    colour_dim: int = 32
    hidden: int = 1024
    colour_hidden: int = 256
    dropout: float = 0.2
    epochs: int = 20
    batch_size: int = 256
    learning_rate: float = 2e-3
    weight_decay: float = 1e-5
    scale: float = 24.0
    margin: float = 0.25
    min_count: int = 10
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return asdict(self)


@dataclass(frozen=True)
class FusionWeights:
    """Share of the cosine given to each part of the retrieval vector (they sum to 1)."""

    raw: float = 0.2
    type: float = 0.5
    colour: float = 0.2
    histogram: float = 0.1

    def __post_init__(self) -> None:
        values = (self.raw, self.type, self.colour, self.histogram)
        if min(values) < 0 or abs(sum(values) - 1.0) > 1e-6:
            raise ValueError("fusion weights must be non-negative and sum to 1")

    def tag(self) -> str:
        """Short id part, e.g. ``r20t50c20h10``."""
        parts = zip("rtch", (self.raw, self.type, self.colour, self.histogram), strict=True)
        return "".join(f"{letter}{round(100 * w)}" for letter, w in parts)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class Projection:
    """Trained projections; ``transform`` maps (embedding, colour descriptor) to unit vectors."""

    def __init__(
        self,
        params: Mapping[str, np.ndarray],
        classes: Mapping[str, Sequence[str]],
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        self.params = {k: np.asarray(v, np.float32) for k, v in params.items()}
        self.classes = {k: list(v) for k, v in classes.items()}
        self.meta = dict(meta or {})
        for branch in BRANCHES:
            if self.params[f"{branch}_centres"].shape[1] != len(self.classes[branch]):
                raise ValueError(f"{branch}: class vectors and class names disagree")

    @property
    def input_dims(self) -> tuple[int, int]:
        """(embedding dim, colour descriptor dim) the projection expects."""
        return int(self.meta["embedding_dim"]), int(self.meta["colour_dim"])

    @property
    def digest(self) -> str:
        """Eight hex digits of the weights: part of the tuned model id."""
        h = hashlib.sha256()
        for name in sorted(self.params):
            h.update(name.encode())
            h.update(np.ascontiguousarray(self.params[name]).tobytes())
        return h.hexdigest()[:8]

    def _inputs(self, embedding: np.ndarray, colour: np.ndarray) -> np.ndarray:
        e = np.atleast_2d(np.asarray(embedding, np.float32))
        c = np.atleast_2d(np.asarray(colour, np.float32))
        if (e.shape[1], c.shape[1]) != self.input_dims or len(e) != len(c):
            raise ValueError(
                f"projection expects [n, {self.input_dims[0]}] and [n, {self.input_dims[1]}], "
                f"got {e.shape} and {c.shape}"
            )
        return (np.concatenate([e, c], axis=1) - self.params["mean"]) / self.params["scale"]

    def transform(self, embedding: np.ndarray, colour: np.ndarray) -> dict[str, np.ndarray]:
        """{"type": unit [n, type_dim], "colour": unit [n, colour_dim]}."""
        x = self._inputs(embedding, colour)
        p = self.params
        out = {}
        for branch in BRANCHES:
            h = np.maximum(x @ p[f"{branch}_w1"] + p[f"{branch}_b1"], 0.0)
            out[branch] = _unit(h @ p[f"{branch}_w2"] + p[f"{branch}_b2"]).astype(np.float32)
        return out

    def classify(self, projected: Mapping[str, np.ndarray], branch: str) -> np.ndarray:
        """Class probabilities [n, classes] of one branch from its projected vectors."""
        cos = projected[branch] @ _unit(self.params[f"{branch}_centres"].T).T
        logits = float(self.meta["config"]["scale"]) * cos
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    def retrieval_vectors(
        self, embedding: np.ndarray, colour: np.ndarray, weights: FusionWeights = FusionWeights()
    ) -> np.ndarray:
        """Unit rows whose cosine is the weighted sum of the parts' cosines."""
        z = self.transform(embedding, colour)
        parts = [
            (weights.raw, _unit(np.atleast_2d(np.asarray(embedding, np.float32)))),
            (weights.type, z["type"]),
            (weights.colour, z["colour"]),
            (weights.histogram, _unit(np.atleast_2d(np.asarray(colour, np.float32)))),
        ]
        return np.concatenate([np.sqrt(w) * v for w, v in parts if w > 0], axis=1).astype(
            np.float32
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write weights (``.npz``) and classes + meta (``.json`` beside it) atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
        os.close(fd)
        try:
            np.savez(tmp, **self.params)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        meta = {**self.meta, "classes": self.classes, "digest": self.digest}
        write_json(path.with_suffix(".json"), meta, indent=2, sort_keys=True)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Projection:
        """Read a projection written by ``save``."""
        path = Path(path)
        meta = json.loads(path.with_suffix(".json").read_text())
        with np.load(path) as data:
            params = {k: data[k] for k in data.files}
        classes = meta.pop("classes")
        meta.pop("digest", None)
        return cls(params, classes, meta)


@dataclass
class TrainReport:
    """What ``train_projection`` did."""

    seconds: float
    rows: int
    classes: dict[str, int] = field(default_factory=dict)
    final_loss: float = float("nan")


def train_projection(
    embeddings: np.ndarray,
    colours: np.ndarray,
    labels: Mapping[str, Sequence[str | None]],
    config: ProjectionConfig = ProjectionConfig(),
    *,
    meta: Mapping[str, Any] | None = None,
    verbose: int = 0,
) -> tuple[Projection, TrainReport]:
    """Train both projections with Keras on every given row (hold-out rows must not be given).

    ``labels`` maps ``type`` (gender + article type) and ``colour`` (base colour) to one label
    per row; classes under ``config.min_count`` rows are merged into ``(other)``, rows without
    a label do not train that branch.
    """
    # Keras is heavy and only training needs it; serving a projection is NumPy only.
    import keras

    started = time.perf_counter()
    e = np.asarray(embeddings, np.float32)
    c = np.asarray(colours, np.float32)
    if len(e) != len(c):
        raise ValueError("embeddings and colours differ in number of rows")
    x = np.concatenate([e, c], axis=1)
    mean = x.mean(axis=0)
    scale = x.std(axis=0) + 1e-3
    xs = ((x - mean) / scale).astype(np.float32)
    classes, targets = _encode_branches(labels, len(e), config.min_count)

    keras.utils.set_random_seed(config.seed)
    model = _projection_model(xs.shape[1], {b: len(v) for b, v in classes.items()}, config)
    history = fit_adam_cosine(
        model,
        xs,
        targets,
        loss=dict.fromkeys(BRANCHES, _cosface_loss(config.scale, config.margin)),
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        verbose=verbose,
    )
    full_meta = {
        **(meta or {}),
        "version": PROJECTION_VERSION,
        "config": config.as_dict(),
        "embedding_dim": int(e.shape[1]),
        "colour_dim": int(c.shape[1]),
        "rows": int(len(e)),
    }
    projection = Projection(_trained_params(model, mean, scale), classes, full_meta)
    report = TrainReport(
        seconds=time.perf_counter() - started,
        rows=len(e),
        classes={b: len(v) for b, v in classes.items()},
        final_loss=float(history.history["loss"][-1]),
    )
    return projection, report


def _encode_branches(
    labels: Mapping[str, Sequence[str | None]], rows: int, min_count: int
) -> tuple[dict[str, list[str]], dict[str, np.ndarray]]:
    """Each branch's classes (rare labels merged into ``(other)``) and each row's class index
    (-1 without a label)."""
    classes: dict[str, list[str]] = {}
    targets: dict[str, np.ndarray] = {}
    for branch in BRANCHES:
        if len(labels[branch]) != rows:
            raise ValueError(f"{branch}: {len(labels[branch])} labels for {rows} rows")
        classes[branch], targets[branch] = encode(merge_rare(labels[branch], min_count))
        if len(classes[branch]) < 2:
            raise ValueError(f"{branch}: need at least two classes")
    return classes, targets


def _cosface_loss(s: float, m: float) -> Callable[[Any, Any], Any]:
    """The cosine-softmax loss with an additive margin ``m`` at logit scale ``s``."""
    from keras import ops  # heavy, training only

    def cosface(y_true, cos):
        # Rows without a label (-1) contribute nothing.
        y = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        valid = ops.cast(y >= 0, "float32")
        onehot = ops.one_hot(ops.maximum(y, 0), ops.shape(cos)[1])
        logits = s * (cos - m * onehot)
        ce = -ops.sum(onehot * ops.log_softmax(logits, axis=1), axis=1)
        return ops.sum(ce * valid) / ops.maximum(ops.sum(valid), 1.0)

    return cosface


def _projection_model(
    n_features: int, n_classes: Mapping[str, int], config: ProjectionConfig
) -> Any:
    """Per branch: dense ReLU, dropout, dense to the unit sphere, cosines to the class vectors."""
    # Heavy, training only; the layer class below needs Keras to be defined at all.
    import keras
    from keras import layers, ops

    class CosineClasses(layers.Layer):
        """Cosine between unit inputs and unit class vectors."""

        def __init__(self, n: int, **kwargs):
            super().__init__(**kwargs)
            self.n = n

        def build(self, input_shape):
            self.centres = self.add_weight(
                shape=(input_shape[-1], self.n), initializer="glorot_normal", name="centres"
            )

        def call(self, z):
            return ops.matmul(z, self.centres / ops.norm(self.centres, axis=0, keepdims=True))

    reg = keras.regularizers.L2(config.weight_decay)
    inputs = keras.Input(shape=(n_features,), name="features")
    outputs = {}
    dims = {
        "type": (config.hidden, config.type_dim),
        "colour": (config.colour_hidden, config.colour_dim),
    }
    for branch in BRANCHES:
        hidden, dim = dims[branch]
        h = layers.Dense(hidden, activation="relu", kernel_regularizer=reg, name=f"{branch}_w1")(
            inputs
        )
        h = layers.Dropout(config.dropout)(h)
        z = layers.Dense(dim, kernel_regularizer=reg, name=f"{branch}_w2")(h)
        z = layers.UnitNormalization(name=f"{branch}_unit")(z)
        outputs[branch] = CosineClasses(n_classes[branch], name=f"{branch}_centres")(z)
    return keras.Model(inputs, outputs)


def _trained_params(model: Any, mean: np.ndarray, scale: np.ndarray) -> dict[str, np.ndarray]:
    """The weights ``Projection`` serves with NumPy, read off the trained Keras model."""
    params: dict[str, np.ndarray] = {"mean": mean, "scale": scale}
    for branch in BRANCHES:
        w1, b1 = model.get_layer(f"{branch}_w1").get_weights()
        w2, b2 = model.get_layer(f"{branch}_w2").get_weights()
        (centres,) = model.get_layer(f"{branch}_centres").get_weights()
        params.update(
            {
                f"{branch}_w1": w1,
                f"{branch}_b1": b1,
                f"{branch}_w2": w2,
                f"{branch}_b2": b2,
                f"{branch}_centres": centres,
            }
        )
    return params
