"""Photo search and compare, as run by the ``ml`` worker: embed, classify, rank, choose.

Runs inside Celery tasks (never in a page): it loads the backbone of the served model id,
keeps that model's embedding matrix and heads in memory once per worker process, and writes
its answer into the search request's record (``webapp.search.services``).

Ranking a photo is ``ml.search_levels.rank``, the same function the evaluation measures:
one matrix-vector product scores every catalogue product, then the level plan (same photo,
predicted type and colour, type, sub-category, everything) chooses. Which products a level
may show is asked of the database (``webapp.eligibility``: active, in stock, preferences,
plus the level's fields), a window of the best-scored candidates at a time, so preferences
apply while choosing and N results come back whenever N eligible products exist.
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
from PIL import Image, UnidentifiedImageError
from sqlalchemy import select

from ml import search_levels
from ml.blas import blas_threads
from ml.compare_threshold import cosine_to_score
from ml.heads import OTHER, TYPE_SEPARATOR, HeadSet
from ml.preprocess import load_image
from ml.search_levels import Level, Prediction, SearchPolicy
from webapp import registry
from webapp.eligibility import Eligibility
from webapp.extensions import db
from webapp.models import Product
from webapp.preferences import Preferences
from webapp.search import services
from webapp.thresholds import compare_threshold
from webapp.uploads import media_file_path

logger = logging.getLogger(__name__)

# Candidate ids per database query.
ID_CHUNK = 2000


class SearchError(Exception):
    """A search or compare that cannot be done; ``code`` is the HTTP status it maps to."""

    def __init__(self, message: str, code: int = 422) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def search_policy(**overrides: Any) -> SearchPolicy:
    """The shop's photo-search rules from its ``SEARCH_*`` settings (``overrides`` win)."""
    cfg = current_app.config
    return SearchPolicy(
        **{
            "min_confidence": float(cfg["SEARCH_MIN_CONFIDENCE"]),
            "same_photo_cosine": float(cfg["SEARCH_SAME_PHOTO_COSINE"]),
            "colour_first": bool(cfg["SEARCH_COLOUR_FIRST"]),
            **overrides,
        }
    )


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
_heads: dict[Path, tuple[float, HeadSet]] = {}


def catalogue_index(model_id: str) -> CatalogueIndex:
    """The model's embedding matrix in memory, reloaded only when the store changed."""
    # One store object per model: it caches what it read until its files change, so an
    # unchanged store hands back the very arrays the in-memory copy was made from.
    key = (current_app.config["MODEL_FOLDER"], model_id)
    store = _stores.get(key)
    if store is None:
        store = _stores[key] = registry.store_for(model_id)
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


def heads_for(model_id: str) -> HeadSet | None:
    """The model's classifier heads (reloaded when retrained), or None when not trained."""
    folder = registry.store_for(model_id).path / "heads"
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


def backbone_for(model_id: str) -> Any:
    """The embedder whose vectors carry ``model_id`` (plain or catalogue-tuned backbone); a
    clear error when this install cannot run it."""
    try:
        return registry.backbone_for(model_id)
    except registry.ModelUnavailable as exc:
        raise SearchError(str(exc), 400) from exc


def served_model() -> str:
    """The model id of the neighbour lists pages serve (photo search must match it)."""
    model_id = registry.neighbour_cache().active_model()
    if model_id is None:
        raise SearchError(
            "Photo search is not ready yet: the catalogue is still being indexed.", 503
        )
    return model_id


def read_photo(relative: str, size: int) -> Image.Image:
    """The uploaded photo, upright and RGB, no larger than ``size`` pixels on its longer side.

    A phone photo is decoded at a fraction of its size where JPEG allows it (DCT scaling),
    then shrunk once to the backbone's input size: decoding and resizing 12 megapixels would
    cost more than the whole search. Photos already small enough (every catalogue photo)
    take exactly the path the catalogue's own embeddings took.
    """
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


class EligibleProducts:
    """The rows of a catalogue index a shopper may be shown at a level, asked of the database:
    ``clauses`` (who may see what) plus the level's fields."""

    def __init__(self, ids: np.ndarray, clauses: list) -> None:
        self.ids = ids
        self.clauses = clauses

    @staticmethod
    def level_clauses(level: Level) -> list:
        """The level's fields as SQL conditions (the fields are the product's columns)."""
        return [getattr(Product, field) == value for field, value in level.where]

    def allowed(self, level: Level, rows: np.ndarray) -> np.ndarray:
        """Which of ``rows`` may be shown at ``level`` (one query per ``ID_CHUNK`` rows)."""
        candidates = self.ids[rows].tolist()
        where = [*self.clauses, *self.level_clauses(level)]
        found: set[int] = set()
        for start in range(0, len(candidates), ID_CHUNK):
            chunk = candidates[start : start + ID_CHUNK]
            found |= set(
                db.session.scalars(select(Product.id).where(Product.id.in_(chunk), *where))
            )
        return np.fromiter((pid in found for pid in candidates), bool, len(candidates))

    def members(self, level: Level) -> np.ndarray:
        """Every row that may be shown at ``level``, ascending (one query)."""
        query = select(Product.id).where(*self.clauses, *self.level_clauses(level))
        members = np.fromiter(db.session.scalars(query), dtype=np.int64)
        pos = np.searchsorted(self.ids, members)
        keep = pos < len(self.ids)
        pos = pos[keep][self.ids[pos[keep]] == members[keep]]
        return np.sort(pos)


def search_photo(
    relative_path: str, prefs: Preferences, n: int, all_categories: bool = False
) -> dict[str, Any]:
    """Rank the catalogue for one uploaded photo; JSON-safe result for the request's record."""
    started = time.perf_counter()
    model_id = served_model()
    backbone = backbone_for(model_id)
    index = catalogue_index(model_id)
    image = read_photo(relative_path, backbone.input_size)
    query = backbone.embed([image])[0]
    if query.shape[0] != index.vectors.shape[1]:
        raise SearchError(f"The embeddings of {model_id} do not match its backbone.", 503)
    heads = heads_for(model_id)
    prediction = Prediction.from_heads(heads.predict(query) if heads is not None else {})
    policy = search_policy()
    scores = index.vectors @ query
    ranking = search_levels.rank(
        scores,
        prediction,
        EligibleProducts(index.ids, Eligibility.of(prefs).clauses()),
        n,
        policy,
        all_categories=all_categories,
    )
    items = [
        [int(index.ids[row]), round(float(scores[row]), 5), level]
        for row, level in zip(ranking.rows.tolist(), ranking.levels, strict=True)
    ]
    return {
        "model": model_id,
        "heads": heads.version if heads is not None else None,
        "predictions": _prediction_list(prediction, policy),
        "searched": ranking.searched,
        "message": _message(ranking, n, all_categories, heads is not None),
        "items": items,
        "elapsed_ms": round((time.perf_counter() - started) * 1000, 1),
    }


def _message(ranking: search_levels.Ranking, n: int, all_categories: bool, has_heads: bool) -> str:
    """What the results page says about how far the search went ("" when as predicted)."""
    first, searched = ranking.plan[0].name, ranking.searched
    if all_categories:
        return "Searched all categories, as asked."
    if not has_heads:
        return "Searched all categories: the category classifier has not been trained yet."
    if first == "all":
        return "Searched all categories: the photo's category was not clear enough."
    if searched != first and not (first == "colour" and searched == "type"):
        what = "type" if first in ("colour", "type") else "category"
        return f"Fewer than {n} matching products in the predicted {what}: widened the search."
    return ""


def _prediction_list(prediction: Prediction, policy: SearchPolicy) -> list[dict[str, Any]]:
    """The heads' answers as the results page and the API show them, one per field."""
    field_of = {"sub": "sub_category", "colour": "base_colour"}
    out = []
    for head in search_levels.HEADS:
        answer = getattr(prediction, head)
        if answer is None:
            continue
        label, confidence = answer
        if head == "type":
            gender, _, article_type = label.partition(TYPE_SEPARATOR)
            pairs = [("gender", gender), ("article_type", article_type)]
            if label == OTHER:  # none of the common types: say so once, as the type
                pairs = [("article_type", label)]
        else:
            pairs = [(field_of[head], label)]
        for field, value in pairs:
            out.append(
                {
                    "head": head,
                    "field": field,
                    "value": value,
                    "confidence": round(confidence, 4),
                    "confident": policy.confident(head, answer),
                }
            )
    return out


# -- compare --------------------------------------------------------------------------------


def compare_photos(relative_paths: list[str], model: str | None) -> dict[str, Any]:
    """Score how alike two uploaded photos are, with the model's calibrated threshold."""
    started = time.perf_counter()
    if model:
        model_id = model
    else:
        try:
            model_id = served_model()
        except SearchError:
            model_id = registry.load_backbone().model_id
    backbone = backbone_for(model_id)
    images = [read_photo(p, backbone.input_size) for p in relative_paths]
    a, b = backbone.embed(images)
    cosine = float(np.clip(np.dot(a, b), -1.0, 1.0))
    score = cosine_to_score(cosine)
    threshold, calibration = compare_threshold(model_id)
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


# -- the task body --------------------------------------------------------------------------


def run_search_request(request_id: str) -> str:
    """Run one search or compare request and record its end; returns the final state."""
    try:
        services.cleanup_if_due()
    except Exception:  # noqa: BLE001 - housekeeping must never cost a shopper their search
        logger.warning("search upload cleanup failed", exc_info=True)
    record = services.get_request(request_id)
    if record is None:
        logger.info("search request %s expired before it ran", request_id)
        return "expired"
    if record["state"] not in services.PENDING:
        return record["state"]  # a redelivered task: the request already ended
    services.update_request(request_id, state="running")
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
        services.update_request(request_id, state="done", result=result)
        return "done"
    except SearchError as exc:
        services.update_request(request_id, state="failed", error=exc.message, code=exc.code)
        return "failed"
    except Exception:
        logger.exception("%s request %s failed", record["kind"], request_id)
        services.update_request(
            request_id,
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
                services.remove_upload(path)
        services.notify_done(request_id)
