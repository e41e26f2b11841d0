"""Compact vectors, the saved catalogue index, the store's copy-free view and the live index."""

from __future__ import annotations

import numpy as np
import pytest

from ml.compact import (
    CompactIndex,
    Projection,
    build_index,
    load_index,
    read_ahead,
    read_through,
    save_index,
)
from ml.live_index import LiveIndex
from ml.store import EmbeddingStore
from ml.vector_index import ExactIndex, HnswIndex

DIM = 64
N = 6000


def low_rank(n: int, seed: int = 0) -> np.ndarray:
    """Unit rows that live mostly in a 12-dimensional subspace (as embeddings mostly do)."""
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(42).standard_normal((12, DIM)).astype(np.float32)
    rows = rng.standard_normal((n, 12)).astype(np.float32) @ mixing
    rows += 0.05 * rng.standard_normal((n, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]


@pytest.fixture(scope="module")
def catalogue():
    ids = np.arange(N, dtype=np.int64) * 3 + 5
    return ids, low_rank(N), low_rank(100, seed=9)


def test_projection_keeps_the_ranking(catalogue):
    ids, vectors, queries = catalogue
    projection = Projection.fit(vectors, 16)
    small = projection.apply(vectors)
    assert small.shape == (N, 16)
    assert np.allclose(np.linalg.norm(small, axis=1), 1, atol=1e-5)
    truth = exact_top(vectors, queries, 10)
    found = exact_top(small, projection.apply(queries), 10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)])
    assert overlap >= 0.9
    with pytest.raises(ValueError, match="dims must be between"):
        Projection.fit(vectors, DIM + 1)
    with pytest.raises(ValueError, match="shape"):
        projection.apply(np.ones((2, 5), np.float32))


def test_build_index_chooses_exact_for_small_catalogues_and_a_compact_graph_otherwise(catalogue):
    ids, vectors, queries = catalogue
    assert isinstance(build_index(ids, vectors), ExactIndex)
    compact = build_index(ids, vectors, "ann", compact_dims=16)
    assert isinstance(compact, CompactIndex) and isinstance(compact.inner, HnswIndex)
    assert compact.dim == DIM and compact.inner.dim == 16 and len(compact) == N
    full = build_index(ids, vectors, "ann")
    assert isinstance(full, HnswIndex) and full.dim == DIM
    found, _ = compact.query(queries, 10)
    truth = ids[exact_top(vectors, queries, 10)]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)])
    assert overlap >= 0.85


def test_saved_compact_index_loads_mapped_and_answers_the_same(catalogue, tmp_path):
    ids, vectors, queries = catalogue
    index = build_index(ids, vectors, "ann", compact_dims=16)
    folder = save_index(index, tmp_path / "index")
    loaded = load_index(folder)
    assert isinstance(loaded, CompactIndex)
    a_ids, a_scores = index.query(queries, 10)
    b_ids, b_scores = loaded.query(queries, 10)
    assert np.array_equal(a_ids, b_ids) and np.allclose(a_scores, b_scores)
    with pytest.raises(RuntimeError, match="read-only"):
        loaded.add([1], vectors[:1])
    save_index(build_index(ids[:10], vectors[:10]), folder)  # replaced whole
    assert isinstance(load_index(folder), ExactIndex) and not list(tmp_path.glob(".index*"))


def test_a_saved_index_is_read_through_ahead_of_its_searches(catalogue, tmp_path, caplog):
    ids, vectors, _ = catalogue
    folder = save_index(build_index(ids, vectors, "ann", compact_dims=16), tmp_path / "index")
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert read_through(folder) == size > N * 16 * 2  # every file, the graph's rows included
    caplog.set_level("INFO", logger="ml.compact")
    thread = read_ahead(folder)
    thread.join(timeout=30)
    assert not thread.is_alive() and thread.daemon
    assert f"{size / 1e6:.0f} MB" in caplog.text
    # replaced or removed by a newer build meanwhile: nothing read, nothing raised
    assert read_through(tmp_path / "gone") is None


def stored(tmp_path, ids, vectors) -> EmbeddingStore:
    store = EmbeddingStore(tmp_path / "models", "m-1")
    store.write_part(ids.tolist(), vectors, [f"k{i}" for i in ids.tolist()])
    store.compact()
    return store


def test_store_view_matches_load_without_copying_the_base(catalogue, tmp_path):
    ids, vectors, _ = catalogue
    store = stored(tmp_path, ids[:500], vectors[:500])
    store.write_part([ids[3], 99_999], vectors[600:602], ["changed", "new"], deleted=[ids[7]])
    store.write_part(deleted=[ids[8]])
    view = store.view()
    loaded_ids, loaded_vectors, loaded_keys = store.load_with_keys()
    assert np.array_equal(view.ids, loaded_ids) and np.array_equal(view.keys, loaded_keys)
    some = loaded_ids[[0, 3, 250, -1]]
    assert np.allclose(view.vectors(some), loaded_vectors[[0, 3, 250, -1]])
    with pytest.raises(KeyError):
        view.vectors([ids[7]])
    assert store.view() is view  # cached until the store changes


def test_live_index_serves_changes_since_the_build(catalogue, tmp_path):
    ids, vectors, queries = catalogue
    store = stored(tmp_path, ids, vectors)
    base_ids, _, keys = store.load_with_keys()
    index = build_index(ids, vectors, "ann", compact_dims=16)
    folder = save_index(index, tmp_path / "index", keys=(base_ids, keys))
    target = queries[0]
    # An admin adds a product that looks exactly like the query, re-photographs the
    # query's current best match, and deletes the second best.
    best = ids[exact_top(vectors, target[None], 2)[0]]
    store.write_part([77_777, best[0]], np.stack([target, -target]), ["new", "re"], [best[1]])
    live = LiveIndex(folder, store.view())
    assert len(live) == N
    assert set(live.stale.tolist()) == {int(best[0]), int(best[1])}
    found, scores = live.query(target, 5)
    assert found[0, 0] == 77_777 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert not set(found[0].tolist()) & {int(best[0]), int(best[1])}
    full = store.view().vectors(found[0])
    assert np.allclose(scores[0], full @ target, atol=1e-5)  # full-vector cosines
    allowed = ids[::2]
    found, _ = live.query(target, 5, allowed=allowed)
    assert set(found[0].tolist()) <= set(allowed.tolist())
    assert len(found[0]) == 5 and (found[0] >= 0).all()
