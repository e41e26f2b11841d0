"""Simulated shoppers for the offline measure of the "For you" feed.

Each shopper has a hidden target: one gender + article type, and for half of them a colour
too, drawn by picking a catalogue product at random (so common kinds have more shoppers, as
in a shop). They like ``LIKES`` products of their target and look at ``VIEWS`` (the likes
among them); a recommender sees only the likes. A recommendation is a hit when it is a
product of the shopper's target, which it can only be by finding one the simulation never
showed it: every recommender here leaves the liked products out.

The most-viewed baseline ranks products by how many *other* shoppers looked at them. The
"not interested" step marks 3 products of the colour most frequent in the shopper's feed
(never their target's colour) and measures that colour's share of the feed before and
after. Plain Python and NumPy: the recommenders are passed in as functions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

LIKES = 3
VIEWS = 10
MARKS = 3
# A target needs products to find beyond the viewed ones.
MIN_OTHERS = 3


@dataclass(frozen=True)
class Catalogue:
    """Product ids and their labels, row-aligned (None where a label is missing)."""

    ids: np.ndarray
    genders: Sequence[str | None]
    types: Sequence[str | None]
    colours: Sequence[str | None]

    def __post_init__(self) -> None:
        if not len(self.ids) == len(self.genders) == len(self.types) == len(self.colours):
            raise ValueError("catalogue columns differ in length")


@dataclass(frozen=True)
class Shopper:
    """A simulated shopper: a hidden target, the products they like and the ones they viewed."""

    gender: str | None
    article_type: str | None
    colour: str | None
    likes: tuple[int, ...]
    views: tuple[int, ...]


class Targets:
    """Which products match a shopper's hidden target: rows by kind and colour."""

    def __init__(self, cat: Catalogue) -> None:
        self.cat = cat
        self.row_of = {int(pid): i for i, pid in enumerate(cat.ids.tolist())}
        kinds = np.array([f"{g}|{t}" for g, t in zip(cat.genders, cat.types, strict=True)])
        self.kinds = kinds
        self.colours = np.array([str(c) for c in cat.colours])

    def rows(self, gender: str | None, article_type: str | None, colour: str | None) -> np.ndarray:
        """Rows of the products of a target (colour None: any colour)."""
        mask = self.kinds == f"{gender}|{article_type}"
        if colour is not None:
            mask &= self.colours == str(colour)
        return np.flatnonzero(mask)

    def matches(self, shopper: Shopper, product_id: int) -> bool:
        """Whether a product is of the shopper's target."""
        row = self.row_of.get(int(product_id))
        if row is None:
            return False
        if self.kinds[row] != f"{shopper.gender}|{shopper.article_type}":
            return False
        return shopper.colour is None or self.colours[row] == str(shopper.colour)

    def colour(self, product_id: int) -> str | None:
        """A product's colour label."""
        row = self.row_of.get(int(product_id))
        return None if row is None else self.cat.colours[row]


def draw_shoppers(cat: Catalogue, count: int, seed: int = 0) -> list[Shopper]:
    """``count`` shoppers, half of them with a colour; targets with too few products to
    leave some unseen beyond the views are drawn again (up to 50 times per shopper)."""
    if len(cat.ids) == 0:
        return []
    rng = np.random.default_rng(seed)
    targets = Targets(cat)
    shoppers: list[Shopper] = []
    for i in range(count):
        with_colour = i % 2 == 1
        for _ in range(50):
            row = int(rng.integers(len(cat.ids)))
            colour = cat.colours[row] if with_colour else None
            if with_colour and colour is None:
                continue
            rows = targets.rows(cat.genders[row], cat.types[row], colour)
            if len(rows) >= LIKES + MIN_OTHERS:
                break
        else:
            continue
        views = rng.choice(rows, size=min(VIEWS, len(rows) - MIN_OTHERS), replace=False)
        ids = tuple(int(cat.ids[r]) for r in views)
        shoppers.append(
            Shopper(cat.genders[row], cat.types[row], colour, likes=ids[:LIKES], views=ids)
        )
    return shoppers


def most_viewed(cat: Catalogue, shoppers: Sequence[Shopper]) -> Callable[[int, int], list[int]]:
    """A recommender by views: for shopper ``i``, the ``n`` products the other shoppers viewed
    most (ties by id), without the shopper's likes."""
    targets = Targets(cat)
    counts = np.zeros(len(cat.ids), np.int64)
    for s in shoppers:
        for pid in s.views:
            counts[targets.row_of[pid]] += 1

    def recommend(i: int, n: int) -> list[int]:
        own = counts.copy()
        for pid in shoppers[i].views:
            own[targets.row_of[pid]] -= 1
        liked = {targets.row_of[pid] for pid in shoppers[i].likes}
        order = np.lexsort((cat.ids, -own))
        return [int(cat.ids[r]) for r in order[: n + len(liked)] if r not in liked][:n]

    return recommend


def hit_rates(
    targets: Targets, shoppers: Sequence[Shopper], lists: Sequence[Sequence[int]], k: int
) -> dict[str, float]:
    """``hit_rate``: the share of the top ``k`` slots holding a product of the shopper's target
    (over all shoppers); ``any_hit``: the share of shoppers with at least one."""
    if not shoppers:
        return {"hit_rate": 0.0, "any_hit": 0.0}
    hits = [
        sum(targets.matches(s, pid) for pid in ids[:k])
        for s, ids in zip(shoppers, lists, strict=True)
    ]
    return {
        "hit_rate": sum(hits) / (k * len(shoppers)),
        "any_hit": sum(h > 0 for h in hits) / len(shoppers),
    }


def colour_to_mark(targets: Targets, shopper: Shopper, feed: Sequence[int]) -> str | None:
    """The colour most frequent in a feed (the first met wins a tie), never the colour of
    the shopper's target; None when the feed has no other."""
    counts = Counter(
        c for c in (targets.colour(pid) for pid in feed) if c is not None and c != shopper.colour
    )
    if not counts:
        return None
    top = max(counts.values())
    return next(c for c in (targets.colour(pid) for pid in feed) if counts.get(c) == top)


def products_to_mark(
    targets: Targets, shopper: Shopper, feed: Sequence[int], colour: str, seed: int
) -> list[int]:
    """``MARKS`` products of ``colour``: the feed's first ones, topped up with others of the
    shopper's kind in that colour, then with any of that colour (never a liked one)."""
    marks = [pid for pid in feed if targets.colour(pid) == colour][:MARKS]
    if len(marks) < MARKS:
        rng = np.random.default_rng(seed)
        taken = set(marks) | set(shopper.likes)
        for rows in (
            targets.rows(shopper.gender, shopper.article_type, colour),
            np.flatnonzero(targets.colours == str(colour)),
        ):
            ids = [int(targets.cat.ids[r]) for r in rng.permutation(rows)]
            marks += [pid for pid in ids if pid not in taken][: MARKS - len(marks)]
            taken |= set(marks)
            if len(marks) >= MARKS:
                break
    return marks


def colour_share(targets: Targets, feed: Sequence[int], colour: str) -> float:
    """The share of a feed's products that are of ``colour``."""
    return sum(targets.colour(pid) == colour for pid in feed) / len(feed) if feed else 0.0
