"""Catalogue order and pages: numbered pages near the start, keyset cursors beyond.

Each sort is one column (or none) and a direction; ties break by product id (ascending) and
products without the sort value come last, also by id. A page is read in segments so that
each query is a plain range over one index: the products with a value, in order, then
those without one; for the year, which has few values, one range of ids per year. A page number reads from the start (``OFFSET``), which costs as much as
the rows skipped, so the links offer page numbers only as far as ``NUMBERED_ROWS``; "next",
"previous" and "last" carry a cursor instead (the sort value and id of the row to continue
from), which costs the same on any page.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import aliased
from sqlalchemy.sql.util import ClauseAdapter

from webapp.eligibility import ACTIVE
from webapp.extensions import db
from webapp.models import Product

# Page links by number reach this many rows into a listing; further pages are reached by
# cursor ("next", "previous", "last"), as is any page a cursor link leads to.
NUMBERED_ROWS = 1200
END = "end"  # the ``before`` cursor of the last page
# Listings with at most this many products are read by sorting them all (cheap, bounded);
# longer ones by walking the sort's index, at most WALK_ROWS entries before falling back.
SORT_MATCHES_ROWS = 20_000
WALK_ROWS = 40_000
MAX_CURSOR_LENGTH = 1000


@dataclass(frozen=True)
class SortKey:
    """A catalogue order: the sort column (None: by id alone) and its direction."""

    column: str | None
    descending: bool = False


SORT_KEYS: dict[str, SortKey] = {
    "relevance": SortKey(None),
    "name": SortKey("name"),
    "newest": SortKey("year", descending=True),
    "price_asc": SortKey("price"),
    "price_desc": SortKey("price", descending=True),
}


def order_by(sort: str) -> list[ColumnElement[Any]]:
    """The whole order of a sort as one ORDER BY (products without the value last)."""
    key = SORT_KEYS.get(sort, SORT_KEYS["relevance"])
    ties = Product.id.asc()
    if key.column is None:
        return [ties]
    column = getattr(Product, key.column)
    return [(column.desc() if key.descending else column.asc()).nulls_last(), ties]


@dataclass(frozen=True)
class Cursor:
    """A row to continue from: its sort value (None when it has none) and its id."""

    value: Any
    id: int

    def encode(self) -> str:
        """URL-safe text (base64 of JSON; decimals as strings)."""
        value = str(self.value) if isinstance(self.value, Decimal) else self.value
        raw = json.dumps([value, self.id], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, sort: str) -> Cursor | None:
        """The cursor in ``text`` for ``sort``, or None when it is not one (a stale or
        hand-edited link reads from the start instead of failing)."""
        if not text or len(text) > MAX_CURSOR_LENGTH:
            return None
        try:
            value, pid = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        except (ValueError, TypeError, binascii.Error):
            return None
        if not isinstance(pid, int) or isinstance(pid, bool) or not 0 <= pid < 2**31:
            return None
        column = SORT_KEYS[sort].column
        if value is None or column is None:
            return cls(None, pid)
        try:
            if column == "price" and isinstance(value, str):
                return cls(Decimal(value), pid) if Decimal(value).is_finite() else None
            if column == "year" and isinstance(value, int) and abs(value) < 2**31:
                return cls(value, pid)
            if column == "name" and isinstance(value, str):
                return cls(value, pid)
        except InvalidOperation:
            return None
        return None

    @classmethod
    def of(cls, product: Product, sort: str) -> Cursor:
        """The cursor that continues after (or before) ``product``."""
        column = SORT_KEYS[sort].column
        return cls(getattr(product, column) if column else None, product.id)


class Segment(NamedTuple):
    """One query of a page read: its where-clauses, its order and, when known, how many
    products it holds at most (with the page's other conditions)."""

    clauses: list[ColumnElement[bool]]
    order: list[ColumnElement[Any]]
    matching: int | None = None


def segments(
    sort: str,
    cursor: Cursor | None,
    backwards: bool = False,
    groups: Mapping[Any, int] | None = None,
) -> list[Segment]:
    """The queries that read on from ``cursor`` in the sort's order (or, with ``backwards``,
    back from it in the reverse order), one after the other.

    ``groups`` (how many matching products each value of the sort column holds, for a
    column of few values such as the year) turns the range beyond the cursor into one
    query per value that has products, each a range of ids within its value.
    """
    key = SORT_KEYS[sort]
    ties = Product.id.desc() if backwards else Product.id.asc()

    def id_beyond(pid: int) -> ColumnElement[bool]:
        return Product.id < pid if backwards else Product.id > pid

    if key.column is None:
        return [Segment([id_beyond(cursor.id)] if cursor else [], [ties])]
    column = getattr(Product, key.column)
    descending = key.descending != backwards
    ordered = [column.desc() if descending else column.asc(), ties]

    def beyond(value: Any) -> ColumnElement[bool]:
        return column < value if descending else column > value

    if not Product.__table__.c[key.column].nullable:  # one segment, no NULLs to place
        if cursor is None or cursor.value is None:
            return [Segment([], ordered)]
        return [
            Segment([column == cursor.value, id_beyond(cursor.id)], [ties]),
            Segment([beyond(cursor.value)], ordered),
        ]
    if groups is not None:
        return _grouped(column, descending, ties, id_beyond, cursor, backwards, groups)
    with_value = Segment([column.is_not(None)], ordered)
    without_value = Segment([column.is_(None)], [ties])
    if cursor is None:
        return [without_value, with_value] if backwards else [with_value, without_value]
    if cursor.value is None:
        rest = [Segment([column.is_(None), id_beyond(cursor.id)], [ties])]
        return [*rest, with_value] if backwards else rest
    rest = [
        Segment([column == cursor.value, id_beyond(cursor.id)], [ties]),
        Segment([beyond(cursor.value)], ordered),
    ]
    return rest if backwards else [*rest, without_value]


def _grouped(
    column: Any,
    descending: bool,
    ties: ColumnElement[Any],
    id_beyond: Callable[[int], ColumnElement[bool]],
    cursor: Cursor | None,
    backwards: bool,
    groups: Mapping[Any, int],
) -> list[Segment]:
    """``segments`` with one query per value of the sort column (see there)."""
    values = sorted((v for v in groups if v is not None), reverse=descending)
    by_value = [Segment([column == v], [ties], groups[v]) for v in values]
    nulls = [Segment([column.is_(None)], [ties], groups[None])] if None in groups else []
    if cursor is None:
        return [*nulls, *by_value] if backwards else [*by_value, *nulls]
    if cursor.value is None:
        rest = [Segment([column.is_(None), id_beyond(cursor.id)], [ties], groups.get(None, 0))]
        return [*rest, *by_value] if backwards else rest
    value = cursor.value
    rest = [Segment([column == value, id_beyond(cursor.id)], [ties], groups.get(value, 0))]
    rest += [
        s for v, s in zip(values, by_value, strict=True) if (v < value if descending else v > value)
    ]
    rest = [s for s in rest if s.matching]
    return rest if backwards else [*rest, *nulls]


def read(
    where: Sequence[ColumnElement[bool]],
    parts: list[Segment],
    limit: int,
    offset: int = 0,
    matching: int | None = None,
) -> list[Product]:
    """Up to ``limit`` products after skipping ``offset``, reading the segments in turn.

    ``matching`` (how many products ``where`` matches, when known) chooses how each segment
    is read: see ``_read_segment``.
    """
    found: list[Product] = []
    if matching == 0:
        return found
    for clauses, order, known in parts:
        if len(found) >= limit:
            break
        if known is not None and offset >= known:  # skipped whole, without a query
            offset -= known
            continue
        rows = _read_segment(
            where, clauses, order, limit - len(found), offset, matching if known is None else known
        )
        if offset and not rows:
            # The skip reaches past this segment: count it to skip the rest further on.
            size = select(func.count()).select_from(Product).where(*where, *clauses)
            offset = max(offset - (db.session.scalar(size) or 0), 0)
            continue
        offset = 0
        found.extend(rows)
    return found


def _read_segment(
    where: Sequence[ColumnElement[bool]],
    clauses: list[ColumnElement[bool]],
    order: list[ColumnElement[Any]],
    limit: int,
    offset: int,
    matching: int | None,
) -> list[Product]:
    """One segment's rows: a bounded walk along the sort's index, else the matches sorted.

    Walking the index in order and testing each product is cheapest when matches are many
    and spread out; when they are few, or bunched at the far end of the order (categories
    and years go together), the walk would read most of the catalogue. So a few matches
    (``matching`` at most ``SORT_MATCHES_ROWS``) are fetched and sorted directly; otherwise
    the walk stops after ``WALK_ROWS`` index entries and falls back to sorting the matches.
    The bound relies on PostgreSQL reading an ordered subquery only as far as needed;
    SQLite would read and sort the whole bounded walk, so there the walk is the plain
    ordered query (an embedded catalogue is small enough for its worst case).
    """
    if matching is None or matching > SORT_MATCHES_ROWS:
        if db.session.get_bind().dialect.name != "postgresql":
            plain = select(Product).where(*where, *clauses).order_by(*order)
            return list(db.session.scalars(plain.offset(offset).limit(limit)))
        walk = select(Product).where(*ACTIVE.clauses(), *clauses).order_by(*order)
        walked = walk.limit(WALK_ROWS).subquery("walked")
        adapt = ClauseAdapter(walked).traverse
        # The walk is already in order, so the outer query reads it only as far as it needs.
        stmt = (
            select(aliased(Product, walked))
            .where(*(adapt(w) for w in [*where, *clauses]))
            .order_by(*(adapt(o) for o in order))
            .offset(offset)
            .limit(limit)
        )
        rows = list(db.session.scalars(stmt))
        if len(rows) == limit:
            return rows
        # Short: the segment may have ended within the walk (then these rows are all).
        walked_ids = walk.with_only_columns(Product.id).limit(WALK_ROWS).subquery()
        if (db.session.scalar(select(func.count()).select_from(walked_ids)) or 0) < WALK_ROWS:
            return rows
    matches = select(Product).where(*where, *clauses).cte("matches").prefix_with("MATERIALIZED")
    adapt = ClauseAdapter(matches).traverse
    stmt = (
        select(aliased(Product, matches))
        .order_by(*(adapt(o) for o in order))
        .offset(offset)
        .limit(limit)
    )
    return list(db.session.scalars(stmt))
