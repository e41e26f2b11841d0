"""Property: preferences apply while choosing, so N results come back whenever N eligible exist."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ml.neighbours import all_neighbours, query
from webapp.eligibility import Eligibility
from webapp.preferences import Preferences
from webapp.similar.selection import choose

COLOURS = ["Red", "Blue", "Black", "White"]
GENDERS = ["Men", "Women", "Unisex"]
TYPES = ["Shirts", "Jeans", "Watches"]


@st.composite
def catalogues(draw):
    """A random catalogue with vectors, attributes, stock and active flags, plus preferences."""
    size = draw(st.integers(2, 40))
    seed = draw(st.integers(0, 2**32 - 1))
    products = [
        SimpleNamespace(
            id=i,
            base_colour=draw(st.sampled_from(COLOURS)),
            gender=draw(st.sampled_from(GENDERS)),
            master_category="Apparel",
            sub_category="Topwear",
            article_type=draw(st.sampled_from(TYPES)),
            active=draw(st.booleans()) or draw(st.booleans()),
            stock=draw(st.sampled_from([None, 0, 3])),
        )
        for i in range(size)
    ]
    prefs = Preferences(
        disliked_colours=set(draw(st.lists(st.sampled_from(COLOURS), max_size=3))),
        genders=set(draw(st.lists(st.sampled_from(GENDERS), max_size=2))),
        hide_disliked_colours=draw(st.booleans()),
    )
    prefs.hidden["type"] = set(draw(st.lists(st.sampled_from(TYPES), max_size=2)))
    k = draw(st.integers(1, 8))
    n = draw(st.integers(1, 12))
    query_id = draw(st.integers(0, size - 1))
    return products, prefs, seed, k, n, query_id


@settings(max_examples=300, deadline=None)
@given(catalogues())
def test_n_guarantee_and_no_excluded_product(case):
    products, prefs, seed, k, n, query_id = case
    vectors = np.random.default_rng(seed).standard_normal((len(products), 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    idx, scores = all_neighbours(vectors, k)
    ranked = list(zip(idx[query_id].tolist(), scores[query_id].tolist(), strict=True))

    eligibility = Eligibility.of(prefs)

    def eligible(pid: int) -> bool:
        return pid != query_id and eligibility.allows(products[pid])

    def fallback(chosen: set[int], missing: int):
        allowed = np.array([eligible(i) and i not in chosen for i in range(len(products))])
        if not allowed.any():
            return []
        found, found_scores = query(vectors, vectors[query_id], missing, allowed=allowed)
        return list(zip(found[0].tolist(), found_scores[0].tolist(), strict=True))

    got = choose(ranked, eligible, n, fallback)
    ids = [pid for pid, _ in got]
    n_eligible = sum(eligible(i) for i in range(len(products)))

    assert len(ids) == min(n, n_eligible)
    assert len(set(ids)) == len(ids)
    assert all(eligible(pid) for pid in ids)
    # Results are the most similar eligible products, best first.
    sims = vectors @ vectors[query_id]
    best = sorted((i for i in range(len(products)) if eligible(i)), key=lambda i: -sims[i])
    assert np.allclose(sorted(sims[ids], reverse=True), sims[best[: len(ids)]], atol=1e-6)
    assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)


def test_plain_list_without_preferences():
    ranked = [(5, 0.9), (3, 0.8), (9, 0.7)]
    assert choose(ranked, lambda pid: True, 2) == [(5, 0.9), (3, 0.8)]
    assert choose(ranked, lambda pid: True, 0) == []
