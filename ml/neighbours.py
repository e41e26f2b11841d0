"""Exact cosine nearest neighbours in NumPy: blocked BLAS products and partial sorts."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _check(vectors: np.ndarray, k: int) -> None:
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be 2-D, got shape {vectors.shape}")
    if k < 1:
        raise ValueError("k must be at least 1")


def top_k_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and values of each row's k largest scores, best first."""
    k = min(k, scores.shape[1])
    if k == 0:
        return np.empty((len(scores), 0), np.int64), np.empty((len(scores), 0), scores.dtype)
    n = scores.shape[1]
    # Partition for the k largest without negating: a negated copy costs more than the sort.
    part = np.argpartition(scores, n - k, axis=1)[:, n - k :]
    part_scores = np.take_along_axis(scores, part, axis=1)
    # Within the chosen k, ties are ordered by column index; which of several items tied at
    # the k-th score makes the cut is left to argpartition (a full sort would cost 10x).
    order = np.lexsort((part, -part_scores), axis=1)
    idx = np.take_along_axis(part, order, axis=1)
    return idx, np.take_along_axis(part_scores, order, axis=1)


def all_neighbours(
    vectors: np.ndarray,
    k: int,
    *,
    block: int = 1024,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k nearest other rows by cosine (rows must be L2-normalised).

    Returns (indices int32 [n, k'], scores float32 [n, k']) with k' = min(k, n - 1), best
    first; a row is never its own neighbour. Work is done ``block`` rows at a time, so memory
    stays at block * n floats.
    """
    _check(vectors, k)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(vectors)
    kk = min(k, n - 1)
    out_idx = np.empty((n, max(kk, 0)), np.int32)
    out_scores = np.empty((n, max(kk, 0)), np.float32)
    buffer = np.empty((min(block, n), n), np.float32)  # reused: fresh pages are slow to fault in
    for start in range(0, n, block):
        stop = min(start + block, n)
        sims = np.matmul(vectors[start:stop], vectors.T, out=buffer[: stop - start])
        # Exclude self-matches (duplicates of other rows still count as neighbours).
        sims[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        idx, scores = top_k_rows(sims, kk)
        out_idx[start:stop] = idx
        out_scores[start:stop] = scores
        if progress:
            progress(stop, n)
    return out_idx, out_scores


def query(
    vectors: np.ndarray, queries: np.ndarray, k: int, *, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows of ``vectors`` for each query row; ``allowed`` (bool [n]) limits candidates."""
    _check(vectors, k)
    queries = np.atleast_2d(np.asarray(queries, np.float32))
    if queries.shape[1] != vectors.shape[1]:
        raise ValueError(
            f"query dimension {queries.shape[1]} != index dimension {vectors.shape[1]}"
        )
    if allowed is not None:
        rows = np.flatnonzero(allowed)
        idx, scores = top_k_rows(queries @ np.asarray(vectors[rows], np.float32).T, k)
        return rows[idx], scores
    return top_k_rows(queries @ np.asarray(vectors, np.float32).T, k)
