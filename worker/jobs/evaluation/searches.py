"""Photo searches measured: held-out or query-folder photos searched the way an uploaded
photo is (the photo-search levels narrowed by a classifier), each evaluated model scored on
them, by plain ranking too, and timed one photo at a time."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml import evaluation as ev
from ml.colour import ColourDescriptor, fuse
from ml.compact import Projection
from ml.heads import HeadSet
from ml.preprocess import load_image
from ml.projection import FusionWeights
from ml.search_levels import Groups, SearchPolicy
from worker.jobs import photo_search
from worker.jobs.evaluation.artefacts import type_to_sub
from worker.jobs.evaluation.catalogue import Catalogue, backbone_for
from worker.jobs.evaluation.options import HEAD_DESCRIPTIONS, Options, Say, colour_first
from worker.jobs.evaluation.vectors import Built, Queries, build_model

# The classifiers' names as results report them.
HEADS_NAME = "photo-search heads"
PROJECTION_NAME = "projection"
ENSEMBLE_NAME = "heads + projection"
TUNED_NAME = "the tuned backbone's heads"
# --classifier -> the classifier narrowing searches (the tuned backbone always uses its own).
CLASSIFIER_CHOICES = {"projection": PROJECTION_NAME, "ensemble": ENSEMBLE_NAME}


@dataclass
class PhotoQueries:
    """One photo-search run's queries and index: what every evaluated model is scored on."""

    index_rows: np.ndarray
    queries: Queries
    query_labels: ev.Labels
    index_labels: ev.Labels
    headset: HeadSet | None  # the photo-search heads (trained without the queries)
    photos: list[Path]  # the photos timed one by one
    # named sets of articleTypes: accuracy also on each set's queries alone
    type_sets: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)


@dataclass
class _Shared:
    """What the evaluated models of one run share: the rules, the groups, the heads' answers."""

    policy: SearchPolicy
    groups: Groups
    head_preds: list[ev.Prediction] | None
    type_to_sub: dict[str, str]


def search_policy(opts: Options) -> SearchPolicy:
    """The live search's rules (the shop's SEARCH_* settings), with the run's colour-first
    choice."""
    return photo_search.search_policy(colour_first=colour_first(opts))


def rank_photos(
    built: Built,
    queries: np.ndarray,
    preds: list[ev.Prediction],
    index_labels: ev.Labels,
    k: int,
    shared: _Shared,
) -> tuple[np.ndarray, list[str]]:
    """Photo search's top k per query and the widest level each consulted: the live search's
    level plan (``ml.search_levels.rank``, through ``ml.evaluation``) with every index row
    eligible; the one call into the ranking, shared by the scores and the latency."""
    return ev.pipeline_rank(
        built.index, queries, preds, index_labels, k, shared.policy, groups=shared.groups
    )


def photo_models(
    cat: Catalogue, colours: np.ndarray | None, run: PhotoQueries, opts: Options, say: Say | None
) -> list[dict[str, Any]]:
    """Evaluate each head through the photo-search policy (and by plain ranking too)."""
    shared = _Shared(
        policy=search_policy(opts),
        groups=Groups(run.index_labels),
        head_preds=(
            ev.head_predictions(run.headset, run.queries.vectors)
            if run.headset is not None
            else None
        ),
        type_to_sub=type_to_sub(run.index_labels),
    )
    return [_photo_model(head, cat, colours, run, shared, opts, say) for head in opts.heads]


def _photo_model(
    head: str,
    cat: Catalogue,
    colours: np.ndarray | None,
    run: PhotoQueries,
    shared: _Shared,
    opts: Options,
    say: Say | None,
) -> dict[str, Any]:
    """One evaluated model's photo-search scores, levels, classifier accuracy and latency."""
    t0 = time.perf_counter()
    built = build_model(head, cat, colours, run.index_rows, run.queries, run.index_rows, opts, say)
    if opts.compact:
        built = compacted(built, opts.compact)
    t1 = time.perf_counter()
    chosen, preds, answers = _classifiers(built, run, shared, opts)
    if say:
        say(
            f"Photo search, {head}: {len(run.queries.vectors)} queries against "
            f"{len(run.index_rows)} products..."
        )
    if preds is None:
        preds = [ev.Prediction()] * len(run.queries.vectors)
    recs, levels = rank_photos(built, built.queries, preds, run.index_labels, opts.k, shared)
    t2 = time.perf_counter()
    plain_recs = ev.rank(built.index, built.queries, opts.k)
    scores = ev.score_rankings(run.query_labels, recs, run.index_labels, opts.k)
    ranking_only = ev.score_rankings(run.query_labels, plain_recs, run.index_labels, opts.k)
    return {
        "name": head,
        "description": HEAD_DESCRIPTIONS[head],
        "model_id": built.model_id,
        "ranking": f"photo-search pipeline (classifier: {chosen}"
        + ("; predicted colour first" if colour_first(opts) else "")
        + (f"; vectors compacted to {opts.compact} dims" if opts.compact else "")
        + ")",
        "index": int(len(run.index_rows)),
        **scores,
        "ranking_only": {
            key: ranking_only[key]
            for key in ("table", "precision_at_k", "colour_match_at_k", "map_at_k")
        },
        "classifier": _classifier_scores(built, run, answers),
        "levels": {lvl: levels.count(lvl) for lvl in sorted(set(levels))},
        "latency": latency(cat, built, run, shared, opts),
        "seconds": {"build": round(t1 - t0, 1), "rank": round(t2 - t1, 1)},
    }


def compacted(built: Built, dims: int) -> Built:
    """The model's index and query vectors projected as a large catalogue's index projects
    them (``ml.compact.Projection`` fitted on the index rows)."""
    projection = Projection.fit(built.index, dims)
    return dataclasses.replace(
        built, index=projection.apply(built.index), queries=projection.apply(built.queries)
    )


def _classifiers(
    built: Built, run: PhotoQueries, shared: _Shared, opts: Options
) -> tuple[str, list[ev.Prediction] | None, dict[str, list[ev.Prediction]]]:
    """(the name of the classifier that narrows the searches, its answers, every available
    classifier's answers by name)."""
    projection = ensemble = own = None
    if built.projection is not None:
        projection = ev.projection_predictions(
            built.projection, built.projected_queries, shared.type_to_sub
        )
        if run.headset is not None:
            ensemble = ev.ensemble_predictions(
                run.headset, built.projection, run.queries.vectors, built.projected_queries
            )
    if built.headset is not None:
        own = ev.head_predictions(built.headset, built.queries)
    answers = {
        HEADS_NAME: shared.head_preds if own is None else None,
        PROJECTION_NAME: projection,
        ENSEMBLE_NAME: ensemble,
        TUNED_NAME: own,
    }
    chosen = TUNED_NAME if own is not None else CLASSIFIER_CHOICES.get(opts.classifier)
    if chosen is None or answers[chosen] is None:
        chosen = HEADS_NAME
    preds = answers[chosen]
    available = {name: answer for name, answer in answers.items() if answer is not None}
    return (chosen if preds is not None else "none"), preds, available


def _classifier_scores(
    built: Built, run: PhotoQueries, answers: dict[str, list[ev.Prediction]]
) -> dict[str, dict[str, float]]:
    """Each classifier's accuracy; on each of the run's named type sets, the heads'
    articleType also answered among that set's types alone (the published protocol's
    closed set)."""
    scores = {
        name: ev.classifier_scores(run.query_labels, answer, run.type_sets)
        for name, answer in answers.items()
    }
    if not run.type_sets:
        return scores
    heads = {
        TUNED_NAME: (built.headset, built.queries),
        HEADS_NAME: (run.headset, run.queries.vectors),
    }
    for name, (headset, vectors) in heads.items():
        if name not in scores or headset is None:
            continue
        head = headset.heads["type"]
        probs = head.predict(np.atleast_2d(np.asarray(vectors, np.float32)))  # once per head
        for set_name, types in run.type_sets.items():
            articles = ev.articles_among(head.classes, probs, types)
            scores[name][ev.closed_set_name(set_name)] = ev.type_set_accuracy(
                run.query_labels, articles, types
            )
    return scores


def latency(
    cat: Catalogue, built: Built, run: PhotoQueries, shared: _Shared, opts: Options
) -> dict[str, Any]:
    """Per-photo time through the whole path: decode, embed, colour, classify, rank."""
    photos = [p for p in run.photos if p is not None][: opts.latency_sample]
    if not photos:
        return {}
    backbone = built.embedder or backbone_for(cat.model_id)
    if backbone is None:
        return {"what": "not measured: the model's backbone cannot be built here"}
    heads = built.headset or run.headset
    descriptor = ColourDescriptor()
    backbone.embed_query([load_image(str(photos[0]))])  # the first call builds the graph
    times = []
    for path in photos:
        t0 = time.perf_counter()
        img = load_image(str(path))
        e = backbone.embed_query([img])
        if built.head in ("plain", "tuned"):
            q = e  # a tuned backbone's embedding already holds the colour descriptor
        elif built.head == "colour":
            q = fuse(e, descriptor.describe([img]), opts.colour_weight)
        else:
            q = built.projection.retrieval_vectors(e, descriptor.describe([img]), FusionWeights())
        preds = ev.head_predictions(heads, e) if heads is not None else [ev.Prediction()]
        rank_photos(built, q, preds, run.index_labels, opts.k, shared)
        times.append(time.perf_counter() - t0)
    steps = "decode, embed" + ("" if built.head == "plain" else ", colour descriptor")
    return {
        "what": f"one photo: {steps}, classify, rank (no broker, no DB)",
        **ev.latency_summary(times),
    }


def sample_photos(photos: list, opts: Options) -> list:
    """A reproducible sample of query photos for the latency measurement."""
    if not opts.latency_sample or not photos:
        return []
    rng = np.random.default_rng(opts.seed)
    picked = rng.choice(len(photos), min(opts.latency_sample, len(photos)), replace=False)
    return [photos[i] for i in sorted(picked)]
