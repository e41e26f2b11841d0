"""A saved vector index kept current by a small exact index of what changed since it was built.

A full build saves the catalogue's index (``ml.compact.save_index``) with each row's key
(what its vector was computed from). Products an admin adds or re-photographs afterwards
are not in it, and removed ones still are. ``LiveIndex`` answers as if the index had been
rebuilt: rows whose product left the store or whose key changed are *stale* and never
returned; products the saved index lacks (new, or stale with a new vector) sit in an exact
*delta* index scored beside it; the two answers are merged. The next full build folds the
delta in. Same ``query`` rules as :class:`ml.vector_index.VectorIndex`.

Over compact or float16 vectors (``ml.compact.CompactIndex``, HNSW storage) the saved index
only chooses candidates: twice k are fetched and rescored with the products' full vectors
(a few hundred rows read from the store's mapped file), so the scores returned are the full
embedding's cosines, the same scale every threshold of the shop was calibrated on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ml.compact import KEYS, CompactIndex, load_index
from ml.store_view import StoreView
from ml.vector_index import ExactIndex

# Up to this many stale rows a query over-fetches and drops them; past it, the stale rows are
# filtered out inside the search (an allowed set), which costs a bitmap per query.
OVERFETCH_MAX = 256


class LiveIndex:
    """The saved index of a model, with the changes of ``view`` (the store now) applied."""

    def __init__(self, folder: str | Path, view: StoreView, *, mmap: bool = True) -> None:
        self.saved = load_index(folder, mmap=mmap)
        saved_ids = self.saved.ids()
        try:
            saved_keys = np.load(Path(folder) / KEYS, mmap_mode="r" if mmap else None)
        except FileNotFoundError as exc:
            raise ValueError(
                f"{folder}: saved without the rows' keys; rebuild the neighbour lists"
            ) from exc
        if len(saved_keys) != len(saved_ids):
            raise ValueError(f"{folder}: {len(saved_keys)} keys for {len(saved_ids)} rows")
        pos = np.minimum(np.searchsorted(view.ids, saved_ids), max(len(view) - 1, 0))
        same = np.zeros(len(saved_ids), bool)
        if len(view):
            same = view.ids[pos] == saved_ids
            same[same] = view.keys[pos[same]] == np.asarray(saved_keys)[same]
        self.stale = saved_ids[~same]
        current = np.zeros(len(view), bool)
        current[pos[same]] = True
        fresh = view.ids[~current]
        self.view = view
        self.compact = isinstance(self.saved, CompactIndex)
        # Scores the saved index answers with are approximate when its vectors are compact
        # or stored in fewer bits: then full scores are recomputed from the store.
        self.approximate = self.compact or self.saved.storage != "float32"
        # The delta scores in the saved index's space, so the two answers merge as one.
        self.delta = (
            CompactIndex(self.saved.projection, ExactIndex(self.saved.projection.dims))
            if self.compact
            else ExactIndex(view.dim)
        )
        if len(fresh):
            self.delta.add(fresh, view.vectors(fresh))
        self.dim = view.dim
        self._stale_mask: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.saved) - len(self.stale) + len(self.delta)

    @property
    def kind(self) -> str:
        """The saved index's kind (exact or hnsw)."""
        return self.saved.kind

    def query(
        self, vectors: Any, k: int, allowed: Any = None, *, full: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k most similar current products of each query row (``VectorIndex.query``).

        Over compact (or float16) vectors, ``full`` (the default) rescores twice k candidates
        with the full vectors; ``full=False`` answers with the index's own cosines, as the
        neighbour lists of a large catalogue are built."""
        queries = np.asarray(vectors, np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        rescore = self.approximate and full
        wanted = 2 * k if rescore else k
        fetch, allowed_saved = wanted, allowed
        if len(self.stale) and len(self.stale) <= OVERFETCH_MAX:
            fetch = wanted + len(self.stale)
        elif len(self.stale):
            allowed_saved = self._without_stale(allowed)
        ids, scores = self.saved.query(queries, fetch, allowed_saved)
        if len(self.stale):
            gone = np.isin(ids, self.stale)
            ids, scores = np.where(gone, -1, ids), np.where(gone, -np.inf, scores)
        if len(self.delta):
            more_ids, more_scores = self.delta.query(queries, wanted, allowed)
            ids = np.concatenate([ids, more_ids], axis=1)
            scores = np.concatenate([scores, more_scores], axis=1)
        if rescore:
            scores = self._full_scores(queries, ids)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1)

    def _full_scores(self, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Cosines of the full vectors of ``ids`` [n, m] (-1: none) with each query row."""
        found = ids >= 0
        unique, back = np.unique(ids[found], return_inverse=True)
        rows = self.view.vectors(unique)[back]
        scores = np.full(ids.shape, -np.inf, np.float32)
        scores[found] = np.einsum("ij,ij->i", rows, queries[np.nonzero(found)[0]])
        return scores

    def _without_stale(self, allowed: Any) -> np.ndarray:
        """``allowed`` (None, a mask by id or an id array) with the stale ids taken out."""
        if allowed is None:
            if self._stale_mask is None:
                ids = self.saved.ids()
                mask = np.ones(int(ids.max()) + 1 if len(ids) else 0, bool)
                mask[self.stale] = False
                self._stale_mask = mask
            return self._stale_mask
        arr = np.asarray(allowed)
        if arr.dtype == np.bool_:
            arr = arr.copy()
            arr[self.stale[self.stale < len(arr)]] = False
            return arr
        return np.setdiff1d(arr, self.stale)
