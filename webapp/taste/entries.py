"""A shopper's taste as a value: what they liked, viewed and marked "not interested".

Pure functions over ``Taste`` values; where a taste is kept (the session or the database)
is ``webapp.taste.services``' business. The rules every change keeps:

- each list is newest first and holds a product at most once;
- ``views`` keeps the last ``VIEWS_KEPT`` product pages; viewing a product again moves it
  to the front;
- liking a product already liked keeps its first time (marking likewise);
- a product marked "not interested" is in neither ``likes`` nor ``views`` (marking removes
  it from both, and a view of a marked product is not recorded), so every liked or viewed
  product is a positive example and every marked one a negative, never both.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

# The three lists, by the names of Taste's fields; "all" clears every one.
KINDS = ("likes", "views", "not_interested")
CLEAR_KINDS = (*KINDS, "all")
VIEWS_KEPT = 50

Entries = list[tuple[int, float]]


@dataclass
class Taste:
    """Likes, recent views and "not interested" marks: (product_id, unix time), newest first."""

    likes: Entries = field(default_factory=list)
    views: Entries = field(default_factory=list)
    not_interested: Entries = field(default_factory=list)

    @property
    def liked_ids(self) -> frozenset[int]:
        """The liked products' ids."""
        return frozenset(pid for pid, _ in self.likes)

    @property
    def viewed_ids(self) -> frozenset[int]:
        """The recently viewed products' ids."""
        return frozenset(pid for pid, _ in self.views)

    @property
    def not_interested_ids(self) -> frozenset[int]:
        """The ids of products the shopper never wants recommended again."""
        return frozenset(pid for pid, _ in self.not_interested)

    @property
    def is_empty(self) -> bool:
        """True when the shopper has neither liked, viewed nor marked anything."""
        return not (self.likes or self.views or self.not_interested)

    def to_session(self, limits: dict[str, int]) -> dict[str, list[list[int]]]:
        """JSON-safe form for the signed cookie session: each list cut to ``limits[kind]``
        entries, times to the second (the order is the lists' own), so the cookie keeps it
        beside the largest preferences within the 4 KB browsers keep."""
        return {
            kind: [[pid, int(at)] for pid, at in getattr(self, kind)[: limits[kind]]]
            for kind in KINDS
        }

    @classmethod
    def from_session(cls, data: Any) -> Taste:
        """Inverse of to_session(); tolerates a missing or malformed value."""
        if not isinstance(data, dict):
            return cls()
        lists: dict[str, Entries] = {}
        for kind in KINDS:
            entries: Entries = []
            for entry in data.get(kind) or []:
                try:
                    pid, at = int(entry[0]), float(entry[1])
                except (TypeError, ValueError, IndexError, KeyError):
                    continue
                entries.append((pid, at))
            lists[kind] = _unique(entries)
        return cls(**lists)


def _unique(entries: Entries) -> Entries:
    """Entries without repeated products (the first, newest, of each kept)."""
    seen: set[int] = set()
    out: Entries = []
    for pid, at in entries:
        if pid not in seen:
            seen.add(pid)
            out.append((pid, at))
    return out


def _without(entries: Entries, product_id: int) -> Entries:
    return [(pid, at) for pid, at in entries if pid != product_id]


def _added(entries: Entries, product_id: int, now: float) -> Entries:
    """``product_id`` at the front, unless it is already there (it keeps its first time)."""
    if any(pid == product_id for pid, _ in entries):
        return entries
    return [(product_id, now), *entries]


def viewed(taste: Taste, product_id: int, now: float) -> Taste:
    """A product page seen: first in ``views``, the oldest beyond VIEWS_KEPT dropped."""
    if product_id in taste.not_interested_ids:
        return taste
    views = [(product_id, now), *_without(taste.views, product_id)][:VIEWS_KEPT]
    return replace(taste, views=views)


def liked(taste: Taste, product_id: int, now: float) -> Taste:
    """A heart: the product is liked (and no longer marked "not interested")."""
    return replace(
        taste,
        likes=_added(taste.likes, product_id, now),
        not_interested=_without(taste.not_interested, product_id),
    )


def unliked(taste: Taste, product_id: int) -> Taste:
    """The heart taken back."""
    return replace(taste, likes=_without(taste.likes, product_id))


def marked_not_interested(taste: Taste, product_id: int, now: float) -> Taste:
    """ "Not interested": the product leaves likes and views and is never recommended."""
    return Taste(
        likes=_without(taste.likes, product_id),
        views=_without(taste.views, product_id),
        not_interested=_added(taste.not_interested, product_id, now),
    )


def unmarked_not_interested(taste: Taste, product_id: int) -> Taste:
    """The "not interested" mark taken back."""
    return replace(taste, not_interested=_without(taste.not_interested, product_id))


def cleared(taste: Taste, kind: str) -> Taste:
    """One list emptied (``kind`` in KINDS), or all of them (``"all"``)."""
    if kind not in CLEAR_KINDS:
        raise ValueError(f"kind must be one of {', '.join(CLEAR_KINDS)}, not {kind!r}")
    if kind == "all":
        return Taste()
    return replace(taste, **{kind: []})


def merged(stored: Taste, other: Taste) -> Taste:
    """Two tastes as one (an anonymous shopper's folded into their account on sign-in).

    Per list the newest time of each product wins; a product liked on one side and marked
    on the other keeps whichever happened last; views stay within VIEWS_KEPT.
    """
    lists = {
        kind: _newest_first({**dict(getattr(stored, kind)), **_newer(stored, other, kind)})
        for kind in KINDS
    }
    likes, marks = dict(lists["likes"]), dict(lists["not_interested"])
    for pid in likes.keys() & marks.keys():
        if likes[pid] > marks[pid]:
            del marks[pid]
        else:
            del likes[pid]
    return Taste(
        likes=_newest_first(likes),
        views=[(pid, at) for pid, at in lists["views"] if pid not in marks][:VIEWS_KEPT],
        not_interested=_newest_first(marks),
    )


def _newer(stored: Taste, other: Taste, kind: str) -> dict[int, float]:
    """The entries of ``other`` that are new to ``stored`` or newer there."""
    mine = dict(getattr(stored, kind))
    return {pid: at for pid, at in getattr(other, kind) if at > mine.get(pid, float("-inf"))}


def _newest_first(times: dict[int, float]) -> Entries:
    return sorted(times.items(), key=lambda entry: -entry[1])
