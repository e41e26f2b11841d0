"""Embeddings on disk, one folder per model id: a memory-mapped base plus atomic delta parts.

Layout of ``<root>/<model_id>/``::

    state.json               {"base": 3, "folded_through": 41}: the live base and the parts in it
    base-3/ids.npy           int64 [n]      product ids, ascending
    base-3/embeddings.npy    float32 [n, d] rows in the order of ids.npy (memory-mapped on read;
                             a store opened with ``dtype=np.float16`` keeps half floats)
    base-3/keys.npy          bytes [n]      what each row was computed from (the image digest)
    parts/000042.npz         deltas written since: ``ids``, ``vectors``, ``keys`` (upserts), ``deleted``
    .parts.lock              flock: numbering a part, switching ``state.json`` (held briefly)
    .compact.lock            flock: one compaction at a time (held while it folds)

Every file is written to a temporary name and renamed, so a killed writer leaves either the
old state or the new one, never half a file. A batch job writes one part per chunk, which
makes it resumable: on restart it skips the ids already stored.

Several processes (the worker's pool, the CLI, the web tier reading) share a store:

* A writer fills its part under a temporary name, then takes ``.parts.lock`` only to pick
  the next number and rename, so two writers never get the same number and parts apply in
  the order they were committed.
* ``compact()`` takes ``.compact.lock``, notes the state and the parts present, folds exactly
  those into a new base folder, switches ``state.json`` to it (under ``.parts.lock``), and
  only then removes the old base and the parts it folded. Parts written meanwhile get higher
  numbers and stay; a crash at any point leaves a readable store.
* Readers take no lock: they read the state, list the parts, read them, and read the state
  again; a part or base that vanished (a compaction folded it) or a state that moved makes
  them look again.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from ml.store_view import StoreView, positions, read_deltas

MODEL_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,120}$")
PART_RE = re.compile(r"^[0-9]+$")
PARTS_LOCK = ".parts.lock"
COMPACT_LOCK = ".compact.lock"
# A reader looks again this many times when compactions keep moving the store under it.
READ_ATTEMPTS = 50
# Temporary files older than this are leftovers of a killed writer; compaction removes them.
STALE_TEMP_S = 3600

T = TypeVar("T")
# Rows copied at once when parts are applied to the base.
_APPLY_BLOCK = 65_536


def _write_temp(folder: Path, name: str, write: Callable) -> Path:
    """Write through ``write(fileobj)`` into a new temporary file in folder, fsynced."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _atomic_save(path: Path, write: Callable) -> None:
    """Write through ``write(fileobj)`` into a temporary file, fsync, then rename over path."""
    tmp = _write_temp(path.parent, path.name, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _save_mapped(path: Path, merge: _Merge, dtype: np.dtype) -> None:
    """Write the merged vectors as ``path`` (.npy) through a mapping of a temporary file,
    fsynced, then renamed over it: the base's rows go from its mapping to the page cache a
    block at a time, with no copy of the whole matrix in memory (the parts being folded are
    read whole: they hold only what was written since the last compaction). The file's space
    is reserved first, so a full disk is an error here, not a crash while rows are copied."""
    if not len(merge.ids) or not merge.dim:  # nothing to map: an empty store
        empty = np.empty((len(merge.ids), merge.dim), dtype)
        _atomic_save(path, lambda fh: np.save(fh, empty))
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    out = None
    try:
        out = np.lib.format.open_memmap(tmp, "w+", dtype, (len(merge.ids), merge.dim))
        with tmp.open("rb+") as fh:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fh.fileno(), 0, tmp.stat().st_size)
            merge.fill(out)
            out.flush()
            os.fsync(fh.fileno())
        out = None  # unmapped before the rename
        os.replace(tmp, path)
    except BaseException:
        out = None
        tmp.unlink(missing_ok=True)
        raise


def _number(part: Path) -> int:
    return int(part.stem)


class EmbeddingStore:
    """Read and write the embeddings of one model id (safe across threads and processes)."""

    def __init__(
        self, root: str | os.PathLike, model_id: str, dtype: type[np.floating] = np.float32
    ) -> None:
        if not MODEL_ID_RE.match(model_id):
            raise ValueError(f"invalid model id {model_id!r}")
        self.model_id = model_id
        self.dtype = np.dtype(dtype)
        self.path = Path(root) / model_id
        self._cache: tuple[tuple, np.ndarray, np.ndarray, np.ndarray] | None = None
        self._view: tuple[tuple, StoreView] | None = None

    @contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        """Hold an exclusive ``flock`` on the store's lock file ``name`` (every open is a lock
        of its own, so threads of one process exclude each other too)."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / name, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    # -- reading -------------------------------------------------------------------------

    def _state(self) -> dict:
        state_file = self.path / "state.json"
        try:
            return json.loads(state_file.read_text())
        except FileNotFoundError:
            return {"base": None, "folded_through": 0}

    def _all_parts(self) -> list[Path]:
        """Every part file present, in write order (by number: old and new names alike)."""
        found = [p for p in (self.path / "parts").glob("*.npz") if PART_RE.match(p.stem)]
        return sorted(found, key=_number)

    def _parts(self, state: dict | None = None) -> list[Path]:
        """Parts not yet folded into the base, in write order."""
        folded = (state or self._state())["folded_through"]
        return [p for p in self._all_parts() if _number(p) > folded]

    def part_count(self) -> int:
        """How many parts wait to be folded into the base (each write adds one; see compact)."""
        return len(self._parts())

    def _consistent(self, read: Callable[[dict, list[Path]], T]) -> T:
        """``read(state, parts)`` on one consistent view of the store.

        A compaction in another process may fold and remove the listed parts or the base
        (FileNotFoundError) or switch the state while we read: then read again. Parts are
        only ever removed after a switch, so a read that began and ended on the same state
        saw every part of it.
        """
        for attempt in range(READ_ATTEMPTS):
            state = self._state()
            try:
                result = read(state, self._parts(state))
            except FileNotFoundError:
                time.sleep(min(0.001 * 2**attempt, 0.05))
                continue
            if self._state() == state:
                return result
        raise RuntimeError(f"{self.path}: the store kept changing while being read")

    def _signature(self, parts: list[Path]) -> tuple:
        """Changes whenever the stored state changes (cheap: a few stat calls)."""
        state_file = self.path / "state.json"
        files = [state_file, *parts] if state_file.exists() else parts
        return tuple((f.name, st.st_mtime_ns, st.st_size) for f in files for st in [f.stat()])

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """All stored (ids int64 [n] ascending, vectors [n, d] of the store's dtype); cached
        until changed."""
        ids, vectors, _ = self.load_with_keys()
        return ids, vectors

    def load_with_keys(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Like load(), plus each row's key (what it was computed from)."""
        cache = self._cache

        def read(state: dict, parts: list[Path]) -> tuple:
            signature = self._signature(parts)
            if cache is not None and cache[0] == signature:
                return cache
            return (signature, *self._read(state, parts))

        loaded = self._consistent(read)
        self._cache = loaded
        return loaded[1], loaded[2], loaded[3]

    def _read(self, state: dict, parts: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The base of ``state`` with ``parts`` applied in order."""
        ids, vectors, keys = self._load_base(state)
        deltas = read_deltas(parts)
        if deltas:
            ids, vectors, keys = _apply(ids, vectors, keys, deltas)
        return ids, vectors, keys

    def view(self) -> StoreView:
        """The current rows without copying the vectors (see ``ml.store_view``); cached until
        the store changes."""
        cached = self._view

        def read(state: dict, parts: list[Path]) -> tuple:
            signature = self._signature(parts)
            if cached is not None and cached[0] == signature:
                return cached
            return signature, StoreView(self._load_base(state), read_deltas(parts))

        self._view = self._consistent(read)
        return self._view[1]

    def keys_by_id(self) -> dict[int, str]:
        """{product id: key} for deciding what needs embedding again."""
        ids, _, keys = self.load_with_keys()
        return {int(i): k.decode() for i, k in zip(ids, keys, strict=True)}

    def _load_base(self, state: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        base = state["base"]
        if base is None:
            return np.empty(0, np.int64), np.empty((0, 0), self.dtype), np.empty(0, "S1")
        folder = self.path / f"base-{base}"
        ids = np.load(folder / "ids.npy")
        vectors = np.load(folder / "embeddings.npy", mmap_mode="r")
        keys = np.load(folder / "keys.npy")
        if not len(ids) == len(vectors) == len(keys):
            raise ValueError(f"{folder}: ids, embeddings and keys disagree in length")
        return ids, vectors, keys

    def dim(self) -> int | None:
        """The stored vectors' dimension (None while nothing is stored).

        Read from the base's header or the first part with vectors, not by applying every
        part: a batch job checks it before each of its many writes.
        """
        if self._cache is not None and self._cache[2].size:
            return int(self._cache[2].shape[1])

        def read(state: dict, parts: list[Path]) -> int | None:
            if state["base"] is not None:
                folder = self.path / f"base-{state['base']}"
                base = np.load(folder / "embeddings.npy", mmap_mode="r")
                if base.size:
                    return int(base.shape[1])
            for part in parts:
                with np.load(part) as data:
                    vectors = data["vectors"]
                    if vectors.size:
                        return int(vectors.shape[1])
            return None

        return self._consistent(read)

    def ids(self) -> np.ndarray:
        """The stored product ids."""
        return self.load()[0]

    def __len__(self) -> int:
        return len(self.ids())

    def id_count(self) -> int:
        """How many products are stored, from the id files only (no vector is read): cheap
        enough for a status page on a large catalogue."""

        def read(state: dict, parts: list[Path]) -> int:
            ids: set[int] = set()
            if state["base"] is not None:
                ids = set(np.load(self.path / f"base-{state['base']}" / "ids.npy").tolist())
            for part in parts:
                with np.load(part) as data:
                    ids -= set(data["deleted"].tolist())
                    ids |= set(data["ids"].tolist())
            return len(ids)

        return self._consistent(read)

    def positions(self, product_ids: Iterable[int]) -> np.ndarray:
        """Row numbers of the given ids, -1 where an id is not stored."""
        return positions(self.ids(), product_ids)

    def get(self, product_ids: Iterable[int]) -> np.ndarray:
        """Vectors of the given ids (KeyError naming the first one missing); read row by row,
        the store is never copied whole for it."""
        return self.view().vectors(product_ids)

    def keys_of(self, product_ids: Iterable[int]) -> dict[int, str]:
        """{product id: key} of the given ids that are stored (cheap for a few ids of a
        large catalogue, where ``keys_by_id`` reads them all)."""
        view = self.view()
        wanted = np.asarray(list(product_ids), np.int64)
        pos = positions(view.ids, wanted)
        return {
            int(pid): view.keys[p].decode()
            for pid, p in zip(wanted.tolist(), pos.tolist(), strict=True)
            if p >= 0
        }

    # -- writing -------------------------------------------------------------------------

    def write_part(
        self,
        ids: Iterable[int] = (),
        vectors: np.ndarray | None = None,
        keys: Iterable[str] | None = None,
        deleted: Iterable[int] = (),
    ) -> Path:
        """Record upserts (ids + vectors + keys) and deletions atomically as a new part.

        The part is written under a temporary name first; only numbering and the rename
        happen under the store's lock, so concurrent writers never take the same number.
        """
        ids_arr = np.asarray(list(ids), dtype=np.int64)
        if vectors is None:
            vectors = np.empty((0, 0), self.dtype)
        vectors = np.asarray(vectors, dtype=self.dtype)
        keys_list = [""] * len(ids_arr) if keys is None else list(keys)
        keys_arr = (
            np.asarray([k.encode() for k in keys_list], dtype="S")
            if keys_list
            else (np.empty(0, "S1"))
        )
        if len(ids_arr) and not len(ids_arr) == len(vectors) == len(keys_arr):
            raise ValueError("ids, vectors and keys differ in length")
        if len(ids_arr) and len(np.unique(ids_arr)) != len(ids_arr):
            raise ValueError("duplicate ids in one part")
        stored_dim = self.dim() if len(ids_arr) else None
        if stored_dim is not None and stored_dim != vectors.shape[1]:
            raise ValueError(f"dimension {vectors.shape[1]} does not match the stored {stored_dim}")
        deleted_arr = np.asarray(list(deleted), dtype=np.int64)
        tmp = _write_temp(
            self.path / "parts",
            "part",
            lambda fh: np.savez(
                fh, ids=ids_arr, vectors=vectors, keys=keys_arr, deleted=deleted_arr
            ),
        )
        try:
            with self._locked(PARTS_LOCK):
                parts = self._all_parts()
                last = max(_number(parts[-1]) if parts else 0, self._state()["folded_through"])
                target = self.path / "parts" / f"{last + 1:06d}.npz"
                os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return target

    def compact(self) -> None:
        """Fold the parts present now into a new base folder and switch to it in one rename.

        One compaction at a time (others wait); writers are held only for the switch, and a
        part is removed only once the base that holds it is the live one.
        """
        with self._locked(COMPACT_LOCK):
            with self._locked(PARTS_LOCK):
                state = self._state()
                parts = self._parts(state)
            if not parts:
                return
            # Only compaction switches the state or removes parts, and this one holds the
            # lock: what was noted above stays readable while it is folded.
            merge = _merge(*self._load_base(state), read_deltas(parts))
            new_base = (state["base"] or 0) + 1
            folder = self.path / f"base-{new_base}"
            shutil.rmtree(folder, ignore_errors=True)  # leftovers of a compaction that crashed
            _save_mapped(folder / "embeddings.npy", merge, self.dtype)
            _atomic_save(folder / "ids.npy", lambda fh: np.save(fh, merge.ids))
            _atomic_save(folder / "keys.npy", lambda fh: np.save(fh, merge.keys))
            new_state = {"base": new_base, "folded_through": _number(parts[-1])}
            with self._locked(PARTS_LOCK):  # a writer numbers against one state or the other
                _atomic_save(
                    self.path / "state.json", lambda fh: fh.write(json.dumps(new_state).encode())
                )
            # The switch is done; what follows only frees disk space. The old base goes
            # first: a reader that still listed the folded parts then fails on it and looks
            # again instead of reading the old base without them.
            for old in self.path.glob("base-*"):  # the previous base, and any a crash left
                if old.name != folder.name:
                    shutil.rmtree(old, ignore_errors=True)
            for part in self._all_parts():  # later parts were numbered after the snapshot
                if _number(part) <= new_state["folded_through"]:
                    part.unlink(missing_ok=True)
            self._remove_stale_temporaries()
        self._cache = None

    def _remove_stale_temporaries(self) -> None:
        """Remove the temporary files of writers killed long ago (never a live writer's)."""
        cutoff = time.time() - STALE_TEMP_S
        for tmp in (self.path / "parts").glob(".*.tmp"):
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
            except FileNotFoundError:
                pass


@dataclass
class _Merge:
    """Where each row of the base with deltas applied comes from: ``ids`` ascending, ``keys``,
    and per source (0 the base, n the n-th delta) the output rows it gives (``groups``) and
    its rows that fill them (``row``, by output row)."""

    ids: np.ndarray
    keys: np.ndarray
    groups: list[tuple[int, np.ndarray]]
    row: np.ndarray
    vector_sources: list[np.ndarray]
    dim: int
    dtype: np.dtype

    def fill(self, out: np.ndarray) -> np.ndarray:
        """Copy every row's vector into ``out`` [n, dim], a block of rows at a time (one
        catalogue-sized temporary would double the memory it takes)."""
        for s, chosen in self.groups:
            for start in range(0, len(chosen), _APPLY_BLOCK):
                at = chosen[start : start + _APPLY_BLOCK]
                out[at] = np.asarray(self.vector_sources[s][self.row[at]])
        return out


def _merge(
    ids: np.ndarray, vectors: np.ndarray, keys: np.ndarray, deltas: list[dict[str, np.ndarray]]
) -> _Merge:
    """Apply deltas in order (each: deletions, then upserts, which win over a deletion in the
    same part) to the base rows, without copying a vector yet; ids come back sorted.

    Every row is copied once by ``fill``, whatever the number of parts: a build of a large
    catalogue leaves many parts of big rows (feature maps) to fold.
    """
    where = {int(i): (0, r) for r, i in enumerate(ids.tolist())}
    vector_sources, key_sources = [vectors], [keys]
    for n, delta in enumerate(deltas, start=1):
        for i in delta["deleted"].tolist():
            where.pop(int(i), None)
        for r, i in enumerate(delta["ids"].tolist()):
            where[int(i)] = (n, r)
        vector_sources.append(delta["vectors"])
        key_sources.append(delta["keys"])
    out_ids = np.fromiter(sorted(where), np.int64, len(where))
    source = np.fromiter((where[i][0] for i in out_ids.tolist()), np.int64, len(out_ids))
    row = np.fromiter((where[i][1] for i in out_ids.tolist()), np.int64, len(out_ids))
    filled = [v for v in vector_sources if v.size]
    width = max((k.dtype.itemsize for k in key_sources if k.size), default=1)
    out_keys = np.empty(len(out_ids), f"S{width}")
    # Output rows grouped by source once (ascending within each): keys now, vectors in fill.
    order = np.argsort(source, kind="stable")
    sources, starts = np.unique(source[order], return_index=True)
    chosen_by_source = np.split(order, starts[1:]) if len(order) else []
    groups = list(zip(sources.tolist(), chosen_by_source, strict=True))
    for s, chosen in groups:
        out_keys[chosen] = key_sources[s][row[chosen]]
    return _Merge(
        out_ids,
        out_keys,
        groups,
        row,
        vector_sources,
        filled[0].shape[1] if filled else 0,
        np.dtype(filled[-1].dtype if filled else vectors.dtype),
    )


def _apply(
    ids: np.ndarray, vectors: np.ndarray, keys: np.ndarray, deltas: list[dict[str, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The base rows with deltas applied (see ``_merge``), the vectors copied into memory."""
    merge = _merge(ids, vectors, keys, deltas)
    out_vectors = merge.fill(np.empty((len(merge.ids), merge.dim), merge.dtype))
    return merge.ids, out_vectors, merge.keys
