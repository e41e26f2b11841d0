"""Retrieval quality metrics on label arrays: the reference report's table and the usual ones.

Every function takes the query's labels (``[q]``) and the labels of its recommendations in
rank order (``[q, k]``); labels are any comparable values (strings, integer codes). A missing
label (``None``, ``""`` or, for integer codes, a negative number) never matches, and a query
whose own label is missing is left out of that feature's figures (it has nothing to match).

The reference report's table: per query, accuracy = the share of its top-k recommendations
that match it on a feature; error = 1 - accuracy; the query is a true positive when
error <= tolerance; performance = true positives / queries. With k = 10, tolerance 0 asks for
all ten to match, 0.1 for nine, 0.2 for eight.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

# The report's tolerances, in the order its tables list them.
TOLERANCES: tuple[float, ...] = (0.2, 0.1, 0.0)
# Float slack when comparing an error share with a tolerance (1 - 0.9 is 0.0999...).
_EPS = 1e-9


def _as_array(labels: Sequence | np.ndarray) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.dtype.kind in "US":
        return arr.astype(object)
    return arr


def known(labels: Sequence | np.ndarray) -> np.ndarray:
    """True where a label is present (not None, not empty, not a negative integer code)."""
    arr = _as_array(labels)
    if arr.dtype.kind in "iu":
        return arr >= 0
    if arr.dtype.kind == "f":
        return ~np.isnan(arr)
    flat = [v is not None and v == v and v != "" for v in arr.ravel()]
    return np.asarray(flat, dtype=bool).reshape(arr.shape)


def match_matrix(query_labels: Sequence | np.ndarray, rec_labels: np.ndarray) -> np.ndarray:
    """bool [q, k]: recommendation j of query i carries the query's label (missing never matches)."""
    q = _as_array(query_labels)
    r = _as_array(rec_labels)
    if r.ndim != 2 or q.ndim != 1 or len(q) != len(r):
        raise ValueError(
            f"need query labels [q] and recommendation labels [q, k]; got {q.shape} and {r.shape}"
        )
    return (r == q[:, None]) & known(r) & known(q)[:, None]


def accuracy_per_query(
    query_labels: Sequence | np.ndarray, rec_labels: np.ndarray, k: int | None = None
) -> np.ndarray:
    """float [q]: the share of the first k recommendations matching the query (a missing
    recommendation, when fewer than k exist, counts as a miss)."""
    matches = match_matrix(query_labels, rec_labels)
    k = matches.shape[1] if k is None else k
    if k < 1:
        raise ValueError("k must be at least 1")
    return matches[:, :k].sum(axis=1) / k


def performance(accuracy: np.ndarray, tolerance: float) -> float:
    """Share of queries whose error (1 - accuracy) is at most ``tolerance`` (the report's TP rate)."""
    accuracy = np.asarray(accuracy, dtype=np.float64)
    if len(accuracy) == 0:
        return float("nan")
    return float(np.mean(1.0 - accuracy <= tolerance + _EPS))


def report_table(
    features: Mapping[str, tuple[Sequence | np.ndarray, np.ndarray]],
    k: int,
    tolerances: Iterable[float] = TOLERANCES,
) -> dict[str, dict[str, float]]:
    """{feature: {tolerance: performance}} for ``{feature: (query labels, rec labels)}``.

    Tolerances are keyed as strings (``"0.2"``, ``"0.1"``, ``"0"``) so the result is JSON-safe.
    Queries whose own label is missing are left out of that feature.
    """
    table: dict[str, dict[str, float]] = {}
    for name, (query_labels, rec_labels) in features.items():
        keep = known(query_labels)
        acc = accuracy_per_query(np.asarray(query_labels)[keep], np.asarray(rec_labels)[keep], k)
        table[name] = {tolerance_key(t): performance(acc, t) for t in tolerances}
    return table


def tolerance_key(tolerance: float) -> str:
    """A tolerance as its table key: 0.2 -> "0.2", 0.0 -> "0"."""
    return f"{tolerance:g}"


def mean_precision_at_k(
    query_labels: Sequence | np.ndarray, rec_labels: np.ndarray, k: int
) -> float:
    """Mean over queries (with a label) of the share of the top k that match: precision@k."""
    keep = known(query_labels)
    if not keep.any():
        return float("nan")
    acc = accuracy_per_query(np.asarray(query_labels)[keep], np.asarray(rec_labels)[keep], k)
    return float(acc.mean())


def average_precision_at_k(matches: np.ndarray, relevant: np.ndarray, k: int) -> np.ndarray:
    """AP@k per query: sum over ranks i <= k of precision@i at each hit, / min(k, relevant).

    ``matches`` bool [q, >=k] says which recommendations are relevant; ``relevant`` int [q] is
    how many relevant items the index holds for each query (the query itself excluded).
    Queries with nothing relevant get NaN (they cannot be ranked well or badly).
    """
    matches = np.asarray(matches, dtype=bool)[:, :k]
    relevant = np.asarray(relevant, dtype=np.float64)
    if matches.shape[0] != relevant.shape[0]:
        raise ValueError("matches and relevant disagree on the number of queries")
    hits = np.cumsum(matches, axis=1)
    ranks = np.arange(1, matches.shape[1] + 1)
    summed = np.sum(np.where(matches, hits / ranks, 0.0), axis=1)
    denom = np.minimum(relevant, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, summed / np.maximum(denom, 1), np.nan)


def map_at_k(
    query_labels: Sequence | np.ndarray,
    rec_labels: np.ndarray,
    index_labels: Sequence | np.ndarray,
    k: int,
    *,
    query_in_index: bool = False,
) -> float:
    """mAP@k with relevance = same label; queries without a label or any relevant item are
    left out. ``query_in_index`` says each query is itself in the index (leave-one-out), so
    one same-label item there is the query and does not count as relevant."""
    q = _as_array(query_labels)
    keep = known(q)
    values, counts = np.unique(_as_array(index_labels)[known(index_labels)], return_counts=True)
    count_of = dict(zip(values.tolist(), counts.tolist(), strict=True))
    relevant = np.asarray([count_of.get(v, 0) for v in q[keep].tolist()], dtype=np.int64)
    if query_in_index:
        relevant = relevant - 1
    ap = average_precision_at_k(match_matrix(q[keep], np.asarray(rec_labels)[keep]), relevant, k)
    ap = ap[~np.isnan(ap)]
    return float(ap.mean()) if len(ap) else float("nan")


def combine(*labels: Sequence | np.ndarray, separator: str = "|") -> np.ndarray:
    """Element-wise joined labels (e.g. gender + articleType); missing when any part is missing."""
    arrays = [_as_array(lab) for lab in labels]
    if len({a.shape for a in arrays}) != 1:
        raise ValueError("labels to combine differ in shape")
    present = np.logical_and.reduce([known(a) for a in arrays])
    out = np.empty(arrays[0].shape, dtype=object)
    flat_out = out.reshape(-1)
    flat = [a.reshape(-1) for a in arrays]
    for i, ok in enumerate(present.reshape(-1)):
        flat_out[i] = separator.join(str(a[i]) for a in flat) if ok else None
    return out


def classifier_accuracy(truth: Sequence | np.ndarray, predicted: Sequence | np.ndarray) -> float:
    """Share of rows (with a true label) whose predicted label is the true one."""
    t = _as_array(truth)
    p = _as_array(predicted)
    if t.shape != p.shape:
        raise ValueError("truth and predictions differ in shape")
    keep = known(t)
    if not keep.any():
        return float("nan")
    return float(np.mean(t[keep] == p[keep]))


def encode(labels: Sequence | np.ndarray) -> tuple[np.ndarray, list]:
    """Integer codes int64 [n] (-1 where missing) and the list of distinct labels they index."""
    arr = _as_array(labels)
    present = known(arr)
    values = sorted({v for v in arr[present].tolist()}, key=str)
    code_of = {v: i for i, v in enumerate(values)}
    codes = np.fromiter(
        (code_of[v] if ok else -1 for v, ok in zip(arr.tolist(), present.tolist(), strict=True)),
        dtype=np.int64,
        count=len(arr),
    )
    return codes, values
