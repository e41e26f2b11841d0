"""Compact vectors for large catalogues: a learnt projection, and an index over projected rows.

A catalogue of a million products cannot keep a full embedding (1-2k floats) per product in
every worker: 1M x 1,280 float32 is 5 GB. ``Projection`` keeps the embedding's top
principal directions (of the rows' second moment, not centred: inner products, which are
cosines for unit rows, are what it must preserve) and re-normalises the projected rows, so
cosine in the small space ranks like cosine in the full one. ``CompactIndex`` wraps any
:class:`ml.vector_index.VectorIndex` over projected rows behind the same interface: callers
add and query full vectors, the wrapper projects them. How many dimensions to keep is set
by ``COMPACT_DIMS`` and measured in the README ("Scale").

``build_index`` is the one place that decides, from the catalogue's size, whether the index
is exact over full vectors (small catalogues: exact and cheap) or a graph over compact ones;
``load_index`` reads back whatever ``build_index`` saved.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ml.vector_index import VectorIndex, exact_for, make_index

logger = logging.getLogger(__name__)

_PROJECTION = "projection.npz"
_COMPACT_META = "compact.json"
KEYS = "keys.npy"
# Rows the projection is fitted on: the second-moment matrix of 50k rows is as good as all.
FIT_ROWS = 50_000
# Rows per block while projecting (keeps the float32 copy of a block near 64 MB).
_BLOCK = 16_384


class Projection:
    """``apply(vectors) -> unit rows [n, dims]``: the top principal directions of the rows."""

    def __init__(self, basis: np.ndarray) -> None:
        basis = np.ascontiguousarray(basis, np.float32)
        if basis.ndim != 2 or basis.shape[1] > basis.shape[0]:
            raise ValueError(f"a projection basis must be [dim, dims<=dim], got {basis.shape}")
        self.basis = basis

    @property
    def dim(self) -> int:
        """Length of the full vectors it takes."""
        return int(self.basis.shape[0])

    @property
    def dims(self) -> int:
        """Length of the compact vectors it gives."""
        return int(self.basis.shape[1])

    @classmethod
    def fit(cls, vectors: np.ndarray, dims: int, *, seed: int = 0) -> Projection:
        """The ``dims`` directions that keep most of the rows' energy (at most FIT_ROWS rows
        are read, drawn with ``seed``)."""
        n, dim = np.shape(vectors)
        if not 1 <= int(dims) <= dim:
            raise ValueError(f"dims must be between 1 and {dim}, got {dims}")
        rows = np.arange(n)
        if n > FIT_ROWS:
            rows = np.sort(np.random.default_rng(seed).choice(n, FIT_ROWS, replace=False))
        moment = np.zeros((dim, dim), np.float64)
        for start in range(0, len(rows), _BLOCK):
            block = np.asarray(vectors[rows[start : start + _BLOCK]], np.float32)
            moment += block.T.astype(np.float64) @ block
        values, vecs = np.linalg.eigh(moment)
        return cls(vecs[:, np.argsort(values)[::-1][: int(dims)]])

    def apply(self, vectors: Any) -> np.ndarray:
        """Projected rows of unit length, float32 [n, dims] (a zero projection stays zero)."""
        arr = np.asarray(vectors)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise ValueError(f"vectors must have shape [n, {self.dim}], got {np.shape(vectors)}")
        out = np.empty((len(arr), self.dims), np.float32)
        for start in range(0, len(arr), _BLOCK):
            block = np.asarray(arr[start : start + _BLOCK], np.float32) @ self.basis
            norms = np.linalg.norm(block, axis=1, keepdims=True)
            out[start : start + len(block)] = block / np.maximum(norms, 1e-12)
        return out

    def save(self, path: Path) -> None:
        """Write the basis to ``path`` (an .npz file)."""
        np.savez(path, basis=self.basis)

    @classmethod
    def load(cls, path: Path) -> Projection:
        """Read a basis written by ``save``."""
        with np.load(path) as data:
            return cls(data["basis"])


class CompactIndex:
    """A vector index over projected rows that takes and answers full vectors.

    Same interface as :class:`ml.vector_index.VectorIndex`: ``add``, ``remove``, ``query``,
    ``save``, ``load``, ``len`` and ``ids``; scores are cosines in the compact space.
    """

    def __init__(self, projection: Projection, inner: VectorIndex) -> None:
        if inner.dim != projection.dims:
            raise ValueError(
                f"the index takes {inner.dim} dims, the projection gives {projection.dims}"
            )
        self.projection = projection
        self.inner = inner

    @property
    def dim(self) -> int:
        """Length of the full vectors it takes."""
        return self.projection.dim

    @property
    def kind(self) -> str:
        """The inner index's kind (exact or hnsw)."""
        return self.inner.kind

    @property
    def storage(self) -> str:
        """How the inner index stores its compact rows."""
        return self.inner.storage

    def __len__(self) -> int:
        return len(self.inner)

    def ids(self) -> np.ndarray:
        """The ids in the index, ascending."""
        return self.inner.ids()

    def add(self, ids: Any, vectors: Any) -> None:
        """Add new ids with their full unit vectors (projected here)."""
        self.inner.add(ids, self.projection.apply(vectors))

    def remove(self, ids: Any) -> int:
        """Remove ids without a rebuild; returns how many went."""
        return self.inner.remove(ids)

    def query(self, vectors: Any, k: int, allowed: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """The k most similar ids of full query vectors (``VectorIndex.query``'s rules)."""
        return self.inner.query(self.projection.apply(vectors), k, allowed)

    def save(self, folder: str | Path) -> Path:
        """Write the inner index and the projection into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / _COMPACT_META).unlink(missing_ok=True)
        self.inner.save(folder)
        self.projection.save(folder / _PROJECTION)
        (folder / _COMPACT_META).write_text(json.dumps({"dims": self.projection.dims}))
        return folder


def build_index(
    ids: np.ndarray,
    vectors: np.ndarray,
    kind: str = "auto",
    *,
    compact_dims: int = 0,
    storage: str = "float16",
) -> VectorIndex | CompactIndex:
    """The catalogue's index: exact over the full vectors below ``ANN_MIN_ROWS`` rows (or
    ``kind="exact"``); otherwise an HNSW graph over rows projected to ``compact_dims``
    (0 keeps the full vectors), stored as ``storage`` (float32, float16 or sq8)."""
    n, dim = np.shape(vectors)
    if exact_for(kind, n):
        index = make_index(dim, n, "exact")
        index.add(ids, vectors)
        return index
    if not compact_dims or compact_dims >= dim:
        index = make_index(dim, n, "ann", storage=storage)
        index.add(ids, vectors)
        return index
    projection = Projection.fit(vectors, compact_dims)
    compact = CompactIndex(projection, make_index(compact_dims, n, "ann", storage=storage))
    compact.add(ids, vectors)
    return compact


def save_index(
    index: VectorIndex | CompactIndex,
    folder: str | Path,
    keys: tuple[np.ndarray, np.ndarray] | None = None,
) -> Path:
    """Write ``index`` to ``folder`` whole or not at all: into a sibling folder first, then
    renamed over the old one (readers that mapped the old files keep reading them).
    ``keys`` (ids, keys): what each row's vector was computed from (the store's keys), which
    ``ml.live_index.LiveIndex`` compares with the store to find what changed since."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    temp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(temp, ignore_errors=True)
    index.save(temp)
    if keys is not None:
        ids, row_keys = keys
        np.save(temp / KEYS, np.asarray(row_keys)[np.argsort(ids, kind="stable")])
    old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
    if folder.exists():
        folder.rename(old)
    temp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def load_index(folder: str | Path, *, mmap: bool = True) -> VectorIndex | CompactIndex:
    """Read an index written by ``save_index`` (or ``VectorIndex.save``); ``mmap`` maps its
    arrays read-only from disk, so processes on one machine share one copy."""
    folder = Path(folder)
    inner = VectorIndex.load(folder, mmap=mmap)
    if not (folder / _COMPACT_META).exists():
        return inner
    return CompactIndex(Projection.load(folder / _PROJECTION), inner)


# Bytes per read while reading a saved index ahead.
_READ_AHEAD_CHUNK = 4 << 20


def read_ahead(folder: str | Path) -> threading.Thread:
    """Read the saved index's files through once, in a background thread, so that the
    operating system caches them: a mapped graph whose pages are not cached is read from disk
    a page at a time as searches reach them (at 1M products the first hundreds of searches
    after a restart or a build took p95 380 ms instead of 26), while one sequential read of the
    whole folder takes well under a second. The pages go to the shared page cache, not to the
    process's own memory. Returns the started thread."""
    thread = threading.Thread(
        target=read_through, args=(Path(folder),), name="index-read-ahead", daemon=True
    )
    thread.start()
    return thread


def read_through(folder: Path) -> int | None:
    """Read every file of ``folder`` once (see ``read_ahead``): the bytes read, or None when
    the folder went away meanwhile (replaced by a newer build, which is read when loaded)."""
    started, total = time.perf_counter(), 0
    buffer = memoryview(bytearray(_READ_AHEAD_CHUNK))
    try:
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            with path.open("rb", buffering=0) as f:
                while read := f.readinto(buffer):
                    total += read
    except OSError as exc:
        logger.info("reading the index in %s ahead stopped: %s", folder, exc)
        return None
    logger.info(
        "read the index in %s ahead: %.0f MB in %.1fs",
        folder,
        total / 1e6,
        time.perf_counter() - started,
    )
    return total
