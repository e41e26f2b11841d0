"""The three kinds of evaluation run: leave-one-out over the catalogue (product pages), a
held-out split and a query folder (photo searches)."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import numpy as np
from flask import current_app

from ml import evaluation as ev
from ml.colour import ColourDescriptor
from ml.preprocess import load_image
from worker.jobs.evaluation.artefacts import served_heads, split_heads
from worker.jobs.evaluation.catalogue import (
    Catalogue,
    backbone_for,
    colour_descriptors,
    load_catalogue,
    read_query_folder,
)
from worker.jobs.evaluation.options import (
    HEAD_DESCRIPTIONS,
    PROTOCOL_TOP_TYPES,
    PUBLISHED_TOP_TYPES,
    YEAR_SPLIT,
    EvaluationError,
    Options,
    Say,
)
from worker.jobs.evaluation.report import header
from worker.jobs.evaluation.searches import PhotoQueries, photo_models, sample_photos
from worker.jobs.evaluation.vectors import Queries, build_model
from worker.jobs.evaluation.wild import run_wild, wild_photos


def run(opts: Options, say: Say | None = None) -> dict[str, Any]:
    """Run one evaluation (leave-one-out, held-out split or a query folder) and return it."""
    started = time.perf_counter()
    cat = load_catalogue(opts.model_id)
    needs_colour = set(opts.heads) & {"colour", "projection", "tuned"}
    colours = colour_descriptors(cat, say) if needs_colour else None
    if opts.queries:
        result = run_queries(cat, colours, opts, say)
    elif opts.protocol == YEAR_SPLIT:
        result = run_year_split(cat, colours, opts, say)
    elif opts.split:
        result = run_split(cat, colours, opts, say)
    else:
        result = run_leave_one_out(cat, colours, opts, say)
    result.update(header(opts, cat))
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def run_leave_one_out(
    cat: Catalogue, colours: np.ndarray | None, opts: Options, say: Say | None
) -> dict[str, Any]:
    """Each product's own neighbours (itself excluded), as a product page lists them."""
    query_rows = (
        ev.common_type_rows(cat.labels.article_type, opts.min_type_count)
        if opts.min_type_count > 1
        else np.arange(len(cat.ids))
    )
    all_rows = np.arange(len(cat.ids))
    none = Queries(cat.vectors[:0], None if colours is None else colours[:0])
    models = []
    for head in opts.heads:
        t0 = time.perf_counter()
        built = build_model(head, cat, colours, all_rows, none, all_rows, opts, say)
        t1 = time.perf_counter()
        if say:
            say(
                f"Leave-one-out, {head}: ranking {len(query_rows)} products against {len(all_rows)}..."
            )
        recs = ev.leave_one_out(built.index, query_rows, opts.k)
        t2 = time.perf_counter()
        scores = ev.score_rankings(
            cat.labels.take(query_rows), recs, cat.labels, opts.k, query_in_index=True
        )
        models.append(
            {
                "name": head,
                "description": HEAD_DESCRIPTIONS[head],
                "model_id": built.model_id,
                "ranking": "leave-one-out: each product's own neighbours, itself excluded",
                "index": int(len(all_rows)),
                **scores,
                "latency": {
                    "what": "batched exact ranking, per query (product pages read precomputed lists)",
                    "mean_ms": round(1000 * (t2 - t1) / max(len(query_rows), 1), 3),
                },
                "seconds": {"build": round(t1 - t0, 1), "rank": round(t2 - t1, 1)},
            }
        )
    return {
        "kind": "leave-one-out",
        "queries_from": (
            f"catalogue products of articleTypes with >= {opts.min_type_count} images"
            if opts.min_type_count > 1
            else "every catalogue product"
        ),
        "models": models,
    }


def run_split(
    cat: Catalogue, colours: np.ndarray | None, opts: Options, say: Say | None
) -> dict[str, Any]:
    """A stratified share of the catalogue held out (never indexed, never trained on) and
    searched as uploaded photos; with ``opts.wild``, their wild photos too, side by side."""
    kept, held = held_out(cat.labels, opts.split, opts.seed)
    wild = wild_photos(cat, held, opts, say) if opts.wild else None
    if wild is not None:
        held = wild.rows  # both sides ask for the same products
    if say:
        say(
            f"Held out {len(held)} products ({opts.split:.0%} of each gender + articleType, "
            f"seed {opts.seed}): not indexed, not trained on; {len(kept)} kept."
        )
    result = {
        "kind": "held-out",
        "queries_from": (
            f"{len(held)} held-out catalogue products ({opts.split:.0%} stratified by gender + "
            f"articleType, seed {opts.seed}); their stored embeddings are what embedding the "
            "uploaded photo gives (same backbone, same preprocessing)"
        ),
        "split": {
            "fraction": opts.split,
            "seed": opts.seed,
            "kept": int(len(kept)),
            "held": int(len(held)),
        },
    }
    photo_queries = held_out_queries(cat, colours, kept, held, opts, say)
    result["models"] = photo_models(cat, colours, photo_queries, opts, say)
    if wild is not None:
        result["wild"] = run_wild(cat, colours, photo_queries, wild, opts, say)
    return result


def run_year_split(
    cat: Catalogue, colours: np.ndarray | None, opts: Options, say: Say | None
) -> dict[str, Any]:
    """The published protocol: everything the shop trains (tuned network, heads) trained on
    the products of even years, the products of odd years searched as uploaded photos; the
    articleType classifier scored on all of them and on the most common types."""
    kept, held = year_split(cat.years)
    if not len(kept) or not len(held):
        raise EvaluationError(
            "The year-split protocol needs products of both even and odd years: "
            f"{len(kept)} even, {len(held)} odd."
        )
    top = most_common_types(cat.labels.article_type[kept])
    published = most_common_types(cat.labels.article_type)
    type_sets = {type_set_name(top): top, type_set_name(published, "the catalogue's "): published}
    if say:
        say(
            f"Year split: {len(kept)} products of even years indexed and trained on, "
            f"{len(held)} of odd years searched ({len(cat.ids) - len(kept) - len(held)} "
            f"without a year left out); the {len(top)} most common training types and the "
            f"{len(published)} most common of the whole catalogue (the published table's "
            "classes) scored apart."
        )
    photo_queries = held_out_queries(cat, colours, kept, held, opts, say, type_sets=type_sets)
    return {
        "kind": YEAR_SPLIT,
        "queries_from": (
            f"{len(held)} catalogue products of odd years, the index and every trained part "
            f"from the {len(kept)} of even years (--protocol {YEAR_SPLIT})"
        ),
        "protocol": {
            "name": YEAR_SPLIT,
            "kept": int(len(kept)),
            "held": int(len(held)),
            "top_types": list(top),
            "catalogue_top_types": list(published),
            "type_sets": {name: list(types) for name, types in type_sets.items()},
            "published": PUBLISHED_TOP_TYPES,
        },
        "models": photo_models(cat, colours, photo_queries, opts, say),
    }


def most_common_types(article_types: np.ndarray) -> tuple[str, ...]:
    """The protocol's number of most common articleTypes among these products."""
    counts = Counter(article_types.tolist())
    counts.pop(None, None)
    return tuple(t for t, _ in counts.most_common(PROTOCOL_TOP_TYPES))


def type_set_name(types: tuple[str, ...], whose: str = "") -> str:
    """A set of most common types as results name it: 'top 20 types' (the training years'),
    "the catalogue's top 20 types"."""
    return f"{whose}top {len(types)} types"


def year_split(years: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows (even years, odd years); rows without a year are in neither."""
    known = years >= 0
    return np.flatnonzero(known & (years % 2 == 0)), np.flatnonzero(known & (years % 2 == 1))


def held_out_queries(
    cat: Catalogue,
    colours: np.ndarray | None,
    kept: np.ndarray,
    held: np.ndarray,
    opts: Options,
    say: Say | None,
    type_sets: dict[str, tuple[str, ...]] | None = None,
) -> PhotoQueries:
    """The held rows searched as uploaded photos against the kept rows, with heads trained
    on the kept rows only."""
    needs_heads = set(opts.heads) - {"tuned"}
    headset = split_heads(cat, kept, retrain=opts.retrain, say=say) if needs_heads else None
    queries = Queries(cat.vectors[held], None if colours is None else colours[held], rows=held)
    return PhotoQueries(
        index_rows=kept,
        queries=queries,
        query_labels=cat.labels.take(held),
        index_labels=cat.labels.take(kept),
        headset=headset,
        photos=sample_photos([cat.photos[i] for i in held], opts),
        type_sets=dict(type_sets or {}),
    )


def held_out(labels: ev.Labels, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows (kept, held out) of the ``--split`` run: ``fraction`` of each gender +
    articleType, reproducibly for a seed (also what bench/make_wild_queries.py photographs)."""
    return ev.holdout_split(list(labels.derived_type), fraction, seed)


def run_queries(
    cat: Catalogue, colours: np.ndarray | None, opts: Options, say: Say | None
) -> dict[str, Any]:
    """A query folder's products the catalogue does not hold, searched as uploaded photos."""
    ids, photos, labels = read_query_folder(opts.queries)
    known = set(cat.ids.tolist())
    keep = [i for i, pid in enumerate(ids) if pid not in known]
    dropped = len(ids) - len(keep)
    if not keep:
        raise EvaluationError(
            "None of the query folder's products is outside the catalogue: queries must be "
            "photos the catalogue does not hold (use --split to hold some out)."
        )
    photos = [photos[i] for i in keep]
    backbone = backbone_for(cat.model_id)
    if backbone is None:
        raise EvaluationError(f"The backbone of {cat.model_id} cannot be built here.")
    if say:
        say(f"Embedding {len(photos)} query photos with {cat.model_id}...")
    images = [load_image(str(p)) for p in photos]
    qv = backbone.embed_query(images, batch_size=current_app.config["EMBEDDING_BATCH_SIZE"])
    qc = ColourDescriptor().describe(images) if colours is not None else None
    headset = served_heads(cat.model_id)
    photo_queries = PhotoQueries(
        index_rows=np.arange(len(cat.ids)),
        queries=Queries(qv, qc, images=images),
        query_labels=labels.take(np.asarray(keep)),
        index_labels=cat.labels,
        headset=headset,
        photos=sample_photos(photos, opts),
    )
    return {
        "kind": "queries",
        "queries_from": (
            f"{len(photos)} photos of {opts.queries} not in the catalogue"
            + (f" ({dropped} catalogue products in the folder left out)" if dropped else "")
            + ("" if headset else "; no trained heads: every search is catalogue-wide")
        ),
        "models": photo_models(cat, colours, photo_queries, opts, say),
    }
