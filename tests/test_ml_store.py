"""The embedding store: atomic parts, resumable writes, crash-safe compaction."""

import numpy as np
import pytest

from ml.store import EmbeddingStore


def unit(rows: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_parts_upsert_delete_and_compact(tmp_path):
    store = EmbeddingStore(tmp_path, "tiny-seed0-32-avg")
    v = unit(5)
    store.write_part([30, 10, 20], v[:3], keys=["a", "b", "c"])
    store.write_part([40, 10], v[3:5], keys=["d", "bb"])  # 10 is replaced
    store.write_part(deleted=[20])
    assert store.part_count() == 3
    ids, vectors = store.load()
    assert ids.tolist() == [10, 30, 40]
    np.testing.assert_allclose(vectors[0], v[4])
    np.testing.assert_allclose(vectors[1], v[0])
    assert store.keys_by_id() == {10: "bb", 30: "a", 40: "d"}

    store.compact()
    assert not list((tmp_path / "tiny-seed0-32-avg" / "parts").glob("*.npz"))
    assert store.part_count() == 0
    reopened = EmbeddingStore(tmp_path, "tiny-seed0-32-avg")
    ids2, vectors2 = reopened.load()
    assert ids2.tolist() == [10, 30, 40]
    np.testing.assert_array_equal(vectors2, vectors)
    assert reopened.keys_by_id()[10] == "bb"
    np.testing.assert_allclose(reopened.get([40, 10]), np.stack([v[3], v[4]]))
    assert reopened.positions([30, 99]).tolist() == [1, -1]

    # A part written after compaction is applied on top of the new base.
    reopened.write_part([50], unit(1, seed=3), keys=["e"])
    assert reopened.ids().tolist() == [10, 30, 40, 50]


def test_compaction_crash_leaves_store_readable(tmp_path, monkeypatch):
    store = EmbeddingStore(tmp_path, "m1")
    store.write_part([1, 2], unit(2), keys=["x", "y"])
    store.compact()
    store.write_part([3], unit(1, seed=1), keys=["z"])
    before = store.ids().tolist()

    import ml.store as mod

    real = mod._atomic_save

    def failing(path, write):
        if path.name == "state.json":
            raise OSError("disk full")
        return real(path, write)

    monkeypatch.setattr(mod, "_atomic_save", failing)
    with pytest.raises(OSError):
        store.compact()
    monkeypatch.setattr(mod, "_atomic_save", real)
    assert EmbeddingStore(tmp_path, "m1").ids().tolist() == before == [1, 2, 3]
    store.compact()  # a retry completes
    assert EmbeddingStore(tmp_path, "m1").ids().tolist() == [1, 2, 3]


def test_compaction_writes_rows_a_block_at_a_time_and_cleans_up_a_failed_write(
    tmp_path, monkeypatch
):
    """The new base is filled through a file mapping a block of rows at a time (no copy of
    the catalogue in memory); a failure halfway leaves no file behind and the store as it
    was; a store whose every row was deleted compacts to an empty one."""
    import ml.store as mod

    monkeypatch.setattr(mod, "_APPLY_BLOCK", 3)
    store = EmbeddingStore(tmp_path, "m1")
    v = unit(10)
    store.write_part(list(range(10)), v, keys=[f"k{i}" for i in range(10)])
    store.compact()
    store.write_part([4, 11], unit(2, seed=5), keys=["k4b", "k11"])
    store.write_part(deleted=[0, 7])
    expected_ids, expected = store.load()

    def disk_full(self):
        raise OSError("disk full")

    with monkeypatch.context() as patched, pytest.raises(OSError, match="disk full"):
        patched.setattr(np.memmap, "flush", disk_full)
        store.compact()
    folder = tmp_path / "m1"
    assert not list(folder.rglob(".*.tmp"))
    assert store.part_count() == 2
    reopened = EmbeddingStore(tmp_path, "m1")
    np.testing.assert_array_equal(reopened.load()[1], expected)

    reopened.compact()
    assert reopened.part_count() == 0
    ids, vectors = EmbeddingStore(tmp_path, "m1").load()
    assert ids.tolist() == expected_ids.tolist() == [1, 2, 3, 4, 5, 6, 8, 9, 11]
    np.testing.assert_array_equal(vectors, expected)
    assert isinstance(vectors, np.memmap)  # the new base is mapped, not read into memory

    reopened.write_part(deleted=ids.tolist())
    reopened.compact()
    ids, vectors = EmbeddingStore(tmp_path, "m1").load()
    assert len(ids) == 0 and len(vectors) == 0


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        EmbeddingStore(tmp_path, "../escape")
    store = EmbeddingStore(tmp_path, "m")
    with pytest.raises(ValueError):
        store.write_part([1, 2], unit(1))
    store.write_part([1], unit(1, dim=8))
    with pytest.raises(ValueError, match="dimension"):
        store.write_part([2], unit(1, dim=4))
    with pytest.raises(KeyError):
        store.get([7])
    assert len(store) == 1


def test_dimension_without_applying_every_part(tmp_path, monkeypatch):
    store = EmbeddingStore(tmp_path, "m")
    assert store.dim() is None
    store.write_part(deleted=[5])  # a part without vectors says nothing of the dimension
    assert store.dim() is None
    store.write_part([1], unit(1, dim=6))
    assert store.dim() == 6
    store.compact()
    fresh = EmbeddingStore(tmp_path, "m")
    import ml.store as mod

    def no_apply(*args, **kwargs):
        raise AssertionError("writing a part must not fold every part in")

    monkeypatch.setattr(mod, "_apply", no_apply)
    assert fresh.dim() == 6
    fresh.write_part([2], unit(1, dim=6, seed=2))
    fresh.write_part([3], unit(1, dim=6, seed=3))
    with pytest.raises(ValueError, match="dimension"):
        fresh.write_part([4], unit(1, dim=5))


def test_half_float_store(tmp_path):
    store = EmbeddingStore(tmp_path, "maps", dtype=np.float16)
    v = unit(3, dim=12)
    store.write_part([1, 2, 3], v, keys=["a", "b", "c"])
    store.write_part(deleted=[2])
    ids, vectors = store.load()
    assert ids.tolist() == [1, 3] and vectors.dtype == np.float16
    store.compact()
    ids, vectors = EmbeddingStore(tmp_path, "maps", dtype=np.float16).load()
    assert vectors.dtype == np.float16
    np.testing.assert_allclose(vectors.astype(np.float32), v[[0, 2]], atol=1e-3)


def test_many_parts_fold_like_one_at_a_time(tmp_path):
    """Random upserts and deletions over many parts give what applying them in order gives."""
    rng = np.random.default_rng(7)
    store = EmbeddingStore(tmp_path, "m")
    expected: dict[int, tuple[np.ndarray, str]] = {}
    for n in range(30):
        if n == 12:
            store.compact()  # a base in the middle
        deleted = rng.choice(40, rng.integers(0, 4), replace=False).tolist()
        ids = rng.choice(40, rng.integers(0, 6), replace=False).tolist()
        v = unit(len(ids), seed=n) if ids else None
        keys = [f"k{n}-{i}" * (1 + i % 3) for i in ids]
        store.write_part(ids, v, keys=keys, deleted=deleted)
        for i in deleted:
            expected.pop(i, None)
        for j, i in enumerate(ids):
            expected[i] = (v[j], keys[j])
    got_ids, got_vectors = EmbeddingStore(tmp_path, "m").load()
    assert got_ids.tolist() == sorted(expected)
    for i, row in zip(got_ids.tolist(), got_vectors, strict=True):
        np.testing.assert_array_equal(row, expected[i][0])
    assert store.keys_by_id() == {i: k for i, (_, k) in expected.items()}


def test_old_part_names_load_in_number_order(tmp_path):
    """Stores written before parts were numbered under a lock load as they did; numbers past
    six digits still sort after the others."""
    store = EmbeddingStore(tmp_path, "m")
    store.write_part([1], unit(1, seed=1), keys=["old"])
    parts = tmp_path / "m" / "parts"
    (parts / "000001.npz").rename(parts / "999999.npz")
    store.write_part([1], unit(1, seed=2), keys=["new"])  # numbered after 999999
    assert sorted(p.name for p in parts.glob("*.npz")) == ["1000000.npz", "999999.npz"]
    assert store.keys_by_id() == {1: "new"}
    store.compact()
    assert EmbeddingStore(tmp_path, "m").keys_by_id() == {1: "new"}


# -- many processes on one store ----------------------------------------------------------

WRITERS = 6
ROUNDS = 25


def vector(product_id: int, version: int) -> np.ndarray:
    """A row that says which id and which write it came from."""
    return np.asarray([[product_id, version, 1.0, 0.0]], np.float32)


def _writer(root: str, writer: int) -> None:
    """Upsert ids of its own, rewrite some, delete others; compact now and then."""
    store = EmbeddingStore(root, "shared")
    for n in range(ROUNDS):
        pid = writer * 1000 + n
        store.write_part([pid], vector(pid, 1), keys=[f"{pid}-1"])
        if n % 5 == 4:
            store.write_part([pid - 2], vector(pid - 2, 2), keys=[f"{pid - 2}-2"])
            store.write_part(deleted=[pid - 3])
        if n % 7 == writer % 7:
            store.compact()


def _reader(root: str, stop, failures) -> None:
    """Read while others write and compact: never an error, never a stored id that vanishes
    unless it was deleted (ids ending in 1 mod 5 are the deleted ones)."""
    store = EmbeddingStore(root, "shared")
    seen: set[int] = set()
    while not stop.is_set():
        try:
            ids, vectors = store.load()
            store.id_count()
            store.dim()
        except Exception as exc:  # noqa: BLE001 (reported to the test)
            failures.put(f"{type(exc).__name__}: {exc}")
            return
        now = set(ids.tolist())
        lost = {i for i in seen - now if (i % 1000) % 5 != 1}
        if lost:
            failures.put(f"ids vanished between two reads: {sorted(lost)[:5]}")
            return
        if len(ids) and not np.array_equal(vectors[:, 0].astype(np.int64), ids):
            failures.put("rows and ids disagree")
            return
        seen = now


def test_concurrent_writers_and_compactions_lose_nothing(tmp_path):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # no fork of a process that may hold threads
    stop, failures = ctx.Event(), ctx.Queue()
    readers = [ctx.Process(target=_reader, args=(str(tmp_path), stop, failures)) for _ in range(2)]
    writers = [ctx.Process(target=_writer, args=(str(tmp_path), w)) for w in range(WRITERS)]
    for p in readers + writers:
        p.start()
    for p in writers:
        p.join(timeout=120)
        assert p.exitcode == 0
    stop.set()
    for p in readers:
        p.join(timeout=30)
    assert failures.empty(), failures.get()

    expected: dict[int, int] = {}
    for w in range(WRITERS):
        for n in range(ROUNDS):
            pid = w * 1000 + n
            expected[pid] = 1
            if n % 5 == 4:
                expected[pid - 2] = 2
                expected.pop(pid - 3)
    for compact_first in (False, True):
        store = EmbeddingStore(tmp_path, "shared")
        if compact_first:
            store.compact()
        ids, vectors = store.load()
        assert ids.tolist() == sorted(expected)
        assert vectors[:, 1].astype(int).tolist() == [expected[i] for i in ids.tolist()]
        assert store.keys_by_id() == {i: f"{i}-{v}" for i, v in expected.items()}
        assert store.id_count() == len(expected)
    parts = tmp_path / "shared" / "parts"
    assert not list(parts.glob("*.npz")), "a final compaction folds every part"
    assert not list(parts.glob(".*.tmp")), "no temporary file left behind"
    assert [p.name for p in (tmp_path / "shared").glob("base-*")] == [
        f"base-{store._state()['base']}"
    ]
