"""Photo search and compare, as run by the ``ml`` worker: embed, classify, rank, choose.

Runs inside Celery tasks (never in a page): it loads the backbone of the served model id,
keeps that model's embedding matrix and heads in memory once per worker process, and returns
the answer that ``worker.jobs.search_requests`` records in the search request.

Ranking a photo is ``ml.search_levels.rank``, the same function the evaluation measures:
the level plan (same photo, predicted type and colour, type, sub-category, everything)
chooses, asking the model's catalogue index (``worker.jobs.search_index``: exact below
50,000 products, the saved HNSW graph above, ``NEIGHBOURS_INDEX``) for the best-scored
products. Which products a level may show is asked of the database (``webapp.eligibility``:
active, in stock, preferences, plus the level's fields): a window of the index's best
candidates at a time, widened, and for a sparse level its eligible products passed to the
index as the allowed set, so preferences apply while choosing and N results come back
whenever N eligible products exist.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flask import current_app
from PIL import Image
from sqlalchemy import select

from ml import foreground, search_levels
from ml.compare_threshold import cosine_to_score
from ml.heads import HeadSet
from ml.labels import OTHER, split_derived_type
from ml.preprocess import load_image_reduced
from ml.search_levels import Level, Prediction, SearchPolicy
from webapp import registry
from webapp.eligibility import Eligibility
from webapp.extensions import db
from webapp.models import Product
from webapp.preferences import Preferences
from webapp.thresholds import compare_threshold
from webapp.uploads import media_file_path
from worker.jobs import search_results
from worker.jobs.search_index import IndexScores, SearchError, catalogue_index

logger = logging.getLogger(__name__)

# Candidate ids per database query.
ID_CHUNK = 2000
# Fewest rows asked of the vector index for a window of best candidates: the first window is
# kept, and later levels (and the rounds that refill collapsed cards) read it again.
MIN_WINDOW = 256
# An upload is decoded at most this many times the network's input size on its longer side:
# a crop box an eighth of the photo across still keeps all the detail the network uses (see
# ``ml.preprocess.REDUCING_GAP``), a smaller one less; a tiny box on a 40-megapixel photo
# costs no more than a few megapixels' decode.
MAX_CROP_ZOOM = 16
MODEL_UNAVAILABLE = "Photo search is unavailable right now: the model could not be loaded."


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


_lock = threading.Lock()
_heads: dict[Path, tuple[float, HeadSet]] = {}


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
    plain 503 when this install cannot run it (the reason, which names weight files and
    download addresses, goes to the log only)."""
    try:
        return registry.backbone_for(model_id)
    except registry.ModelUnavailable as exc:
        logger.error("model %s cannot be loaded: %s", model_id, exc)
        raise SearchError(MODEL_UNAVAILABLE, 503) from exc


def allowed_model(model_id: str) -> str:
    """``model_id`` when a request may name it (``registry.allowed_model_ids``), else a 400
    naming the allowed ids: the web side checks the same, this makes sure no request ever
    gets a worker to build a model of its choosing."""
    allowed = registry.allowed_model_ids()
    if model_id not in allowed:
        logger.warning("refused a request naming model %r (allowed: %s)", model_id, allowed)
        raise SearchError(
            "That model is not served here; the allowed model ids are: "
            f"{', '.join(allowed) or 'none yet'}.",
            400,
        )
    return model_id


def served_model() -> str:
    """The model id of the neighbour lists pages serve (photo search must match it)."""
    model_id = registry.neighbour_cache().active_model()
    if model_id is None:
        raise SearchError(
            "Photo search is not ready yet: the catalogue is still being indexed.", 503
        )
    return model_id


def open_upload(relative: str, size: int, box: Sequence[float] | None = None) -> Image.Image:
    """The uploaded photo, upright and RGB, decoded once and no larger than needed: the part
    inside ``box`` (relative x, y, w, h; None: the whole photo) is about to be resized to
    ``size`` pixels on its longer side, and keeps enough for that resize to be as good as
    one from the full photo (``ml.preprocess.load_image_reduced``: a phone photo is decoded
    at a fraction of its size, never at 12 megapixels; at most ``MAX_CROP_ZOOM`` x ``size``)."""
    path = media_file_path(relative, current_app.config["MEDIA_FOLDER"])
    if path is None:
        raise SearchError("The uploaded photo is no longer available.", 410)
    try:
        return load_image_reduced(path, size, box, max_side=MAX_CROP_ZOOM * size)
    except FileNotFoundError as exc:
        raise SearchError("The uploaded photo is no longer available.", 410) from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise SearchError("The photo could not be read; the file may be damaged.", 422) from exc


def read_photo(relative: str, size: int) -> Image.Image:
    """The uploaded photo, upright and RGB, no larger than ``size`` pixels on its longer side
    (``open_upload``, then one resize). Photos already small enough (every catalogue photo)
    take exactly the path the catalogue's own embeddings took."""
    image = open_upload(relative, size)
    if max(image.size) > size:
        image.thumbnail((size, size), Image.Resampling.BICUBIC)
    return image


@dataclass(frozen=True)
class QueryPhoto:
    """A shopper's photo as photo search embeds it, and what was done to it: the crop box
    asked for, where the product was found (relative to the whole photo; None when nothing
    was cut: a photo on white, or no product standing out) and what the steps cost."""

    image: Image.Image
    crop: tuple[float, float, float, float] | None
    product_box: tuple[float, float, float, float] | None
    foreground_ms: float
    decode_ms: float = 0.0


def read_query(relative: str, size: int, crop: Sequence[float] | None = None) -> QueryPhoto:
    """A shopper's uploaded photo as photo search embeds it: decoded once, as small as the
    crop box allows (``open_upload``: the box keeps enough for ``size`` pixels), then
    ``ml.foreground.prepare_query_and_box``: inside the crop box, shrunk to ``size``, cut to
    the product, the background transparent. Catalogue photos (on white, no box) come back
    as ``read_photo`` gives them, so they embed as their stored selves."""
    box = None if crop is None else tuple(float(v) for v in crop)
    # Every later step needs at most the network's input size: the foreground step works on
    # ``foreground.ANALYSIS_SIDE`` pixels, fewer than any served backbone's input.
    started = time.perf_counter()
    image = open_upload(relative, size, box)
    decoded = time.perf_counter()
    prepared, found = foreground.prepare_query_and_box(image, box, max_side=size)
    done = time.perf_counter()
    product_box = None if found is None else tuple(round(v, 4) for v in found)
    return QueryPhoto(
        prepared,
        box,
        product_box,
        foreground_ms=round((done - decoded) * 1000, 2),
        decode_ms=round((decoded - started) * 1000, 2),
    )


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
    relative_path: str,
    prefs: Preferences,
    n: int,
    all_categories: bool = False,
    exclude: Collection[int] = (),
    crop: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Rank the catalogue for one uploaded photo (inside ``crop``, relative x, y, w, h, when
    given); JSON-safe result for the request's record. ``exclude``: products the shopper
    marked "not interested", never chosen."""
    started = time.perf_counter()
    model_id = served_model()
    backbone = backbone_for(model_id)
    catalogue_index(model_id)  # a catalogue not embedded yet answers 503 before any decoding
    photo = read_query(relative_path, backbone.input_size, crop)
    embed_started = time.perf_counter()
    query = backbone.embed_query([photo.image])[0]
    rank_started = time.perf_counter()
    answer = rank_photo(model_id, query, prefs, n, all_categories, exclude)
    ended = time.perf_counter()
    return {
        **answer,
        "crop": None if photo.crop is None else list(photo.crop),
        "product_box": None if photo.product_box is None else list(photo.product_box),
        # Where the time went: the upload decoded, the product found in it, the photo
        # embedded, the catalogue ranked and chosen from (all within ``elapsed_ms``).
        "decode_ms": photo.decode_ms,
        "foreground_ms": photo.foreground_ms,
        "embed_ms": round((rank_started - embed_started) * 1000, 2),
        "rank_ms": round((ended - rank_started) * 1000, 2),
        "elapsed_ms": round((ended - started) * 1000, 1),
    }


def rank_photo(
    model_id: str,
    query: np.ndarray,
    prefs: Preferences,
    n: int,
    all_categories: bool = False,
    exclude: Collection[int] = (),
) -> dict[str, Any]:
    """Rank the catalogue of ``model_id`` for one embedded photo and choose the shopper's N
    (the part of ``search_photo`` after the model; JSON-safe)."""
    catalogue = catalogue_index(model_id)
    if query.shape[0] != catalogue.dim:
        raise SearchError(f"The embeddings of {model_id} do not match its backbone.", 503)
    heads = heads_for(model_id)
    prediction = Prediction.from_heads(heads.predict(query) if heads is not None else {})
    policy = search_policy()
    if catalogue.vectors is not None:
        scores = search_levels.ArrayScores(catalogue.vectors @ query)
    else:
        scores = IndexScores(catalogue, query, MIN_WINDOW)
    eligible = EligibleProducts(catalogue.ids, Eligibility.of(prefs, exclude=exclude).clauses())
    ranking, groups = search_results.choose_distinct(
        catalogue.ids, scores, prediction, eligible, n, policy, all_categories
    )
    level_of = {
        int(catalogue.ids[row]): (float(score), level)
        for row, score, level in zip(
            ranking.rows.tolist(), scores.of(ranking.rows).tolist(), ranking.levels, strict=True
        )
    }
    items = [[group[0], round(level_of[group[0]][0], 5), level_of[group[0]][1]] for group in groups]
    closest = max((item[1] for item in items), default=None)
    threshold, threshold_from = search_results.close_match_cosine(model_id)
    return {
        "model": model_id,
        "heads": heads.version if heads is not None else None,
        "predictions": _prediction_list(prediction, policy),
        "searched": ranking.searched,
        "message": _message(ranking, n, all_categories, heads is not None),
        "items": items,
        # Other products showing the same picture as a card's, best first (keys: card ids).
        "also": {str(group[0]): group[1:] for group in groups if len(group) > 1},
        "closest": closest,
        "close_match_cosine": threshold,
        "close_match_from": threshold_from,
        "no_close_match": bool(
            threshold is not None and closest is not None and closest < threshold
        ),
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
            gender, article_type = split_derived_type(label)
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
        model_id = allowed_model(model)
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
