"""The photo-search level plan: which catalogue rows an uploaded photo is shown, in what order.

One pure function over arrays, called by the live search (the worker, candidates checked
against the database) and by the evaluation (candidates from in-memory labels), so the
evaluation measures exactly what shoppers get.

Levels, each filling what the ones before it left:

1. ``photo``: products whose photo is practically the same picture (cosine at or above
   ``same_photo_cosine``, at most ``same_photo_max`` of them), whatever the classifier says;
2. ``colour``: with ``colour_first``, the predicted gender + article type in the predicted
   colour (when both the type and the colour heads are confident);
3. ``type``: the predicted gender + article type (when the type head is confident);
4. ``sub``: the predicted sub-category (when the sub-category head is confident);
5. ``all``: the whole catalogue.

Within a level the best-scored rows come first (ties by row number). Only rows the shopper
may be shown count (``Candidates``: active, in stock, preferences in the shop), so
preferences apply while choosing and n rows come back whenever n eligible rows exist.

The scores are an array (one cosine per catalogue row: the evaluation) or anything that
answers the same questions (``Scores``: the live search asks a vector index, a level's
eligible rows passed as the search's allowed set). Asking which candidates are eligible may
not be cheap (a database query), so a level first checks a window of the best scores and
widens it, and only past ``DIRECT_LIMIT`` asks for all of a level's eligible rows and takes
the best of those. Both ways choose the same rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ml import metrics
from ml.labels import OTHER, split_derived_type
from ml.neighbours import top_k_rows

# Candidates checked per round; past DIRECT_LIMIT a level's eligible rows are read at once
# instead (a sparse group would otherwise take many rounds).
FIRST_WINDOW = 64
DIRECT_LIMIT = 4096
# The catalogue fields a level can narrow on (named as the shop's product columns).
FIELDS = ("gender", "article_type", "base_colour", "sub_category")
HEADS = ("type", "sub", "colour")

_NO_ROWS = np.empty(0, np.int64)


@dataclass(frozen=True)
class SearchPolicy:
    """The photo-search rules (the shop's ``SEARCH_*`` settings)."""

    min_confidence: float = 0.5
    same_photo_cosine: float = 0.98
    same_photo_max: int = 5
    colour_first: bool = False  # narrow to the predicted colour within the predicted type first
    colour_min_confidence: float | None = None  # for the colour level; None: min_confidence

    def confident(self, head: str, answer: tuple[str, float] | None) -> bool:
        """Whether a head's answer is trusted enough to narrow the search on."""
        limit = self.min_confidence
        if head == "colour" and self.colour_min_confidence is not None:
            limit = self.colour_min_confidence
        return answer is not None and answer[0] != OTHER and answer[1] >= limit


@dataclass(frozen=True)
class Prediction:
    """The classifier's answers for one query photo, each (label, confidence) or None."""

    type: tuple[str, float] | None = None  # ("Men|Shirts", confidence)
    sub: tuple[str, float] | None = None
    colour: tuple[str, float] | None = None

    @classmethod
    def from_heads(cls, answers: Mapping[str, Any]) -> Prediction:
        """From ``HeadSet.predict``'s answers (objects with ``label`` and ``confidence``)."""
        return cls(
            **{
                name: (answer.label, float(answer.confidence))
                for name, answer in answers.items()
                if name in HEADS
            }
        )


@dataclass(frozen=True)
class Level:
    """One step of the plan: its name and the field values a row must have (all of them)."""

    name: str
    where: tuple[tuple[str, str], ...] = ()


PHOTO = Level("photo")
ALL = Level("all")


def plan_levels(
    prediction: Prediction, policy: SearchPolicy, all_categories: bool = False
) -> list[Level]:
    """The levels after the same-photo one, narrowest first; always ends with ``all``."""
    plan: list[Level] = []
    if not all_categories:
        if policy.confident("type", prediction.type):
            gender, article_type = split_derived_type(prediction.type[0])
            same_type = (("gender", gender), ("article_type", article_type))
            if policy.colour_first and policy.confident("colour", prediction.colour):
                plan.append(Level("colour", (*same_type, ("base_colour", prediction.colour[0]))))
            plan.append(Level("type", same_type))
        if policy.confident("sub", prediction.sub):
            plan.append(Level("sub", (("sub_category", prediction.sub[0]),)))
    plan.append(ALL)
    return plan


class Candidates(Protocol):
    """Which rows the shopper may be shown at a level (eligible and matching its fields)."""

    def allowed(self, level: Level, rows: np.ndarray) -> np.ndarray:
        """bool [len(rows)]: which of ``rows`` may be shown at ``level``."""

    def members(self, level: Level) -> np.ndarray:
        """Every row that may be shown at ``level``, ascending."""


@runtime_checkable
class Scores(Protocol):
    """One photo's cosine to each catalogue row, as the plan asks for it."""

    def __len__(self) -> int:
        """How many catalogue rows there are."""

    def top(self, window: int) -> np.ndarray:
        """The ``window`` best-scored rows, best first, ties by row number."""

    def best(self, rows: np.ndarray, need: int) -> np.ndarray:
        """The ``need`` best-scored of ``rows`` (distinct rows), best first."""

    def of(self, rows: np.ndarray) -> np.ndarray:
        """The cosine of rows ``top`` or ``best`` returned."""


class ArrayScores:
    """``Scores`` from an array holding every row's cosine."""

    def __init__(self, scores: np.ndarray) -> None:
        self.scores = np.asarray(scores)

    def __len__(self) -> int:
        return len(self.scores)

    def top(self, window: int) -> np.ndarray:
        if window == 1 and len(self.scores):  # argmax: the first of the highest, and quicker
            return np.asarray([np.argmax(self.scores)], np.int64)
        return _top(self.scores, window)

    def best(self, rows: np.ndarray, need: int) -> np.ndarray:
        return rows[top_k_rows(self.scores[rows][None, :], need)[0][0]]

    def of(self, rows: np.ndarray) -> np.ndarray:
        return self.scores[rows]


@dataclass(frozen=True)
class Ranking:
    """The rows chosen for one photo, best first within each level."""

    rows: np.ndarray  # int64 [<= n]
    levels: tuple[str, ...]  # the level each row was chosen at
    searched: str  # the widest planned level consulted
    plan: tuple[Level, ...]  # the levels planned after the same-photo one


def rank(
    scores: np.ndarray | Scores,
    prediction: Prediction,
    candidates: Candidates,
    n: int,
    policy: SearchPolicy,
    *,
    all_categories: bool = False,
    first_window: int = FIRST_WINDOW,
    direct_limit: int = DIRECT_LIMIT,
) -> Ranking:
    """Photo search's top ``n`` rows for one photo's ``scores`` (cosine per catalogue row,
    or ``Scores``).

    ``direct_limit=0`` reads each level's members at once (cheap when they are in memory).
    """
    if not isinstance(scores, Scores):
        scores = ArrayScores(scores)
    plan = plan_levels(prediction, policy, all_categories)
    taken = np.zeros(len(scores), bool)
    rows: list[int] = []
    levels: list[str] = []

    def take(name: str, found: np.ndarray) -> None:
        rows.extend(found.tolist())
        levels.extend([name] * len(found))
        taken[found] = True

    def best(level: Level, need: int) -> np.ndarray:
        return _best(scores, level, candidates, need, taken, len(rows), first_window, direct_limit)

    # The same picture (a catalogue photo, re-encoded or resized) is the best answer there is.
    # Compared in float64: a float32 comparison would round the threshold first.
    same_need = min(n, policy.same_photo_max)
    highest = float(scores.of(scores.top(1))[0]) if len(scores) else -np.inf
    if same_need > 0 and highest >= policy.same_photo_cosine:
        found = best(PHOTO, same_need)
        take(PHOTO.name, found[scores.of(found).astype(np.float64) >= policy.same_photo_cosine])
    searched = plan[0].name
    for level in plan:
        need = n - len(rows)
        if need <= 0:
            break
        searched = level.name
        take(level.name, best(level, need))
    return Ranking(np.asarray(rows, np.int64), tuple(levels), searched, tuple(plan))


def _best(
    scores: Scores,
    level: Level,
    candidates: Candidates,
    need: int,
    taken: np.ndarray,
    n_taken: int,
    first_window: int,
    direct_limit: int,
) -> np.ndarray:
    """The ``need`` best-scored rows allowed at ``level`` and not yet taken."""
    if need <= 0:
        return _NO_ROWS
    total = len(scores)
    window = min(total, max(first_window, 4 * need + n_taken))
    while direct_limit > 0 and (window < direct_limit or window >= total):
        order = scores.top(window)
        order = order[~taken[order]]
        found = order[candidates.allowed(level, order)][:need]
        if len(found) == need or window >= total:
            return found
        window = min(total, window * 8)
    # A sparse level (or members in memory): all its allowed rows at once, then rank those.
    members = candidates.members(level)
    members = members[~taken[members]]
    return scores.best(members, need)


def _top(scores: np.ndarray, window: int) -> np.ndarray:
    """The ``window`` best-scored rows, best first, ties by row number."""
    total = len(scores)
    if window >= total:
        return np.lexsort((np.arange(total), -scores))
    part = np.argpartition(scores, total - window)[total - window :]
    return part[np.lexsort((part, -scores[part]))]


# -- candidates from in-memory labels (the evaluation) ----------------------------------------


class Groups:
    """Row numbers per combination of field values, from a catalogue's labels in memory.

    ``labels`` has one array per field of ``FIELDS`` (``ml.evaluation.Labels``); a row with
    any of a combination's fields unknown belongs to none of its groups.
    """

    def __init__(self, labels: Any) -> None:
        self._columns = {f: np.asarray(getattr(labels, f), dtype=object) for f in FIELDS}
        self._all = np.arange(len(self._columns[FIELDS[0]]), dtype=np.int64)
        self._by: dict[tuple[str, ...], dict[tuple, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self._all)

    def rows(self, where: tuple[tuple[str, str], ...]) -> np.ndarray:
        """Rows whose fields have all the given values, ascending (every row for ``()``)."""
        if not where:
            return self._all
        fields = tuple(f for f, _ in where)
        groups = self._by.get(fields)
        if groups is None:
            groups = self._by[fields] = self._group(fields)
        return groups.get(tuple(v for _, v in where), _NO_ROWS)

    def _group(self, fields: tuple[str, ...]) -> dict[tuple, np.ndarray]:
        columns = [self._columns[f] for f in fields]
        present = np.logical_and.reduce([metrics.known(c) for c in columns])
        out: dict[tuple, list[int]] = {}
        for row in np.flatnonzero(present).tolist():
            out.setdefault(tuple(c[row] for c in columns), []).append(row)
        return {key: np.asarray(rows, np.int64) for key, rows in out.items()}


class ArrayCandidates:
    """Candidates from in-memory groups; ``eligible`` bool [rows] (None: every row)."""

    def __init__(self, groups: Groups, eligible: np.ndarray | None = None) -> None:
        self.groups = groups
        self.eligible = None if eligible is None else np.asarray(eligible, bool)

    def members(self, level: Level) -> np.ndarray:
        """Every eligible row of the level, ascending."""
        rows = self.groups.rows(level.where)
        return rows if self.eligible is None else rows[self.eligible[rows]]

    def allowed(self, level: Level, rows: np.ndarray) -> np.ndarray:
        """Which of ``rows`` are eligible members of the level."""
        member = np.zeros(len(self.groups), bool)
        member[self.members(level)] = True
        return member[rows]
