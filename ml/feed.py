"""A shopper's feed ranked from precomputed neighbour lists, with no model at request time.

Positive examples (liked and viewed products, each with a weight) pull their look-alikes up:
a candidate's score is the weighted sum of its cosines in the examples' lists, divided by
the examples' total weight, so a product close to several of them beats one close to a
single one. Negative examples (products marked "not interested") push theirs down: a
candidate loses ``NEGATIVE_WEIGHT`` times its highest cosine in a negative's list, so a
close look-alike of something the shopper rejected falls below every candidate that is not
one. Each candidate keeps the example that contributed most to it, which is what its card
names ("because you liked ...").

Choosing then walks the ranked candidates once, skipping ineligible ones, and keeps at most
``PER_KIND`` of one kind (gender + article type) in the first ``ROW`` picks; candidates held
back for that come right after the row, so spreading kinds never drops a good candidate.

Plain Python and NumPy: the web tier and the offline measure share it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import (
    Callable,
    Collection,
    Hashable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass

import numpy as np

# A neighbour list as the cache returns it: ids and cosine scores, best first.
NeighbourList = tuple[np.ndarray, np.ndarray]

# A like counts about three recent views; likes fade slowly, views with every newer view.
LIKE_WEIGHT = 1.0
LIKE_HALF_LIFE_S = 30 * 24 * 3600.0
LIKE_FLOOR = 0.5  # an old like still counts more than the newest view
VIEW_WEIGHT = 0.35
VIEW_DECAY = 0.93  # per newer view: the 10th most recent counts half the newest
NEGATIVE_WEIGHT = 1.0
ROW = 6
PER_KIND = 3
# How many candidates the first row may hold back while looking for other kinds before it
# gives up spreading them: a feed of one kind only is better than a slow one.
MAX_HELD_BACK = 60


@dataclass(frozen=True)
class Example:
    """A product whose neighbours the feed draws from, with its weight and the liked or
    viewed product a card names for it (itself, or the example it was reached through)."""

    product_id: int
    weight: float
    because: int


@dataclass(frozen=True)
class Candidate:
    """A ranked product, its score and the example that brought it."""

    product_id: int
    score: float
    because: int


def like_weight(age_s: float) -> float:
    """A like's weight by its age in seconds: halves every 30 days, never below the floor."""
    return LIKE_WEIGHT * max(0.5 ** (max(age_s, 0.0) / LIKE_HALF_LIFE_S), LIKE_FLOOR)


def view_weight(position: int) -> float:
    """A view's weight by its place in the history (0 = the most recent)."""
    return VIEW_WEIGHT * VIEW_DECAY ** max(position, 0)


def taste_examples(
    likes: Sequence[tuple[int, float]], views: Sequence[tuple[int, float]], now: float
) -> list[Example]:
    """Positive examples from likes and views, each ``(product_id, unix time)`` newest first;
    a product both liked and viewed is one example whose weights add up (named as liked)."""
    weights: dict[int, float] = {}
    for product_id, at in likes:
        weights[product_id] = weights.get(product_id, 0.0) + like_weight(now - at)
    for position, (product_id, _at) in enumerate(views):
        weights[product_id] = weights.get(product_id, 0.0) + view_weight(position)
    return [Example(pid, w, pid) for pid, w in weights.items()]


@dataclass(frozen=True)
class Ranking:
    """Scored candidates, best first, as arrays; iterating makes ``Candidate``s lazily, so a
    feed that needs the first dozen of thousands never builds the rest."""

    ids: np.ndarray
    scores: np.ndarray
    because: np.ndarray

    @classmethod
    def empty(cls) -> Ranking:
        """No candidates."""
        return cls(np.empty(0, np.int64), np.empty(0, np.float64), np.empty(0, np.int64))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Candidate:
        return Candidate(int(self.ids[i]), float(self.scores[i]), int(self.because[i]))

    def __iter__(self) -> Iterator[Candidate]:
        return (self[i] for i in range(len(self.ids)))

    def split(self, floor: float = 0.0) -> tuple[Ranking, Ranking]:
        """The candidates scoring above ``floor``, and the rest (those pushed down by the
        shopper's negatives), each still best first."""
        cut = int(np.count_nonzero(self.scores > floor))
        head = Ranking(self.ids[:cut], self.scores[:cut], self.because[:cut])
        return head, Ranking(self.ids[cut:], self.scores[cut:], self.because[cut:])


def score(
    examples: Sequence[Example],
    lists: Mapping[int, NeighbourList | None],
    negatives: Collection[int] = (),
    excluded: Collection[int] = (),
    *,
    negative_weight: float = NEGATIVE_WEIGHT,
) -> Ranking:
    """Every product in the examples' lists, best first (ties by id), without the excluded
    products and the negatives; ``lists`` maps a product id to its neighbour list (negatives'
    lists included), None or absent when it has none. An example that is not excluded may be
    a candidate itself (a product viewed a while ago, close to what was liked since)."""
    ids, gains, sources = [], [], []
    for example in examples:
        found = lists.get(example.product_id)
        if found is None or len(found[0]) == 0:
            continue
        ids.append(np.asarray(found[0], np.int64))
        gains.append(example.weight * np.asarray(found[1], np.float64))
        sources.append(np.full(len(found[0]), example.because, np.int64))
    if not ids:
        return Ranking.empty()
    all_ids, all_gains = np.concatenate(ids), np.concatenate(gains)
    all_sources = np.concatenate(sources)
    unique, inverse = np.unique(all_ids, return_inverse=True)
    total = sum(e.weight for e in examples if lists.get(e.product_id) is not None) or 1.0
    values = np.bincount(inverse, weights=all_gains, minlength=len(unique)) / total
    # The example that contributed most to each candidate: the first of its group once the
    # entries are sorted by candidate, then by gain, largest first.
    order = np.lexsort((-all_gains, inverse))
    starts = np.flatnonzero(np.r_[True, np.diff(inverse[order]) != 0])
    because = all_sources[order][starts]
    values -= negative_weight * _closeness(unique, [lists.get(n) for n in negatives])
    drop = set(excluded) | set(negatives)
    keep = ~np.isin(unique, np.fromiter(drop, np.int64, len(drop)))
    unique, values, because = unique[keep], values[keep], because[keep]
    ranked = np.lexsort((unique, -values))
    return Ranking(unique[ranked], values[ranked], because[ranked])


def _closeness(
    candidates: np.ndarray, negative_lists: Iterable[NeighbourList | None]
) -> np.ndarray:
    """Each candidate's highest cosine in any negative's list (0 when in none)."""
    out = np.zeros(len(candidates), np.float64)
    for found in negative_lists:
        if found is None or len(found[0]) == 0:
            continue
        pos = np.searchsorted(candidates, np.asarray(found[0], np.int64))
        pos = np.minimum(pos, len(candidates) - 1)
        hit = candidates[pos] == found[0]
        np.maximum.at(out, pos[hit], np.asarray(found[1], np.float64)[hit])
    return out


def choose(
    ranked: Iterable[Candidate],
    kind: Callable[[int], Hashable],
    eligible: Callable[[int], bool],
    n: int,
    *,
    row: int = ROW,
    per_kind: int = PER_KIND,
    max_held_back: int = MAX_HELD_BACK,
) -> list[Candidate]:
    """The first ``n`` eligible candidates in order, at most ``per_kind`` of one kind among
    the first ``row``; stops reading ``ranked`` (which may be lazy) once ``n`` are chosen."""
    if n < 1:
        return []
    chosen: list[Candidate] = []
    held: list[Candidate] = []
    counts: Counter[Hashable] = Counter()
    seen: set[int] = set()
    spreading = row > 0
    for candidate in ranked:
        pid = candidate.product_id
        if pid in seen or not eligible(pid):
            continue
        seen.add(pid)
        if spreading:
            label = kind(pid)
            if counts[label] >= per_kind:
                held.append(candidate)
            else:
                counts[label] += 1
                chosen.append(candidate)
            if len(chosen) >= row or len(held) >= max_held_back:
                spreading = False
                chosen += held
        else:
            chosen.append(candidate)
        if len(chosen) >= n:
            return chosen[:n]
    return (chosen if not spreading else chosen + held)[:n]
