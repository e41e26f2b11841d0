"""Calibrating a model's thresholds on the catalogue; each is stored beside the model.

* The **duplicate threshold** (:func:`calibrate_duplicate_threshold`, the index status
  page's button, ``flask inventory calibrate-duplicates`` and every tuning run): the
  embedding cosine above which two photos count as near duplicates, chosen by
  ``ml.duplicate_threshold.choose_threshold`` from re-encoded copies of catalogue photos,
  random pairs and each sampled product's nearest different picture. Written to
  ``duplicates.json``.
* The **compare threshold** (:func:`calibrate_compare_threshold`, ``flask model train`` and
  every tuning run): the score above which the two-image compare calls two photos similar,
  fitted by ``ml.compare_threshold`` on pairs of catalogue products with known type and
  colour. Written to ``compare.json``.
* The classifiers' **temperatures** (their confidences read as probabilities) are fitted
  while a network is tuned, on the products held back from its training, and saved with the
  network (``ml.tuned.temperature``); no job runs them alone.

``ml.thresholds`` (and ``webapp.thresholds``, with the app's settings) reads them back.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from typing import Any

import numpy as np
from flask import current_app
from sqlalchemy import select

from ml.compare_threshold import CompareThreshold, fit_compare_threshold, save_compare_threshold
from ml.duplicate_threshold import choose_threshold, pairs_within_groups, reencoded_copies
from ml.folders import write_json
from ml.thresholds import duplicate_threshold_file
from webapp import registry
from webapp.extensions import db
from webapp.inventory import perceptual
from webapp.media import image_file
from webapp.models import Product

logger = logging.getLogger(__name__)

# Sampled products whose nearest different picture is looked up (a new photo's stand-in).
NEAREST_SAMPLE = 2000


# -- the duplicate threshold ------------------------------------------------------------------


def _catalogue_photos() -> tuple[dict[int, str], dict[int, str]]:
    """(photo sha256 by product id, photo path by product id) of the whole catalogue."""
    sha_by_id: dict[int, str] = {}
    path_by_id: dict[int, str] = {}
    for pid, path, sha in db.session.execute(
        select(Product.id, Product.image_path, Product.image_sha256)
    ):
        if sha:
            sha_by_id[pid] = sha
        if path:
            path_by_id[pid] = path
    db.session.rollback()
    return sha_by_id, path_by_id


def nearest_negatives(
    ids: np.ndarray,
    vectors: np.ndarray,
    sha_of_row: np.ndarray,
    path_by_id: dict[int, str],
    rng: np.random.Generator,
    sample: int = NEAREST_SAMPLE,
) -> np.ndarray:
    """For sampled products, the cosine of the closest product showing a different picture
    (different bytes *and* a perceptual hash more than ``DUPLICATE_HASH_DISTANCE`` bits away)."""
    media = current_app.config["MEDIA_FOLDER"]
    max_bits = int(current_app.config["DUPLICATE_HASH_DISTANCE"])
    hashes: dict[int, np.ndarray | None] = {}

    def phash(row: int) -> np.ndarray | None:
        if row not in hashes:
            photo = image_file(path_by_id.get(int(ids[row])), media)
            try:
                hashes[row] = perceptual.to_array([perceptual.phash_file(photo)])
            except Exception:  # unreadable photo: judged by its bytes alone
                hashes[row] = None
        return hashes[row]

    rows = rng.choice(len(ids), min(sample, len(ids)), replace=False)
    out = []
    for start in range(0, len(rows), 256):
        block = rows[start : start + 256]
        sims = vectors[block] @ vectors.T
        for i, row in enumerate(block.tolist()):
            sims[i, sha_of_row == sha_of_row[row]] = -np.inf  # itself and byte-identical copies
            for cand in np.argsort(-sims[i])[:10].tolist():
                a, b = phash(row), phash(cand)
                if a is None or b is None or perceptual.distances(a, b)[0, 0] > max_bits:
                    out.append(sims[i, cand])
                    break
    return np.asarray(out, np.float32)


def _copy_cosines(
    ids: np.ndarray,
    vectors: np.ndarray,
    path_by_id: dict[int, str],
    backbone: Any,
    copies: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Cosines between re-encoded copies of sampled photos and their originals' vectors."""
    media = current_app.config["MEDIA_FOLDER"]
    rows = rng.choice(len(ids), min(copies, len(ids)), replace=False)
    images, originals = [], []
    for row in rows.tolist():
        photo = image_file(path_by_id.get(int(ids[row])), media)
        if photo is None or not os.path.isfile(photo):
            continue
        for copy in reencoded_copies(str(photo)):
            images.append(copy)
            originals.append(row)
    if not images:
        return np.empty(0, np.float32)
    embedded = backbone.embed(images, batch_size=current_app.config["EMBEDDING_BATCH_SIZE"])
    return np.einsum("ij,ij->i", embedded, vectors[np.asarray(originals)])


def _served_model_id(model_id: str | None, backbone: Any) -> str:
    """The model to calibrate: the one asked for, else the served one, else the backbone's."""
    if model_id is None:
        model_id = registry.neighbour_cache().active_model() or (
            backbone.model_id if backbone is not None else None
        )
    if model_id is None:
        raise ValueError("no model is served yet: build the index first")
    return model_id


def calibrate_duplicate_threshold(
    model_id: str | None = None,
    *,
    backbone: Any = None,
    copies: int = 0,
    negatives: int = 200_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Calibrate a model's duplicate threshold on the catalogue and store it beside the model.

    ``copies`` catalogue photos are re-encoded and embedded when ``backbone`` is the
    model's own; otherwise the byte-identical groups stand in as positives.
    """
    started = time.perf_counter()
    model_id = _served_model_id(model_id, backbone)
    ids, vectors = registry.store_for(model_id).load()
    if len(ids) < 2:
        raise ValueError(f"model {model_id} has {len(ids)} embedded products; embed them first")
    vectors = np.asarray(vectors, np.float32)
    rng = np.random.default_rng(seed)
    sha_by_id, path_by_id = _catalogue_photos()
    rows_by_sha: dict[str, list[int]] = defaultdict(list)
    for row, pid in enumerate(ids.tolist()):
        if pid in sha_by_id:
            rows_by_sha[sha_by_id[pid]].append(row)
    groups = [np.asarray(r) for r in rows_by_sha.values() if len(r) > 1]
    identical = pairs_within_groups(groups, rng)
    identical_cos = np.einsum("ij,ij->i", vectors[identical[:, 0]], vectors[identical[:, 1]])

    # Random pairs of products whose photos differ.
    sha_of_row = np.asarray([sha_by_id.get(pid, f"#{pid}") for pid in ids.tolist()])
    a = rng.integers(0, len(ids), negatives)
    b = rng.integers(0, len(ids), negatives)
    keep = (a != b) & (sha_of_row[a] != sha_of_row[b])
    negative_cos = np.einsum("ij,ij->i", vectors[a[keep]], vectors[b[keep]])

    copy_cos = np.empty(0, np.float32)
    if copies and backbone is not None and backbone.model_id == model_id:
        copy_cos = _copy_cosines(ids, vectors, path_by_id, backbone, copies, rng)

    nearest = nearest_negatives(ids, vectors, sha_of_row, path_by_id, rng)
    stats = choose_threshold(copy_cos if len(copy_cos) else identical_cos, negative_cos, nearest)
    result = {
        "model_id": model_id,
        "threshold": stats["threshold"],
        "calibrated_at": time.time(),
        "positives_from": "re-encoded and rescaled copies"
        if len(copy_cos)
        else "byte-identical groups",
        "identical_groups": len(groups),
        "identical_pairs": int(len(identical)),
        "identical_min": round(float(identical_cos.min()), 4) if len(identical_cos) else None,
        "copies": int(len(copy_cos)),
        **stats,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(
        duplicate_threshold_file(current_app.config["MODEL_FOLDER"], model_id), result, indent=2
    )
    logger.info("duplicate threshold for %s: %s", model_id, result)
    return result


# -- the compare threshold --------------------------------------------------------------------


def calibrate_compare_threshold(
    model_id: str,
    vectors: np.ndarray,
    labels: dict[str, list],
    *,
    target_precision: float = 0.9,
    seed: int = 0,
) -> CompareThreshold:
    """Fit a model's compare threshold on the products whose article type and colour are
    known (``vectors`` and ``labels`` row for row) and store it beside the model.

    Raises ValueError when the catalogue cannot give both same and different pairs.
    """
    keys = [
        f"{t}|{c}" if t and c else None
        for t, c in zip(labels["type"], labels["colour"], strict=True)
    ]
    known = np.asarray([k is not None for k in keys], bool)
    fitted = fit_compare_threshold(
        model_id,
        np.asarray(vectors)[known],
        [k for k in keys if k is not None],
        target_precision=target_precision,
        seed=seed,
    )
    save_compare_threshold(current_app.config["MODEL_FOLDER"], fitted)
    return fitted
