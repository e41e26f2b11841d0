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
from sqlalchemy import ColumnElement
from sqlalchemy.orm import InstrumentedAttribute
from werkzeug.datastructures import MultiDict

from webapp.eligibility import ACTIVE, Eligibility
from webapp.extensions import db
from webapp.models import FACETS, Product
from webapp.preferences import Preferences
from webapp.shop import facets, paging

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
    # A cursor (``webapp.shop.paging``): the page starts after, or ends before, this row.
    after: str = ""
    before: str = ""

    @property
    def is_filtered(self) -> bool:
        """True when a search text or any facet value narrows the catalogue."""
        return bool(self.q) or any(self.filters.values())

    def url_args(self, **changes: Any) -> dict[str, Any]:
        """Keyword arguments for ``url_for('shop.catalog', ...)``; defaults are left out.

        A cursor belongs to one link, so ``after`` and ``before`` appear only when given.
        """
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
        for cursor in ("after", "before"):
            if changes.get(cursor):
                args[cursor] = changes[cursor]
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
    cursors = {
        name: value
        for name in ("after", "before")
        if len(value := _clean(args.get(name, ""))) <= paging.MAX_CURSOR_LENGTH
    }
    return CatalogQuery(q=q, filters=filters, sort=sort, page=max(page, 1), **cursors)


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
    """The whole ORDER BY of a sort key (products without the sort value last)."""
    return paging.order_by(sort)


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
    links: list[PageLink] = field(default_factory=list)

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


def catalog_page(query: CatalogQuery, prefs: Preferences, per_page: int) -> CatalogPage:
    """The products of one catalogue page plus the total, the facet counts and page links.

    The counts and the total come from the facet summary (``webapp.shop.facets``), the
    products from one to three index range queries (``webapp.shop.paging``). A page past
    the end shows the last page (``beyond_end`` tells the template to say so), so a shared
    link to a catalogue that has since shrunk still shows products.
    """
    per_page = max(int(per_page), 1)
    summary = facets.catalogue_summary(query.q, search_clauses(query.q))
    counts, total = facets.counts_and_total(summary, prefs, query.filters)
    pages = max(math.ceil(total / per_page), 1)
    where = [*base_clauses(query, prefs), *facet_clauses(query.filters)]
    # The year has few values: knowing each one's matching products lets the newest order
    # read every page as ranges of ids within one year.
    years = (
        facets.year_counts(summary, prefs, query.filters)
        if paging.SORT_KEYS[query.sort].column == "year"
        else None
    )
    products, page, beyond_end = _page_products(query, where, per_page, total, pages, years)
    return CatalogPage(
        products=products,
        total=total,
        page=page,
        pages=pages,
        per_page=per_page,
        facets={key: _facet_values(counts[key], query.filters.get(key, ())) for key in FACETS},
        beyond_end=beyond_end and total > 0,
        links=page_links(query, products, page, pages, per_page),
    )


def _page_products(
    query: CatalogQuery,
    where: list[ColumnElement[bool]],
    per_page: int,
    total: int,
    pages: int,
    groups: dict[Any, int] | None,
) -> tuple[list[Product], int, bool]:
    """The page's products, its number and whether the asked-for page lay past the end."""
    sort = query.sort

    def parts(cursor: paging.Cursor | None, backwards: bool = False) -> list[paging.Segment]:
        return paging.segments(sort, cursor, backwards, groups)

    page = min(query.page, pages)
    after = paging.Cursor.decode(query.after, sort)
    before = paging.Cursor.decode(query.before, sort)
    beyond_end = query.page > pages
    products: list[Product] = []
    if after is not None and not beyond_end:
        products = paging.read(where, parts(after), per_page, matching=total)
        beyond_end = not products
    elif before is not None and not beyond_end:
        backwards = parts(before, backwards=True)
        rows = paging.read(where, backwards, per_page, matching=total)
        if len(rows) == per_page:
            return rows[::-1], max(page, 2), False
        page = 1  # fewer than a page before the cursor: the first page
    elif query.before != paging.END and not beyond_end:
        offset = (page - 1) * per_page
        products = paging.read(where, parts(None), per_page, offset, total)
        beyond_end = not products
    if products or not total:
        return products, page, False
    if page == 1 and not beyond_end:
        return paging.read(where, parts(None), per_page, matching=total), 1, False
    # The last page, read backwards from the end: as cheap as the first.
    size = total - (pages - 1) * per_page
    rows = paging.read(where, parts(None, backwards=True), size, matching=total)
    return rows[::-1], pages, beyond_end


@dataclass(frozen=True)
class PageLink:
    """One entry of the page links: a page (``args`` for its URL) or a gap (no args)."""

    label: str
    args: dict[str, Any] | None = None
    rel: str | None = None
    current: bool = False


def page_links(
    query: CatalogQuery, products: list[Product], page: int, pages: int, per_page: int
) -> list[PageLink]:
    """Previous, numbers around this page, first and last, next.

    Previous, next and last carry a cursor; other numbers are offered as far as
    ``paging.NUMBERED_ROWS`` into the listing (a page number is read with an offset).
    """
    if pages <= 1 or not products:
        return []
    sort = query.sort
    prev = (
        query.url_args(page=1) | {"page": 1}
        if page == 2
        else query.url_args(page=page - 1, before=paging.Cursor.of(products[0], sort).encode())
    )
    after = paging.Cursor.of(products[-1], sort).encode()
    special = {  # later entries win: this page's own link over the last page's
        pages: query.url_args(page=pages, before=paging.END),
        page - 1: prev,
        page + 1: query.url_args(page=page + 1, after=after),
        page: query.url_args(after=query.after, before=query.before) | {"page": page},
    }
    links: list[PageLink] = []
    if page > 1:
        links.append(PageLink("Previous", prev, rel="prev"))
    shown = 0
    for n in sorted({1, *range(max(page - 2, 1), min(page + 2, pages) + 1), pages}):
        if n in special:
            args = special[n]
        elif (n - 1) * per_page <= paging.NUMBERED_ROWS:
            args = query.url_args(page=n) | {"page": n}
        else:
            continue
        if n > shown + 1:
            links.append(PageLink("…"))
        links.append(PageLink(str(n), args, current=n == page))
        shown = n
    if page < pages:
        links.append(PageLink("Next", special[page + 1], rel="next"))
    return links


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
