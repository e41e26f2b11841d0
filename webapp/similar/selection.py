"""Choosing what to show from ranked candidates: preferences apply while choosing (README,
"Architecture", rule 6)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

REASON_FIELDS = (
    ("article_type", "same type"),
    ("gender", "same gender"),
    ("base_colour", "same colour"),
    ("sub_category", "same category"),
    ("usage", "same usage"),
    ("season", "same season"),
)


def choose(
    ranked: Iterable[tuple[int, float]],
    is_eligible: Callable[[int], bool],
    n: int,
    fallback: Callable[[set[int], int], Sequence[tuple[int, float]]] | None = None,
) -> list[tuple[int, float]]:
    """The first ``n`` eligible candidates, best first; when the ranked list runs out,
    ``fallback(already_chosen_ids, missing)`` searches further among eligible products."""
    if n < 1:
        return []
    chosen: list[tuple[int, float]] = []
    seen: set[int] = set()
    for product_id, score in ranked:
        if product_id in seen or not is_eligible(product_id):
            continue
        seen.add(product_id)
        chosen.append((product_id, score))
        if len(chosen) == n:
            return chosen
    if fallback is not None:
        for product_id, score in fallback(set(seen), n - len(chosen)):
            if product_id not in seen and is_eligible(product_id):
                seen.add(product_id)
                chosen.append((product_id, score))
                if len(chosen) == n:
                    break
    return chosen


def reasons(query: Any, candidate: Any) -> list[str]:
    """Why a candidate matches beyond looks: the attributes it shares with the query."""
    out = []
    for field, label in REASON_FIELDS:
        value = getattr(query, field, None)
        if value and value == getattr(candidate, field, None):
            out.append(f"{label}: {value}")
    return out
