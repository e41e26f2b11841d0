"""The "For you" feed: a shopper's taste ranked over the cached neighbour lists.

One MGET reads the lists of the shopper's liked and viewed products and of the products
they marked "not interested"; ``ml.feed`` scores the candidates; choosing applies the
shopper's preferences (``webapp.eligibility``) while it walks them, so N come back whenever
N eligible products exist: when the lists run out it widens to the lists of the best
candidates (a second hop), then to the newest products. Liked products, products marked
"not interested" and products viewed in the last hour are never shown. A shopper with no
likes or views, or a shop whose lists are not built, gets the newest products under a
"New in" title instead: never an empty box, and no model in the web process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import select

from ml import feed as ranking
from ml.feed import Candidate, Example, NeighbourList, Ranking
from webapp import registry
from webapp.eligibility import COLUMNS, Eligibility
from webapp.extensions import db
from webapp.models import Product
from webapp.preferences import Preferences, current_preferences
from webapp.shop.services import order_by
from webapp.taste import Taste, current_taste

logger = logging.getLogger(__name__)

ROW_N = ranking.ROW  # the row on the catalogue's first page
PAGE_N = 24  # the /for-you page
MAX_N = 50  # the API's largest n
RECENT_VIEW_S = 3600  # products viewed this recently are not shown again yet
HOP_EXAMPLES = 20  # best candidates whose own lists widen a feed that ran short
HOP_WEIGHT = 0.5  # a second-hop neighbour counts half as much as a first-hop one
CHUNK = 100  # candidates whose rows are read per query while choosing

FOR_YOU = "For you"
NEW_IN = "New in"


@dataclass
class FeedItem:
    """One card: the product, its score, why it is there and the product that brought it."""

    product: Product
    score: float
    reasons: list[str]
    because: Product | None = None
    how: str = "new"  # liked | viewed | new


@dataclass
class FeedResult:
    """What a feed box shows; ``source`` is ``taste`` or ``new-in`` (the labelled fallback).
    ``status`` is always ``ok``: the shape of the similar-products answers."""

    title: str
    source: str
    items: list[FeedItem] = field(default_factory=list)
    message: str = ""
    model_id: str | None = None
    status: str = "ok"


def has_signals(taste: Taste) -> bool:
    """True when the shopper liked or viewed anything, so a feed can be personal."""
    return bool(taste.likes or taste.views)


def current_feed(n: int) -> FeedResult:
    """The feed of whoever makes the current request."""
    return feed_for(current_taste(), current_preferences(), n)


def excluded_ids(taste: Taste, now: float) -> set[int]:
    """Products never shown in the feed: liked, marked "not interested", viewed lately."""
    recent = {pid for pid, at in taste.views if at >= now - RECENT_VIEW_S}
    return {pid for pid, _ in taste.likes} | {pid for pid, _ in taste.not_interested} | recent


def feed_for(taste: Taste, prefs: Preferences, n: int, *, now: float | None = None) -> FeedResult:
    """Up to ``n`` products for ``taste`` (exactly ``n`` whenever ``n`` eligible products
    exist), with ``prefs`` applied while choosing."""
    now = time.time() if now is None else now
    eligibility = Eligibility.of(prefs)
    excluded = excluded_ids(taste, now)
    examples = ranking.taste_examples(taste.likes, taste.views, now)
    negatives = [pid for pid, _ in taste.not_interested]
    lists, model_id, message = _read_lists(examples, negatives)
    rows = _Rows(eligibility)
    stages = _Stages(examples, negatives, excluded, lists, model_id, rows, n)
    chosen = ranking.choose(stages.candidates(), rows.kind, rows.eligible, n)
    personal = any(c.because >= 0 for c in chosen)
    if examples and not personal and not message:
        message = "Picks for your taste are being prepared: here is what is new."
    return FeedResult(
        title=FOR_YOU if personal else NEW_IN,
        source="taste" if personal else "new-in",
        items=_items(chosen, {pid for pid, _ in taste.likes}),
        message=message,
        model_id=model_id,
    )


def _read_lists(
    examples: Sequence[Example], negatives: Sequence[int]
) -> tuple[dict[int, NeighbourList | None], str | None, str]:
    """The served model's lists of the examples and negatives, in one round trip."""
    if not examples:
        return {}, None, ""
    ids = [e.product_id for e in examples] + list(negatives)
    try:
        cache = registry.neighbour_cache()
        model_id = cache.active_model()
        if model_id is None:
            return {}, None, "Recommendations are being prepared: here is what is new."
        found = cache.get_lists(model_id, ids)
    except RedisError as exc:
        logger.warning("feed lists unavailable: %s", exc)
        return {}, None, "Recommendations are unavailable right now: here is what is new."
    return dict(zip(ids, found, strict=True)), model_id, ""


class _Rows:
    """The eligibility columns of candidates, read a chunk at a time as choosing reaches them."""

    def __init__(self, eligibility: Eligibility) -> None:
        self.eligibility = eligibility
        self.rows: dict[int, Any] = {}

    def load(self, ids: Collection[int]) -> None:
        """Read the rows of ``ids`` not read yet (one query)."""
        missing = [pid for pid in ids if pid not in self.rows]
        if not missing:
            return
        stmt = select(Product.id, *(getattr(Product, c) for c in COLUMNS)).where(
            Product.id.in_(missing)
        )
        self.rows.update({row.id: row for row in db.session.execute(stmt)})
        for pid in missing:
            self.rows.setdefault(pid, None)

    def add(self, products: Sequence[Product]) -> None:
        """Rows already at hand (the fallback reads whole products)."""
        self.rows.update({p.id: p for p in products})

    def eligible(self, pid: int) -> bool:
        """Whether the shopper may be shown this product."""
        row = self.rows.get(pid)
        return row is not None and self.eligibility.allows(row)

    def kind(self, pid: int) -> Hashable:
        """Gender + article type: what the first row spreads over."""
        row = self.rows[pid]
        return (row.gender, row.article_type)


@dataclass
class _Stages:
    """The candidates in the order choosing reads them, each stage computed only when the
    ones before it ran out: the examples' lists, a second hop, then the newest products."""

    examples: Sequence[Example]
    negatives: Sequence[int]
    excluded: set[int]
    lists: dict[int, NeighbourList | None]
    model_id: str | None
    rows: _Rows
    n: int

    def candidates(self) -> Iterator[Candidate]:
        """Every candidate, lazily; a fallback candidate's ``because`` is -1. Look-alikes of
        "not interested" products (a score of 0 or less) wait until the second hop is used."""
        first, pushed = ranking.score(
            self.examples, self.lists, self.negatives, self.excluded
        ).split()
        yield from self._chunked(first)
        second, pushed_further = self._second_hop(first, pushed).split()
        yield from self._chunked(second)
        yield from self._chunked(pushed)
        yield from self._chunked(pushed_further)
        yield from self._new_in()

    def _chunked(self, ranked: Ranking) -> Iterator[Candidate]:
        for start in range(0, len(ranked), CHUNK):
            self.rows.load(ranked.ids[start : start + CHUNK].tolist())
            yield from (ranked[i] for i in range(start, min(start + CHUNK, len(ranked))))

    def _second_hop(self, first: Ranking, pushed: Ranking) -> Ranking:
        """Candidates from the lists of the best first-hop candidates, eligible or not (a
        hidden kind's look-alikes may be of a kind the shopper allows)."""
        hops = [
            Example(c.product_id, HOP_WEIGHT * c.score, c.because)
            for c in islice(first, HOP_EXAMPLES)
        ]
        if not hops or self.model_id is None:
            return Ranking.empty()
        try:
            found = registry.neighbour_cache().get_lists(
                self.model_id, [e.product_id for e in hops]
            )
        except RedisError as exc:
            logger.warning("feed second hop unavailable: %s", exc)
            return Ranking.empty()
        lists = {**self.lists, **dict(zip([e.product_id for e in hops], found, strict=True))}
        seen = self.excluded | set(first.ids.tolist()) | set(pushed.ids.tolist())
        return ranking.score(hops, lists, self.negatives, seen)

    def _new_in(self) -> Iterator[Candidate]:
        products = new_in(self.rows.eligibility, self.excluded, 2 * self.n + ranking.MAX_HELD_BACK)
        self.rows.add(products)
        for product in products:
            yield Candidate(product.id, 0.0, -1)


def new_in(eligibility: Eligibility, excluded: Collection[int], limit: int) -> list[Product]:
    """The newest eligible products (the catalogue's "Newest first" order) not excluded."""
    stmt = select(Product).where(*eligibility.clauses())
    if excluded:
        stmt = stmt.where(Product.id.not_in(sorted(excluded)))
    return list(db.session.scalars(stmt.order_by(*order_by("newest")).limit(limit)))


def _items(chosen: Sequence[Candidate], liked: set[int]) -> list[FeedItem]:
    """Cards for the chosen candidates, each saying why it is there (one query)."""
    ids = {c.product_id for c in chosen} | {c.because for c in chosen if c.because >= 0}
    products = (
        {p.id: p for p in db.session.scalars(select(Product).where(Product.id.in_(ids)))}
        if ids
        else {}
    )
    items = []
    for c in chosen:
        product = products.get(c.product_id)
        if product is None:  # deleted while the feed was being chosen
            continue
        because = products.get(c.because)
        if because is None:
            items.append(FeedItem(product, c.score, [NEW_IN]))
            continue
        how = "liked" if c.because in liked else "viewed"
        items.append(
            FeedItem(product, c.score, [f"Because you {how} {because.name}"], because, how)
        )
    return items
