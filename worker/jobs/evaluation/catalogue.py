"""The catalogue an evaluation runs on: which model, its embedded products with their labels
and photos, their colour descriptors, and Kaggle-style query folders."""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flask import current_app
from sqlalchemy import select

from ml import evaluation as ev
from ml.registry import base_model_id, is_tuned_id
from webapp import registry
from webapp.extensions import db
from webapp.media import image_file
from webapp.models import Product
from worker.jobs import tuning
from worker.jobs.evaluation.options import EvaluationError, Say

logger = logging.getLogger(__name__)


@dataclass
class Catalogue:
    """A model's embedded products with their labels and photos, row-aligned."""

    model_id: str
    ids: np.ndarray
    vectors: np.ndarray
    labels: ev.Labels
    photos: list[Path | None]
    keys: list[str]
    years: np.ndarray  # int, -1 where unknown


def default_model_id() -> str:
    """The served model, else the configured backbone's."""
    try:
        served = registry.neighbour_cache().active_model()
    except Exception:  # noqa: BLE001 - Redis down: the configuration still names a model
        served = None
    if served:
        return served
    cfg = current_app.config
    name = cfg["EMBEDDING_BACKBONE"]
    for folder in sorted(Path(cfg["MODEL_FOLDER"]).glob(f"{name}-*")):
        size = cfg["EMBEDDING_INPUT_SIZE"]
        if folder.is_dir() and folder.name.endswith(f"-{size}-{cfg['EMBEDDING_POOLING']}"):
            return folder.name
    return registry.load_backbone().model_id


def resolve_model(name: str | None) -> str:
    """A model id from ``--model``/``--backbone``: an id as it is, a backbone name -> the
    stored model of that backbone (the configured input size and pooling preferred)."""
    if not name:
        return default_model_id()
    folder = Path(current_app.config["MODEL_FOLDER"])
    if (folder / name).is_dir():
        return name
    cfg = current_app.config
    candidates = sorted(
        p.name
        for p in folder.glob(f"{name}-*")
        if "." not in p.name and (p / "state.json").exists()  # not tuned models, not maps
    )
    preferred = [
        c
        for c in candidates
        if c.endswith(f"-{cfg['EMBEDDING_INPUT_SIZE']}-{cfg['EMBEDDING_POOLING']}")
    ]
    if preferred or candidates:
        return (preferred or candidates)[0]
    raise EvaluationError(
        f"No stored embeddings for {name!r} under {folder}: embed the catalogue with it first."
    )


def resolve_model_and_network(name: str | None) -> tuple[str, str | None]:
    """(base model id, tuned model id or None) for ``--model``: a tuned id evaluates its base
    beside it; a base id (or none: the served model) brings the newest network tuned on it."""
    model_id = resolve_model(name)
    if is_tuned_id(model_id):
        if not (registry.network_folder(model_id) / "meta.json").exists():
            raise EvaluationError(f"No tuned network {model_id} under the model folder.")
        return base_model_id(model_id), model_id
    folder = registry.newest_network(model_id)
    return model_id, (folder.parent.name if folder is not None else None)


def load_catalogue(model_id: str) -> Catalogue:
    """The model's stored embeddings with each product's labels and photo."""
    ids, vectors = registry.store_for(model_id).load()
    if len(ids) < 20:
        raise EvaluationError(
            f"Model {model_id} has {len(ids)} embedded products: embed the catalogue first "
            "(flask --app wsgi catalog embed --now)."
        )
    rows = {
        r.id: r
        for r in db.session.execute(
            select(
                Product.id,
                Product.gender,
                Product.article_type,
                Product.base_colour,
                Product.sub_category,
                Product.year,
                Product.image_path,
                Product.image_sha256,
            )
        )
    }
    db.session.rollback()
    keep = np.asarray([int(i) in rows for i in ids])
    ids = ids[keep]
    vectors = np.ascontiguousarray(np.asarray(vectors)[keep], dtype=np.float32)
    media = current_app.config["MEDIA_FOLDER"]
    records, photos, keys, years = [], [], [], []
    for pid in ids.tolist():
        r = rows[pid]
        records.append(
            {
                "gender": r.gender,
                "article_type": r.article_type,
                "base_colour": r.base_colour,
                "sub_category": r.sub_category,
            }
        )
        photos.append(image_file(r.image_path, media))
        keys.append(registry.image_key(r.image_path, r.image_sha256))
        years.append(-1 if r.year is None else int(r.year))
    labels = ev.Labels.from_records(records)
    return Catalogue(model_id, ids, vectors, labels, photos, keys, np.asarray(years, np.int64))


def catalogue_rows(cat: Catalogue) -> tuning.CatalogueRows:
    """The catalogue's rows as the tuning job's stores key them."""
    return tuning.CatalogueRows(cat.ids, cat.keys, cat.photos)


def colour_descriptors(cat: Catalogue, say: Say | None = None) -> np.ndarray:
    """Colour descriptors of the catalogue's photos (kept in their own store, redone only for
    photos that changed)."""
    if say:
        say("Colour descriptors (stored; computed only where missing)...")
    return tuning.colour_descriptors(catalogue_rows(cat))


def backbone_for(model_id: str) -> Any:
    """The embedder that produced ``model_id``'s embeddings, or None when it cannot be built."""
    try:
        return registry.backbone_for(model_id)
    except registry.ModelUnavailable as exc:
        logger.info("backbone for %s unavailable: %s", model_id, exc)
        return None


def read_query_folder(folder: str | os.PathLike) -> tuple[list[int], list[Path], ev.Labels]:
    """Products of a Kaggle-style folder (``styles.csv`` + ``images/<id>.jpg``) that have a photo."""
    folder = Path(folder)
    styles = folder / "styles.csv"
    if not styles.exists():
        raise EvaluationError(f"{styles} not found: a query folder needs styles.csv and images/")
    ids, photos, records = [], [], []
    with styles.open(newline="", encoding="utf-8", errors="replace") as fh:
        for row in csv.DictReader(fh):
            try:
                pid = int(row["id"])
            except (KeyError, TypeError, ValueError):
                continue
            photo = folder / "images" / f"{pid}.jpg"
            if not photo.exists():
                continue
            ids.append(pid)
            photos.append(photo)
            records.append(
                {
                    "gender": row.get("gender"),
                    "article_type": row.get("articleType"),
                    "base_colour": row.get("baseColour"),
                    "sub_category": row.get("subCategory"),
                }
            )
    return ids, photos, ev.Labels.from_records(records)
