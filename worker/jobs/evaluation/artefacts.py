"""Classifiers an evaluation trains for itself on the kept rows only (never on a query), and
the served photo-search heads: cached beside the model's embeddings, per row set."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ml import evaluation as ev
from ml.head_training import train_heads
from ml.heads import HeadSet
from ml.labels import derived_type, majority_sub
from ml.projection import Projection, ProjectionConfig, train_projection
from webapp import registry
from worker.jobs.evaluation.catalogue import Catalogue
from worker.jobs.evaluation.options import Say

# The split's heads keep a small validation share of the kept rows (train_heads needs one);
# the rest is training data. Held-out rows are never among either.
HEADS_VAL_FRACTION = 0.05


def artefact_folder(model_id: str) -> Path:
    """Heads, projections and networks the evaluation trains itself, by row set."""
    return registry.store_for(model_id).path / "evaluation-cache"


def rows_tag(ids: np.ndarray) -> str:
    """A short digest of a set of product ids: names what an artefact was trained on."""
    return hashlib.sha256(np.asarray(ids, np.int64).tobytes()).hexdigest()[:10]


def trained_projection(
    cat: Catalogue, colours: np.ndarray, train_rows: np.ndarray, *, retrain: bool, say: Say | None
) -> Projection:
    """The projection trained on ``train_rows`` only (cached per model and row set)."""
    config = ProjectionConfig()
    tag = hashlib.sha256(
        (json.dumps(config.as_dict(), sort_keys=True) + rows_tag(cat.ids[train_rows])).encode()
    ).hexdigest()[:10]
    path = artefact_folder(cat.model_id) / f"projection-{tag}.npz"
    if path.exists() and not retrain:
        return Projection.load(path)
    if say:
        say(f"Training the projection on {len(train_rows)} products...")
    labels = cat.labels.take(train_rows)
    projection, report = train_projection(
        cat.vectors[train_rows],
        colours[train_rows],
        {"type": list(labels.derived_type), "colour": list(labels.base_colour)},
        config,
        meta={"model_id": cat.model_id, "rows_tag": rows_tag(cat.ids[train_rows])},
    )
    if say:
        say(f"  trained in {report.seconds:.0f} s ({report.classes} classes).")
    projection.save(path)
    return projection


def split_heads(
    cat: Catalogue, train_rows: np.ndarray, *, retrain: bool, say: Say | None
) -> HeadSet | None:
    """Photo-search heads trained on ``train_rows`` only, as ``flask model train`` trains them
    (cached per model and row set); None when the rows hold too few classes to learn."""
    folder = artefact_folder(cat.model_id) / f"heads-{rows_tag(cat.ids[train_rows])}"
    if (folder / "meta.json").exists() and not retrain:
        return HeadSet.load(folder)
    if say:
        say(f"Training the photo-search heads on the {len(train_rows)} kept products...")
    labels = cat.labels.take(train_rows)
    types = [derived_type(g, a) for g, a in zip(labels.gender, labels.article_type, strict=True)]
    try:
        headset, report = train_heads(
            cat.model_id,
            cat.vectors[train_rows],
            {"sub": list(labels.sub_category), "type": types, "colour": list(labels.base_colour)},
            val_fraction=HEADS_VAL_FRACTION,
        )
    except ValueError as exc:  # too few classes to learn: searches then go catalogue-wide
        if say:
            say(f"  no heads: {exc}")
        return None
    if say:
        say(f"  trained in {report.seconds:.0f} s.")
    headset.save(folder)
    return headset


def served_heads(model_id: str) -> HeadSet | None:
    """The heads photo search uses for this model (trained on the whole catalogue), or None."""
    try:
        return HeadSet.load(registry.store_for(model_id).path / "heads")
    except FileNotFoundError:
        return None


def type_to_sub(labels: ev.Labels) -> dict[str, str]:
    """Each gender + article type's usual sub-category among ``labels``."""
    return majority_sub(list(labels.derived_type), list(labels.sub_category))
