"""Classifier heads on cached backbone embeddings, as photo search serves them (NumPy only).

A head is a small classifier (standardise, dense ReLU layer, softmax) over the L2-normalised
embeddings of one backbone, trained on one of the catalogue's labels (``ml.head_training``).
Photo search uses three:

* ``sub``: the sub-category (Topwear, Shoes, Watches...);
* ``type``: the "derived type", gender + article type (``Men|Shirts``), decoded either over
  all classes at once ("joint") or among the classes of the predicted sub-category
  ("within_sub"), whichever scored better on the validation split;
* ``colour``: the base colour.

A head predicting ``(other)`` means "none of the common classes" and photo search then does
not narrow on that head. Serving needs no Keras: a saved head is its weights in an ``.npz``
file and ``Head.predict`` is two matrix products in NumPy, well under a millisecond per
photo.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ml.folders import replace_folder
from ml.labels import OTHER

# Bumped whenever training or decoding changes in a way that changes predictions.
HEAD_VERSION = 1
HEAD_NAMES = ("sub", "type", "colour")
DECODINGS = ("joint", "within_sub")


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
