"""Serving similar products to pages and the API: Redis lists + one DB query, no TensorFlow."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from celery.exceptions import CeleryError
from celery.exceptions import TimeoutError as CeleryTimeout
from flask import current_app
from redis.exceptions import RedisError
from sqlalchemy import select

from ml.neighbours import query as nearest
from ml.store import EmbeddingStore
from ml.vector_index import exact_for
from webapp import healing, registry
from webapp.eligibility import Eligibility, eligible_clauses  # noqa: F401 (re-exported)
from webapp.extensions import db, send_task
from webapp.models import Product
from webapp.preferences import Preferences
from webapp.similar.selection import choose, reasons

logger = logging.getLogger(__name__)

MAX_N = 50
# Rows read beyond the n a page shows in its first window (for the few products that turn
# out inactive, out of stock or filtered out).
SPARE_ROWS = 2

# One store per model id and process: the memory map and its parsed deltas are reused.
_stores: dict[tuple[str, str], EmbeddingStore] = {}


@dataclass
class SimilarItem:
    """One recommended product with its cosine score and what it shares with the query."""

    product: Product
    score: float
    reasons: list[str]


@dataclass
class SimilarResult:
    """What a page shows: items, or why there are none."""

    status: str  # ok | pending | unavailable
    items: list[SimilarItem] = field(default_factory=list)
    message: str = ""
    model_id: str | None = None


def with_overrides(
    prefs: Preferences, exclude_colours: list[str] | None = None, gender: str | None = None
) -> Preferences:
    """A shopper's preferences plus explicit request parameters (which always apply)."""
    out = Preferences(
        disliked_colours=set(prefs.disliked_colours) if prefs.hide_disliked_colours else set(),
        genders=set(prefs.genders),
        hidden={k: set(v) for k, v in prefs.hidden.items()},
        hide_disliked_colours=True,
    )
    out.disliked_colours |= set(exclude_colours or [])
    if gender:
        out.genders = {gender}
    return out


def similar_products(
    product: Product, prefs: Preferences, n: int, exclude: Collection[int] = ()
) -> SimilarResult:
    """Top-n products that look like ``product``, preferences applied while choosing;
    ``exclude`` (the shopper's "not interested" products) never chosen."""
    try:
        cache = registry.neighbour_cache()
        model_id = cache.active_model()
        if model_id is None:
            healing.request_heal("no model is served")
            return SimilarResult("pending", message="Recommendations are being prepared.")
        cached = cache.get_list(model_id, product.id)
    except RedisError as exc:
        logger.warning("similar products unavailable for %s: %s", product.id, exc)
        return SimilarResult("unavailable", message="Recommendations are unavailable right now.")

    ranked = (
        [] if cached is None else list(zip(cached[0].tolist(), cached[1].tolist(), strict=True))
    )
    rows: dict[int, Product] = {}
    load_through = _row_loader([pid for pid, _ in ranked], rows, n)
    eligibility = Eligibility.of(prefs, exclude=exclude)

    def is_eligible(pid: int) -> bool:
        load_through(pid)
        p = rows.get(pid)
        return p is not None and p.id != product.id and eligibility.allows(p)

    def fallback(chosen: set[int], missing: int) -> list[tuple[int, float]]:
        if exact_for(current_app.config["NEIGHBOURS_INDEX"], _served_count(cache, model_id)):
            found = _filtered_search(model_id, product, eligibility, chosen, missing)
        else:
            found = _ask_worker(model_id, product, prefs, exclude, chosen, missing)
        if found:
            ids = [pid for pid, _ in found if pid not in rows]
            rows.update(
                {p.id: p for p in db.session.scalars(select(Product).where(Product.id.in_(ids)))}
            )
        return found

    chosen = choose(ranked, is_eligible, n, fallback)
    if not chosen and cached is None:
        if product.image_path:  # a product without a photo never has a list
            healing.request_heal(f"product {product.id} has no list")
        return SimilarResult(
            "pending",
            message="Similar products for this item are being prepared.",
            model_id=model_id,
        )
    items = [SimilarItem(rows[pid], score, reasons(product, rows[pid])) for pid, score in chosen]
    return SimilarResult("ok", items, model_id=model_id)


def _row_loader(ids: list[int], rows: dict[int, Product], n: int) -> Callable[[int], None]:
    """Loads the rows of a ranked list into ``rows`` a window at a time, as choosing reaches
    them: a page showing n products reads n + SPARE_ROWS rows when nothing is filtered out, not
    the whole cached list (on a large catalogue every row is a random read that may miss the
    database's cache); each further window is as large as everything read so far."""
    position = {pid: i for i, pid in enumerate(ids)}
    loaded = 0

    def load_through(pid: int) -> None:
        nonlocal loaded
        i = position.get(pid)
        if i is None or i < loaded:
            return
        end = min(len(ids), max(i + 1, loaded + max(n + SPARE_ROWS, loaded)))
        window = ids[loaded:end]
        rows.update(
            {p.id: p for p in db.session.scalars(select(Product).where(Product.id.in_(window)))}
        )
        loaded = end

    return load_through


def _store(model_id: str) -> EmbeddingStore:
    """The model's store, kept per process (it caches its loaded matrix); keyed by folder
    too, since two apps may serve the same model id from different model folders."""
    key = (current_app.config["MODEL_FOLDER"], model_id)
    store = _stores.get(key)
    if store is None:
        store = _stores[key] = registry.store_for(model_id)
    return store


def _served_count(cache: Any, model_id: str) -> int:
    """How many products the model's lists cover (as the last build recorded)."""
    try:
        return int(cache.meta(model_id).get("count") or 0)
    except (RedisError, ValueError):
        return 0


def _ask_worker(
    model_id: str,
    product: Product,
    prefs: Preferences,
    exclude: Collection[int],
    chosen: set[int],
    missing: int,
) -> list[tuple[int, float]]:
    """A large catalogue's search past the cached list, done by a worker, which holds the
    catalogue's index (``worker.jobs.similar``); waited for ``SIMILAR_MORE_TIMEOUT``
    seconds, after which the page shows what the list gave."""
    try:
        pending = send_task(
            "worker.tasks.ml_similar_more",
            args=(
                model_id,
                product.id,
                prefs.to_session(),
                sorted(exclude),
                sorted(chosen),
                missing,
            ),
        )
        found = pending.get(timeout=current_app.config["SIMILAR_MORE_TIMEOUT"])
    except (CeleryTimeout, CeleryError, RedisError, OSError) as exc:
        logger.warning("more similar products for %s unavailable: %s", product.id, exc)
        return []
    return [(int(pid), float(score)) for pid, score in found]


def _filtered_search(
    model_id: str, product: Product, eligibility: Eligibility, chosen: set[int], missing: int
) -> list[tuple[int, float]]:
    """Exact search among eligible products not ``chosen`` yet, in this process: used when
    the cached K run out on a catalogue small enough to be searched exactly."""
    store = _store(model_id)
    ids, vectors = store.load()
    pos = store.positions([product.id])
    if pos[0] < 0:
        return []
    eligible = np.fromiter(
        db.session.scalars(
            select(Product.id).where(*eligibility.clauses(), Product.id != product.id)
        ),
        dtype=np.int64,
    )
    allowed = np.isin(ids, eligible) & ~np.isin(ids, np.fromiter(chosen, np.int64, len(chosen)))
    if not allowed.any():
        return []
    idx, scores = nearest(vectors, np.asarray(vectors[pos[0]]), missing, allowed=allowed)
    return list(zip(ids[idx[0]].tolist(), scores[0].tolist(), strict=True))
