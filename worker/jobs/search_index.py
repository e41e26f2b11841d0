"""The catalogue a photo search ranks: one model's embeddings and vector index, per process.

Below 50,000 products (``ml.vector_index.ANN_MIN_ROWS``, or ``NEIGHBOURS_INDEX=exact``) the
embedding matrix is held in memory and every product is scored. Above, the model's saved
index (``ml.compact``: an HNSW graph over compact vectors, written by the neighbour-list
build under ``<MODEL_FOLDER>/<model id>/index``) is memory-mapped, so worker processes on
one machine share one copy, and products saved since that build are served beside it
(``ml.live_index.LiveIndex``); the store's vectors are read row by row, never copied whole.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from flask import current_app

from ml.compact import build_index, read_ahead, save_index
from ml.live_index import LiveIndex
from ml.vector_index import exact_for
from webapp import registry

logger = logging.getLogger(__name__)

_META = "index.json"


class SearchError(Exception):
    """A search or compare that cannot be done; ``code`` is the HTTP status it maps to."""

    def __init__(self, message: str, code: int = 422) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass
class CatalogueIndex:
    """One model's products: ids int64 [n] ascending (row numbers of the level plan) and a
    vector index over them (None where search is exact: then ``vectors`` holds them all)."""

    model_id: str
    ids: np.ndarray
    nearest: Any  # a LiveIndex (or any VectorIndex); None where search is exact
    source: Any  # what it was made from (a new store view or saved index makes a new one)
    # Where search is exact, the vectors themselves: one matrix-vector product scores every
    # product about twice as fast as the exact index's blocked scan answers a window.
    vectors: np.ndarray | None = None

    @property
    def dim(self) -> int:
        """Length of the model's embedding."""
        return int(self.vectors.shape[1] if self.vectors is not None else self.nearest.dim)


_lock = threading.Lock()
# Keyed by (model folder, model id).
_stores: dict[tuple[str, str], Any] = {}
_indexes: dict[tuple[str, str], CatalogueIndex] = {}


def _exact(count: int) -> bool:
    return exact_for(current_app.config["NEIGHBOURS_INDEX"], count)


def _saved_stamp(model_id: str) -> int | None:
    """When the model's saved index was last written (None: there is none)."""
    try:
        return (registry.index_folder(model_id) / _META).stat().st_mtime_ns
    except FileNotFoundError:
        return None


def _live(model_id: str, view: Any, stamp: int | None) -> LiveIndex:
    """The saved index with the store's changes since; saved first if no build has (a store
    filled before its lists were built the sharded way), which takes a while once."""
    folder = registry.index_folder(model_id)
    if stamp is None:
        logger.warning("no saved index for %s: building it from %d products", model_id, len(view))
        index = build_index(
            view.ids,
            view.vectors(view.ids),
            current_app.config["NEIGHBOURS_INDEX"],
            compact_dims=current_app.config["COMPACT_DIMS"],
        )
        save_index(index, folder, keys=(view.ids, view.keys))
    return LiveIndex(folder, view)


def catalogue_index(model_id: str) -> CatalogueIndex:
    """The model's catalogue as photo search ranks it, made again only when the store (or
    the saved index) changed."""
    key = (current_app.config["MODEL_FOLDER"], model_id)
    store = _stores.get(key)
    if store is None:
        # One store object per model: it caches what it read until its files change.
        store = _stores[key] = registry.store_for(model_id)
    view = store.view()
    with _lock:
        cached = _indexes.get(key)
        exact = _exact(len(view))
        source = (view, None if exact else _saved_stamp(model_id))
        if cached is None or cached.source != source:
            if len(view) == 0:
                raise SearchError(
                    "Photo search is not ready yet: the catalogue has not been embedded.", 503
                )
            if exact:
                _, vectors = store.load()
                cached = CatalogueIndex(
                    model_id, view.ids, None, source, np.ascontiguousarray(vectors, np.float32)
                )
            else:
                # The stamp was read before mapping: a build saving a newer index meanwhile
                # is mapped on the next search.
                nearest = _live(model_id, view, source[1])
                if cached is None or cached.source[1] != source[1]:
                    # Once per saved index and process (not on every admin save): the first
                    # searches then fault cached pages in, not disk pages.
                    read_ahead(registry.index_folder(model_id))
                cached = CatalogueIndex(model_id, view.ids, nearest, source)
            _indexes[key] = cached
            logger.info(
                "photo search index for %s: %d products (%s)",
                model_id,
                len(view),
                "exact, in memory" if exact else f"{cached.nearest.kind}, mapped",
            )
        return cached


class IndexScores:
    """One photo's scores as the level plan asks for them (``search_levels.Scores``), asked of
    the catalogue's vector index: the best rows a window at a time (the largest window read
    is kept), and the best of given rows with those rows as the search's allowed set."""

    def __init__(self, catalogue: CatalogueIndex, query: np.ndarray, min_window: int) -> None:
        self.catalogue = catalogue
        self.query = query
        self.min_window = min_window
        self._window = np.empty(0, np.int64)
        self._known: dict[int, float] = {}

    def __len__(self) -> int:
        return len(self.catalogue.ids)

    def _search(self, k: int, allowed: np.ndarray | None = None) -> np.ndarray:
        """Rows of the index's k best ids (among ``allowed`` ids), best first."""
        ids, scores = self.catalogue.nearest.query(self.query, k, allowed)
        found = ids[0] >= 0
        rows = np.searchsorted(self.catalogue.ids, ids[0][found])
        self._known.update(zip(rows.tolist(), scores[0][found].tolist(), strict=True))
        return rows

    def top(self, window: int) -> np.ndarray:
        total = len(self)
        if len(self._window) < min(window, total):
            self._window = self._search(min(total, max(window, self.min_window)))
        return self._window[:window]

    def best(self, rows: np.ndarray, need: int) -> np.ndarray:
        if need <= 0 or not len(rows):
            return np.empty(0, np.int64)
        return self._search(need, self.catalogue.ids[rows])

    def of(self, rows: np.ndarray) -> np.ndarray:
        known = self._known
        return np.fromiter((known[row] for row in rows.tolist()), np.float32, len(rows))
