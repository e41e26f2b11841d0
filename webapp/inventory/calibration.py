"""The embedding cosine above which two photos count as near duplicates, per model id.

How it is calibrated (``calibrate_model``; the index status page has a button for it, and
``flask --app wsgi inventory calibrate`` runs it in place):

* Positives: pairs of catalogue products whose photos are byte-identical (same
  ``image_sha256``; the reference catalogue has 651 such groups), plus, when a backbone is
  at hand, re-encoded and rescaled copies of randomly chosen catalogue photos (JPEG quality
  60-95, twice the size, three quarters of the size), each compared with the stored vector
  of its original. Byte-identical photos embed to the same vector, so they only confirm the
  store; the copies are what a re-upload of a catalogue photo looks like.
* Negatives: random pairs of products with different photos.
* The threshold is the midpoint between the negatives' 99.99th percentile (one false alarm
  in 10,000 random pairs) and the positives' 1st percentile when the two do not overlap;
  when they do, the negatives' percentile wins (a warning should be trustworthy), and the
  recall that leaves is recorded.

The result is written to ``MODEL_FOLDER/<model_id>/duplicates.json`` with the numbers it
came from; ``threshold_for`` reads it (the ``DUPLICATE_COSINE`` setting overrides it).
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from flask import current_app
from PIL import Image
from sqlalchemy import select

from webapp.extensions import db
from webapp.media import image_file
from webapp.models import Product

logger = logging.getLogger(__name__)

FILE_NAME = "duplicates.json"
# Used until a model is calibrated: high enough that only very close photos are flagged.
DEFAULT_THRESHOLD = 0.95
TARGET_FALSE_ALARMS = 1e-4
RECALL_QUANTILE = 0.01
MAX_POSITIVE_PAIRS = 100_000


def threshold_file(model_id: str) -> Path:
    """Where a model's calibrated threshold lives."""
    return Path(current_app.config["MODEL_FOLDER"]) / model_id / FILE_NAME


def threshold_for(model_id: str | None) -> tuple[float, str]:
    """(threshold, where it came from: setting, calibrated or default) for a model id."""
    configured = float(current_app.config.get("DUPLICATE_COSINE") or 0)
    if configured > 0:
        return configured, "setting"
    if model_id:
        try:
            data = json.loads(threshold_file(model_id).read_text())
            return float(data["threshold"]), "calibrated"
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return DEFAULT_THRESHOLD, "default"


def calibration_info(model_id: str) -> dict[str, Any] | None:
    """The stored calibration of a model, or None."""
    try:
        return json.loads(threshold_file(model_id).read_text())
    except (OSError, ValueError):
        return None


def _pairs_within_groups(groups: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """All (i, j) pairs inside each group of rows, at most MAX_POSITIVE_PAIRS of them."""
    pairs = [
        (int(g[a]), int(g[b])) for g in groups for a in range(len(g)) for b in range(a + 1, len(g))
    ]
    arr = np.asarray(pairs, np.int64).reshape(-1, 2)
    if len(arr) > MAX_POSITIVE_PAIRS:
        arr = arr[rng.choice(len(arr), MAX_POSITIVE_PAIRS, replace=False)]
    return arr


def choose_threshold(
    positives: np.ndarray, negatives: np.ndarray, *, target: float = TARGET_FALSE_ALARMS
) -> dict[str, Any]:
    """The threshold and the numbers behind it, from positive and negative pair cosines."""
    if len(negatives) == 0:
        raise ValueError("calibration needs negative pairs (products with different photos)")
    neg_hi = float(np.quantile(negatives, 1 - target))
    stats: dict[str, Any] = {
        "negatives": int(len(negatives)),
        "negative_mean": round(float(negatives.mean()), 4),
        "negative_q999": round(float(np.quantile(negatives, 0.999)), 4),
        "negative_q9999": round(neg_hi, 4),
        "negative_max": round(float(negatives.max()), 4),
        "positives": int(len(positives)),
    }
    if len(positives):
        pos_lo = float(np.quantile(positives, RECALL_QUANTILE))
        stats["positive_q01"] = round(pos_lo, 4)
        stats["positive_min"] = round(float(positives.min()), 4)
        if pos_lo > neg_hi:
            threshold, rule = (neg_hi + pos_lo) / 2, "midpoint of the gap"
        else:
            threshold, rule = neg_hi, "negatives' 99.99th percentile (the classes overlap)"
        stats["recall"] = round(float(np.mean(positives >= threshold)), 4)
    else:
        threshold, rule = neg_hi, "negatives' 99.99th percentile (no positives)"
    stats["false_alarms"] = float(np.mean(negatives >= threshold))
    stats["threshold"] = round(float(threshold), 4)
    stats["rule"] = rule
    return stats


def _copies(photo: str) -> list[Image.Image]:
    """A catalogue photo as a re-upload might look: re-encoded, doubled, shrunk."""
    with Image.open(photo) as img:
        img = img.convert("RGB")
    out = []
    w, h = img.size
    for size, quality in (
        ((w, h), 70),
        ((w * 2, h * 2), 85),
        ((max(8, w * 3 // 4), max(8, h * 3 // 4)), 90),
    ):
        buf = io.BytesIO()
        img.resize(size, Image.Resampling.LANCZOS).save(buf, "JPEG", quality=quality)
        out.append(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return out


def calibrate_model(
    model_id: str | None = None,
    *,
    backbone=None,
    copies: int = 0,
    negatives: int = 200_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Calibrate a model's duplicate threshold on the catalogue and store it beside the model."""
    from webapp.similar import indexing

    started = time.perf_counter()
    if model_id is None:
        model_id = indexing.neighbour_cache().active_model() or (
            backbone.model_id if backbone is not None else None
        )
    if model_id is None:
        raise ValueError("no model is served yet: build the index first")
    ids, vectors = indexing.store_for(model_id).load()
    if len(ids) < 2:
        raise ValueError(f"model {model_id} has {len(ids)} embedded products; embed them first")
    vectors = np.asarray(vectors, np.float32)
    rng = np.random.default_rng(seed)
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
    rows_by_sha: dict[str, list[int]] = defaultdict(list)
    for row, pid in enumerate(ids.tolist()):
        if pid in sha_by_id:
            rows_by_sha[sha_by_id[pid]].append(row)
    groups = [np.asarray(r) for r in rows_by_sha.values() if len(r) > 1]
    identical = _pairs_within_groups(groups, rng)
    identical_cos = np.einsum("ij,ij->i", vectors[identical[:, 0]], vectors[identical[:, 1]])

    # Random pairs of products whose photos differ.
    sha_of_row = np.asarray([sha_by_id.get(pid, f"#{pid}") for pid in ids.tolist()])
    a = rng.integers(0, len(ids), negatives)
    b = rng.integers(0, len(ids), negatives)
    keep = (a != b) & (sha_of_row[a] != sha_of_row[b])
    a, b = a[keep], b[keep]
    negative_cos = np.einsum("ij,ij->i", vectors[a], vectors[b])

    copy_cos = np.empty(0, np.float32)
    if copies and backbone is not None and backbone.model_id == model_id:
        media = current_app.config["MEDIA_FOLDER"]
        rows = rng.choice(len(ids), min(copies, len(ids)), replace=False)
        images, originals = [], []
        for row in rows.tolist():
            photo = image_file(path_by_id.get(int(ids[row])), media)
            if photo is None or not os.path.isfile(photo):
                continue
            for copy in _copies(str(photo)):
                images.append(copy)
                originals.append(row)
        if images:
            embedded = backbone.embed(images, batch_size=current_app.config["EMBEDDING_BATCH_SIZE"])
            copy_cos = np.einsum("ij,ij->i", embedded, vectors[np.asarray(originals)])

    positives = copy_cos if len(copy_cos) else identical_cos
    stats = choose_threshold(positives, negative_cos)
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
    _write_json(threshold_file(model_id), result)
    logger.info("duplicate threshold for %s: %s", model_id, result)
    return result


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically beside the model's embeddings."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".duplicates-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
