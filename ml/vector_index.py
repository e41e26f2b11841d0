"""Cosine nearest neighbours over product ids: an exact index and an approximate one, one interface.

``VectorIndex``: ``add(ids, vectors)``, ``remove(ids)``, ``query(vectors, k, allowed=None)``,
``save(folder)``, ``VectorIndex.load(folder)``, ``len(index)`` and ``ids()``. Vectors are
float32 rows of unit length, so cosine similarity is the inner product. Ids are non-negative
integers (product ids); a missing result is id -1 with score -inf.

``make_index(dim, n_expected)`` chooses the kind (measured by ``bench/bench_ann.py`` at
d=256 on two cores). The approximate index is a faiss HNSW graph: on the real catalogue's
embeddings it keeps recall@10 at 0.997 where IVF needs a wider probe for 0.99, and it needs
no training. Below ``ANN_MIN_ROWS`` rows the exact index is used: building every list
exactly costs n^2 (1 s at 10k rows, about 35 s at 41k, against 2.5 s and 11 s for the
graph), so the graph pays for list builds from about 20k rows, but up to 50k the exact
cost stays under a minute, a photo search under a millisecond, and the lists are exact and
the same on every build (a graph built on several threads is not), which keeps relevance
figures on the reference catalogue reproducible. Past 50k the exact cost grows
quadratically (1M rows: hours), and the graph takes over.

One module for the interface and both implementations, so the rules they share (ids,
padding, ``allowed``, the file layout) are read in one place.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ml.neighbours import top_k_rows

ANN_MIN_ROWS = 50_000
KINDS = ("auto", "exact", "ann")
_META = "index.json"
_IDS = "ids.npy"
_FORMAT = 1
_NORM_TOLERANCE = 1e-3
# Floats per block of an exact scan (queries x rows, and rows x dim): 64 MB of scores at most.
_SCAN_FLOATS = 1 << 24

Fetch = Callable[[np.ndarray | slice], np.ndarray]


def _faiss() -> Any:
    """The faiss module; imported here because only the worker tier installs it."""
    import faiss

    return faiss


def _as_ids(ids: Any) -> np.ndarray:
    """Ids as a 1-D int64 array, or a ValueError saying what is wrong with them."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"ids must be a 1-D array, got shape {arr.shape}")
    if arr.size == 0:
        return np.empty(0, np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"ids must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.min() < 0:
        raise ValueError("ids must be non-negative (-1 marks a missing result)")
    return arr


def _as_unit_rows(vectors: Any, dim: int, what: str) -> np.ndarray:
    """Rows as contiguous float32 [n, dim] of unit length, or a ValueError."""
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"{what} must have shape [n, {dim}], got {np.shape(vectors)}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    norms = np.linalg.norm(arr, axis=1)
    if len(arr) and np.abs(norms - 1.0).max() > _NORM_TOLERANCE:
        raise ValueError(
            f"{what} must be L2-normalised rows (norms range {norms.min():.4g}..{norms.max():.4g})"
        )
    return np.ascontiguousarray(arr)


def scan_top_k(
    queries: np.ndarray, k: int, count: int, fetch: Fetch, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of each query over candidate rows, fetched and scored block by block.

    ``rows`` (row positions) limits the candidates; ``None`` means rows 0..count-1.
    ``fetch(slice or positions)`` returns those rows as float32. Returns positions [n, k]
    (-1 padded) and scores [n, k] (-inf padded), best first; memory stays at a few blocks.
    """
    m = count if rows is None else len(rows)
    q_block = min(max(len(queries), 1), 1024)
    r_block = max(1024, min(_SCAN_FLOATS // q_block, _SCAN_FLOATS // queries.shape[1]))
    out_pos = np.full((len(queries), k), -1, np.int64)
    out_scores = np.full((len(queries), k), -np.inf, np.float32)
    for q0 in range(0, len(queries), q_block):
        q = queries[q0 : q0 + q_block]
        best_pos = np.empty((len(q), 0), np.int64)
        best_scores = np.empty((len(q), 0), np.float32)
        for r0 in range(0, m, r_block):
            r1 = min(r0 + r_block, m)
            block = slice(r0, r1) if rows is None else rows[r0:r1]
            idx, scores = top_k_rows(q @ np.asarray(fetch(block), np.float32).T, k)
            found = idx + r0 if rows is None else block[idx]
            if best_pos.shape[1]:  # merge this block's winners with the best so far
                found = np.concatenate([best_pos, found], axis=1)
                idx, scores = top_k_rows(np.concatenate([best_scores, scores], axis=1), k)
                found = np.take_along_axis(found, idx, axis=1)
            best_pos, best_scores = found, scores
        out_pos[q0 : q0 + len(q), : best_pos.shape[1]] = best_pos
        out_scores[q0 : q0 + len(q), : best_pos.shape[1]] = best_scores
    return out_pos, out_scores


class _RowIds:
    """Row position -> product id (-1 where a row was removed), and the reverse lookup."""

    def __init__(self, ids: np.ndarray | None = None) -> None:
        self.ids = np.empty(0, np.int64) if ids is None else ids
        self._order: tuple[np.ndarray, np.ndarray] | None = None

    def changed(self) -> None:
        """Forget the reverse lookup after rows were added, moved or removed."""
        self._order = None

    def live(self) -> np.ndarray:
        """Positions of the rows not removed."""
        return np.flatnonzero(self.ids >= 0)

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Row positions of ``ids``, -1 for ids not in the index."""
        if not len(self.ids):
            return np.full(len(ids), -1, np.int64)
        if self._order is None:  # rebuilt lazily: one sort per batch of changes
            order = np.argsort(self.ids, kind="stable")
            self._order = order, self.ids[order]
        order, ordered = self._order
        at = np.minimum(np.searchsorted(ordered, ids), len(ordered) - 1)
        return np.where(ordered[at] == ids, order[at], -1)


class VectorIndex(ABC):
    """Product ids and their unit vectors, searched by cosine similarity."""

    kind: ClassVar[str]
    storages: ClassVar[tuple[str, ...]]
    setting_names: ClassVar[tuple[str, ...]] = ()  # constructor options written by save

    def __init__(self, dim: int, storage: str = "float32") -> None:
        if int(dim) < 1:
            raise ValueError(f"dim must be at least 1, got {dim}")
        if storage not in self.storages:
            raise ValueError(f"{self.kind} storage must be one of {self.storages}, got {storage!r}")
        self.dim = int(dim)
        self.storage = storage
        self._rows = _RowIds()
        self._count = 0
        self._read_only = False

    def __len__(self) -> int:
        return self._count

    def ids(self) -> np.ndarray:
        """The ids in the index, ascending."""
        ids = self._rows.ids
        return np.sort(ids[ids >= 0])

    def add(self, ids: Any, vectors: Any) -> None:
        """Add new ids with their unit vectors; an id already present is a ValueError."""
        self._check_writable()
        ids = _as_ids(ids)
        vectors = _as_unit_rows(vectors, self.dim, "vectors")
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        unique, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"duplicate ids in one add: {unique[counts > 1][:5].tolist()}")
        present = self._rows.positions(ids) >= 0
        if present.any():
            raise ValueError(
                f"ids already in the index: {ids[present][:5].tolist()} (remove them first)"
            )
        if len(ids):
            self._add_rows(ids, vectors)
            self._rows.changed()
            self._count += len(ids)

    def remove(self, ids: Any) -> int:
        """Remove ids without a rebuild; ids not in the index are ignored. Returns how many went."""
        self._check_writable()
        pos = self._rows.positions(np.unique(_as_ids(ids)))
        pos = np.sort(pos[pos >= 0])
        if len(pos):
            self._remove_rows(pos)
            self._rows.changed()
            self._count -= len(pos)
        return len(pos)

    def query(self, vectors: Any, k: int, allowed: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """The k most similar ids of each query row, best first, and their cosine scores.

        ``allowed`` limits the candidates: a boolean mask indexed by id (ids past its end are
        not allowed) or an array of allowed ids (ids not in the index are ignored). Returns
        ids [n, k] int64 and scores [n, k] float32; a row holds min(k, candidates) results and
        is padded with id -1 and score -inf after them.
        """
        queries = _as_unit_rows(vectors, self.dim, "query vectors")
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be an integer of at least 1, got {k!r}")
        rows = None if allowed is None else self._allowed_rows(allowed)
        pos, scores = self._search(queries, int(k), rows)
        ids = np.full(pos.shape, -1, np.int64)
        found = pos >= 0
        ids[found] = self._rows.ids[pos[found]]
        return ids, scores.astype(np.float32, copy=False)

    def save(self, folder: str | Path) -> Path:
        """Write the index into ``folder`` (created); its description is written last."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / _META).unlink(missing_ok=True)  # a half-written folder must not load
        self._save_data(folder)
        np.save(folder / _IDS, np.asarray(self._rows.ids, np.int64))
        meta = {"format": _FORMAT, "kind": self.kind, "dim": self.dim, "storage": self.storage}
        meta.update(self._settings())
        (folder / _META).write_text(json.dumps(meta, indent=1, sort_keys=True))
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, mmap: bool = True) -> VectorIndex:
        """Read an index written by ``save``; ``mmap`` maps its arrays read-only from disk."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / _META).read_text())
        except FileNotFoundError as exc:
            raise ValueError(f"no vector index in {folder} ({_META} is missing)") from exc
        known = {sub.kind: sub for sub in (ExactIndex, HnswIndex)}
        if meta.get("format") != _FORMAT or meta.get("kind") not in known:
            raise ValueError(f"unsupported vector index in {folder}: {meta}")
        sub = known[meta["kind"]]
        if cls is not VectorIndex and not issubclass(sub, cls):
            raise ValueError(f"{folder} holds a {sub.kind} index, not {cls.kind}")
        settings = {key: meta[key] for key in sub.setting_names}
        index = sub(meta["dim"], meta["storage"], **settings)
        index._rows = _RowIds(np.load(folder / _IDS, mmap_mode="r" if mmap else None))
        index._count = int(np.count_nonzero(index._rows.ids >= 0))
        index._load_data(folder, mmap)
        index._read_only = mmap
        return index

    def _check_writable(self) -> None:
        if self._read_only:
            raise RuntimeError(
                "this index was loaded memory-mapped (read-only); load it with mmap=False to change it"
            )

    def _allowed_rows(self, allowed: Any) -> np.ndarray:
        """Sorted positions of the live rows whose ids ``allowed`` admits."""
        arr = np.asarray(allowed)
        if arr.size == 0:
            return np.empty(0, np.int64)
        if arr.dtype == np.bool_:
            if arr.ndim != 1:
                raise ValueError(f"an allowed mask must be 1-D, got shape {arr.shape}")
            ids, live = self._rows.ids, self._rows.live()
            inside = live[ids[live] < len(arr)]
            return inside[arr[ids[inside]]]
        pos = self._rows.positions(np.unique(_as_ids(arr)))
        return np.sort(pos[pos >= 0])

    def _settings(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.setting_names}

    @abstractmethod
    def _add_rows(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    @abstractmethod
    def _remove_rows(self, pos: np.ndarray) -> None: ...

    @abstractmethod
    def _search(
        self, queries: np.ndarray, k: int, rows: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]: ...

    @abstractmethod
    def _save_data(self, folder: Path) -> None: ...

    @abstractmethod
    def _load_data(self, folder: Path, mmap: bool) -> None: ...


class ExactIndex(VectorIndex):
    """Every row scored by a blocked BLAS product; rows kept as float32 or float16.

    ``remove`` moves the last rows into the freed places (no rebuild); float16 halves the
    memory at a cosine error below 1e-3, and is widened to float32 one block at a time.
    """

    kind = "exact"
    storages = ("float32", "float16")
    _VECTORS = "vectors.npy"

    def __init__(self, dim: int, storage: str = "float32") -> None:
        super().__init__(dim, storage)
        self._vectors = np.empty((0, self.dim), storage)

    def _add_rows(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        n = len(self._rows.ids)
        if n + len(ids) > len(self._vectors):  # grow by doubling: single adds stay cheap
            grown = np.empty((max(n + len(ids), 2 * len(self._vectors)), self.dim), self.storage)
            grown[:n] = self._vectors[:n]
            self._vectors = grown
        self._vectors[n : n + len(ids)] = vectors
        self._rows.ids = np.concatenate([self._rows.ids, ids])

    def _remove_rows(self, pos: np.ndarray) -> None:
        n = len(self._rows.ids)
        keep = n - len(pos)
        holes = pos[pos < keep]
        gone = np.zeros(n - keep, bool)
        gone[pos[pos >= keep] - keep] = True
        movers = keep + np.flatnonzero(~gone)  # surviving rows past the new end
        self._vectors[holes] = self._vectors[movers]
        self._rows.ids[holes] = self._rows.ids[movers]
        self._rows.ids = self._rows.ids[:keep].copy()

    def _search(
        self, queries: np.ndarray, k: int, rows: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        return scan_top_k(queries, k, len(self._rows.ids), self._vectors.__getitem__, rows)

    def _save_data(self, folder: Path) -> None:
        np.save(folder / self._VECTORS, self._vectors[: len(self._rows.ids)])

    def _load_data(self, folder: Path, mmap: bool) -> None:
        self._vectors = np.load(folder / self._VECTORS, mmap_mode="r" if mmap else None)


class HnswIndex(VectorIndex):
    """A faiss HNSW graph (inner product), with float32, float16 or 8-bit (sq8) storage.

    ``allowed`` rule, so a query returns min(k, allowed) results whenever that many exist:
    up to ``exact_max`` allowed rows are scored exactly (a BLAS pass over them costs less
    than a filtered graph walk). A larger set is searched in the graph with a bitmap filter
    and ``efSearch`` scaled by rows / allowed rows, since the walk keeps only the allowed
    among the rows it collects; when that ``efSearch`` would pass ``ef_max`` the allowed
    rows are scored exactly instead, and any query the walk leaves short of results is
    scored exactly too. ``remove`` marks rows deleted (they keep routing the walk and the
    filter keeps them out of results, the same rule with deleted rows as the disallowed
    ones); rebuilding from ``ids()`` reclaims their memory.

    Storage, measured on the real catalogue's embeddings at d=256 (bytes a row with the graph,
    recall@10 at the default ``ef_search``): float32 1.3 KB, 0.997; float16 0.8 KB, 0.993;
    sq8 0.5 KB, 0.970. An sq8 index learns its value ranges from its first ``add``, so that
    add must hold the catalogue or a large sample of it.
    """

    kind = "hnsw"
    storages = ("float32", "float16", "sq8")
    setting_names = ("m", "ef_construction", "ef_search", "ef_max", "exact_max")
    _FILE = "faiss.index"
    _SQ8_MIN_TRAIN = 1000

    def __init__(
        self,
        dim: int,
        storage: str = "float32",
        *,
        m: int = 32,
        ef_construction: int = 40,
        ef_search: int = 64,
        ef_max: int = 1024,
        exact_max: int = 20_000,
    ) -> None:
        super().__init__(dim, storage)
        faiss = _faiss()
        self.m, self.ef_construction, self.ef_search = m, ef_construction, ef_search
        self.ef_max, self.exact_max = ef_max, exact_max
        metric = faiss.METRIC_INNER_PRODUCT
        if storage == "float32":
            self._index = faiss.IndexHNSWFlat(self.dim, m, metric)
        else:
            qtype = {"float16": faiss.ScalarQuantizer.QT_fp16, "sq8": faiss.ScalarQuantizer.QT_8bit}
            self._index = faiss.IndexHNSWSQ(self.dim, qtype[storage], m, metric)
        self._index.hnsw.efConstruction = ef_construction
        self._live_filter: tuple[np.ndarray, Any] | None = None

    def _add_rows(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if not self._index.is_trained:
            if len(vectors) < self._SQ8_MIN_TRAIN:
                raise ValueError(
                    f"an sq8 index learns its value ranges from its first add: give it at "
                    f"least {self._SQ8_MIN_TRAIN} rows, got {len(vectors)}"
                )
            self._index.train(vectors)
        self._index.add(vectors)
        self._rows.ids = np.concatenate([self._rows.ids, ids])
        self._live_filter = None

    def _remove_rows(self, pos: np.ndarray) -> None:
        self._rows.ids[pos] = -1
        self._live_filter = None

    def _fetch(self, rows: np.ndarray) -> np.ndarray:
        """Stored vectors of some row positions (decoded when stored compactly)."""
        return self._index.storage.reconstruct_batch(np.ascontiguousarray(rows, np.int64))

    def _filter(self, rows: np.ndarray | None) -> tuple[np.ndarray, Any] | None:
        """A faiss bitmap selector over row positions (and the bitmap it reads)."""
        faiss = _faiss()
        if rows is None:
            if self._count == len(self._rows.ids):
                return None
            if self._live_filter is None:
                self._live_filter = self._filter(self._rows.live())
            return self._live_filter
        mask = np.zeros(len(self._rows.ids), bool)
        mask[rows] = True
        bits = np.packbits(mask, bitorder="little")
        return bits, faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))

    def _search(
        self, queries: np.ndarray, k: int, rows: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        faiss = _faiss()
        candidates = self._count if rows is None else len(rows)
        # A filtered walk keeps only the candidates among the rows it collects, so efSearch
        # grows with the share of rows filtered out (allowed or deleted).
        ef = -(-max(self.ef_search, k) * len(self._rows.ids) // max(candidates, 1))
        if ef > self.ef_max or (rows is not None and candidates <= self.exact_max):
            return scan_top_k(
                queries, k, 0, self._fetch, self._rows.live() if rows is None else rows
            )
        params = faiss.SearchParametersHNSW(efSearch=int(ef))
        selector = self._filter(rows)
        if selector is not None:
            params.sel = selector[1]
        found_scores, pos = self._index.search(queries, k, params=params)
        scores = np.where(pos >= 0, found_scores, -np.inf).astype(np.float32)
        short = np.flatnonzero((pos >= 0).sum(axis=1) < min(k, candidates))
        if len(short):  # the walk could not fill these rows: score every candidate
            live = self._rows.live() if rows is None else rows
            pos[short], scores[short] = scan_top_k(queries[short], k, 0, self._fetch, live)
        return pos, scores

    def _save_data(self, folder: Path) -> None:
        _faiss().write_index(self._index, str(folder / self._FILE))

    def _load_data(self, folder: Path, mmap: bool) -> None:
        faiss = _faiss()
        # IO_FLAG_MMAP_IFC maps the graph's neighbour lists and the stored codes in place, so
        # worker processes on one machine share one copy through the page cache.
        flags = faiss.IO_FLAG_MMAP_IFC if mmap else 0
        self._index = faiss.read_index(str(folder / self._FILE), flags)


def exact_for(kind: str, count: int) -> bool:
    """Whether a catalogue of ``count`` products is searched exactly under the setting
    ``kind`` (``NEIGHBOURS_INDEX``: exact, ann, or auto: exact below ``ANN_MIN_ROWS``)."""
    if kind not in KINDS:
        raise ValueError(f"index kind must be one of {KINDS}, got {kind!r}")
    return kind == "exact" or (kind == "auto" and count < ANN_MIN_ROWS)


def make_index(
    dim: int, n_expected: int, kind: str = "auto", *, storage: str = "float32"
) -> VectorIndex:
    """An empty index for about ``n_expected`` rows: exact below ``ANN_MIN_ROWS`` (or when
    ``kind="exact"``), the HNSW graph from there on (or when ``kind="ann"``)."""
    if exact_for(kind, n_expected):
        return ExactIndex(dim, storage)
    return HnswIndex(dim, storage)


def nearest_others(
    index: Any, product_ids: np.ndarray, vectors: np.ndarray, kk: int, **options: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Each product's ``kk`` nearest other products in ``index`` (ids, scores), best first:
    ``kk + 1`` are asked for (``options`` go to the index's ``query``) and the product itself
    is dropped (usually the first; when the index does not return it, the last one goes
    instead)."""
    found, scores = index.query(vectors, kk + 1, **options)
    own = found == np.asarray(product_ids)[:, None]
    order = np.argsort(own, axis=1, kind="stable")[:, :kk]
    return np.take_along_axis(found, order, axis=1), np.take_along_axis(scores, order, axis=1)
