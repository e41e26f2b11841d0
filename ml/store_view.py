"""A store's current rows without copying its vectors: for catalogues too big to copy.

``EmbeddingStore.load`` applies the parts written since the last compaction to the base and
hands back one array: a copy of every vector (5 GB at a million products of 1,280 floats).
A ``StoreView`` applies the parts to the ids and keys only; vectors stay in the base's
memory-mapped file, and the few rows the parts wrote are kept beside it. Readers that need
some rows (a new product's list, a photo search's delta) read just those.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np


class StoreView:
    """The store's ids (ascending) and keys, and ``vectors(ids)`` read row by row."""

    def __init__(
        self,
        base: tuple[np.ndarray, np.ndarray, np.ndarray],
        deltas: list[dict[str, np.ndarray]],
    ) -> None:
        base_ids, base_vectors, base_keys = base
        final: dict[int, tuple[int, int] | None] = {}  # id -> (part, row), None if deleted
        for n, delta in enumerate(deltas):
            for i in delta["deleted"].tolist():
                final[int(i)] = None
            for r, i in enumerate(delta["ids"].tolist()):
                final[int(i)] = (n, r)
        touched = np.fromiter(final, np.int64, len(final))
        keep = ~np.isin(base_ids, touched) if len(touched) else np.ones(len(base_ids), bool)
        written = sorted(i for i, where in final.items() if where is not None)
        self._written_ids = np.asarray(written, np.int64)
        dim = base_vectors.shape[1] if base_vectors.size else 0
        rows = [deltas[final[i][0]]["vectors"][final[i][1]] for i in written]
        if rows:
            dim = len(rows[0])
        self._written = np.asarray(rows, np.float32).reshape(len(written), dim)
        written_keys = [deltas[final[i][0]]["keys"][final[i][1]] for i in written]
        ids = np.concatenate([base_ids[keep], self._written_ids])
        written_keys = (
            np.asarray(written_keys, "S1") if not written_keys else np.asarray(written_keys)
        )
        width = max(base_keys.dtype.itemsize, written_keys.dtype.itemsize, 1)
        keys = np.concatenate(
            [base_keys[keep].astype(f"S{width}"), written_keys.astype(f"S{width}")]
        )
        order = np.argsort(ids, kind="stable")
        self.ids, self.keys = ids[order], keys[order]
        self._base_ids, self._base_vectors = base_ids, base_vectors
        self.dim = dim

    def __len__(self) -> int:
        return len(self.ids)

    def vectors(self, product_ids: Iterable[int]) -> np.ndarray:
        """float32 rows of the given ids (KeyError naming the first one not stored)."""
        listed = product_ids if isinstance(product_ids, np.ndarray) else list(product_ids)
        wanted = np.asarray(listed, np.int64).reshape(-1)
        out = np.empty((len(wanted), self.dim), np.float32)
        here = positions(self._written_ids, wanted)
        there = positions(self._base_ids, wanted)
        there[here >= 0] = -1
        absent = ~np.isin(wanted, self.ids)  # a base row a part deleted is not stored
        if absent.any():
            raise KeyError(int(wanted[absent][0]))
        out[here >= 0] = self._written[here[here >= 0]]
        base_rows = there[there >= 0]
        if len(base_rows):
            out[there >= 0] = _read_rows(self._base_vectors, base_rows)
        return out


def _read_rows(vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Some rows of a memory-mapped array, read with ``pread`` rather than through the map.

    Touching a mapped file maps whole runs of pages around each row (read-ahead, fault-
    around): a worker reading a few hundred scattered rows per search would end up holding
    the whole file, gigabytes at a million products, in its resident memory. Reading the
    rows themselves keeps the process's memory to what it asked for.
    """
    if not isinstance(vectors, np.memmap) or vectors.filename is None:
        return np.asarray(vectors[rows], np.float32)
    width = vectors.shape[1] * vectors.dtype.itemsize
    out = np.empty((len(rows), vectors.shape[1]), vectors.dtype)
    fd = os.open(vectors.filename, os.O_RDONLY)
    try:
        for i, row in enumerate(rows.tolist()):
            out[i] = np.frombuffer(os.pread(fd, width, vectors.offset + row * width), vectors.dtype)
    finally:
        os.close(fd)
    return out.astype(np.float32, copy=False)


def positions(ids: np.ndarray, product_ids: Iterable[int]) -> np.ndarray:
    """Row numbers of the given ids in ascending ``ids``, -1 where an id is absent."""
    listed = product_ids if isinstance(product_ids, np.ndarray) else list(product_ids)
    wanted = np.asarray(listed, np.int64).reshape(-1)
    if len(ids) == 0:
        return np.full(len(wanted), -1, np.int64)
    pos = np.minimum(np.searchsorted(ids, wanted), len(ids) - 1)
    return np.where(ids[pos] == wanted, pos, -1)


def read_deltas(parts: list[Path]) -> list[dict[str, np.ndarray]]:
    """The parts' contents, in order."""
    deltas = []
    for part in parts:
        with np.load(part) as data:
            deltas.append({k: data[k] for k in ("ids", "vectors", "keys", "deleted")})
    return deltas
