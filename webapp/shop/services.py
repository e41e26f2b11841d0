"""Catalogue queries: filters, facet counts, search, sorting, pagination and visibility.

Which products a shopper may see at all (active, allowed by their preferences) comes from
``webapp.eligibility``, as for every other place that lists products, so preferences and
the active flag mean the same thing everywhere. Catalogue pages also list products that are
out of stock.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import abort
from flask_login import current_user
from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    func,
    literal_column,
    null,
    select,
    union_all,
)
from sqlalchemy.orm import InstrumentedAttribute
from werkzeug.datastructures import MultiDict

from webapp.eligibility import ACTIVE, Eligibility
from webapp.extensions import db
from webapp.models import FACETS, Product
from webapp.preferences import Preferences

logger = logging.getLogger(__name__)

# Human labels of the facets, in FACETS order.
FACET_LABELS: dict[str, str] = {
    "gender": "Gender",
    "master": "Category",
    "sub": "Subcategory",
    "type": "Type",
    "colour": "Colour",
    "season": "Season",
    "usage": "Usage",
}

SORTS: dict[str, str] = {
    "relevance": "Relevance",
    "name": "Name (A to Z)",
    "newest": "Newest first",
    "price_asc": "Price (low to high)",
    "price_desc": "Price (high to low)",
}
DEFAULT_SORT = "relevance"

MAX_QUERY_LENGTH = 200
# More values than any facet has (article types are the most numerous, about 140): a longer
# list is not a shopper's selection, and it would blow SQLite's bound-parameter limit.
MAX_VALUES_PER_FACET = 200
# Catalogue ids are 32-bit in the data and in PostgreSQL's INTEGER column; a larger number in
# a URL would overflow the driver instead of simply matching nothing.
MAX_PRODUCT_ID = 2**31 - 1

_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


class CatalogArgsError(ValueError):
    """Catalogue URL parameters that cannot be made sense of; the message is for the shopper."""


def facet_column(key: str) -> InstrumentedAttribute[str | None]:
    """The Product column behind a facet URL key."""
    return getattr(Product, FACETS[key])


@dataclass(frozen=True)
class CatalogQuery:
    """What the shopper asked the catalogue for, parsed and cleaned from the URL."""

    q: str = ""
    filters: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    sort: str = DEFAULT_SORT
    page: int = 1

    @property
    def is_filtered(self) -> bool:
        """True when a search text or any facet value narrows the catalogue."""
        return bool(self.q) or any(self.filters.values())

    def url_args(self, **changes: Any) -> dict[str, Any]:
        """Keyword arguments for ``url_for('shop.catalog', ...)``; defaults are left out."""
        values: dict[str, Any] = {"q": self.q, "sort": self.sort, "page": self.page}
        values.update({k: list(v) for k, v in self.filters.items()})
        values.update(changes)
        args: dict[str, Any] = {}
        if values.get("q"):
            args["q"] = values["q"]
        for key in FACETS:
            if values.get(key):
                args[key] = list(values[key])
        if values.get("sort") and values["sort"] != DEFAULT_SORT:
            args["sort"] = values["sort"]
        if values.get("page") and values["page"] > 1:
            args["page"] = values["page"]
        return args

    def cleared(self) -> dict[str, Any]:
        """URL arguments with no search text and no filters, keeping the sort order."""
        return self.url_args(q="", page=1, **{key: [] for key in FACETS})

    def toggled(self, key: str, value: str) -> dict[str, Any]:
        """URL arguments with one facet value added or removed, back on page 1."""
        current = list(self.filters.get(key, ()))
        if value in current:
            current.remove(value)
        else:
            current.append(value)
        return self.url_args(**{key: current, "page": 1})


def _clean(text: str) -> str:
    """Drop control characters (PostgreSQL rejects NUL in text) and outer whitespace."""
    return _CONTROL_CHARS.sub("", text).strip()


def parse_catalog_args(args: MultiDict[str, str]) -> CatalogQuery:
    """Read the catalogue's URL parameters, forgiving what can be forgiven.

    An unknown sort falls back to the default and a page that is not a positive whole number
    becomes page 1 (old or hand-edited links keep working); a search text or a filter list
    too long to be real raises ``CatalogArgsError``.
    """
    q = _clean(args.get("q", ""))
    if len(q) > MAX_QUERY_LENGTH:
        raise CatalogArgsError(
            f"The search text is too long: use at most {MAX_QUERY_LENGTH} characters."
        )
    filters: dict[str, tuple[str, ...]] = {}
    for key in FACETS:
        values: list[str] = []
        for raw in args.getlist(key):
            value = _clean(raw)
            if value and value not in values:
                values.append(value)
        if len(values) > MAX_VALUES_PER_FACET:
            raise CatalogArgsError(
                f"Too many values for the {FACET_LABELS[key].lower()} filter "
                f"(at most {MAX_VALUES_PER_FACET})."
            )
        if values:
            filters[key] = tuple(values)
    sort = args.get("sort", DEFAULT_SORT)
    if sort not in SORTS:
        sort = DEFAULT_SORT
    try:
        page = int(args.get("page", "1"))
    except ValueError:
        page = 1
    return CatalogQuery(q=q, filters=filters, sort=sort, page=max(page, 1))


def search_clauses(q: str) -> list[ColumnElement[bool]]:
    """Case-insensitive substring match on the name (ILIKE on PostgreSQL, LIKE on SQLite)."""
    if not q:
        return []
    escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return [Product.name.ilike(f"%{escaped}%", escape="\\")]


def facet_clauses(
    filters: Mapping[str, Iterable[str]],
    exclude: str | None = None,
    columns: Mapping[str, ColumnElement[Any]] | None = None,
) -> list[ColumnElement[bool]]:
    """One IN clause per selected facet (values OR within a facet, AND across facets).

    ``columns`` maps facet keys to the columns to test (default: Product's own), so the same
    rules apply to a subquery of products.
    """
    return [
        (columns[key] if columns is not None else facet_column(key)).in_(list(values))
        for key, values in filters.items()
        if values and key != exclude
    ]


def order_by(sort: str) -> list[ColumnElement[Any]]:
    """ORDER BY for a sort key; the id breaks ties so pages never overlap."""
    orders: dict[str, list[ColumnElement[Any]]] = {
        "relevance": [],
        "name": [Product.name.asc()],
        "newest": [Product.year.desc().nulls_last()],
        "price_asc": [Product.price.asc().nulls_last()],
        "price_desc": [Product.price.desc().nulls_last()],
    }
    return [*orders.get(sort, []), Product.id.asc()]


@dataclass(frozen=True)
class FacetValue:
    """One value of a facet with how many products it would show."""

    value: str
    count: int
    selected: bool


@dataclass
class CatalogPage:
    """One page of the catalogue with everything the page shows around it."""

    products: list[Product]
    total: int
    page: int
    pages: int
    per_page: int
    facets: dict[str, list[FacetValue]]
    beyond_end: bool = False

    @property
    def first_index(self) -> int:
        """1-based position of the first product on this page (0 when empty)."""
        return (self.page - 1) * self.per_page + 1 if self.products else 0

    @property
    def last_index(self) -> int:
        """1-based position of the last product on this page."""
        return self.first_index + len(self.products) - 1 if self.products else 0


def base_clauses(query: CatalogQuery, prefs: Preferences) -> list[ColumnElement[bool]]:
    """Everything but the facet selections: active, preferences and the search text."""
    return [*Eligibility.of(prefs, in_stock=False).clauses(), *search_clauses(query.q)]


def _facet_values(counts: dict[str, int], selected: Iterable[str]) -> list[FacetValue]:
    """Values by count, most first; selected values stay listed (count 0) so they can be unticked."""
    chosen = set(selected)
    for value in chosen - counts.keys():
        counts[value] = 0
    return [
        FacetValue(value, n, value in chosen)
        for value, n in sorted(counts.items(), key=lambda item: (-item[1], item[0].lower()))
    ]


def facet_counts(
    base: list[ColumnElement[bool]], filters: Mapping[str, tuple[str, ...]]
) -> dict[str, list[FacetValue]]:
    """Per facet, one GROUP BY query that applies every other facet's selection but not its own.

    Each query can be answered from an index on (active, facet column) alone.
    """
    result: dict[str, list[FacetValue]] = {}
    for key in FACETS:
        column = facet_column(key)
        stmt = (
            select(column, func.count())
            .where(*base, *facet_clauses(filters, exclude=key))
            .group_by(column)
        )
        counts = {value: n for value, n in db.session.execute(stmt) if value is not None}
        result[key] = _facet_values(counts, filters.get(key, ()))
    return result


TOTAL_KEY = ""  # the facet name of the total's row in facet_counts_one_scan's UNION


def facet_counts_one_scan(
    base: list[ColumnElement[bool]], filters: Mapping[str, tuple[str, ...]]
) -> tuple[dict[str, list[FacetValue]], int]:
    """The same facet counts as ``facet_counts``, plus the total, from one scan of the table.

    A name search can use no index, so each of the per-facet queries would scan every row
    again. Here the matching rows' facet columns are materialised once (a CTE) and one
    GROUP BY per facet runs over that small set, all in one statement (UNION ALL).
    """
    matching = (
        select(*(facet_column(key).label(key) for key in FACETS))
        .where(*base)
        .cte("matching")
        .prefix_with("MATERIALIZED")
    )
    columns = {key: matching.c[key] for key in FACETS}
    branches = [
        # The facet keys are our own constants, so inlining them as literals is safe.
        select(
            literal_column(f"'{key}'", String).label("facet"),
            matching.c[key].label("value"),
            func.count().label("n"),
        )
        .where(*facet_clauses(filters, exclude=key, columns=columns))
        .group_by(matching.c[key])
        for key in FACETS
    ]
    branches.append(
        select(literal_column(f"'{TOTAL_KEY}'", String), null(), func.count())
        .select_from(matching)
        .where(*facet_clauses(filters, columns=columns))
    )
    counts: dict[str, dict[str, int]] = {key: {} for key in FACETS}
    total = 0
    for facet, value, n in db.session.execute(union_all(*branches)):
        if facet == TOTAL_KEY:
            total = n
        elif value is not None:
            counts[facet][value] = n
    facets = {key: _facet_values(counts[key], filters.get(key, ())) for key in FACETS}
    return facets, total


def catalog_page(query: CatalogQuery, prefs: Preferences, per_page: int) -> CatalogPage:
    """The products of one catalogue page plus the total and the facet counts.

    Without a search text: one count, one page query and one indexed GROUP BY per facet.
    With one: the counts and the total come from a single scan (``facet_counts_one_scan``).
    A page past the end shows the last page (``beyond_end`` tells the template to say so),
    so a shared link to a catalogue that has since shrunk still shows products.
    """
    per_page = max(int(per_page), 1)
    base = base_clauses(query, prefs)
    where = [*base, *facet_clauses(query.filters)]
    if query.q:
        facets, total = facet_counts_one_scan(base, query.filters)
    else:
        total = db.session.scalar(select(func.count()).select_from(Product).where(*where)) or 0
        facets = facet_counts(base, query.filters)
    pages = max(math.ceil(total / per_page), 1)
    page = min(query.page, pages)
    stmt: Select[tuple[Product]] = (
        select(Product)
        .where(*where)
        .order_by(*order_by(query.sort))
        .limit(per_page)
        .offset((page - 1) * per_page)
    )
    products = list(db.session.scalars(stmt))
    return CatalogPage(
        products=products,
        total=total,
        page=page,
        pages=pages,
        per_page=per_page,
        facets=facets,
        beyond_end=query.page > pages and total > 0,
    )


def preference_summary(prefs: Preferences) -> list[str]:
    """Short phrases saying how preferences narrow the catalogue, e.g. 'Hiding 2 disliked colours'."""
    parts: list[str] = []
    if prefs.hide_disliked_colours and prefs.disliked_colours:
        n = len(prefs.disliked_colours)
        parts.append(f"Hiding {n} disliked colour{'s' if n != 1 else ''}")
    if prefs.genders:
        parts.append("Showing " + ", ".join(sorted(prefs.genders)) + " only")
    hidden = sum(len(values) for values in prefs.hidden.values())
    if hidden:
        parts.append(f"Hiding {hidden} categor{'ies' if hidden != 1 else 'y'}")
    return parts


def viewer_is_admin() -> bool:
    """True when a signed-in store admin makes the request."""
    return bool(current_user.is_authenticated and getattr(current_user, "is_admin", False))


def get_product_or_404(product_id: int) -> Product:
    """Load a product the current visitor may see: inactive ones only for admins."""
    if not 0 < product_id <= MAX_PRODUCT_ID:
        abort(404)
    product = db.session.get(Product, product_id)
    if product is None or (not ACTIVE.allows(product) and not viewer_is_admin()):
        abort(404)
    return product
