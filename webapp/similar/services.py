"""Serving similar products to pages and the API: Redis lists + one DB query, no TensorFlow."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from redis.exceptions import RedisError
from sqlalchemy import select

from ml.neighbours import query as nearest
from ml.store import EmbeddingStore
from webapp import registry
from webapp.eligibility import Eligibility, eligible_clauses  # noqa: F401 (re-exported)
from webapp.extensions import db
from webapp.models import Product
from webapp.preferences import Preferences
from webapp.similar.selection import choose, reasons

logger = logging.getLogger(__name__)

MAX_N = 50

# One store per model id and process: the memory map and its parsed deltas are reused.
_stores: dict[str, EmbeddingStore] = {}


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


def similar_products(product: Product, prefs: Preferences, n: int) -> SimilarResult:
    """Top-n products that look like ``product``, preferences applied while choosing."""
    try:
        cache = registry.neighbour_cache()
        model_id = cache.active_model()
        if model_id is None:
            return SimilarResult("pending", message="Recommendations are being prepared.")
        cached = cache.get_list(model_id, product.id)
    except RedisError as exc:
        logger.warning("similar products unavailable for %s: %s", product.id, exc)
        return SimilarResult("unavailable", message="Recommendations are unavailable right now.")

    ranked = (
        [] if cached is None else list(zip(cached[0].tolist(), cached[1].tolist(), strict=True))
    )
    rows: dict[int, Product] = {}
    if ranked:
        ids = [pid for pid, _ in ranked]
        rows = {p.id: p for p in db.session.scalars(select(Product).where(Product.id.in_(ids)))}

    eligibility = Eligibility.of(prefs)

    def is_eligible(pid: int) -> bool:
        p = rows.get(pid)
        return p is not None and p.id != product.id and eligibility.allows(p)

    def fallback(chosen: set[int], missing: int) -> list[tuple[int, float]]:
        found = _filtered_search(model_id, product, eligibility, chosen, missing)
        if found:
            ids = [pid for pid, _ in found if pid not in rows]
            rows.update(
                {p.id: p for p in db.session.scalars(select(Product).where(Product.id.in_(ids)))}
            )
        return found

    chosen = choose(ranked, is_eligible, n, fallback)
    if not chosen and cached is None:
        return SimilarResult(
            "pending",
            message="Similar products for this item are being prepared.",
            model_id=model_id,
        )
    items = [SimilarItem(rows[pid], score, reasons(product, rows[pid])) for pid, score in chosen]
    return SimilarResult("ok", items, model_id=model_id)


def _store(model_id: str) -> EmbeddingStore:
    store = _stores.get(model_id)
    if store is None:
        store = _stores[model_id] = registry.store_for(model_id)
    return store


def _filtered_search(
    model_id: str, product: Product, eligibility: Eligibility, exclude: set[int], missing: int
) -> list[tuple[int, float]]:
    """Exact search among eligible products only: used when the cached K run out."""
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
    allowed = np.isin(ids, eligible) & ~np.isin(ids, np.fromiter(exclude, np.int64, len(exclude)))
    if not allowed.any():
        return []
    idx, scores = nearest(vectors, np.asarray(vectors[pos[0]]), missing, allowed=allowed)
    return list(zip(ids[idx[0]].tolist(), scores[0].tolist(), strict=True))
