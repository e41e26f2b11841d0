"""Neighbour-list builds in shards (``worker.jobs.shards``): the lists equal one process's
computation over the same saved index, a killed worker's shard is computed again (alone),
and pages switch to the lists once."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from PIL import Image

from ml.cache import NeighbourCache
from ml.compact import load_index
from ml.neighbours import all_neighbours
from tests.conftest import add_product
from tests.worker_process import ROOT, WorkerProcess
from webapp import registry
from webapp.extensions import db
from webapp.models import Product
from worker.jobs import indexing, shards

MODEL_ID = "synthetic-16"
N, DIM, K, SHARD_ROWS = 60, 16, 5, 7
SHARDS = -(-N // SHARD_ROWS)


def unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture
def sharded(app, redis_db):
    """N stored vectors (no photos: a build reads only the store), "ann" builds in shards."""
    app.config.update(
        NEIGHBOURS_INDEX="ann",
        NEIGHBOURS_K=K,
        NEIGHBOURS_SHARD_ROWS=SHARD_ROWS,
        INDEX_HEAL_INTERVAL=0,
    )
    with app.app_context():
        ids = np.arange(100, 100 + N, dtype=np.int64)
        registry.store_for(MODEL_ID).write_part(ids, unit_rows(N, DIM), [f"k{i}" for i in ids])
    return app


def served(cache: NeighbourCache, ids) -> dict[int, tuple[list[int], np.ndarray]]:
    return {
        int(p): (got.tolist(), scores) for p in ids for got, scores in [cache.get_list(MODEL_ID, p)]
    }


def one_process_lists(k: int = K) -> dict[int, tuple[list[int], np.ndarray]]:
    """Every list as one process computes it over the saved index: k + 1 nearest, the
    product itself dropped."""
    index = load_index(registry.index_folder(MODEL_ID))
    ids, vectors = registry.store_for(MODEL_ID).load()
    found, scores = index.query(np.asarray(vectors), k + 1)
    out = {}
    for row, product_id in enumerate(ids):
        keep = found[row] != product_id
        out[int(product_id)] = (found[row][keep][:k].tolist(), scores[row][keep][:k])
    return out


def assert_same_lists(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for product_id, (neighbours, scores) in expected.items():
        assert got[product_id][0] == neighbours, product_id
        # Lists keep scores as float16.
        assert np.allclose(got[product_id][1], scores, atol=1e-3)


def test_sharded_build_equals_one_process_over_the_saved_index(sharded, redis_db):
    with sharded.app_context():
        report = indexing.build_neighbours(MODEL_ID)
        cache = registry.neighbour_cache()
        assert report.products == N and report.activated
        assert cache.active_model() == MODEL_ID and cache.meta(MODEL_ID)["complete"] == "1"
        expected = one_process_lists()
        assert_same_lists(served(cache, range(100, 100 + N)), expected)
        # The K-th scores upkeep reads, in id order.
        ids, kth = cache.read_index(MODEL_ID)
        assert ids.tolist() == list(range(100, 100 + N))
        assert np.allclose(kth, [expected[p][1][K - 1] for p in ids], atol=1e-6)
        # One task per shard went to the index queue (no worker here: the build's own process
        # computed every shard, each once), and pages switched once.
        assert redis_db.llen("index") == SHARDS
        record = shards.record(cache, MODEL_ID)
        build = shards.last_build(cache, MODEL_ID)
        assert (build.build_id, build.rows, build.shards) == (record["id"], N, SHARDS)
        assert shards.attempts(cache, build) == dict.fromkeys(range(SHARDS), 1)
        assert record["activations"] == "1" and "finished_at" in record
        # The queued tasks find the build over and do nothing; finishing again switches nothing.
        assert shards.run_shard(MODEL_ID, build.build_id, 3) is False
        assert shards.finish(cache, build, activate=True) is False
        assert shards.record(cache, MODEL_ID)["activations"] == "1"


def test_an_exact_build_in_shards_gives_the_exact_lists(sharded):
    """Below ANN_MIN_ROWS ("auto") the index is exact: the lists are those of an all-pairs
    computation, in the same order, whatever the shards."""
    sharded.config["NEIGHBOURS_INDEX"] = "auto"
    with sharded.app_context():
        indexing.build_neighbours(MODEL_ID)
        assert load_index(registry.index_folder(MODEL_ID)).kind == "exact"
        ids, vectors = registry.store_for(MODEL_ID).load()
        idx, scores = all_neighbours(np.asarray(vectors), K)
        expected = {int(p): (ids[idx[r]].tolist(), scores[r]) for r, p in enumerate(ids)}
        assert_same_lists(served(registry.neighbour_cache(), ids), expected)


def test_a_shard_whose_lease_is_held_waits_then_is_taken_over(sharded, monkeypatch):
    """A shard leased by another process is left to it while the lease lives; once it
    expires (its process died) the build computes it, and only it, again."""
    monkeypatch.setattr(shards, "LEASE_S", 1.0)
    real_work = shards.work
    seen: dict[str, object] = {}

    def held_elsewhere(cache, build, sources, progress=None):
        # Another process took shard 2 and died without releasing it.
        lease = cache.r.lock(shards._key(cache, build, "lease", 2), timeout=build.lease_s)
        assert lease.acquire(blocking=False, token="elsewhere:1:dead")
        cache.r.hincrby(shards._key(cache, build, "attempts"), 2, 1)
        seen["start"] = time.monotonic()
        real_work(cache, build, sources, progress)
        seen["build"] = build

    monkeypatch.setattr(shards, "work", held_elsewhere)
    steps: list[tuple[int, int]] = []
    with sharded.app_context():
        indexing.build_neighbours(
            MODEL_ID, progress=lambda done, total: steps.append((done, total))
        )
        cache = registry.neighbour_cache()
        assert time.monotonic() - seen["start"] >= 0.9  # it waited for the lease to expire
        assert shards.attempts(cache, seen["build"]) == {
            s: 2 if s == 2 else 1 for s in range(SHARDS)
        }
        assert_same_lists(served(cache, range(100, 100 + N)), one_process_lists())
    assert steps[0] == (0, N) and steps[-1] == (N, N)
    assert [done for done, _ in steps] == sorted(done for done, _ in steps)


def test_updates_during_a_sharded_build_are_not_undone(catalogue, monkeypatch):
    """Products added and deleted while the shards are computed (their own updates ran
    meanwhile) end up listed and unlisted all the same."""
    app, model_id, media = catalogue
    app.config["NEIGHBOURS_SHARD_ROWS"] = 8
    near = np.asarray(Image.open(media / "p0.jpg")).astype(int)
    near[:5] = 255
    Image.fromarray(near.astype(np.uint8)).save(media / "new.jpg", "JPEG")
    real = shards.compute_shard
    calls = []

    def with_updates_meanwhile(cache, build, shard, sources, renew=lambda: None):
        real(cache, build, shard, sources, renew)
        calls.append(shard)
        if len(calls) == 2:
            add_product(id=2000, name="Saved during the build", image_path="new.jpg")
            assert indexing.update_product(2000).action == "embedded"
            db.session.delete(db.session.get(Product, 1005))
            db.session.commit()
            assert indexing.update_product(1005).action == "removed"

    with app.app_context():
        monkeypatch.setattr(shards, "compute_shard", with_updates_meanwhile)
        report = indexing.build_neighbours(model_id)
        assert report.products == 30 and sorted(calls) == [0, 1, 2, 3]
        cache = registry.neighbour_cache()
        assert cache.get_list(model_id, 1005) is None
        assert 2000 in cache.get_list(model_id, 1000)[0].tolist()
        ids, vectors = registry.store_for(model_id).load()
        idx, scores = all_neighbours(np.asarray(vectors), 5)
        assert sorted(ids.tolist()) == sorted([*range(1000, 1005), *range(1006, 1030), 2000])
        for row, product_id in enumerate(ids):
            got, got_scores = cache.get_list(model_id, int(product_id))
            # The same neighbours and scores (scores equal to float error may swap places).
            assert sorted(got.tolist()) == sorted(ids[idx[row]].tolist())
            assert np.allclose(got_scores, scores[row], atol=1e-3)
        assert sorted(cache.read_index(model_id)[0].tolist()) == sorted(ids.tolist())
        assert cache.meta(model_id)["complete"] == "1"


# Loaded at the start of the worker's interpreter (PYTHONPATH): its shard computations hang
# until the test kills the worker, so it dies holding a lease.
SLOW_SHARDS = f"""
import sys, time
sys.path.insert(0, {str(ROOT)!r})
from worker.jobs import shards
def _hang(*args, **kwargs):
    time.sleep(300)
shards.compute_shard = _hang
"""


def test_a_worker_killed_holding_a_shard_costs_only_that_shard(
    sharded, redis_db, tmp_path, monkeypatch
):
    """A real worker on the index queue takes a shard and is killed (SIGKILL) while it
    holds the lease: the build finishes, the dead worker's shard alone is computed again,
    the lists equal one process's, and pages switch once."""
    monkeypatch.setattr(shards, "LEASE_S", 1.5)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SLOW_SHARDS)
    worker = WorkerProcess(sharded.config, tmp_path / "worker.log", queues="index,default")
    worker.env["PYTHONPATH"] = str(hook)
    activations = []
    real_activate = NeighbourCache.activate
    monkeypatch.setattr(
        NeighbourCache, "activate", lambda self, m: (activations.append(m), real_activate(self, m))
    )
    real_work = shards.work
    killed: dict[str, object] = {}

    def kill_the_worker_first(cache, build, sources, progress=None):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "shard" not in killed:
            for shard in range(build.shards):
                owner = cache.r.get(shards._key(cache, build, "lease", shard))
                if owner and owner.decode().split(":")[1] != str(os.getpid()):
                    killed.update(shard=shard, owner=owner.decode())
            time.sleep(0.05)
        assert "shard" in killed, worker.log_path.read_text()[-3000:]
        worker.kill()  # SIGKILL, lease held
        real_work(cache, build, sources, progress)
        killed["build"] = build

    monkeypatch.setattr(shards, "work", kill_the_worker_first)
    with sharded.app_context():
        worker.start(sharded.extensions["celery"])
        try:
            report = indexing.build_neighbours(MODEL_ID)
        finally:
            worker.kill()
        cache = registry.neighbour_cache()
        assert report.activated and activations == [MODEL_ID]
        assert shards.record(cache, MODEL_ID)["activations"] == "1"
        dead = killed["shard"]
        assert shards.attempts(cache, killed["build"]) == {
            s: 2 if s == dead else 1 for s in range(SHARDS)
        }
        assert_same_lists(served(cache, range(100, 100 + N)), one_process_lists())
    assert "ml_build_shard" in worker.log_path.read_text()


def test_a_rebuild_from_the_same_rows_keeps_the_saved_index(sharded):
    """Lists rebuilt from unchanged embeddings (after Redis lost them, say) reuse the saved
    index; a changed store, or other index settings, build it again."""
    with sharded.app_context():
        indexing.build_neighbours(MODEL_ID)
        saved = registry.index_folder(MODEL_ID) / "index.json"
        first = saved.stat().st_mtime_ns
        registry.neighbour_cache().r.flushdb()
        indexing.build_neighbours(MODEL_ID)
        assert saved.stat().st_mtime_ns == first
        assert_same_lists(
            served(registry.neighbour_cache(), range(100, 100 + N)), one_process_lists()
        )

        registry.store_for(MODEL_ID).write_part([500], unit_rows(1, DIM, seed=5), ["k500"])
        indexing.build_neighbours(MODEL_ID)
        assert saved.stat().st_mtime_ns != first
        assert 500 in load_index(registry.index_folder(MODEL_ID)).ids().tolist()
        second = saved.stat().st_mtime_ns
        sharded.config["COMPACT_DIMS"] = 8
        indexing.build_neighbours(MODEL_ID)
        assert saved.stat().st_mtime_ns != second


def test_a_build_whose_process_died_goes_on_where_it_stopped(sharded, monkeypatch):
    """The task of a build whose process died is delivered again: the new run takes up the
    recorded build over the same saved index, computes only the shards left, and switches
    pages once. A store that changed meanwhile makes a new build instead."""
    real_work = shards.work

    def dies_after_three_shards(cache, build, sources, progress=None):
        for shard in range(3):
            lease = shards.claim(cache, build, shard)
            shards.compute_shard(cache, build, shard, sources, shards._renewer(lease))
            shards._release(lease)
        raise RuntimeError("the worker was lost")

    with sharded.app_context():
        cache = registry.neighbour_cache()
        monkeypatch.setattr(shards, "work", dies_after_three_shards)
        with pytest.raises(RuntimeError, match="worker was lost"):
            indexing.build_neighbours(MODEL_ID)
        first = shards.last_build(cache, MODEL_ID)
        assert shards.done_shards(cache, first) == {0, 1, 2}
        assert cache.active_model() is None

        monkeypatch.setattr(shards, "work", real_work)
        report = indexing.build_neighbours(MODEL_ID)
        build = shards.last_build(cache, MODEL_ID)
        assert build == first and report.activated
        # every shard computed once: the three done before the crash were not redone
        assert shards.attempts(cache, build) == dict.fromkeys(range(SHARDS), 1)
        assert shards.record(cache, MODEL_ID)["activations"] == "1"
        assert cache.meta(MODEL_ID)["complete"] == "1"
        assert_same_lists(served(cache, range(100, 100 + N)), one_process_lists())

        # A crash, then a new product before the task comes back: a build of its own.
        monkeypatch.setattr(shards, "work", dies_after_three_shards)
        with pytest.raises(RuntimeError):
            indexing.build_neighbours(MODEL_ID)
        crashed = shards.last_build(cache, MODEL_ID)
        registry.store_for(MODEL_ID).write_part([500], unit_rows(1, DIM, seed=5), ["k500"])
        monkeypatch.setattr(shards, "work", real_work)
        indexing.build_neighbours(MODEL_ID)
        rebuilt = shards.last_build(cache, MODEL_ID)
        assert rebuilt.build_id != crashed.build_id and rebuilt.rows == N + 1
        assert shards.attempts(cache, rebuilt) == dict.fromkeys(range(rebuilt.shards), 1)
