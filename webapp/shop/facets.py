"""Facet counts and totals from the catalogue's facet summary, cached per catalogue version.

The facet summary is one GROUP BY over every facet column (and the year) at once: how many
active products (matching the search text, if any) share each combination of values. A real
catalogue has a few thousand combinations however many products it holds, so every facet
count and the total for any filter selection and any shopper's preferences follow from the
summary in memory: the preferences are applied with ``Eligibility.mask`` (the same rule as
the SQL clauses), the facet selections by value, each facet ignoring its own selection.

The summary is computed once per catalogue version and search text and kept in Redis (and
in the process for the current version). Every committed change to product rows (the
admin's edits, imports, anything through the ORM session) bumps the version after the
commit, so the next page computes a fresh summary; a summary is also dropped after
``SUMMARY_TTL_S`` in case a change bypassed the session. Without Redis the summary is
computed for each page: slower, never wrong.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flask import current_app, has_app_context
from redis.exceptions import RedisError
from sqlalchemy import event, func, select
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction

from webapp.eligibility import ACTIVE, Eligibility, ProductColumns
from webapp.extensions import db, get_redis
from webapp.models import FACETS, Product
from webapp.preferences import Preferences

logger = logging.getLogger(__name__)

# Keys are per database (two shops, or tests, may share a Redis database). The version is a
# fresh random token at each change, never a counter that a flushed Redis could repeat.
VERSION_KEY = "shop:catalogue:{database}:version"
SUMMARY_KEY = "shop:catalogue:{database}:summary:{version}:{search}"
SUMMARY_TTL_S = 3600  # a safety net: changes through the session bump the version at once
SEARCH_SUMMARY_TTL_S = 600  # summaries of searches are many and small: keep them briefly
LOCAL_SUMMARIES = 8  # summaries each process keeps (the whole catalogue's, recent searches)
CHANGED = "catalogue_changed"  # the session.info flag set by a flush that touched products

# What the summary groups by: the facets (URL keys) and the year, which the "newest" order
# reads to know how many matching products each year holds (``webapp.shop.paging``).
GROUPS = (*FACETS, "year")

# (database, version, search text) -> (when computed or fetched, summary)
_local: OrderedDict[tuple[str, str, str], tuple[float, FacetSummary]] = OrderedDict()


@dataclass(frozen=True)
class FacetSummary:
    """Product counts per combination of values: per group (GROUPS), each combination's code
    into that group's distinct values (None included), and each combination's count."""

    codes: Mapping[str, np.ndarray]
    values: Mapping[str, list[Any]]
    counts: np.ndarray

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[Any]]) -> FacetSummary:
        """From rows of (one value per group in GROUPS order..., count)."""
        keys = list(GROUPS)
        columns = ProductColumns.from_arrays(
            {key: [row[i] for row in rows] for i, key in enumerate(keys)}
        )
        counts = np.fromiter((int(row[-1]) for row in rows), np.int64, len(rows))
        return cls(dict(columns.codes), {k: list(v) for k, v in columns.values.items()}, counts)

    def to_json(self) -> str:
        """A compact JSON form for the cache."""
        return json.dumps(
            {
                "codes": {k: v.tolist() for k, v in self.codes.items()},
                "values": self.values,
                "counts": self.counts.tolist(),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> FacetSummary:
        """The inverse of ``to_json``."""
        data = json.loads(text)
        return cls(
            {k: np.array(v, np.int64) for k, v in data["codes"].items()},
            data["values"],
            np.array(data["counts"], np.int64),
        )

    def eligible(self, prefs: Preferences) -> np.ndarray:
        """A bool per combination: shown to a shopper with ``prefs`` (catalogue rules)."""
        columns = ProductColumns(
            len(self.counts),
            {**{FACETS[k]: self.codes[k] for k in FACETS}, "active": self._zeros()},
            {**{FACETS[k]: self.values[k] for k in FACETS}, "active": [True]},
        )
        return Eligibility.of(prefs, in_stock=False).mask(columns)

    def _zeros(self) -> np.ndarray:
        return np.zeros(len(self.counts), np.int64)

    def selected(self, key: str, values: Sequence[str]) -> np.ndarray:
        """A bool per combination: its value of facet ``key`` is one of ``values``."""
        wanted = set(values)
        hits = np.fromiter((v in wanted for v in self.values[key]), bool, len(self.values[key]))
        return hits[self.codes[key]]


def counts_and_total(
    summary: FacetSummary, prefs: Preferences, filters: Mapping[str, Sequence[str]]
) -> tuple[dict[str, dict[str, int]], int]:
    """Per facet {value: count} applying every other facet's selection but not its own (values
    without products left out), and the number of products matching every selection."""
    shown = summary.eligible(prefs)
    chosen = {key: summary.selected(key, values) for key, values in filters.items() if values}
    total = int(summary.counts[shown & _all(chosen, len(shown))].sum())
    counts: dict[str, dict[str, int]] = {}
    for key in FACETS:
        rows = shown & _all({k: m for k, m in chosen.items() if k != key}, len(shown))
        counts[key] = {
            value: n for value, n in _sums(summary, key, rows).items() if value is not None
        }
    return counts, total


def year_counts(
    summary: FacetSummary, prefs: Preferences, filters: Mapping[str, Sequence[str]]
) -> dict[int | None, int]:
    """How many products matching every selection each year holds (None: no year)."""
    shown = summary.eligible(prefs)
    chosen = {key: summary.selected(key, values) for key, values in filters.items() if values}
    return _sums(summary, "year", shown & _all(chosen, len(shown)))


def _sums(summary: FacetSummary, key: str, rows: np.ndarray) -> dict[Any, int]:
    """{value of group ``key``: products} over the combinations ``rows``, zeros left out."""
    sums = np.bincount(
        summary.codes[key][rows], weights=summary.counts[rows], minlength=len(summary.values[key])
    )
    return {value: int(n) for value, n in zip(summary.values[key], sums, strict=True) if n > 0}


def _all(masks: Mapping[str, np.ndarray], size: int) -> np.ndarray:
    out = np.ones(size, bool)
    for mask in masks.values():
        out &= mask
    return out


def compute_summary(search: list[Any]) -> FacetSummary:
    """The summary from the database: active products matching ``search`` (where-clauses on
    the name), grouped by every facet column in one statement."""
    columns = [*(getattr(Product, FACETS[key]) for key in FACETS), Product.year]
    stmt = select(*columns, func.count()).where(*ACTIVE.clauses(), *search).group_by(*columns)
    return FacetSummary.from_rows(db.session.execute(stmt).all())


def catalogue_summary(q: str, search: list[Any]) -> FacetSummary:
    """The facet summary for the search text ``q`` at the current catalogue version, from the
    process, from Redis, or computed (and then kept in both)."""
    database = _database()
    try:
        version = current_version(database)
    except (RedisError, OSError) as exc:
        logger.warning("catalogue version unavailable, counting afresh: %s", exc)
        return compute_summary(search)
    local_key = (database, version, q)
    if local_key in _local:
        # Kept no longer than Redis keeps it, should a change have failed to bump the version.
        stored, summary = _local[local_key]
        if time.monotonic() - stored < (SEARCH_SUMMARY_TTL_S if q else SUMMARY_TTL_S):
            _local.move_to_end(local_key)
            return summary
        del _local[local_key]
    digest = hashlib.sha256(q.encode()).hexdigest()[:32]
    key = SUMMARY_KEY.format(database=database, version=version, search=digest)
    try:
        cached = get_redis().get(key)
    except (RedisError, OSError) as exc:
        logger.warning("facet summary cache unavailable: %s", exc)
        cached = None
    if cached is not None:
        summary = FacetSummary.from_json(cached)
    else:
        summary = compute_summary(search)
        try:
            ttl = SEARCH_SUMMARY_TTL_S if q else SUMMARY_TTL_S
            get_redis().set(key, summary.to_json(), ex=ttl)
        except (RedisError, OSError) as exc:
            logger.warning("could not cache the facet summary: %s", exc)
    _local[local_key] = (time.monotonic(), summary)
    while len(_local) > LOCAL_SUMMARIES:
        _local.popitem(last=False)
    return summary


# ---------- Invalidation: a committed change to products bumps the catalogue version ----------


def _database() -> str:
    """A short name of the app's database for the cache keys."""
    uri = str(current_app.config["SQLALCHEMY_DATABASE_URI"])
    return hashlib.sha256(uri.encode()).hexdigest()[:16]


def current_version(database: str) -> str:
    """The catalogue version token, set to a fresh one when Redis has none."""
    key = VERSION_KEY.format(database=database)
    version = get_redis().get(key)
    if version is None:
        get_redis().set(key, uuid.uuid4().hex, nx=True)
        version = get_redis().get(key)
    return version.decode() if isinstance(version, bytes) else str(version)


def bump_version() -> None:
    """Make every cached facet summary stale (the next catalogue page counts afresh)."""
    try:
        get_redis().set(VERSION_KEY.format(database=_database()), uuid.uuid4().hex)
    except (RedisError, OSError) as exc:
        # Summaries cached in Redis still expire after SUMMARY_TTL_S.
        logger.warning("could not bump the catalogue version: %s", exc)


def _after_flush(session: Session, flush_context: UOWTransaction) -> None:
    touched = (*session.new, *session.dirty, *session.deleted)
    if any(isinstance(obj, Product) for obj in touched):
        session.info[CHANGED] = True


def _do_orm_execute(state: ORMExecuteState) -> None:
    # Bulk statements (the importer's insert/update of many rows) skip the flush.
    if state.is_insert or state.is_update or state.is_delete:
        table = getattr(state.statement, "table", None)
        if getattr(table, "name", None) == Product.__tablename__:
            state.session.info[CHANGED] = True


def _after_commit(session: Session) -> None:
    if session.info.pop(CHANGED, False) and has_app_context():
        bump_version()


def _after_rollback(session: Session) -> None:
    session.info.pop(CHANGED, None)


HOOKS = {
    "after_flush": _after_flush,
    "do_orm_execute": _do_orm_execute,
    "after_commit": _after_commit,
    "after_rollback": _after_rollback,
}


def watch_product_changes() -> None:
    """Bump the catalogue version after every commit that changed product rows (once per
    process; every app's sessions share the session class)."""
    for name, hook in HOOKS.items():
        if not event.contains(db.session, name, hook):
            event.listen(db.session, name, hook)
