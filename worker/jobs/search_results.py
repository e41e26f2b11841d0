"""What photo search shows for a ranked photo: one card per picture, and whether even the
best card is much like the photo.

Cards: products whose photos are the same picture (``webapp.search.collapse``) share one
card, the best-ranked shown and the others listed on it; when that leaves fewer than N
cards, the level plan is run again for as many more (a few rounds at most), so a page still
shows N different pictures whenever the catalogue has them.

Closeness: the best card's cosine against ``close_match_cosine``, the model's calibrated
compare threshold read as a cosine (or the ``SEARCH_NO_MATCH_COSINE`` setting): below it,
the page says nothing in the store looks much like the photo rather than calling the
results similar.
"""

from __future__ import annotations

import numpy as np
from flask import current_app

from ml import search_levels
from ml.search_levels import Prediction, SearchPolicy
from webapp.search.collapse import same_picture_groups
from webapp.thresholds import compare_threshold

# Rounds of ranking again for more when results collapsed into fewer than N cards.
COLLAPSE_ROUNDS = 3


def choose_distinct(
    ids: np.ndarray,
    scores: np.ndarray,
    prediction: Prediction,
    eligible: search_levels.Candidates,
    n: int,
    policy: SearchPolicy,
    all_categories: bool,
) -> tuple[search_levels.Ranking, list[list[int]]]:
    """The ranking and its first ``n`` cards: product ids in groups of the same picture
    (``webapp.search.collapse``), best first. When products collapsed, the ranking is run
    again for as many more, so N cards come back whenever N different pictures may be shown."""
    need = n
    for _ in range(COLLAPSE_ROUNDS):
        ranking = search_levels.rank(
            scores, prediction, eligible, need, policy, all_categories=all_categories
        )
        groups = same_picture_groups(ids[ranking.rows].tolist())
        if len(groups) >= n or len(ranking.rows) < need:
            break  # enough cards, or nothing more to show
        need += n - len(groups)
    return ranking, groups[:n]


def close_match_cosine(model_id: str) -> tuple[float | None, str | None]:
    """(cosine below which even the best result is not "much like" the photo, where it came
    from): ``SEARCH_NO_MATCH_COSINE`` when set, else the model's calibrated compare threshold
    (the score from which two photos are mostly the same type, gender and colour, at the
    calibration's target precision) as a cosine; (None, None) for a model never calibrated,
    which makes no such claim."""
    configured = float(current_app.config.get("SEARCH_NO_MATCH_COSINE") or 0)
    if configured > 0:
        return configured, "setting"
    threshold, calibration = compare_threshold(model_id)
    if calibration is None:
        return None, None
    return round(2.0 * threshold - 1.0, 5), "compare threshold"
