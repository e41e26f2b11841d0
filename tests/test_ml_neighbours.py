"""Exact cosine top-K and the Redis neighbour-list codec."""

import numpy as np
import pytest
import redis

from ml.cache import NeighbourCache, decode, encode
from ml.neighbours import all_neighbours, query, top_k_rows
from tests.conftest import TEST_REDIS_URL


def unit(rows, dim=16, seed=0):
    v = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("block", [1, 7, 64, 1000])
def test_all_neighbours_matches_brute_force(block):
    v = unit(150)
    idx, scores = all_neighbours(v, 10, block=block)
    sims = v @ v.T
    np.fill_diagonal(sims, -np.inf)
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :10]
    assert idx.shape == (150, 10)
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(sims, expected, 1), rtol=1e-5)
    assert (idx != np.arange(150)[:, None]).all()


def test_k_larger_than_catalogue_and_duplicates():
    v = unit(4)
    v = np.vstack([v, v[:1]])  # row 4 duplicates row 0
    idx, scores = all_neighbours(v, 10)
    assert idx.shape == (5, 4)
    assert idx[0, 0] == 4 and idx[4, 0] == 0
    assert scores[0, 0] == pytest.approx(1.0, abs=1e-6)


def test_ties_are_ordered_by_index():
    scores = np.array([[0.5, 0.9, 0.2, 0.9, 0.1]], np.float32)
    idx, vals = top_k_rows(scores, 3)
    assert idx.tolist() == [[1, 3, 0]]
    assert vals[0].tolist() == pytest.approx([0.9, 0.9, 0.5])


def test_query_with_allowed_mask():
    v = unit(50)
    allowed = np.zeros(50, bool)
    allowed[::5] = True
    idx, _ = query(v, v[3], 4, allowed=allowed)
    assert set(idx[0]) <= set(np.flatnonzero(allowed))
    with pytest.raises(ValueError):
        query(v, unit(1, dim=3), 4)
    with pytest.raises(ValueError):
        all_neighbours(v, 0)


def test_codec_round_trip():
    ids = np.array([5, 1_000_000, 3], np.int64)
    scores = np.array([0.99, 0.5, -0.25], np.float32)
    blob = encode(ids, scores)
    assert len(blob) == 3 * 6
    got_ids, got_scores = decode(blob)
    assert got_ids.tolist() == ids.tolist()
    np.testing.assert_allclose(got_scores, scores, atol=1e-3)


@pytest.fixture
def redis_client():
    client = redis.Redis.from_url(TEST_REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()


def test_cache_switch_is_atomic_and_lists_round_trip(redis_client):
    cache = NeighbourCache(redis_client, prefix="t")
    v = unit(20)
    idx, scores = all_neighbours(v, 5)
    ids = np.arange(100, 120)
    cache.write_lists("model-a", ids, ids[idx], scores)
    cache.write_index("model-a", ids, scores[:, -1], k=5, complete=False)
    assert cache.active_model() is None
    with pytest.raises(ValueError, match="not complete"):
        cache.activate("model-a")
    cache.write_index("model-a", ids, scores[:, -1], k=5, complete=True)
    cache.activate("model-a")
    assert cache.active_model() == "model-a"
    got_ids, _ = cache.get_list("model-a", 100)
    assert got_ids.tolist() == ids[idx[0]].tolist()
    assert cache.get_list("model-a", 999) is None
    many = cache.get_lists("model-a", [101, 999])
    assert many[0][0].tolist() == ids[idx[1]].tolist() and many[1] is None
    read_ids, kth = cache.read_index("model-a")
    assert read_ids.tolist() == ids.tolist()
    np.testing.assert_allclose(kth, scores[:, -1])
    assert cache.meta("model-a")["count"] == "20"
    with pytest.raises(ValueError):
        cache.drop_model("model-a")
    cache.write_lists("model-b", ids[:2], ids[idx[:2]], scores[:2])
    assert cache.drop_model("model-b") == 2
