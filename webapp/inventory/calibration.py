"""The embedding cosine above which two photos count as near duplicates, per model id.

How it is calibrated (``calibrate_model``; the index status page has a button for it, and
``flask --app wsgi inventory calibrate`` runs it in place), on the served model's stored
embeddings and the catalogue itself:

* Byte-identical groups (same ``image_sha256``; the reference catalogue has 651): their
  pairs must embed to the same vector. They confirm the store, but a threshold cannot be
  learnt from pairs that all score 1.0.
* Positives: re-encoded and rescaled copies of randomly chosen catalogue photos (JPEG
  quality 70, twice the size, three quarters of the size), embedded by the backbone and
  compared with the stored vector of their original: what a re-upload looks like. Without
  a backbone at hand, the byte-identical pairs stand in.
* Random negatives: random pairs of products with different photos (200,000).
* Nearest negatives: for 2,000 catalogue products, the closest product showing a different
  picture (different bytes *and* a perceptual hash more than ``DUPLICATE_HASH_DISTANCE``
  bits away). Its cosine is what a genuinely new photo scores against the whole catalogue,
  so the share of them above the threshold is the share of new uploads that would be
  flagged wrongly.

The threshold is the larger of the random negatives' 99.99th percentile and the nearest
negatives' 98th percentile (at most 2% of new photos flagged); when the positives' 1st
percentile lies above that, the midpoint of the gap. The recall on the copies and both
false-alarm rates are recorded with it in ``MODEL_FOLDER/<model_id>/duplicates.json``;
``threshold_for`` reads it (the ``DUPLICATE_COSINE`` setting overrides it).
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
# Share of genuinely new photos that may be flagged as possible duplicates.
TARGET_ALARM_RATE = 0.02
NEAREST_SAMPLE = 2000
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
    positives: np.ndarray,
    negatives: np.ndarray,
    nearest: np.ndarray | None = None,
    *,
    target: float = TARGET_FALSE_ALARMS,
    alarm_rate: float = TARGET_ALARM_RATE,
) -> dict[str, Any]:
    """The threshold and the numbers behind it, from positive, random and nearest negatives."""
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
    floor, rule = neg_hi, "random negatives' 99.99th percentile"
    if nearest is not None and len(nearest):
        near_hi = float(np.quantile(nearest, 1 - alarm_rate))
        stats["nearest"] = int(len(nearest))
        stats["nearest_median"] = round(float(np.median(nearest)), 4)
        stats["nearest_q98"] = round(near_hi, 4)
        if near_hi > floor:
            floor, rule = near_hi, f"nearest negatives' {100 * (1 - alarm_rate):g}th percentile"
    threshold = floor
    if len(positives):
        pos_lo = float(np.quantile(positives, RECALL_QUANTILE))
        stats["positive_q01"] = round(pos_lo, 4)
        stats["positive_median"] = round(float(np.median(positives)), 4)
        if pos_lo > floor:
            threshold, rule = (floor + pos_lo) / 2, f"midpoint between the {rule} and the positives"
        stats["recall"] = round(float(np.mean(positives >= threshold)), 4)
    stats["false_alarms_random"] = float(np.mean(negatives >= threshold))
    if nearest is not None and len(nearest):
        stats["false_alarms_new_photo"] = round(float(np.mean(nearest >= threshold)), 4)
    stats["threshold"] = round(float(threshold), 4)
    stats["rule"] = rule
    return stats


def nearest_negatives(
    ids: np.ndarray,
    vectors: np.ndarray,
    sha_of_row: np.ndarray,
    path_by_id: dict[int, str],
    rng: np.random.Generator,
    sample: int = NEAREST_SAMPLE,
) -> np.ndarray:
    """For sampled products, the cosine of the closest product showing a different picture."""
    from webapp.inventory import perceptual

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

    nearest = nearest_negatives(ids, vectors, sha_of_row, path_by_id, rng)
    positives = copy_cos if len(copy_cos) else identical_cos
    stats = choose_threshold(positives, negative_cos, nearest)
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
