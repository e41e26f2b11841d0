"""Evaluation runs for ``flask model evaluate`` and the admin Quality page.

Loads a model's stored embeddings and the catalogue's labels, builds each evaluated model's
vectors (``plain``: the backbone embedding; ``colour``: fused with the colour descriptor;
``projection``: projections trained on the frozen embedding; ``tuned``: the catalogue-tuned
backbone, ``ml.finetune``), ranks the queries the way a product page or a photo search
does, scores the rankings (``ml.evaluation``) and stores the result as JSON beside the
model's embeddings for the Quality page. Runs in the CLI, never in a page.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from flask import current_app
from sqlalchemy import select

from ml import evaluation as ev
from ml.colour import ColourDescriptor, fuse
from webapp.extensions import db
from webapp.media import image_file
from webapp.models import Product
from webapp.similar.indexing import image_key, store_for

logger = logging.getLogger(__name__)

HEADS = ("plain", "colour", "projection", "tuned")
HEAD_DESCRIPTIONS = {
    "plain": "backbone embedding, cosine",
    "colour": "backbone embedding + colour descriptor (weighted)",
    "projection": "projections trained on the frozen embedding (type + colour) + embedding + "
    "colour descriptor",
    "tuned": "catalogue-tuned backbone: its features, type and colour predictions, colour "
    "descriptor",
}
KINDS = ("leave-one-out", "held-out", "queries")
RESULT_VERSION = 1
# The split's heads keep a small validation share of the kept rows (train_heads needs one);
# the rest is training data. Held-out rows are never among either.
HEADS_VAL_FRACTION = 0.05
PROJECT_ROOT = Path(__file__).resolve().parents[2]

Progress = Callable[[str, int, int], None]
Say = Callable[[str], None]


class EvaluationError(Exception):
    """An evaluation that cannot run (nothing embedded, bad query folder...)."""


@dataclass
class Options:
    """What one evaluation run does."""

    model_id: str
    heads: tuple[str, ...] = ("plain",)
    k: int = 10
    min_type_count: int = ev.REFERENCE_MIN_TYPE_COUNT
    split: float | None = None
    seed: int = 0
    queries: str | None = None
    colour_weight: float = 0.3
    classifier: str = "heads"  # heads | projection | ensemble: which classifier narrows searches
    colour_first: bool | None = None  # photo searches: the predicted colour first within the
    # type (None: as the shop is configured, SEARCH_COLOUR_FIRST)
    latency_sample: int = 50
    retrain: bool = False
    network: str | None = None  # the tuned model id leave-one-out serves (None: the newest)


@dataclass
class Catalogue:
    """A model's embedded products with their labels and photos, row-aligned."""

    model_id: str
    ids: np.ndarray
    vectors: np.ndarray
    labels: ev.Labels
    photos: list[Path | None]
    keys: list[str]


# -- loading ---------------------------------------------------------------------------------


def evaluations_folder(model_id: str) -> Path:
    """Where a base model's evaluation results are kept: beside its embeddings."""
    return store_for(model_id).path / "evaluations"


def default_model_id() -> str:
    """The served model, else the configured backbone's."""
    from webapp.similar import indexing

    try:
        served = indexing.neighbour_cache().active_model()
    except Exception:  # noqa: BLE001 - Redis down: the configuration still names a model
        served = None
    if served:
        return served
    cfg = current_app.config
    name = cfg["EMBEDDING_BACKBONE"]
    for folder in sorted(Path(cfg["MODEL_FOLDER"]).glob(f"{name}-*")):
        size = cfg["EMBEDDING_INPUT_SIZE"]
        if folder.is_dir() and folder.name.endswith(f"-{size}-{cfg['EMBEDDING_POOLING']}"):
            return folder.name
    return indexing.load_backbone().model_id


def resolve_model(name: str | None) -> str:
    """A model id from ``--model``/``--backbone``: an id as it is, a backbone name -> the
    stored model of that backbone (the configured input size and pooling preferred)."""
    if not name:
        return default_model_id()
    folder = Path(current_app.config["MODEL_FOLDER"])
    if (folder / name).is_dir():
        return name
    cfg = current_app.config
    candidates = sorted(
        p.name
        for p in folder.glob(f"{name}-*")
        if "." not in p.name and (p / "state.json").exists()  # not tuned models, not maps
    )
    preferred = [
        c
        for c in candidates
        if c.endswith(f"-{cfg['EMBEDDING_INPUT_SIZE']}-{cfg['EMBEDDING_POOLING']}")
    ]
    if preferred or candidates:
        return (preferred or candidates)[0]
    raise EvaluationError(
        f"No stored embeddings for {name!r} under {folder}: embed the catalogue with it first."
    )


def resolve_model_and_network(name: str | None) -> tuple[str, str | None]:
    """(base model id, tuned model id or None) for ``--model``: a tuned id evaluates its base
    beside it; a base id (or none: the served model) brings the newest network tuned on it."""
    from ml.finetune import base_model_id, is_tuned_id
    from webapp.similar import indexing

    model_id = resolve_model(name)
    if is_tuned_id(model_id):
        if not (indexing.network_folder(model_id) / "meta.json").exists():
            raise EvaluationError(f"No tuned network {model_id} under the model folder.")
        return base_model_id(model_id), model_id
    folder = indexing.newest_network(model_id)
    return model_id, (folder.parent.name if folder is not None else None)


def load_catalogue(model_id: str) -> Catalogue:
    """The model's stored embeddings with each product's labels and photo."""
    ids, vectors = store_for(model_id).load()
    if len(ids) < 20:
        raise EvaluationError(
            f"Model {model_id} has {len(ids)} embedded products: embed the catalogue first "
            "(flask --app wsgi catalog embed --now)."
        )
    rows = {
        r.id: r
        for r in db.session.execute(
            select(
                Product.id,
                Product.gender,
                Product.article_type,
                Product.base_colour,
                Product.sub_category,
                Product.image_path,
                Product.image_sha256,
            )
        )
    }
    db.session.rollback()
    keep = np.asarray([int(i) in rows for i in ids])
    ids = ids[keep]
    vectors = np.ascontiguousarray(np.asarray(vectors)[keep], dtype=np.float32)
    media = current_app.config["MEDIA_FOLDER"]
    records, photos, keys = [], [], []
    for pid in ids.tolist():
        r = rows[pid]
        records.append(
            {
                "gender": r.gender,
                "article_type": r.article_type,
                "base_colour": r.base_colour,
                "sub_category": r.sub_category,
            }
        )
        photos.append(image_file(r.image_path, media))
        keys.append(image_key(r.image_path, r.image_sha256))
    return Catalogue(model_id, ids, vectors, ev.Labels.from_records(records), photos, keys)


def colour_descriptors(cat: Catalogue, say: Say | None = None) -> np.ndarray:
    """Colour descriptors of the catalogue's photos (kept in their own store, redone only for
    photos that changed)."""
    from webapp.similar.tuning import CatalogueRows
    from webapp.similar.tuning import colour_descriptors as describe

    if say:
        say("Colour descriptors (stored; computed only where missing)...")
    return describe(CatalogueRows(cat.ids, cat.keys, cat.photos))


# -- models ----------------------------------------------------------------------------------


def _artefact_folder(model_id: str) -> Path:
    """Heads and projections the evaluation trains itself (on kept rows only), by row set."""
    return store_for(model_id).path / "evaluation-cache"


def _rows_tag(rows: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(rows, np.int64).tobytes()).hexdigest()[:10]


def trained_projection(
    cat: Catalogue, colours: np.ndarray, train_rows: np.ndarray, *, retrain: bool, say: Say | None
):
    """The projection trained on ``train_rows`` only (cached per model and row set)."""
    from ml.projection import Projection, ProjectionConfig, train_projection

    config = ProjectionConfig()
    tag = hashlib.sha256(
        (json.dumps(config.as_dict(), sort_keys=True) + _rows_tag(cat.ids[train_rows])).encode()
    ).hexdigest()[:10]
    path = _artefact_folder(cat.model_id) / f"projection-{tag}.npz"
    if path.exists() and not retrain:
        return Projection.load(path)
    if say:
        say(f"Training the projection on {len(train_rows)} products...")
    labels = cat.labels.take(train_rows)
    projection, report = train_projection(
        cat.vectors[train_rows],
        colours[train_rows],
        {"type": list(labels.derived_type), "colour": list(labels.base_colour)},
        config,
        meta={"model_id": cat.model_id, "rows_tag": _rows_tag(cat.ids[train_rows])},
    )
    if say:
        say(f"  trained in {report.seconds:.0f} s ({report.classes} classes).")
    projection.save(path)
    return projection


def split_heads(cat: Catalogue, train_rows: np.ndarray, *, retrain: bool, say: Say | None):
    """Photo-search heads trained on ``train_rows`` only, as ``flask model train`` trains them
    (cached per model and row set)."""
    from ml.heads import HeadSet, derived_type, train_heads

    folder = _artefact_folder(cat.model_id) / f"heads-{_rows_tag(cat.ids[train_rows])}"
    if (folder / "meta.json").exists() and not retrain:
        return HeadSet.load(folder)
    if say:
        say(f"Training the photo-search heads on the {len(train_rows)} kept products...")
    labels = cat.labels.take(train_rows)
    types = [derived_type(g, a) for g, a in zip(labels.gender, labels.article_type, strict=True)]
    try:
        headset, report = train_heads(
            cat.model_id,
            cat.vectors[train_rows],
            {"sub": list(labels.sub_category), "type": types, "colour": list(labels.base_colour)},
            val_fraction=HEADS_VAL_FRACTION,
        )
    except ValueError as exc:  # too few classes to learn: searches then go catalogue-wide
        if say:
            say(f"  no heads: {exc}")
        return None
    if say:
        say(f"  trained in {report.seconds:.0f} s.")
    headset.save(folder)
    return headset


def served_heads(model_id: str):
    """The heads photo search uses for this model (trained on the whole catalogue), or None."""
    from ml.heads import HeadSet

    try:
        return HeadSet.load(store_for(model_id).path / "heads")
    except FileNotFoundError:
        return None


def _type_to_sub(labels: ev.Labels) -> dict[str, str]:
    from ml.heads import majority_sub

    return majority_sub(list(labels.derived_type), list(labels.sub_category))


@dataclass
class Queries:
    """The query photos of a run: base embeddings, colour descriptors, and either their
    catalogue rows (held out) or the photos themselves (a query folder)."""

    vectors: np.ndarray
    colours: np.ndarray | None
    rows: np.ndarray | None = None
    images: list | None = None


@dataclass
class Built:
    """One evaluated model's vectors for the index rows and the query rows."""

    head: str
    model_id: str
    index: np.ndarray
    queries: np.ndarray
    projection: Any = None
    projected_queries: dict | None = None
    headset: Any = None  # the model's own photo-search heads (a tuned backbone has them)
    embedder: Any = None  # what embeds an uploaded photo, when not the base backbone


def tuned_network(
    cat: Catalogue, colours: np.ndarray, train_rows: np.ndarray, opts: Options, say: Say | None
):
    """(network, its embedding of every catalogue row): for leave-one-out the served (or
    newest) network of the base model, otherwise one trained on ``train_rows`` only, as
    ``flask model tune`` trains (cached per model, settings and row set)."""
    from ml.finetune import FeatureMaps, TunedNetwork, cut_layer
    from webapp.similar import indexing, tuning

    base = backbone_for(cat.model_id)
    if base is None:
        raise EvaluationError(f"The backbone of {cat.model_id} cannot be built here.")
    whole = len(train_rows) == len(cat.ids)
    network = None
    if whole and not opts.retrain:
        folder = (
            indexing.network_folder(opts.network)
            if opts.network
            else indexing.newest_network(cat.model_id)
        )
        if folder is not None and (folder / "meta.json").exists():
            network = TunedNetwork.load(folder)
            stored = store_for(network.model_id)
            positions = stored.positions(cat.ids)
            if (positions >= 0).all():
                if say:
                    say(f"Tuned backbone {network.model_id}: its stored embeddings.")
                return network, np.asarray(stored.load()[1])[positions]
    config = tuning.tune_config() if network is None else network.config
    fm = FeatureMaps(base, cut_layer(base, config), config.mirror)
    if say:
        say(f"Feature maps at {fm.cut} (stored; computed only where missing)...")
    rows = tuning.CatalogueRows(cat.ids, cat.keys, cat.photos)
    have, maps = tuning.feature_maps(fm, rows)
    if len(have) != len(cat.ids):
        raise EvaluationError(
            f"{len(cat.ids) - len(have)} catalogue photos cannot be read: the tuned backbone "
            "cannot be evaluated on them"
        )
    if network is None:
        # As `model tune` trains: a share of the rows it may see held back to validate and
        # to calibrate the classifiers' confidences (never a query row).
        tag = hashlib.sha256(
            (
                json.dumps(config.as_dict(), sort_keys=True)
                + _rows_tag(cat.ids[train_rows])
                + f"val{tuning.VAL_FRACTION}"
            ).encode()
        ).hexdigest()[:10]
        folder = _artefact_folder(cat.model_id) / f"network-{tag}"
        if (folder / "meta.json").exists() and not opts.retrain:
            network = TunedNetwork.load(folder)
        else:
            labels = tuning.catalogue_labels(cat.ids)
            fit, val = tuning.hold_back(labels["type"], train_rows, tuning.VAL_FRACTION, config)
            if say:
                say(
                    f"Tuning the backbone on {len(fit)} products ({len(val)} of the kept ones "
                    f"held back to validate and calibrate; {config.epochs} epochs)..."
                )
            network, report = tuning.train_on(
                base, config, maps, colours, labels, fit, val_rows=val, say=say
            )
            if say:
                say(f"  trained in {report.seconds:.0f} s.")
            network.save(folder)
    vectors = network.backbone(base).embed_maps(maps, colours)
    return network, vectors


def build_model(
    head: str,
    cat: Catalogue,
    colours: np.ndarray,
    index_rows: np.ndarray,
    queries: Queries,
    train_rows: np.ndarray,
    opts: Options,
    say: Say | None,
) -> Built:
    """Vectors of one evaluated model for the index rows and the queries."""
    query_vectors, query_colours = queries.vectors, queries.colours
    if head == "plain":
        return Built(head, cat.model_id, cat.vectors[index_rows], query_vectors)
    if head == "colour":
        w = opts.colour_weight
        return Built(
            head,
            f"{cat.model_id}.colour{round(100 * w)}",
            fuse(cat.vectors[index_rows], colours[index_rows], w),
            fuse(query_vectors, query_colours, w),
        )
    if head == "projection":
        projection = trained_projection(cat, colours, train_rows, retrain=opts.retrain, say=say)
        from ml.projection import FusionWeights

        weights = FusionWeights()
        return Built(
            head,
            f"{cat.model_id}.proj{projection.digest}.{weights.tag()}",
            projection.retrieval_vectors(cat.vectors[index_rows], colours[index_rows], weights),
            projection.retrieval_vectors(query_vectors, query_colours, weights),
            projection=projection,
            projected_queries=projection.transform(query_vectors, query_colours),
        )
    if head == "tuned":
        network, vectors = tuned_network(cat, colours, train_rows, opts, say)
        embedder = network.backbone(backbone_for(cat.model_id))
        if queries.rows is not None:
            query_tuned = vectors[queries.rows]
        elif queries.images:
            if say:
                say(f"Embedding {len(queries.images)} query photos with {network.model_id}...")
            query_tuned = embedder.embed(
                queries.images, batch_size=current_app.config["EMBEDDING_BATCH_SIZE"]
            )
        else:
            query_tuned = np.empty((0, vectors.shape[1]), np.float32)
        return Built(
            head,
            network.model_id,
            vectors[index_rows],
            query_tuned,
            headset=network.headset(_type_to_sub(cat.labels.take(train_rows))),
            embedder=embedder,
        )
    raise EvaluationError(f"unknown head {head!r}; choose from {', '.join(HEADS)}")


# -- the three kinds of run ------------------------------------------------------------------


def run(opts: Options, say: Say | None = None) -> dict[str, Any]:
    """Run one evaluation (leave-one-out, held-out split or a query folder) and return it."""
    started = time.perf_counter()
    cat = load_catalogue(opts.model_id)
    needs_colour = set(opts.heads) & {"colour", "projection", "tuned"}
    colours = colour_descriptors(cat, say) if needs_colour else None
    if opts.queries:
        result = _run_queries(cat, colours, opts, say)
    elif opts.split:
        result = _run_split(cat, colours, opts, say)
    else:
        result = _run_leave_one_out(cat, colours, opts, say)
    result.update(header(opts, cat))
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def _run_leave_one_out(cat: Catalogue, colours, opts: Options, say: Say | None) -> dict:
    query_rows = (
        ev.common_type_rows(cat.labels.article_type, opts.min_type_count)
        if opts.min_type_count > 1
        else np.arange(len(cat.ids))
    )
    all_rows = np.arange(len(cat.ids))
    none = Queries(cat.vectors[:0], _empty(colours))
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


def _empty(colours):
    return None if colours is None else colours[:0]


def _run_split(cat: Catalogue, colours, opts: Options, say: Say | None) -> dict:
    kept, held = ev.holdout_split(list(cat.labels.derived_type), opts.split, opts.seed)
    if say:
        say(
            f"Held out {len(held)} products ({opts.split:.0%} of each gender + articleType, "
            f"seed {opts.seed}): not indexed, not trained on; {len(kept)} kept."
        )
    needs_heads = set(opts.heads) - {"tuned"}
    headset = split_heads(cat, kept, retrain=opts.retrain, say=say) if needs_heads else None
    queries = Queries(cat.vectors[held], None if colours is None else colours[held], rows=held)
    return {
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
        "models": _photo_models(
            cat,
            colours,
            kept,
            queries,
            cat.labels.take(held),
            cat.labels.take(kept),
            headset,
            opts,
            say,
            _sample_photos([cat.photos[i] for i in held], opts),
        ),
    }


def _photo_models(
    cat, colours, index_rows, queries, query_labels, index_labels, headset, opts, say, photos
):
    """Evaluate each head through the photo-search policy (and by plain ranking too)."""
    from flask import current_app as app

    cfg = app.config
    policy = ev.PipelinePolicy(
        min_confidence=cfg.get("SEARCH_MIN_CONFIDENCE", 0.5),
        same_photo_cosine=cfg.get("SEARCH_SAME_PHOTO_COSINE", 0.98),
        colour_first=colour_first(opts),
    )
    qv = queries.vectors
    head_preds = ev.head_predictions(headset, qv) if headset is not None else None
    groups = ev.Groups(index_labels)
    type_to_sub = _type_to_sub(index_labels)
    models = []
    for head in opts.heads:
        t0 = time.perf_counter()
        built = build_model(head, cat, colours, index_rows, queries, index_rows, opts, say)
        t1 = time.perf_counter()
        projection_preds = ensemble = own_preds = None
        if built.projection is not None:
            projection_preds = ev.projection_predictions(
                built.projection, built.projected_queries, type_to_sub
            )
            if headset is not None:
                ensemble = ev.ensemble_predictions(
                    headset, built.projection, qv, built.projected_queries
                )
        if built.headset is not None:
            own_preds = ev.head_predictions(built.headset, built.queries)
        choices = {
            "projection": ("projection", projection_preds),
            "ensemble": ("heads + projection", ensemble),
        }
        if own_preds is not None:
            classifier_name, preds = "the tuned backbone's heads", own_preds
        else:
            classifier_name, preds = choices.get(opts.classifier, (None, None))
        if preds is None:
            classifier_name, preds = "photo-search heads", head_preds
        if preds is None:
            classifier_name = "none"
        if say:
            say(f"Photo search, {head}: {len(qv)} queries against {len(index_rows)} products...")
        if preds is None:
            preds = [ev.Prediction()] * len(qv)
        recs, levels = ev.pipeline_rank(
            built.index, built.queries, preds, index_labels, opts.k, policy, groups=groups
        )
        t2 = time.perf_counter()
        plain_recs = ev.rank(built.index, built.queries, opts.k)
        scores = ev.score_rankings(query_labels, recs, index_labels, opts.k)
        ranking_only = ev.score_rankings(query_labels, plain_recs, index_labels, opts.k)
        classifier = {}
        for name, answers in (
            ("photo-search heads", head_preds if own_preds is None else None),
            ("projection", projection_preds),
            ("heads + projection", ensemble),
            ("the tuned backbone's heads", own_preds),
        ):
            if answers is not None:
                classifier[name] = ev.classifier_scores(query_labels, answers)
        counts = {lvl: levels.count(lvl) for lvl in sorted(set(levels))}
        models.append(
            {
                "name": head,
                "description": HEAD_DESCRIPTIONS[head],
                "model_id": built.model_id,
                "ranking": f"photo-search pipeline (classifier: {classifier_name}"
                + ("; predicted colour first" if colour_first(opts) else "")
                + ")",
                "index": int(len(index_rows)),
                **scores,
                "ranking_only": {
                    key: ranking_only[key]
                    for key in ("table", "precision_at_k", "colour_match_at_k", "map_at_k")
                },
                "classifier": classifier,
                "levels": counts,
                "latency": _latency(
                    cat, built, headset, index_labels, opts, policy, photos, groups
                ),
                "seconds": {"build": round(t1 - t0, 1), "rank": round(t2 - t1, 1)},
            }
        )
    return models


def _latency(cat, built, headset, index_labels, opts, policy, photos, groups) -> dict:
    """Per-photo time through the whole path: decode, embed, colour, classify, rank."""
    photos = [p for p in photos if p is not None][: opts.latency_sample]
    if not photos:
        return {}
    from ml.preprocess import load_image

    backbone = built.embedder or backbone_for(cat.model_id)
    if backbone is None:
        return {"what": "not measured: the model's backbone cannot be built here"}
    heads = built.headset or headset
    descriptor = ColourDescriptor()
    backbone.embed([load_image(str(photos[0]))])  # the first call builds the graph
    times = []
    for path in photos:
        t0 = time.perf_counter()
        img = load_image(str(path))
        e = backbone.embed([img])
        if built.head in ("plain", "tuned"):
            q = e  # a tuned backbone's embedding already holds the colour descriptor
        else:
            c = descriptor.describe([img])
            if built.head == "colour":
                q = fuse(e, c, opts.colour_weight)
            else:
                from ml.projection import FusionWeights

                q = built.projection.retrieval_vectors(e, c, FusionWeights())
        preds = ev.head_predictions(heads, e) if heads is not None else [ev.Prediction()]
        ev.pipeline_rank(built.index, q, preds, index_labels, opts.k, policy, groups=groups)
        times.append(time.perf_counter() - t0)
    steps = "decode, embed" + ("" if built.head == "plain" else ", colour descriptor")
    return {
        "what": f"one photo: {steps}, classify, rank (no broker, no DB)",
        **ev.latency_summary(times),
    }


def backbone_for(model_id: str):
    """The embedder that produced ``model_id``'s embeddings, or None when it cannot be built."""
    from webapp.similar import indexing

    try:
        return indexing.backbone_for(model_id)
    except indexing.ModelUnavailable as exc:
        logger.info("backbone for %s unavailable: %s", model_id, exc)
        return None


def read_query_folder(folder: str | os.PathLike) -> tuple[list[int], list[Path], ev.Labels]:
    """Products of a Kaggle-style folder (``styles.csv`` + ``images/<id>.jpg``) that have a photo."""
    folder = Path(folder)
    styles = folder / "styles.csv"
    if not styles.exists():
        raise EvaluationError(f"{styles} not found: a query folder needs styles.csv and images/")
    ids, photos, records = [], [], []
    with styles.open(newline="", encoding="utf-8", errors="replace") as fh:
        for row in csv.DictReader(fh):
            try:
                pid = int(row["id"])
            except (KeyError, TypeError, ValueError):
                continue
            photo = folder / "images" / f"{pid}.jpg"
            if not photo.exists():
                continue
            ids.append(pid)
            photos.append(photo)
            records.append(
                {
                    "gender": row.get("gender"),
                    "article_type": row.get("articleType"),
                    "base_colour": row.get("baseColour"),
                    "sub_category": row.get("subCategory"),
                }
            )
    return ids, photos, ev.Labels.from_records(records)


def _run_queries(cat: Catalogue, colours, opts: Options, say: Say | None) -> dict:
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
    labels = labels.take(np.asarray(keep))
    backbone = backbone_for(cat.model_id)
    if backbone is None:
        raise EvaluationError(f"The backbone of {cat.model_id} cannot be built here.")
    from ml.preprocess import load_image

    if say:
        say(f"Embedding {len(photos)} query photos with {cat.model_id}...")
    images = [load_image(str(p)) for p in photos]
    qv = backbone.embed(images, batch_size=current_app.config["EMBEDDING_BATCH_SIZE"])
    qc = ColourDescriptor().describe(images) if colours is not None else None
    headset = served_heads(cat.model_id)
    all_rows = np.arange(len(cat.ids))
    models = _photo_models(
        cat,
        colours,
        all_rows,
        Queries(qv, qc, images=images),
        labels,
        cat.labels,
        headset,
        opts,
        say,
        _sample_photos(photos, opts),
    )
    return {
        "kind": "queries",
        "queries_from": (
            f"{len(photos)} photos of {opts.queries} not in the catalogue"
            + (f" ({dropped} catalogue products in the folder left out)" if dropped else "")
            + ("" if headset else "; no trained heads: every search is catalogue-wide")
        ),
        "models": models,
    }


def _sample_photos(photos: list, opts: Options) -> list:
    """A reproducible sample of query photos for the latency measurement."""
    if not opts.latency_sample or not photos:
        return []
    rng = np.random.default_rng(opts.seed)
    picked = rng.choice(len(photos), min(opts.latency_sample, len(photos)), replace=False)
    return [photos[i] for i in sorted(picked)]


# -- header, storage -------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the evaluation ran on (timings mean little without it)."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average": load,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


def commit() -> str:
    """The code's git commit (``+dirty`` when files differ from it), or ``unknown``."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + ("+dirty" if dirty else "")) if head else "unknown"


def colour_first(opts: Options) -> bool:
    """Whether photo searches put the predicted colour first: the option, else the shop's."""
    if opts.colour_first is not None:
        return opts.colour_first
    return bool(current_app.config["SEARCH_COLOUR_FIRST"])


def command_line(opts: Options) -> str:
    """The command that reproduces a run."""
    words = ["flask --app wsgi model evaluate", f"--model {opts.network or opts.model_id}"]
    words += [f"--head {h}" for h in opts.heads]
    if opts.queries:
        words.append(f"--queries {opts.queries}")
    elif opts.split:
        words.append(f"--split {opts.split:g} --seed {opts.seed}")
    elif opts.min_type_count != ev.REFERENCE_MIN_TYPE_COUNT:
        words.append(f"--min-type-count {opts.min_type_count}")
    if opts.k != 10:
        words.append(f"--k {opts.k}")
    if "colour" in opts.heads and opts.colour_weight != 0.3:
        words.append(f"--colour-weight {opts.colour_weight:g}")
    if opts.classifier != "heads":
        words.append(f"--classifier {opts.classifier}")
    if opts.split or opts.queries:  # leave-one-out ranks product pages: no photo-search rules
        words.append("--colour-first" if colour_first(opts) else "--no-colour-first")
    return " ".join(words)


def header(opts: Options, cat: Catalogue) -> dict[str, Any]:
    """Run metadata stored with every result."""
    return {
        "command": command_line(opts),
        "version": RESULT_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "machine": machine(),
        "base_model": cat.model_id,
        "catalogue_products": int(len(cat.ids)),
        "options": {
            "k": opts.k,
            "heads": list(opts.heads),
            "min_type_count": opts.min_type_count if not (opts.split or opts.queries) else None,
            "split": opts.split,
            "seed": opts.seed,
            "queries": opts.queries,
            "colour_weight": opts.colour_weight,
            "classifier": opts.classifier,
            "colour_first": colour_first(opts),
            "network": opts.network,
        },
        "reference": {"name": ev.REFERENCE_NAME, "table": ev.REFERENCE_TABLE},
    }


def save_result(result: dict[str, Any], extra_path: str | None = None, store: bool = True) -> Path:
    """Store a result as the latest of its kind (unless ``store`` is false) and, when given,
    at ``extra_path``; returns where it went."""
    text = json.dumps(_json_safe(result), indent=2)
    targets: list[Path] = []
    if store:
        folder = evaluations_folder(result["base_model"])
        folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        targets += [
            folder / f"{result['kind']}-{stamp}.json",
            folder / f"latest-{result['kind']}.json",
        ]
    if extra_path:
        targets.append(Path(extra_path))
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, target)
    return targets[0]


def latest_results(model_folder: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """{kind: the most recent stored result of that kind, over every base model}."""
    root = Path(model_folder or current_app.config["MODEL_FOLDER"])
    out: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        for path in root.glob(f"*/evaluations/latest-{kind}.json"):
            try:
                result = json.loads(path.read_text())
            except (OSError, ValueError):
                logger.warning("unreadable evaluation %s", path)
                continue
            if kind not in out or result.get("created_at", "") > out[kind].get("created_at", ""):
                out[kind] = result
    return out


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        f = float(value)
        return None if f != f else round(f, 6)
    return value
