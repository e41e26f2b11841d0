"""Photo search and compare as run by the ``ml`` worker: embed, classify, rank, choose.

Runs inside Celery tasks (never in a page): it loads the backbone of the served model id,
keeps that model's embedding matrix and heads in memory once per worker process, and writes
its answer into the job record (``webapp.search.services``).

Ranking a photo:

1. one matrix-vector product scores every catalogue product (cosine);
2. products whose photo is practically the same picture (``SEARCH_SAME_PHOTO_COSINE``) come
   first, whatever the classifier says;
3. then the best products of the predicted group (gender + article type), when the type
   head is confident (``SEARCH_MIN_CONFIDENCE``); with ``SEARCH_COLOUR_FIRST``, those of
   the predicted colour first (when the colour head is confident too);
4. when that gives fewer than N, the predicted sub-category fills the rest (again only when
   confident), then the whole catalogue.

Every level asks the database which candidates the shopper may see (``eligible_clauses``:
active, in stock, preferences), best-scored candidates first, so preferences apply while
choosing and N results come back whenever N eligible products exist.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flask import current_app
from sqlalchemy import select

from ml.blas import blas_threads
from webapp.extensions import db
from webapp.models import Product
from webapp.preferences import Preferences
from webapp.search import services
from webapp.similar import indexing
from webapp.similar.services import eligible_clauses
from webapp.uploads import media_file_path

logger = logging.getLogger(__name__)

# Candidates checked against the database per round; past DIRECT_LIMIT a level's eligible
# ids are read at once instead (a sparse group would otherwise take many rounds).
FIRST_WINDOW = 64
DIRECT_LIMIT = 4096
SAME_PHOTO_MAX = 5


class SearchError(Exception):
    """A search or compare that cannot be done; ``code`` is the HTTP status it maps to."""

    def __init__(self, message: str, code: int = 422) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# -- per-process caches ---------------------------------------------------------------------


@dataclass
class CatalogueIndex:
    """One model's embeddings, in memory: ids int64 [n] ascending, vectors float32 [n, d]."""

    model_id: str
    ids: np.ndarray
    vectors: np.ndarray
    source: Any  # the store's array this copy was made from (changes when the store does)


_lock = threading.Lock()
# Keyed by (model folder, model id).
_stores: dict[tuple[str, str], Any] = {}
_indexes: dict[tuple[str, str], CatalogueIndex] = {}
_heads: dict[Path, tuple[float, Any]] = {}


def catalogue_index(model_id: str) -> CatalogueIndex:
    """The model's embedding matrix in memory, reloaded only when the store changed."""
    # One store object per model: it caches what it read until its files change, so an
    # unchanged store hands back the very arrays the in-memory copy was made from.
    key = (current_app.config["MODEL_FOLDER"], model_id)
    store = _stores.get(key)
    if store is None:
        store = _stores[key] = indexing.store_for(model_id)
    ids, vectors = store.load()
    with _lock:
        cached = _indexes.get(key)
        if cached is None or cached.source is not vectors:
            if len(ids) == 0:
                raise SearchError(
                    "Photo search is not ready yet: the catalogue has not been embedded.", 503
                )
            cached = CatalogueIndex(
                model_id, np.asarray(ids), np.ascontiguousarray(vectors, np.float32), vectors
            )
            _indexes[key] = cached
            logger.info("photo search index for %s: %d products in memory", model_id, len(ids))
        return cached


def heads_for(model_id: str):
    """The model's classifier heads (reloaded when retrained), or None when not trained."""
    from ml.heads import HeadSet

    folder = indexing.store_for(model_id).path / "heads"
    try:
        mtime = (folder / "meta.json").stat().st_mtime
    except FileNotFoundError:
        return None
    with _lock:
        cached = _heads.get(folder)
        if cached is None or cached[0] != mtime:
            cached = (mtime, HeadSet.load(folder))
            _heads[folder] = cached
            logger.info("photo search heads for %s: %s", model_id, cached[1].version)
        return cached[1]


def backbone_for(model_id: str):
    """The embedder whose vectors carry ``model_id`` (plain or catalogue-tuned backbone); a
    clear error when this install cannot run it."""
    try:
        return indexing.backbone_for(model_id)
    except indexing.ModelUnavailable as exc:
        raise SearchError(str(exc), 400) from exc


def served_model() -> str:
    """The model id of the neighbour lists pages serve (photo search must match it)."""
    model_id = indexing.neighbour_cache().active_model()
    if model_id is None:
        raise SearchError(
            "Photo search is not ready yet: the catalogue is still being indexed.", 503
        )
    return model_id


def _read_photo(relative: str, size: int):
    """The uploaded photo, upright and RGB, no larger than ``size`` pixels on its longer side.

    A phone photo is decoded at a fraction of its size where JPEG allows it (DCT scaling),
    then shrunk once to the backbone's input size: decoding and resizing 12 megapixels would
    cost more than the whole search. Photos already small enough (every catalogue photo)
    take exactly the path the catalogue's own embeddings took.
    """
    from PIL import Image, UnidentifiedImageError

    from ml.preprocess import load_image

    path = media_file_path(relative, current_app.config["MEDIA_FOLDER"])
    if path is None:
        raise SearchError("The uploaded photo is no longer available.", 410)
    try:
        with Image.open(path) as im:
            if im.format == "JPEG" and max(im.size) > size:
                im.draft("RGB", (size, size))  # never below the requested size
            image = load_image(im)
    except FileNotFoundError as exc:
        raise SearchError("The uploaded photo is no longer available.", 410) from exc
    except (
        OSError,
        ValueError,
        SyntaxError,
        UnidentifiedImageError,
        Image.DecompressionBombError,
    ) as exc:
        raise SearchError("The photo could not be read; the file may be damaged.", 422) from exc
    if max(image.size) > size:
        image.thumbnail((size, size), Image.Resampling.BICUBIC)
    return image


# -- search ---------------------------------------------------------------------------------


def top_eligible(
    index: CatalogueIndex,
    scores: np.ndarray,
    clauses: list,
    need: int,
    exclude: set[int],
) -> list[tuple[int, float]]:
    """The ``need`` best-scored products that satisfy ``clauses``, skipping ``exclude``."""
    if need <= 0:
        return []
    n = len(scores)
    window = min(n, max(FIRST_WINDOW, 4 * need + len(exclude)))
    while window < DIRECT_LIMIT or window >= n:
        part = np.arange(n) if window >= n else np.argpartition(scores, n - window)[n - window :]
        order = part[np.argsort(-scores[part], kind="stable")]
        candidates = [pid for pid in index.ids[order].tolist() if pid not in exclude]
        allowed: set[int] = set()
        for start in range(0, len(candidates), 2000):
            chunk = candidates[start : start + 2000]
            allowed |= set(
                db.session.scalars(select(Product.id).where(Product.id.in_(chunk), *clauses))
            )
        found = [
            (int(index.ids[p]), float(scores[p]))
            for p in order
            if int(index.ids[p]) in allowed and int(index.ids[p]) not in exclude
        ][:need]
        if len(found) == need or window >= n:
            return found
        window = min(n, window * 8)
    # A sparse level: read all its eligible ids once, then rank just those.
    members = np.fromiter(db.session.scalars(select(Product.id).where(*clauses)), dtype=np.int64)
    pos = np.searchsorted(index.ids, members)
    keep = pos < n
    pos = pos[keep][index.ids[pos[keep]] == members[keep]]
    if exclude:
        pos = pos[~np.isin(index.ids[pos], np.fromiter(exclude, np.int64))]
    order = pos[np.argsort(-scores[pos], kind="stable")][:need]
    return [(int(index.ids[p]), float(scores[p])) for p in order]


def search_photo(
    relative_path: str, prefs: Preferences, n: int, all_categories: bool = False
) -> dict[str, Any]:
    """Rank the catalogue for one uploaded photo; JSON-safe result for the job record."""
    started = time.perf_counter()
    cfg = current_app.config
    model_id = served_model()
    backbone = backbone_for(model_id)
    index = catalogue_index(model_id)
    image = _read_photo(relative_path, backbone.input_size)
    query = backbone.embed([image])[0]
    if query.shape[0] != index.vectors.shape[1]:
        raise SearchError(f"The embeddings of {model_id} do not match its backbone.", 503)
    heads = heads_for(model_id)
    predictions = heads.predict(query) if heads is not None else {}
    min_conf = cfg["SEARCH_MIN_CONFIDENCE"]

    def confident(name: str) -> bool:
        p = predictions.get(name)
        return p is not None and not p.is_other and p.confidence >= min_conf

    scores = index.vectors @ query
    base = eligible_clauses(prefs)
    chosen: list[tuple[int, float, str]] = []
    taken: set[int] = set()

    def take(level: str, found: list[tuple[int, float]]) -> None:
        for pid, score in found:
            chosen.append((pid, round(score, 5), level))
            taken.add(pid)

    # The same picture (a catalogue photo, re-encoded or resized) is the best answer there is.
    same = top_eligible(index, scores, base, min(n, SAME_PHOTO_MAX), set())
    take("photo", [(pid, s) for pid, s in same if s >= cfg["SEARCH_SAME_PHOTO_COSINE"]])

    levels: list[tuple[str, list]] = []
    if not all_categories and predictions:
        if confident("type"):
            gender, _, article_type = predictions["type"].label.partition("|")
            same_type = [Product.gender == gender, Product.article_type == article_type]
            if cfg["SEARCH_COLOUR_FIRST"] and confident("colour"):
                colour = predictions["colour"].label
                levels.append(("colour", [*same_type, Product.base_colour == colour]))
            levels.append(("type", same_type))
        if confident("sub"):
            levels.append(("sub", [Product.sub_category == predictions["sub"].label]))
    levels.append(("all", []))
    searched = levels[0][0]
    for level, clauses in levels:
        need = n - len(chosen)
        if need <= 0:
            break
        searched = level  # the widest level consulted so far
        take(level, top_eligible(index, scores, [*base, *clauses], need, taken))

    if all_categories:
        message = "Searched all categories, as asked."
    elif heads is None:
        message = "Searched all categories: the category classifier has not been trained yet."
    elif levels[0][0] == "all":
        message = "Searched all categories: the photo's category was not clear enough."
    elif searched != levels[0][0] and not (levels[0][0] == "colour" and searched == "type"):
        what = "type" if levels[0][0] in ("colour", "type") else "category"
        message = f"Fewer than {n} matching products in the predicted {what}: widened the search."
    else:
        message = ""
    field_of = {"sub": "sub_category", "colour": "base_colour"}
    prediction_list = []
    for name in ("type", "sub", "colour"):
        p = predictions.get(name)
        if p is None:
            continue
        if name == "type":
            gender, _, article_type = p.label.partition("|")
            pairs = [("gender", gender), ("article_type", article_type)]
            if p.is_other:  # none of the common types: say so once, as the type
                pairs = [("article_type", p.label)]
            for field, value in pairs:
                prediction_list.append(
                    {
                        "head": name,
                        "field": field,
                        "value": value,
                        "confidence": round(p.confidence, 4),
                        "confident": confident(name),
                    }
                )
        else:
            prediction_list.append(
                {
                    "head": name,
                    "field": field_of[name],
                    "value": p.label,
                    "confidence": round(p.confidence, 4),
                    "confident": confident(name),
                }
            )
    return {
        "model": model_id,
        "heads": heads.version if heads is not None else None,
        "predictions": prediction_list,
        "searched": searched,
        "message": message,
        "items": [[pid, score, level] for pid, score, level in chosen[:n]],
        "elapsed_ms": round((time.perf_counter() - started) * 1000, 1),
    }


# -- compare --------------------------------------------------------------------------------


def compare_photos(relative_paths: list[str], model: str | None) -> dict[str, Any]:
    """Score how alike two uploaded photos are, with the model's calibrated threshold."""
    from ml.calibration import cosine_to_score, load_calibration

    started = time.perf_counter()
    cfg = current_app.config
    if model:
        model_id = model
    else:
        try:
            model_id = served_model()
        except SearchError:
            model_id = indexing.load_backbone().model_id
    backbone = backbone_for(model_id)
    images = [_read_photo(p, backbone.input_size) for p in relative_paths]
    a, b = backbone.embed(images)
    cosine = float(np.clip(np.dot(a, b), -1.0, 1.0))
    score = cosine_to_score(cosine)
    calibration = load_calibration(cfg["MODEL_FOLDER"], model_id)
    threshold = (
        float(calibration["threshold"]) if calibration else float(cfg["COMPARE_DEFAULT_THRESHOLD"])
    )
    return {
        "score": round(score, 4),
        "similar": bool(score >= threshold),
        "threshold": round(threshold, 4),
        "model": model_id,
        "cosine": round(cosine, 4),
        "calibrated": calibration is not None,
        "target_precision": calibration.get("target_precision") if calibration else None,
        "worker_ms": round((time.perf_counter() - started) * 1000, 1),
    }


# -- the task bodies ------------------------------------------------------------------------


def run_job(job_id: str) -> str:
    """Run one search or compare job and record its end; returns the final state."""
    try:
        services.cleanup_if_due()
    except Exception:  # noqa: BLE001 - housekeeping must never cost a shopper their search
        logger.warning("search upload cleanup failed", exc_info=True)
    record = services.get_job(job_id)
    if record is None:
        logger.info("job %s expired before it ran", job_id)
        return "expired"
    if record["state"] not in services.PENDING:
        return record["state"]  # a redelivered task: the job already ended
    services.update_job(job_id, state="running")
    try:
        # One vector against a few matrices: BLAS threads only wait on each other here.
        with blas_threads(1):
            if record["kind"] == "search":
                n = int(record.get("n") or current_app.config["SEARCH_RESULTS_N"])
                result = search_photo(
                    record["images"][0],
                    Preferences.from_session(record.get("prefs")),
                    n,
                    bool(record.get("all_categories")),
                )
            else:
                result = compare_photos(record["images"], record.get("model"))
        services.update_job(job_id, state="done", result=result)
        return "done"
    except SearchError as exc:
        services.update_job(job_id, state="failed", error=exc.message, code=exc.code)
        return "failed"
    except Exception:
        logger.exception("%s job %s failed", record["kind"], job_id)
        services.update_job(
            job_id,
            state="failed",
            error="The search could not be completed. Please try again.",
            code=503,
        )
        return "failed"
    finally:
        db.session.rollback()
        if record["kind"] == "compare":
            # Compare photos are not shown again: they go as soon as they are scored.
            for path in record["images"]:
                services._remove_upload(path)
        services.notify_done(job_id)
