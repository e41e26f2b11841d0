"""Retrieval evaluation on arrays: rankings (leave-one-out, held-out queries, the photo-search
policy) and their scores on the catalogue's labels. Flask-free; the CLI feeds it.

Two ways to get each query's top-k:

* ``leave_one_out``: a product page's list: the product's own neighbours in the catalogue,
  itself excluded (exact cosine, blocked BLAS products as in ``ml.neighbours``);
* ``pipeline_rank``: what photo search does for an uploaded photo, through the live search's
  own level plan (``ml.search_levels``): the same photo first, then the predicted type (and
  colour), the predicted sub-category, then everything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from . import metrics, search_levels
from .heads import Prediction as HeadPrediction
from .heads import decode_type
from .labels import split_derived_type
from .neighbours import top_k_rows
from .search_levels import ArrayCandidates, Groups, Prediction, SearchPolicy

FEATURES = ("articleType", "gender", "gender+articleType")
# The reference report's ResNet50 figures (leave-one-out, articleTypes with >= 500 images,
# full-size photos), as fractions.
REFERENCE_NAME = "ResNet50 (reference report)"
REFERENCE_TABLE: dict[str, dict[str, float]] = {
    "articleType": {"0.2": 0.8221, "0.1": 0.7673, "0": 0.6784},
    "gender": {"0.2": 0.8102, "0.1": 0.7424, "0": 0.6367},
    "gender+articleType": {"0.2": 0.6750, "0.1": 0.5892, "0": 0.4703},
}
REFERENCE_MIN_TYPE_COUNT = 500

Progress = Callable[[int, int], None]
# The photo-search rules under the name the evaluation's callers use.
PipelinePolicy = SearchPolicy


@dataclass
class Labels:
    """Catalogue labels of a set of products, row-aligned object arrays (None = unknown)."""

    gender: np.ndarray
    article_type: np.ndarray
    base_colour: np.ndarray
    sub_category: np.ndarray

    def __post_init__(self) -> None:
        for name in ("gender", "article_type", "base_colour", "sub_category"):
            setattr(self, name, np.asarray(getattr(self, name), dtype=object))
        if len({len(self.gender), len(self.article_type), len(self.base_colour)}) != 1 or len(
            self.sub_category
        ) != len(self.gender):
            raise ValueError("label arrays differ in length")

    def __len__(self) -> int:
        return len(self.gender)

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, str | None]]) -> Labels:
        """From dicts with keys gender, article_type, base_colour, sub_category."""

        def col(key: str) -> list[str | None]:
            return [r.get(key) or None for r in records]

        return cls(col("gender"), col("article_type"), col("base_colour"), col("sub_category"))

    def take(self, rows: np.ndarray) -> Labels:
        """The labels of the given rows (any shape of row numbers)."""
        rows = np.asarray(rows)
        return Labels(
            self.gender[rows],
            self.article_type[rows],
            self.base_colour[rows],
            self.sub_category[rows],
        )

    @property
    def derived_type(self) -> np.ndarray:
        """gender + article type, e.g. ``Men|Shirts`` (None when either is unknown)."""
        return metrics.combine(self.gender, self.article_type)

    def feature(self, name: str) -> np.ndarray:
        """One of FEATURES, or ``baseColour`` / ``subCategory``."""
        if name == "articleType":
            return self.article_type
        if name == "gender":
            return self.gender
        if name == "gender+articleType":
            return self.derived_type
        if name == "baseColour":
            return self.base_colour
        if name == "subCategory":
            return self.sub_category
        raise ValueError(f"unknown feature {name!r}")


# -- which rows are queries ------------------------------------------------------------------


def common_type_rows(article_types: Sequence[str | None], min_count: int) -> np.ndarray:
    """Row numbers whose article type has at least ``min_count`` rows (the report's filter)."""
    codes, values = metrics.encode(np.asarray(article_types, dtype=object))
    counts = np.bincount(codes[codes >= 0], minlength=len(values))
    keep = (codes >= 0) & (counts[np.maximum(codes, 0)] >= min_count)
    return np.flatnonzero(keep)


def holdout_split(
    strata: Sequence[str | None], fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Rows (kept, held out): ``fraction`` of each stratum held out, reproducibly for a seed.

    A stratum of one row stays in the catalogue (it cannot be both shown and asked for).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError("fraction must be between 0 and 1")
    y = np.asarray([s if s else "" for s in strata], dtype=object).astype(str)
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for cls in np.unique(y):
        rows = np.flatnonzero(y == cls)
        rng.shuffle(rows)
        n_held = 0 if len(rows) < 2 else min(len(rows) - 1, max(1, round(len(rows) * fraction)))
        held.append(rows[:n_held])
        kept.append(rows[n_held:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


# -- rankings --------------------------------------------------------------------------------


def leave_one_out(
    vectors: np.ndarray,
    query_rows: np.ndarray,
    k: int,
    *,
    block: int = 1024,
    progress: Progress | None = None,
) -> np.ndarray:
    """int64 [q, k]: each query row's k nearest other rows of ``vectors`` (unit rows), best first."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    query_rows = np.asarray(query_rows, dtype=np.int64)
    n = len(vectors)
    kk = min(k, n - 1)
    out = np.empty((len(query_rows), kk), np.int64)
    buffer = np.empty((min(block, max(len(query_rows), 1)), n), np.float32)
    for start in range(0, len(query_rows), block):
        rows = query_rows[start : start + block]
        sims = np.matmul(vectors[rows], vectors.T, out=buffer[: len(rows)])
        sims[np.arange(len(rows)), rows] = -np.inf  # a product is not its own recommendation
        out[start : start + len(rows)] = top_k_rows(sims, kk)[0]
        if progress:
            progress(start + len(rows), len(query_rows))
    return out


def rank(
    index_vectors: np.ndarray,
    query_vectors: np.ndarray,
    k: int,
    *,
    block: int = 1024,
) -> np.ndarray:
    """int64 [q, k]: the k index rows nearest each query (unit rows), best first."""
    index_vectors = np.ascontiguousarray(index_vectors, dtype=np.float32)
    out = np.empty((len(query_vectors), min(k, len(index_vectors))), np.int64)
    for start in range(0, len(query_vectors), block):
        q = np.asarray(query_vectors[start : start + block], np.float32)
        out[start : start + len(q)] = top_k_rows(q @ index_vectors.T, k)[0]
    return out


def pipeline_rank(
    index_vectors: np.ndarray,
    query_vectors: np.ndarray,
    predictions: Sequence[Prediction],
    index_labels: Labels,
    n: int,
    policy: SearchPolicy | None = None,
    *,
    block: int = 256,
    groups: Groups | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Photo search's top n per query: (rows int64 [q, n], the widest level each consulted).

    The live search's own ranking (``ml.search_levels.rank``), every index row eligible.
    ``groups`` (built from ``index_labels``) can be passed in to be reused across calls.
    """
    if len(predictions) != len(query_vectors):
        raise ValueError("one prediction per query is needed")
    policy = policy if policy is not None else SearchPolicy()
    index_vectors = np.ascontiguousarray(index_vectors, dtype=np.float32)
    n = min(n, len(index_vectors))
    candidates = ArrayCandidates(groups if groups is not None else Groups(index_labels))
    out = np.empty((len(query_vectors), n), np.int64)
    levels: list[str] = []
    for start in range(0, len(query_vectors), block):
        q = np.asarray(query_vectors[start : start + block], np.float32)
        scores = q @ index_vectors.T
        for i in range(len(q)):
            ranking = search_levels.rank(
                scores[i], predictions[start + i], candidates, n, policy, direct_limit=0
            )
            out[start + i] = ranking.rows
            levels.append(ranking.searched)
    return out, levels


# -- scores ----------------------------------------------------------------------------------


def score_rankings(
    query: Labels,
    recommended: np.ndarray,
    index: Labels,
    k: int,
    *,
    query_in_index: bool = False,
) -> dict:
    """The report's table plus precision@k, colour-match@k and mAP@k for one ranking.

    ``recommended`` int [q, >=k] holds row numbers into ``index``.
    """
    rec = np.asarray(recommended)[:, :k]
    rec_labels = index.take(rec)
    table = metrics.report_table(
        {f: (query.feature(f), rec_labels.feature(f)) for f in FEATURES}, k
    )
    derived_q = query.derived_type
    return {
        "queries": int(len(query)),
        "k": int(k),
        "table": table,
        "precision_at_k": {
            "articleType": metrics.mean_precision_at_k(
                query.article_type, rec_labels.article_type, k
            ),
            "gender": metrics.mean_precision_at_k(query.gender, rec_labels.gender, k),
            "gender+articleType": metrics.mean_precision_at_k(
                derived_q, rec_labels.derived_type, k
            ),
        },
        "colour_match_at_k": metrics.mean_precision_at_k(
            query.base_colour, rec_labels.base_colour, k
        ),
        "map_at_k": metrics.map_at_k(
            derived_q, rec_labels.derived_type, index.derived_type, k, query_in_index=query_in_index
        ),
    }


def classifier_scores(
    truth: Labels,
    predictions: Sequence[Prediction],
    type_sets: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, float]:
    """Accuracy of each head against the queries' true labels (subCategory, gender +
    articleType, baseColour), and articleType alone as the gender + articleType head names
    it; for each named set of ``type_sets``, articleType also on the queries of those types
    only (key ``articleType (<name>)``)."""
    out = {}
    for head, field in (
        ("sub", "subCategory"),
        ("type", "gender+articleType"),
        ("colour", "baseColour"),
    ):
        pred = np.asarray(
            [getattr(p, head)[0] if getattr(p, head) else None for p in predictions], dtype=object
        )
        if all(v is None for v in pred):
            continue
        out[field] = metrics.classifier_accuracy(truth.feature(field), pred)
        if head == "type":
            article = np.asarray([v and split_derived_type(v)[1] for v in pred], object)
            out["articleType"] = metrics.classifier_accuracy(truth.article_type, article)
            for name, types in (type_sets or {}).items():
                out[f"articleType ({name})"] = type_set_accuracy(truth, article, types)
    return out


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / mean in milliseconds and the sample size."""
    ms = np.asarray(seconds, np.float64) * 1000
    if len(ms) == 0:
        return {"n": 0}
    return {
        "n": int(len(ms)),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "mean_ms": round(float(ms.mean()), 2),
    }


# -- classifier answers for a batch of queries -------------------------------------------------


def head_predictions(headset, embeddings: np.ndarray) -> list[Prediction]:
    """Photo-search heads (``ml.heads.HeadSet``) applied to a batch, decoded as search does."""
    x = np.atleast_2d(np.asarray(embeddings, np.float32))
    probs = {name: head.predict(x) for name, head in headset.heads.items()}
    out = []
    for i in range(len(x)):
        answer: dict[str, tuple[str, float]] = {}
        for name in ("sub", "colour"):
            if name in probs:
                j = int(np.argmax(probs[name][i]))
                answer[name] = (headset.heads[name].classes[j], float(probs[name][i][j]))
        if "type" in probs:
            sub = HeadPrediction(*answer["sub"]) if "sub" in answer else None
            answer["type"] = decode_type(
                probs["type"][i],
                headset.heads["type"].classes,
                headset.decoding,
                headset.type_to_sub,
                sub,
            )
        out.append(Prediction(**answer))
    return out


def articles_among(classes: Sequence[str], probs: np.ndarray, types: Sequence[str]) -> np.ndarray:
    """The articleType each query is given when the answer must be one of ``types``: the
    gender + articleType head's probabilities (``probs`` [n, len(classes)]) summed over
    genders per type, the likeliest of ``types`` taken. This is the answer of a classifier
    that knows only those types, as in the published protocol (trained and tested on the 20
    most common types alone)."""
    column = {t: j for j, t in enumerate(types)}
    member = np.zeros((len(classes), len(types)), np.float32)
    for i, label in enumerate(classes):
        j = column.get(split_derived_type(label)[1])
        if j is not None:
            member[i, j] = 1.0
    summed = np.atleast_2d(np.asarray(probs, np.float32)) @ member
    return np.asarray(types, dtype=object)[np.argmax(summed, axis=1)]


def closed_set_name(name: str) -> str:
    """The result key of articleType on a named set of types, answered among them only."""
    return f"articleType ({name}, answered among them)"


def type_set_accuracy(truth: Labels, articles: np.ndarray, types: Sequence[str]) -> float:
    """articleType accuracy on the queries of ``types`` only."""
    mask = np.isin(truth.article_type.astype(str), np.asarray(types, str))
    return metrics.classifier_accuracy(truth.article_type[mask], np.asarray(articles)[mask])


def projection_predictions(
    projection, projected: Mapping[str, np.ndarray], type_to_sub: Mapping[str, str]
) -> list[Prediction]:
    """The tuned projection used as a classifier: nearest class vector per branch; the
    sub-category is the predicted type's (confidence that of the type)."""
    type_probs = projection.classify(projected, "type")
    colour_probs = projection.classify(projected, "colour")
    types, colours = projection.classes["type"], projection.classes["colour"]
    out = []
    for tp, cp in zip(type_probs, colour_probs, strict=True):
        t, c = int(np.argmax(tp)), int(np.argmax(cp))
        label = types[t]
        sub = type_to_sub.get(label)
        out.append(
            Prediction(
                type=(label, float(tp[t])),
                sub=(sub, float(tp[t])) if sub else None,
                colour=(colours[c], float(cp[c])),
            )
        )
    return out


def ensemble_predictions(
    headset, projection, embeddings: np.ndarray, projected: Mapping[str, np.ndarray]
) -> list[Prediction]:
    """The photo-search heads and the tuned projection voting together: their class
    probabilities averaged (equal weights) over the classes both know, for the type and the
    colour; the sub-category is the heads' own."""
    x = np.atleast_2d(np.asarray(embeddings, np.float32))
    averaged: dict[str, tuple[list[str], np.ndarray]] = {}
    for name in ("type", "colour"):
        head = headset.heads[name]
        classes = sorted(set(head.classes) & set(projection.classes[name]))
        hi = [head.classes.index(c) for c in classes]
        pi = [projection.classes[name].index(c) for c in classes]
        probs = 0.5 * head.predict(x)[:, hi] + 0.5 * projection.classify(projected, name)[:, pi]
        averaged[name] = (classes, probs)
    sub_head = headset.heads["sub"]
    sub_probs = sub_head.predict(x)
    out = []
    for i in range(len(x)):
        answer = {}
        for name, (classes, probs) in averaged.items():
            j = int(np.argmax(probs[i]))
            answer[name] = (classes[j], float(probs[i][j]))
        j = int(np.argmax(sub_probs[i]))
        answer["sub"] = (sub_head.classes[j], float(sub_probs[i][j]))
        out.append(Prediction(**answer))
    return out
