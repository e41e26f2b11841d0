"""Similar products past a product's cached list, for a large catalogue: asked of its index.

A product page chooses from the product's cached list of K neighbours; when a shopper's
preferences leave fewer than N of them, more are needed. On a small catalogue the web
process scores the stored vectors itself (``webapp.similar.services``); past 50,000 products
that would mean reading gigabytes per page, so the page asks a worker, which holds the
catalogue's index (``worker.jobs.search_index``): windows of the product's nearest products,
doubled until enough of them are eligible (asked of the database, preferences applied while
choosing), and past ``MAX_WINDOW`` a search restricted to the eligible products themselves,
so N come back whenever N eligible products exist.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np
from sqlalchemy import select

from webapp.eligibility import Eligibility
from webapp.extensions import db
from webapp.models import Product
from webapp.preferences import Preferences
from webapp.registry import store_for
from worker.jobs.search_index import catalogue_index

# Nearest products read at most through windows; past it the eligible set is searched.
MAX_WINDOW = 20_000
ID_CHUNK = 2000


def _eligible(ids: list[int], eligibility: Eligibility) -> set[int]:
    """Which of ``ids`` the shopper may be shown (one query per ``ID_CHUNK`` ids)."""
    found: set[int] = set()
    for start in range(0, len(ids), ID_CHUNK):
        chunk = ids[start : start + ID_CHUNK]
        found |= set(
            db.session.scalars(
                select(Product.id).where(Product.id.in_(chunk), *eligibility.clauses())
            )
        )
    return found


def more_similar(
    model_id: str,
    product_id: int,
    prefs: dict[str, Any] | None,
    exclude: Collection[int],
    chosen: Collection[int],
    missing: int,
) -> list[list[float]]:
    """Up to ``missing`` eligible products nearest ``product_id``, not in ``chosen`` (nor
    ``exclude``, nor the product), best first: ``[[id, cosine], ...]``."""
    try:
        query = store_for(model_id).get([product_id])[0]
    except KeyError:
        return []
    catalogue = catalogue_index(model_id)
    eligibility = Eligibility.of(Preferences.from_session(prefs), exclude=exclude)
    skip = {int(p) for p in chosen} | {int(product_id)}
    total = len(catalogue.ids)
    window = min(total, max(64, 4 * (missing + len(skip))))
    while True:
        found = _search(catalogue, query, window)
        candidates = [(pid, score) for pid, score in found if pid not in skip]
        allowed = _eligible([pid for pid, _ in candidates], eligibility)
        picked = [[pid, score] for pid, score in candidates if pid in allowed]
        if len(picked) >= missing or window >= total:
            return picked[:missing]
        if window >= MAX_WINDOW:
            break
        window = min(total, window * 4)
    members = np.fromiter(
        db.session.scalars(select(Product.id).where(*eligibility.clauses())), np.int64
    )
    members = members[~np.isin(members, np.fromiter(skip, np.int64, len(skip)))]
    return _search(catalogue, query, missing, members)


def _search(catalogue: Any, query: np.ndarray, k: int, allowed: Any = None) -> list:
    """``[[id, cosine], ...]`` of the catalogue's k nearest (among ``allowed`` ids)."""
    if catalogue.nearest is not None:
        ids, scores = catalogue.nearest.query(query, k, allowed)
        ids, scores = ids[0], scores[0]
    else:
        sims = catalogue.vectors @ query
        rows = np.arange(len(sims))
        if allowed is not None:  # the allowed products that are embedded
            rows = np.minimum(np.searchsorted(catalogue.ids, allowed), len(sims) - 1)
            rows = rows[catalogue.ids[rows] == allowed]
        order = rows[np.argsort(-sims[rows], kind="stable")[:k]]
        ids, scores = catalogue.ids[order], sims[order]
    return [
        [int(i), float(s)] for i, s in zip(ids.tolist(), scores.tolist(), strict=True) if i >= 0
    ]
