"""The vector index interface, exact and approximate, against brute-force search."""

from __future__ import annotations

import numpy as np
import pytest

from ml import vector_index
from ml.neighbours import all_neighbours
from ml.vector_index import (
    ANN_MIN_ROWS,
    ExactIndex,
    HnswIndex,
    VectorIndex,
    exact_for,
    make_index,
    nearest_others,
)

DIM = 32
N = 20_000


def clustered(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    """Unit rows around 200 centres, with noise of varying size (structure like products')."""
    centres = np.random.default_rng(99).standard_normal((200, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((n, dim)).astype(np.float32) * rng.uniform(0.2, 0.6, (n, 1))
    rows = centres[rng.integers(0, 200, n)] + noise * np.sqrt(dim / 4)
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def brute(ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray, k: int, allowed=None):
    """Top-k ids and scores by a full sort, over the rows whose ids are allowed."""
    if allowed is not None:
        keep = np.isin(ids, allowed)
        ids, vectors = ids[keep], vectors[keep]
    sims = queries @ vectors.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return ids[order], np.take_along_axis(sims, order, axis=1)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)])
    )


@pytest.fixture(scope="module")
def data():
    """Catalogue vectors with sparse, shuffled product ids, and held-out queries."""
    ids = np.random.default_rng(1).permutation(3 * N)[:N].astype(np.int64) + 10
    return ids, clustered(N), clustered(200, seed=7)


@pytest.fixture(scope="module")
def hnsw(data):
    """One HNSW index over the catalogue, shared by the tests that only read it."""
    ids, vectors, _ = data
    index = HnswIndex(DIM)
    index.add(ids, vectors)
    return index


def build(kind: str, ids: np.ndarray, vectors: np.ndarray, **options) -> VectorIndex:
    index = ExactIndex(DIM, **options) if kind == "exact" else HnswIndex(DIM, **options)
    index.add(ids, vectors)
    return index


def test_exact_matches_brute_force_across_blocks(data, monkeypatch):
    ids, vectors, queries = data
    monkeypatch.setattr(vector_index, "_SCAN_FLOATS", 1 << 12)  # 1024-row blocks: 20 merges
    index = build("exact", ids[:5000], vectors[:5000])
    found, scores = index.query(queries, 10)
    truth, truth_scores = brute(ids[:5000], vectors[:5000], queries, 10)
    np.testing.assert_allclose(scores, truth_scores, atol=1e-5)
    assert recall(found, truth) == 1.0  # equal up to the order of exact ties
    assert found.dtype == np.int64 and scores.dtype == np.float32


def test_float16_storage_stays_close(data):
    ids, vectors, queries = data
    found, scores = build("exact", ids, vectors, storage="float16").query(queries, 10)
    truth, truth_scores = brute(ids, vectors, queries, 10)
    assert recall(found, truth) >= 0.99
    assert np.abs(scores - truth_scores).max() < 2e-3


@pytest.mark.parametrize("storage", ["float32", "float16", "sq8"])
def test_ann_recall_against_exact(data, hnsw, storage):
    ids, vectors, queries = data
    index = hnsw if storage == "float32" else build("ann", ids, vectors, storage=storage)
    found, scores = index.query(queries, 10)
    truth, _ = brute(ids, vectors, queries, 10)
    assert recall(found, truth) >= 0.95
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first


@pytest.mark.parametrize("kind", ["exact", "ann"])
def test_empty_index_and_k_past_the_catalogue(data, kind):
    ids, vectors, queries = data
    index = make_index(DIM, 0, kind=kind)
    found, scores = index.query(queries[:2], 3)
    assert len(index) == 0 and (found == -1).all() and np.isneginf(scores).all()
    index.add(ids[:5], vectors[:5])
    found, scores = index.query(queries[:2], 8)
    assert found.shape == (2, 8) and (np.sort(found[:, :5], axis=1) == np.sort(ids[:5])).all()
    assert (found[:, 5:] == -1).all()


def test_make_index_chooses_by_size():
    assert isinstance(make_index(DIM, ANN_MIN_ROWS - 1), ExactIndex)
    assert isinstance(make_index(DIM, ANN_MIN_ROWS), HnswIndex)
    assert isinstance(make_index(DIM, 10, kind="ann"), HnswIndex)
    assert isinstance(make_index(DIM, 10**7, kind="exact", storage="float16"), ExactIndex)
    with pytest.raises(ValueError, match="kind must be one of"):
        make_index(DIM, 10, kind="ivf")
    with pytest.raises(ValueError, match="storage must be one of"):
        make_index(DIM, 10, kind="exact", storage="sq8")


@pytest.mark.parametrize("kind", ["exact", "ann"])
def test_allowed_mask_and_id_list_keep_k_results(data, hnsw, kind):
    ids, vectors, queries = data
    index = hnsw if kind == "ann" else build("exact", ids, vectors)
    allowed_ids = np.random.default_rng(3).choice(ids, 500, replace=False)  # 2.5 %
    mask = np.zeros(ids.max() + 1, bool)
    mask[allowed_ids] = True
    by_mask = index.query(queries, 10, allowed=mask)
    by_list = index.query(queries, 10, allowed=list(allowed_ids) + [10**9])  # unknown id ignored
    np.testing.assert_array_equal(by_mask[0], by_list[0])
    assert np.isin(by_mask[0], allowed_ids).all()  # k results for every query, all allowed
    truth, _ = brute(ids, vectors, queries, 10, allowed=allowed_ids)
    assert recall(by_mask[0], truth) == 1.0  # 500 allowed rows are scored exactly


def test_ann_filtered_graph_search_keeps_k_results(data):
    ids, vectors, queries = data
    index = build("ann", ids, vectors, exact_max=100)  # force the filtered graph walk
    allowed = np.random.default_rng(4).choice(ids, 2000, replace=False)
    found, _ = index.query(queries, 50, allowed=allowed)
    assert np.isin(found, allowed).all()
    truth, _ = brute(ids, vectors, queries, 50, allowed=allowed)
    assert recall(found, truth) >= 0.95


@pytest.mark.parametrize("kind", ["exact", "ann"])
def test_tiny_allowed_set_among_20k(data, hnsw, kind):
    """3 allowed of 20k: all 3 come back, best first, then padding."""
    ids, vectors, queries = data
    index = hnsw if kind == "ann" else build("exact", ids, vectors)
    allowed = ids[[5, 500, 5000]]
    found, scores = index.query(queries[:20], 10, allowed=allowed)
    truth, truth_scores = brute(ids, vectors, queries[:20], 3, allowed=allowed)
    np.testing.assert_array_equal(found[:, :3], truth)
    np.testing.assert_allclose(scores[:, :3], truth_scores, atol=1e-5)
    assert (found[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()
    empty, _ = index.query(queries[:2], 5, allowed=np.array([], np.int64))
    assert (empty == -1).all()


class ShortWalk:
    """An HNSW graph whose walk finds only its first result (a badly connected graph)."""

    def __init__(self, graph):
        self.graph = graph

    def __getattr__(self, name):
        return getattr(self.graph, name)

    def search(self, queries, k, params=None):
        scores, found = self.graph.search(queries, k, params=params)
        scores[:, 1:], found[:, 1:] = -np.inf, -1
        return scores, found


def test_short_graph_walk_falls_back_to_exact(data):
    ids, vectors, queries = data
    index = build("ann", ids[:5000], vectors[:5000], exact_max=0)
    index._index = ShortWalk(index._index)
    allowed = ids[:2500]
    found, scores = index.query(queries[:20], 10, allowed=allowed)
    truth, truth_scores = brute(ids[:5000], vectors[:5000], queries[:20], 10, allowed=allowed)
    np.testing.assert_array_equal(found, truth)
    np.testing.assert_allclose(scores, truth_scores, atol=1e-5)


@pytest.mark.parametrize("kind", ["exact", "ann"])
def test_add_and_remove_without_rebuild(data, kind):
    ids, vectors, _ = data
    index = build(kind, ids[:5000], vectors[:5000])
    gone = ids[:300]
    assert index.remove(np.concatenate([gone, [10**9]])) == 300  # unknown ids are ignored
    assert index.remove(gone) == 0
    assert len(index) == 4700 and not np.isin(gone, index.ids()).any()
    found, _ = index.query(vectors[:300], 10)
    assert not np.isin(found, gone).any()
    found, _ = index.query(vectors[:300], 10, allowed=np.concatenate([gone, ids[300:303]]))
    assert not np.isin(found, gone).any() and (found[:, 3:] == -1).all()

    index.add(ids[5000:5500], vectors[5000:5500])
    found, scores = index.query(vectors[5000:5500], 1)
    np.testing.assert_array_equal(found[:, 0], ids[5000:5500])
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)

    # A product whose photo changed: removed, then added again with its new vector.
    index.remove(ids[5000:5001])
    index.add(ids[5000:5001], vectors[6000:6001])
    assert index.query(vectors[6000:6001], 1)[0][0, 0] == ids[5000]
    assert ids[5000] not in index.query(vectors[5000:5001], 10)[0]
    assert len(index) == 5200 and len(np.unique(index.ids())) == 5200


@pytest.mark.parametrize(
    ("kind", "storage"),
    [("exact", "float32"), ("exact", "float16"), ("ann", "float32"), ("ann", "sq8")],
)
def test_save_load_round_trip(data, tmp_path, kind, storage):
    ids, vectors, queries = data
    index = build(kind, ids[:5000], vectors[:5000], storage=storage)
    index.remove(ids[:10])
    before = index.query(queries, 10)
    index.save(tmp_path / "index")

    mapped = VectorIndex.load(tmp_path / "index")
    assert type(mapped) is type(index) and len(mapped) == len(index)
    for got, want in zip(mapped.query(queries, 10), before, strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(mapped.ids(), index.ids())
    with pytest.raises(RuntimeError, match="read-only"):
        mapped.add(ids[5000:5001], vectors[5000:5001])

    loaded = type(index).load(tmp_path / "index", mmap=False)
    loaded.add(ids[5000:5001], vectors[5000:5001])
    assert loaded.query(vectors[5000:5001], 1)[0][0, 0] == ids[5000]
    np.testing.assert_array_equal(loaded.query(queries, 10)[0], before[0])


def test_load_refuses_a_missing_or_other_index(data, tmp_path):
    ids, vectors, _ = data
    with pytest.raises(ValueError, match="no vector index"):
        VectorIndex.load(tmp_path)
    build("exact", ids[:10], vectors[:10]).save(tmp_path / "exact")
    with pytest.raises(ValueError, match="holds a exact index"):
        HnswIndex.load(tmp_path / "exact")


@pytest.mark.parametrize("kind", ["exact", "ann"])
def test_bad_input_is_a_clear_value_error(data, kind):
    ids, vectors, queries = data
    index = build(kind, ids[:100], vectors[:100])
    bad = [
        (lambda: index.add([1], np.ones((1, DIM + 1), np.float32)), r"shape \[n, 32\]"),
        (lambda: index.query(np.ones((1, DIM + 1), np.float32), 5), r"shape \[n, 32\]"),
        (lambda: index.query(queries[:1], 0), "k must be an integer of at least 1"),
        (lambda: index.query(queries[:1], -3), "k must be an integer of at least 1"),
        (lambda: index.query(queries[:1], 2.5), "k must be an integer of at least 1"),
        (lambda: index.add([7, 7], vectors[200:202]), r"duplicate ids in one add: \[7\]"),
        (lambda: index.add(ids[:1], vectors[200:201]), "already in the index"),
        (lambda: index.add([-1], vectors[200:201]), "non-negative"),
        (lambda: index.add([1, 2], vectors[200:201]), "2 ids for 1 vectors"),
        (lambda: index.add([1], vectors[200:201] * 2), "L2-normalised"),
        (lambda: index.add([1], np.full((1, DIM), np.nan, np.float32)), "NaN"),
        (lambda: index.add([1.5], vectors[200:201]), "ids must be integers"),
        (lambda: index.query(queries[:1], 5, allowed=np.ones((2, 2), bool)), "1-D"),
    ]
    for call, message in bad:
        with pytest.raises(ValueError, match=message):
            call()
    assert len(index) == 100  # nothing half-added


def test_sq8_needs_a_real_first_add(data):
    ids, vectors, _ = data
    with pytest.raises(ValueError, match="at least 1000 rows"):
        build("ann", ids[:10], vectors[:10], storage="sq8")


def test_nearest_others_through_the_graph_match_exact_lists():
    """The lists a build writes (``nearest_others`` over the index, block by block): never
    the product itself, best first, and the exact lists' neighbours at recall >= 0.95."""
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((40, 32))
    vectors = centres[rng.integers(0, 40, 3000)] + 0.35 * rng.standard_normal((3000, 32))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    exact_idx, _ = all_neighbours(vectors, 10)
    ids = np.arange(3000) * 3 + 5  # ids are not row numbers
    index = make_index(32, 3000, "ann")
    index.add(ids, vectors)
    blocks = [nearest_others(index, ids[s : s + 700], vectors[s : s + 700], 10)
              for s in range(0, 3000, 700)]  # fmt: skip
    found = np.concatenate([b[0] for b in blocks])
    scores = np.concatenate([b[1] for b in blocks])
    assert found.shape == exact_idx.shape == (3000, 10)
    assert not (found == ids[:, None]).any()  # never its own neighbour
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    truth = ids[exact_idx]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)])
    assert recall >= 0.95
    assert exact_for("auto", 3000) and exact_for("exact", 10**6) and not exact_for("ann", 10)
    assert not exact_for("auto", ANN_MIN_ROWS)
    with pytest.raises(ValueError, match="index kind"):
        exact_for("lsh", 10)
