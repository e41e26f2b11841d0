"""Photo search through the vector index: the level plan (``ml.search_levels.rank``) asking
an HNSW graph chooses the products exact search does, a level's eligible products passed as
the search's allowed set, and N results come back whenever N eligible products exist."""

from __future__ import annotations

import numpy as np
import pytest

from ml.search_levels import ArrayCandidates, Groups, Prediction, SearchPolicy, rank
from ml.vector_index import ExactIndex, HnswIndex
from tests.test_search import FixedHeads, run_search, shop  # noqa: F401 (the fixture)
from tests.test_search_levels import catalogue
from webapp.preferences import Preferences
from worker.jobs import indexing, photo_search, search_index
from worker.jobs.search_index import CatalogueIndex, IndexScores

POLICY = SearchPolicy(min_confidence=0.5, same_photo_cosine=0.99, colour_first=True)


def index_scores(nearest, vectors: np.ndarray, query: np.ndarray) -> IndexScores:
    ids = np.arange(len(vectors), dtype=np.int64) * 3 + 5  # ids are not row numbers
    nearest.add(ids, vectors)
    return IndexScores(CatalogueIndex("m", ids, nearest, vectors), query, photo_search.MIN_WINDOW)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("share", [0.9, 0.3, 0.02])
def test_the_plan_through_an_hnsw_index_chooses_what_exact_search_does(seed, share):
    vectors, labels, query, rng = catalogue(3000, seed)
    eligible = rng.random(len(vectors)) < share
    candidates = ArrayCandidates(Groups(labels), eligible)
    prediction = Prediction(type=("Women|Caps", 0.9), sub=("Topwear", 0.9), colour=("Red", 0.9))
    n = int(rng.integers(1, 120))
    exact = rank(vectors @ query, prediction, candidates, n, POLICY)
    through_exact = rank(
        index_scores(ExactIndex(8), vectors, query), prediction, candidates, n, POLICY
    )
    # exact_max=50: a level's allowed set larger than that is walked in the graph, filtered.
    graph = HnswIndex(8, exact_max=50)
    through_graph = rank(index_scores(graph, vectors, query), prediction, candidates, n, POLICY)
    assert through_exact.rows.tolist() == exact.rows.tolist()
    assert through_exact.levels == exact.levels
    # N whenever N eligible rows exist, none ineligible, none twice, the same levels
    assert len(through_graph.rows) == len(exact.rows) == min(n, int(eligible.sum()))
    assert eligible[through_graph.rows].all()
    assert len(set(through_graph.rows.tolist())) == len(through_graph.rows)
    assert through_graph.searched == exact.searched
    # per level, the graph's rows are exact search's (recall of an HNSW walk on 3,000 rows)
    for level in set(exact.levels):
        mine = set(through_graph.rows[np.asarray(through_graph.levels) == level].tolist())
        wanted = set(exact.rows[np.asarray(exact.levels) == level].tolist())
        assert len(mine & wanted) >= 0.95 * len(wanted), level


def test_index_scores_are_the_cosines_of_the_rows_chosen():
    vectors, labels, query, _ = catalogue(500, 3)
    scores = index_scores(HnswIndex(8), vectors, query)
    ranking = rank(scores, Prediction(), ArrayCandidates(Groups(labels)), 20, POLICY)
    np.testing.assert_allclose(scores.of(ranking.rows), vectors[ranking.rows] @ query, atol=1e-5)


def searches(app, media, pids, prefs=None, n=12):
    return [run_search(app, media, pid, prefs or Preferences(), n) for pid in pids]


def items(result) -> set[int]:
    return {pid for pid, _, _ in result["items"]}


def test_photo_search_through_the_ann_index_gives_the_exact_products(shop, monkeypatch):  # noqa: F811
    app, products, media = shop
    pids = (2001, 2014, 2027, 2040)
    no_red = Preferences(disliked_colours={"Red"})
    only_women = Preferences(genders={"Women"})
    monkeypatch.setattr(
        photo_search, "heads_for", lambda m: FixedHeads(type=("Women|Watches", 0.9))
    )
    results = {}
    for kind in ("exact", "ann"):
        monkeypatch.setitem(app.config, "NEIGHBOURS_INDEX", kind)
        monkeypatch.setattr(search_index, "_indexes", {})  # built again, of this kind
        with app.app_context():
            model_id = photo_search.served_model()
            indexing.build_neighbours(model_id)  # saves this kind's index, as a build does
            catalogue = search_index.catalogue_index(model_id)
            if kind == "ann":
                assert catalogue.nearest.kind == "hnsw"
            else:  # exact search scores the vectors themselves
                assert catalogue.nearest is None and catalogue.vectors is not None
            results[kind] = (
                searches(app, media, pids),
                searches(app, media, pids, no_red, n=30),
                searches(app, media, pids, only_women, n=24),
            )
    for exact, ann in zip(results["exact"], results["ann"], strict=True):
        for a, b in zip(exact, ann, strict=True):
            assert items(a) == items(b)
            assert [level for _, _, level in a["items"]] == [level for _, _, level in b["items"]]
    _, no_red_found, women_found = results["ann"]
    # N results whenever N eligible products exist: 32 are not red, 24 are women's.
    for result in no_red_found:
        assert len(result["items"]) == 30
        assert all(products[pid][3] != "Red" for pid in items(result))
    for result in women_found:
        assert len(result["items"]) == 24
        assert all(products[pid][0] == "Women" for pid in items(result))


def test_a_saved_index_is_read_ahead_once_per_build(shop, monkeypatch):  # noqa: F811
    """A worker mapping a saved graph reads its files through once (so the first searches
    find its pages cached), and again only when a build saved a new one."""
    app, _, _ = shop
    read = []
    monkeypatch.setattr(search_index, "read_ahead", read.append)
    monkeypatch.setattr(search_index, "_indexes", {})
    monkeypatch.setitem(app.config, "NEIGHBOURS_INDEX", "ann")
    with app.app_context():
        model_id = photo_search.served_model()
        indexing.build_neighbours(model_id)
        folder = search_index.registry.index_folder(model_id)
        first = search_index.catalogue_index(model_id)
        # An admin's save changes the store: the index is mapped again, not read again.
        store = search_index.registry.store_for(model_id)
        ids, vectors = store.load()
        store.write_part([int(ids[0])], np.asarray(vectors[:1]), ["re-photographed"])
        assert search_index.catalogue_index(model_id) is not first
        assert read == [folder]
        indexing.build_neighbours(model_id, reuse_index=False)
        search_index.catalogue_index(model_id)
    assert read == [folder, folder]
