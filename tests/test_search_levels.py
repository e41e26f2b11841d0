"""The photo-search level plan (``ml.search_levels``) on arrays: which levels, in what order,
eligibility while choosing, and the windowed search agreeing with reading a level at once."""

from __future__ import annotations

import numpy as np
import pytest

from ml.evaluation import Labels
from ml.search_levels import (
    ArrayCandidates,
    Groups,
    Level,
    Prediction,
    SearchPolicy,
    plan_levels,
    rank,
)

POLICY = SearchPolicy(min_confidence=0.5, same_photo_cosine=0.99, colour_first=True)


def names(plan: list[Level]) -> list[str]:
    return [level.name for level in plan]


def test_the_plan_narrows_only_on_confident_answers():
    sure = Prediction(type=("Men|Shirts", 0.9), sub=("Topwear", 0.8), colour=("Red", 0.7))
    plan = plan_levels(sure, POLICY)
    assert names(plan) == ["colour", "type", "sub", "all"]
    assert plan[0].where == (
        ("gender", "Men"),
        ("article_type", "Shirts"),
        ("base_colour", "Red"),
    )
    assert plan[2].where == (("sub_category", "Topwear"),)
    unsure_colour = Prediction(type=("Men|Shirts", 0.9), colour=("Red", 0.3))
    assert names(plan_levels(unsure_colour, POLICY)) == ["type", "all"]
    assert names(plan_levels(unsure_colour, SearchPolicy(colour_first=False))) == ["type", "all"]
    other = Prediction(type=("(other)", 0.99), sub=("Topwear", 0.2))
    assert names(plan_levels(other, POLICY)) == ["all"]
    assert names(plan_levels(sure, POLICY, all_categories=True)) == ["all"]
    assert names(plan_levels(Prediction(), POLICY)) == ["all"]


def catalogue(n: int, seed: int):
    """n random unit vectors with random labels (some unknown), and a query near row 0."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    pick = lambda values: rng.choice(np.asarray(values, dtype=object), n)  # noqa: E731
    labels = Labels(
        pick(["Men", "Women", None]),
        pick(["Shirts", "Jeans", "Caps"]),
        pick(["Red", "Blue"]),
        pick(["Topwear", "Bottomwear"]),
    )
    query = vectors[0] + 0.3 * rng.normal(size=8).astype(np.float32)
    return vectors, labels, query / np.linalg.norm(query), rng


@pytest.mark.parametrize("seed", range(6))
def test_windowed_search_chooses_what_reading_each_level_at_once_does(seed):
    vectors, labels, query, rng = catalogue(3000, seed)
    scores = vectors @ query
    scores[0] = 1.0  # the same photo
    eligible = rng.random(len(vectors)) > 0.3
    candidates = ArrayCandidates(Groups(labels), eligible)
    prediction = Prediction(type=("Women|Caps", 0.9), sub=("Topwear", 0.9), colour=("Red", 0.9))
    n = int(rng.integers(1, 400))
    direct = rank(scores, prediction, candidates, n, POLICY, direct_limit=0)
    windowed = rank(scores, prediction, candidates, n, POLICY, first_window=8, direct_limit=512)
    assert direct.rows.tolist() == windowed.rows.tolist()
    assert direct.levels == windowed.levels and direct.searched == windowed.searched
    # n results whenever n eligible rows exist, none of them ineligible, none twice
    assert len(direct.rows) == min(n, int(eligible.sum()))
    assert eligible[direct.rows].all() and len(set(direct.rows.tolist())) == len(direct.rows)
    # best first within each level
    for level in set(direct.levels):
        mine = direct.rows[np.asarray(direct.levels) == level]
        assert (np.diff(scores[mine]) <= 0).all()


def test_the_same_photo_comes_first_only_when_eligible():
    vectors, labels, query, _ = catalogue(50, 1)
    scores = vectors @ query
    scores[7] = 1.0
    prediction = Prediction(type=("Men|Jeans", 0.9))
    everyone = ArrayCandidates(Groups(labels))
    ranking = rank(scores, prediction, everyone, 5, POLICY)
    assert ranking.rows[0] == 7 and ranking.levels[0] == "photo"
    hidden = np.ones(50, bool)
    hidden[7] = False
    ranking = rank(scores, prediction, ArrayCandidates(Groups(labels), hidden), 5, POLICY)
    assert 7 not in ranking.rows.tolist() and "photo" not in ranking.levels


def test_ties_are_broken_by_row_number():
    labels = Labels(["Men"] * 6, ["Shirts"] * 6, ["Red"] * 6, ["Topwear"] * 6)
    scores = np.asarray([0.5, 0.9, 0.5, 0.9, 0.1, 0.5], np.float32)
    candidates = ArrayCandidates(Groups(labels))
    for direct_limit in (0, 4096):
        ranking = rank(scores, Prediction(), candidates, 5, POLICY, direct_limit=direct_limit)
        assert ranking.rows.tolist() == [1, 3, 0, 2, 5]
        assert ranking.searched == "all" and set(ranking.levels) == {"all"}
