"""Tuning the backbone on the catalogue: ``flask model tune`` and the first index build.

One job, in workers (or the CLI), never in pages:

1. feature maps of every catalogue photo (and its mirror image) at the backbone's cut layer,
   kept in a half-float store and redone only for photos that changed;
2. colour descriptors, kept the same way;
3. the layers above the cut trained on the catalogue's labels (``ml.tuned``), a
   stratified share of the products held back to report validation accuracy;
4. the tuned network saved under its own model id with its photo-search heads, every
   product embedded with it (from the stored maps), its compare and duplicate thresholds
   calibrated, the neighbour lists built and, last, switched to at once (one atomic
   switch): pages serve the previous lists until the new ones are complete.

Running it again with an unchanged catalogue and settings trains again (training is not
bit-for-bit repeatable on every machine) but reuses every stored map and descriptor.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flask import current_app
from sqlalchemy import select

from ml.colour import ColourDescriptor
from ml.labels import derived_type, majority_sub, merge_rare, stratified_split
from ml.store import EmbeddingStore
from ml.tuned.config import TuneConfig, cut_layer, training_precision
from ml.tuned.feature_maps import FeatureMaps
from ml.tuned.network import TunedNetwork
from ml.tuned.shoppers import ShopperViews
from ml.tuned.training import TuneReport, train_network
from webapp.extensions import db
from webapp.media import image_file
from webapp.models import Product
from webapp.registry import (
    image_key,
    load_backbone,
    network_folder,
    newest_network,
    store_for,
)
from worker.jobs.indexing import build_neighbours
from worker.jobs.photos import embed_photos
from worker.jobs.thresholds import calibrate_compare_threshold, calibrate_duplicate_threshold

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
Say = Callable[[str], None]
# Products below this cannot teach three classifiers anything worth serving.
MIN_PRODUCTS = 20
# Share of the products held back by a tuning run: its validation accuracy and the
# temperatures of its classifiers' confidences.
VAL_FRACTION = 0.1
MAP_CHUNK = 512
# The stages ``tune_catalog`` reports progress for, in order (the index status's plan, from
# which it estimates the time left).
STAGES = ("maps", "colours", "shoppers", "training", "embedding", "thresholds", "neighbours")
# Catalogue photos re-encoded and rescaled to calibrate the duplicate check on.
DUPLICATE_COPIES = 200


@dataclass
class CatalogueRows:
    """Products with a photo, in id order: what an embedding was computed from, and where."""

    ids: np.ndarray
    keys: list[str]
    photos: list[Path | None]


def catalogue_rows() -> CatalogueRows:
    """Every product that has a photo."""
    rows = db.session.execute(
        select(Product.id, Product.image_path, Product.image_sha256)
        .where(Product.image_path.is_not(None))
        .order_by(Product.id)
    ).all()
    db.session.rollback()  # end the read transaction: the job runs for many minutes
    media = current_app.config["MEDIA_FOLDER"]
    return CatalogueRows(
        np.asarray([r.id for r in rows], np.int64),
        [image_key(r.image_path, r.image_sha256) for r in rows],
        [image_file(r.image_path, media) for r in rows],
    )


def _refresh(
    store: EmbeddingStore,
    rows: CatalogueRows,
    compute: Callable[[list[Any]], np.ndarray],
    *,
    chunk: int,
    progress: Progress | None = None,
    prune: bool = False,
) -> list[int]:
    """Bring a per-photo store up to date with ``rows``: compute what is missing or changed
    and (``prune``: ``rows`` is the whole catalogue) drop products that left; returns the ids
    whose photo could not be read."""
    stored = store.keys_by_id()
    wanted = dict(zip(rows.ids.tolist(), rows.keys, strict=True))
    gone = sorted(set(stored) - set(wanted)) if prune else []
    if gone:
        store.write_part(deleted=gone)
    todo = [
        (pid, rows.photos[i], key)
        for i, (pid, key) in enumerate(zip(rows.ids.tolist(), rows.keys, strict=True))
        if stored.get(pid) != key
    ]
    done = len(rows.ids) - len(todo)
    if progress:
        progress(done, len(rows.ids))
    _, skipped = embed_photos(
        store,
        compute,
        todo,
        chunk=chunk,
        after_chunk=(lambda n: progress(done + n, len(rows.ids))) if progress else None,
    )
    if todo or gone:
        store.compact()
    return [pid for pid, _ in skipped]


def colour_descriptors(
    rows: CatalogueRows, progress: Progress | None = None, prune: bool = False
) -> np.ndarray:
    """Colour descriptors float32 [n, d] of the rows' photos, kept in their own store (model
    id ``colour-lab320-v1``, keyed by photo digest); zeros for an unreadable photo."""
    descriptor = ColourDescriptor()
    store = store_for(descriptor.model_id)
    unreadable = _refresh(
        store, rows, descriptor.describe, chunk=2048, progress=progress, prune=prune
    )
    if unreadable:
        logger.warning("%d products without a readable photo get no colour", len(unreadable))
    out = np.zeros((len(rows.ids), descriptor.dim), np.float32)
    positions = store.positions(rows.ids)
    have = positions >= 0
    out[have] = np.asarray(store.load()[1])[positions[have]]
    return out


def _half_float_rows(
    store_id: str,
    rows: CatalogueRows,
    compute: Callable[[list[Any], int], np.ndarray],
    progress: Progress | None,
    prune: bool,
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(row numbers stored, their rows, ids whose photo could not be used) of a per-photo
    half-float store brought up to date with ``rows`` (``compute(images, batch size)``)."""
    store = EmbeddingStore(current_app.config["MODEL_FOLDER"], store_id, dtype=np.float16)
    batch = current_app.config["EMBEDDING_BATCH_SIZE"]
    unusable = _refresh(
        store,
        rows,
        lambda images: compute(images, batch),
        chunk=MAP_CHUNK,
        progress=progress,
        prune=prune,
    )
    positions = store.positions(rows.ids)
    have = np.flatnonzero(positions >= 0)
    return have, np.asarray(store.load()[1])[positions[have]], unusable


def feature_maps(
    fm: FeatureMaps, rows: CatalogueRows, progress: Progress | None = None, prune: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(row numbers with maps, maps float16 [m, views, h, w, c]) of the rows' photos, from the
    half-float store of the backbone's cut layer, computed where missing or changed."""
    have, flat, unreadable = _half_float_rows(fm.store_id, rows, fm.compute, progress, prune)
    if unreadable:
        logger.warning(
            "%d products without a readable photo are left out of tuning", len(unreadable)
        )
    return have, fm.unflatten(flat)


def shopper_views(
    base: Any,
    config: TuneConfig,
    rows: CatalogueRows,
    maps: np.ndarray,
    colours: np.ndarray,
    progress: Progress | None = None,
    prune: bool = False,
    say: Say | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """(maps [n, views, h, w, c], colour descriptors [n, views, d]) of ``config``'s
    shopper-like views of the rows' photos, from their store, made where missing or changed;
    None when the config asks for none. A photo none could be made of keeps its studio
    photo (``maps`` view 0, ``colours``) in their place."""
    if not config.shopper_views:
        return None  # not a stage of this run's plan (``planned_stages``)
    views = ShopperViews(base, cut_layer(base, config), config.shopper_views)
    if say:
        say(f"Shopper-like views: {views.views} of each photo (stored, made where missing)...")
    have, flat, unmade = _half_float_rows(views.store_id, rows, views.compute, progress, prune)
    if unmade:
        logger.warning(
            "%d photos have no shopper-like views: tuning uses them as they are", len(unmade)
        )
    shopper_maps = np.repeat(maps[:, :1], views.views, axis=1)
    shopper_colours = np.repeat(colours[:, None, :], views.views, axis=1)
    shopper_maps[have], shopper_colours[have] = views.split(flat)
    return shopper_maps, shopper_colours


def catalogue_labels(ids: np.ndarray) -> dict[str, list[str | None]]:
    """The three classifiers' labels per product id (None where unknown)."""
    rows = {
        r.id: r
        for r in db.session.execute(
            select(
                Product.id,
                Product.sub_category,
                Product.gender,
                Product.article_type,
                Product.base_colour,
            )
        )
    }
    db.session.rollback()
    out: dict[str, list[str | None]] = {"sub": [], "type": [], "colour": []}
    for pid in ids.tolist():
        r = rows.get(pid)
        out["sub"].append(r.sub_category if r else None)
        out["type"].append(derived_type(r.gender, r.article_type) if r else None)
        out["colour"].append(r.base_colour if r else None)
    return out


def _take(labels: dict[str, list], rows: np.ndarray) -> dict[str, list]:
    """The labels of the given rows only."""
    return {name: [values[i] for i in rows.tolist()] for name, values in labels.items()}


def tune_config(epochs: int | None = None) -> TuneConfig:
    """The tuning settings: the code's defaults with the configured epochs, cut, shopper
    views and precision (``auto`` resolved for this machine's CPU)."""
    return TuneConfig(
        epochs=epochs or int(current_app.config["TUNE_EPOCHS"]),
        cut=current_app.config["TUNE_CUT"] or None,
        shopper_views=int(current_app.config["TUNE_SHOPPER_VIEWS"]),
        shopper_share=float(current_app.config["TUNE_SHOPPER_SHARE"]),
        precision=training_precision(current_app.config["TUNE_PRECISION"]),
    )


def planned_stages() -> tuple[str, ...]:
    """The stages a tuning run with the configured settings goes through: the shopper-like
    views only when some are asked for."""
    try:
        config = tune_config()
    except (TypeError, ValueError):
        return STAGES  # the run itself stops with what is wrong with the settings
    return tuple(stage for stage in STAGES if stage != "shoppers" or config.shopper_views)


def check_settings(epochs: int | None = None) -> TuneConfig:
    """The tuning settings, ``ValueError`` with a reason when the configured backbone cannot
    be tuned with them (a cut layer it does not have, a bad number)."""
    try:
        config = tune_config(epochs)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            "TUNE_EPOCHS, TUNE_CUT, TUNE_SHOPPER_VIEWS, TUNE_SHOPPER_SHARE or TUNE_PRECISION: "
            f"{exc}"
        ) from None
    cut_layer(load_backbone(tuned=False), config)
    return config


def train_on(
    base: Any,
    config: TuneConfig,
    maps: np.ndarray,
    colours: np.ndarray,
    labels: dict[str, list],
    rows: np.ndarray,
    *,
    val_rows: np.ndarray | None = None,
    shoppers: tuple[np.ndarray, np.ndarray] | None = None,
    progress: Progress | None = None,
    say: Say | None = None,
) -> tuple[TunedNetwork, TuneReport]:
    """Train a network on ``rows`` only (scored after each epoch on ``val_rows``, on their
    studio photos), with their shopper-like views when given."""
    validation = None
    if val_rows is not None and len(val_rows):
        validation = (maps[val_rows], colours[val_rows], _take(labels, val_rows))
    return train_network(
        base,
        maps[rows],
        colours[rows],
        _take(labels, rows),
        config,
        validation=validation,
        shoppers=None if shoppers is None else (shoppers[0][rows], shoppers[1][rows]),
        progress=progress,
        say=say,
    )


def hold_back(
    types: list, rows: np.ndarray, fraction: float, config: TuneConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) subsets of ``rows``: ``fraction`` of every gender + article type
    held back (the training reports its accuracy on them and calibrates the classifiers'
    confidences on them); everything trains when ``fraction`` is 0."""
    rows = np.asarray(rows, np.int64)
    if fraction <= 0:
        return rows, np.empty(0, np.int64)
    strata = merge_rare([types[i] for i in rows.tolist()], config.min_count)
    strata = np.asarray([s if s is not None else "" for s in strata], dtype=object)
    train, val = stratified_split(strata, fraction, config.seed)
    return rows[train], rows[val]


def tune_catalog(
    *,
    epochs: int | None = None,
    val_fraction: float = VAL_FRACTION,
    activate: bool = True,
    progress_for: Callable[[str], Progress | None] = lambda stage: None,
    say: Say | None = None,
) -> dict[str, Any]:
    """Tune the configured backbone on the catalogue, embed every product with it, build its
    neighbour lists and (``activate``) serve them."""
    started = time.perf_counter()
    say = say or (lambda line: logger.info("%s", line))
    base = load_backbone(tuned=False)
    config = tune_config(epochs)
    fm = FeatureMaps(base, cut_layer(base, config), config.mirror)
    rows = catalogue_rows()
    if len(rows.ids) < MIN_PRODUCTS:
        raise ValueError(
            f"the catalogue has {len(rows.ids)} products with a photo; tuning needs {MIN_PRODUCTS}"
        )
    say(
        f"Feature maps of {len(rows.ids)} photos at {fm.cut} of {base.model_id} (stored, "
        "computed only where missing)..."
    )
    t0 = time.perf_counter()
    have, maps = feature_maps(fm, rows, progress_for("maps"), prune=True)
    ids = rows.ids[have]
    kept = CatalogueRows(ids, [rows.keys[i] for i in have], [rows.photos[i] for i in have])
    colours = colour_descriptors(kept, progress_for("colours"), prune=True)
    labels = catalogue_labels(ids)
    shoppers = shopper_views(
        base, config, kept, maps, colours, progress_for("shoppers"), prune=True, say=say
    )
    seconds_maps = time.perf_counter() - t0

    train, val = hold_back(labels["type"], np.arange(len(ids)), val_fraction, config)
    say(
        f"Training the layers above {fm.cut} on {len(train)} products ({len(val)} held back "
        f"to validate), {config.epochs} epochs..."
    )
    training = progress_for("training")
    if training:
        training(0, config.epochs)  # the stage starts now, not when the first epoch ends
    network, report = train_on(
        base,
        config,
        maps,
        colours,
        labels,
        train,
        val_rows=val,
        shoppers=shoppers,
        progress=training,
        say=say,
    )
    say(f"Trained {network.model_id} in {report.seconds:.0f} s.")
    served = serve_network(
        network, base, kept, maps, colours, labels, activate=activate, progress_for=progress_for
    )
    return {
        **served,
        "trained_on": int(len(train)),
        "validation": {k: round(v, 4) for k, v in report.validation.items()},
        "temperatures": dict(network.meta.get("temperatures", {})),
        "epochs": report.epochs,
        "seconds_maps": round(seconds_maps, 1),
        "seconds_training": round(report.seconds, 1),
        "seconds": round(time.perf_counter() - started, 1),
    }


def serve_network(
    network: TunedNetwork,
    base: Any,
    rows: CatalogueRows,
    maps: np.ndarray,
    colours: np.ndarray,
    labels: dict[str, list],
    *,
    activate: bool = True,
    progress_for: Callable[[str], Progress | None] = lambda stage: None,
) -> dict[str, Any]:
    """Save a tuned network with its heads, embed ``rows`` with it from their stored maps,
    calibrate its thresholds, build its lists and (``activate``) serve them."""
    model_id = network.model_id
    store = store_for(model_id)
    network.save(network_folder(model_id))
    network.headset(majority_sub(labels["type"], labels["sub"])).save(store.path / "heads")
    embedder = network.backbone(base)
    step = 4096
    embed_progress = progress_for("embedding")
    if embed_progress:
        embed_progress(0, len(rows.ids))
    for start in range(0, len(rows.ids), step):
        part = slice(start, start + step)
        store.write_part(
            rows.ids[part], embedder.embed_maps(maps[part], colours[part]), keys=rows.keys[part]
        )
        if embed_progress:
            embed_progress(min(start + step, len(rows.ids)), len(rows.ids))
    store.compact()
    steps = progress_for("thresholds") or (lambda done, total: None)
    steps(0, 2)
    calibration = _calibrate_compare(model_id, store, rows.ids, labels)
    steps(1, 2)
    duplicates = _calibrate_duplicates(model_id, embedder)
    steps(2, 2)
    lists = build_neighbours(model_id, activate=activate, progress=progress_for("neighbours"))
    return {
        "model": model_id,
        "base_model": base.model_id,
        "products": int(len(rows.ids)),
        "compare_threshold": calibration,
        "duplicate_threshold": duplicates,
        "activated": activate,
        "seconds_neighbours": round(lists.seconds_compute + lists.seconds_write, 1),
    }


def _calibrate_compare(
    model_id: str, store: EmbeddingStore, ids: np.ndarray, labels: dict[str, list]
) -> float | None:
    """Calibrate the two-image compare threshold for the tuned model (as ``model train``
    does for a plain one); None when the catalogue is too small to."""
    try:
        fitted = calibrate_compare_threshold(model_id, store.get(ids), labels)
    except ValueError as exc:
        logger.warning("compare threshold not calibrated for %s: %s", model_id, exc)
        return None
    return round(float(fitted.threshold), 4)


def _calibrate_duplicates(model_id: str, embedder: Any) -> float | None:
    """Calibrate the near-duplicate cosine for the tuned embedding (its cosines sit higher
    than the plain backbone's: same-type products are pulled together)."""
    try:
        result = calibrate_duplicate_threshold(model_id, backbone=embedder, copies=DUPLICATE_COPIES)
    except ValueError as exc:
        logger.warning("duplicate threshold not calibrated for %s: %s", model_id, exc)
        return None
    return round(float(result["threshold"]), 4)


def should_tune() -> bool:
    """True when ``EMBEDDING_TUNED=auto`` and nothing is tuned yet for the configured backbone."""
    if str(current_app.config["EMBEDDING_TUNED"]).strip() != "auto":
        return False
    base = load_backbone(tuned=False)
    return newest_network(base.model_id) is None
