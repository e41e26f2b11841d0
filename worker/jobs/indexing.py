"""Building and keeping up the similarity index: runs in workers (or the CLI), never in pages.

Each job is idempotent (running it twice leaves the same index as running it once):

* ``embed_catalog``: embed every product photo not yet embedded by the configured backbone
  (or whose photo changed), chunk by chunk, each chunk committed as an atomic part; a killed
  job resumes where it stopped.
* ``build_neighbours``: top-K for every product into Redis under the model id, then one
  atomic switch makes the lists the served ones. The model's vector index is saved first;
  the lists are computed in shards by this process and any worker free on the ``index``
  queue (:mod:`worker.jobs.shards`), while the model's lists are marked incomplete (so
  incremental updates leave them alone); then, under the model's lists lock, they are
  caught up with what the store gained while they were computed.
* ``update_product`` / ``update_products``: after products are created, edited or deleted
  (one in the admin pages, thousands in a bulk import), re-embed those whose photo changed
  and rewrite only the lists they enter or leave. Both are the one incremental path of
  :mod:`worker.jobs.upkeep`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flask import current_app
from sqlalchemy import select

from ml.compact import KEYS, build_index, load_index, save_index
from webapp.extensions import db
from webapp.media import image_file
from webapp.models import Product
from webapp.registry import image_key, index_folder, load_backbone, neighbour_cache, store_for
from worker.jobs import shards
from worker.jobs.photos import embed_photos, embed_with
from worker.jobs.upkeep import (
    BatchUpdateReport,
    Plan,
    Progress,
    catch_up_lists,
    update_products,
)

logger = logging.getLogger(__name__)

# Beside a model's saved index: the settings it was built with (written once it is saved).
INDEX_SETTINGS = "index.settings.json"
# Compactions a build runs before it reads the store, while saves keep adding parts.
COMPACT_BEFORE_BUILD_TRIES = 3

__all__ = [
    "BatchUpdateReport",
    "EmbedReport",
    "NeighbourReport",
    "Plan",
    "UpdateReport",
    "build_neighbours",
    "embed_catalog",
    "index_catalog",
    "lists_up_to_date",
    "update_product",
    "update_products",
]


@dataclass
class EmbedReport:
    """What one embedding run did."""

    model_id: str
    total: int = 0
    embedded: int = 0
    already: int = 0
    removed: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0


def embed_catalog(
    backbone: Any = None, *, chunk: int = 512, progress: Progress | None = None
) -> EmbedReport:
    """Embed every product photo the store lacks (or that changed); drop products that left."""
    started = time.perf_counter()
    backbone = backbone or load_backbone()
    store = store_for(backbone.model_id)
    rows = db.session.execute(
        select(Product.id, Product.image_path, Product.image_sha256)
        .where(Product.image_path.is_not(None))
        .order_by(Product.id)
    ).all()
    db.session.rollback()  # end the read transaction: the job may run for many minutes
    stored = store.keys_by_id()
    wanted = {r.id: image_key(r.image_path, r.image_sha256) for r in rows}
    media = current_app.config["MEDIA_FOLDER"]
    todo = [
        (r.id, image_file(r.image_path, media), wanted[r.id])
        for r in rows
        if stored.get(r.id) != wanted[r.id]
    ]
    report = EmbedReport(backbone.model_id, total=len(rows), already=len(rows) - len(todo))

    gone = sorted(set(stored) - set(wanted))
    if gone:
        store.write_part(deleted=gone)
        report.removed = len(gone)
    if progress:
        progress(report.already, report.total)
    embedded, report.skipped = embed_photos(
        store,
        embed_with(backbone),
        todo,
        chunk=chunk,
        after_chunk=(lambda done: progress(report.already + done, report.total))
        if progress
        else None,
    )
    report.embedded = len(embedded)
    store.compact()
    report.seconds = time.perf_counter() - started
    for product_id, reason in report.skipped[:20]:
        logger.warning("product %s not embedded: %s", product_id, reason)
    return report


@dataclass
class NeighbourReport:
    """What one neighbour-list build did."""

    model_id: str
    products: int
    k: int
    seconds_compute: float
    seconds_write: float
    activated: bool


def build_neighbours(
    model_id: str,
    *,
    k: int | None = None,
    activate: bool = True,
    progress: Progress | None = None,
    reuse_index: bool = True,
) -> NeighbourReport:
    """Top-K lists for every embedded product (exact, or through the vector index for a large
    catalogue: ``NEIGHBOURS_INDEX``), written under the model id, then served.

    The index is saved beside the embeddings and the lists are computed in shards
    (:mod:`worker.jobs.shards`): this process computes them, and so does any worker process
    free on the ``index`` queue. Returns once every shard is done and the lists are served.
    ``reuse_index=False`` builds the index even when the saved one is up to date."""
    cfg = current_app.config
    k = k or cfg["NEIGHBOURS_K"]
    cache = neighbour_cache()
    store = store_for(model_id)
    # Parts folded into the base first: the build then maps every row from one file instead
    # of copying the catalogue into memory to apply them (5 GB at a million products). A
    # save during a long compaction leaves a part again: folded too, a few times at most.
    for _ in range(COMPACT_BEFORE_BUILD_TRIES):
        store.compact()
        if not store.part_count():
            break
    ids, vectors, keys = store.load_with_keys()
    if len(ids) < 2:
        raise ValueError(
            f"model {model_id} has {len(ids)} embedded products; embed the catalogue first"
        )
    if progress:
        progress(0, len(ids))  # the stage starts here, not when the first shard is done
    t0 = time.perf_counter()
    kind = cfg["NEIGHBOURS_INDEX"]
    built = _save_index(model_id, (ids, vectors, keys), kind, int(cfg["COMPACT_DIMS"]), reuse_index)
    with cache.writing(model_id):  # no incremental update writes a list until it is complete
        old_ids, old_kth = cache.read_index(model_id)
        # Incomplete while lists are rewritten, so a crash never leaves a "complete" mix.
        cache.write_index(model_id, old_ids, old_kth, k=k, complete=False)
    shard_rows = int(cfg["NEIGHBOURS_SHARD_ROWS"])
    # A build whose process died goes on where it stopped, over the same saved index.
    build = (
        None
        if built
        else shards.resumable(cache, model_id, len(ids), k, shard_rows, _index_saved_at(model_id))
    )
    if build is None:
        build = shards.start(cache, model_id, len(ids), k, shard_rows)
    else:
        logger.info(
            "resuming build %s of %s: %d of %d shards already done",
            build.build_id,
            model_id,
            len(shards.done_shards(cache, build)),
            build.shards,
        )
    if build.shards > 1:
        shards.send(build)
    index = load_index(index_folder(model_id), mmap=True)
    shards.work(cache, build, shards.Sources.of_arrays(index, ids, ids, vectors), progress)
    t1 = time.perf_counter()
    with cache.writing(model_id) as renew:
        cache.write_index(
            model_id, ids, shards.kth_of(cache, build), k=k, complete=True, full_build=True
        )
        cache.delete_lists(model_id, np.setdiff1d(old_ids, ids))
        catch_up_lists(cache, store, model_id, (ids, vectors, keys), renew)
    activated = shards.finish(cache, build, activate)
    t2 = time.perf_counter()
    logger.info(
        "neighbour lists for %s: %d products (index %s, %d shards), compute %.1fs, write %.1fs",
        model_id,
        len(ids),
        kind,
        build.shards,
        t1 - t0,
        t2 - t1,
    )
    return NeighbourReport(model_id, len(ids), k, t1 - t0, t2 - t1, activated)


def _save_index(
    model_id: str,
    rows: tuple[np.ndarray, np.ndarray, np.ndarray],
    kind: str,
    compact_dims: int,
    reuse: bool,
) -> bool:
    """Build the model's vector index over the stored rows (ids, vectors, keys) and save it
    beside them with each row's key; with ``reuse``, keep the saved one when it was built with
    the same settings from the same rows (lists lost with Redis are rebuilt without building
    the graph again). True when it built one. The index in memory goes when this returns:
    shards read the saved one, memory-mapped."""
    ids, vectors, keys = rows
    folder = index_folder(model_id)
    stamp = folder.with_name(INDEX_SETTINGS)
    settings = {"kind": kind, "compact_dims": compact_dims}
    if reuse and _saved_from(folder, stamp, settings, ids, keys):
        logger.info("the saved index of %s is up to date: reused", model_id)
        return False
    stamp.unlink(missing_ok=True)
    index = build_index(ids, np.asarray(vectors), kind=kind, compact_dims=compact_dims)
    save_index(index, folder, keys=(ids, keys))
    stamp.write_text(json.dumps(settings))
    return True


def _index_saved_at(model_id: str) -> float:
    """When the model's saved index was written (seconds since the epoch): its settings
    stamp is written right after it."""
    return index_folder(model_id).with_name(INDEX_SETTINGS).stat().st_mtime


def _saved_from(
    folder: Path, stamp: Path, settings: dict, ids: np.ndarray, keys: np.ndarray
) -> bool:
    """True when the saved index was built with ``settings`` from exactly these rows (every
    row with a key: a row stored without one may have changed unseen)."""
    try:
        if json.loads(stamp.read_text()) != settings:
            return False
        saved_keys = np.load(folder / KEYS, mmap_mode="r")
        saved_ids = load_index(folder, mmap=True).ids()
    except (OSError, ValueError):
        return False
    return (
        np.array_equal(saved_ids, ids)
        and np.array_equal(saved_keys, keys)
        and bool(np.all(np.char.str_len(keys) > 0))
    )


def lists_up_to_date(report: EmbedReport) -> bool:
    """True when an embedding run changed nothing and the model's lists are complete."""
    if report.embedded or report.removed:
        return False
    meta = neighbour_cache().meta(report.model_id)
    return meta.get("complete") == "1" and meta.get("count") == str(len(store_for(report.model_id)))


# The stages ``index_catalog`` reports progress for, in order (the index status's plan).
STAGES = ("embedding", "neighbours")


def index_catalog(
    progress_for: Callable[[str], Progress | None] = lambda stage: None,
) -> dict[str, Any]:
    """Embed what the store lacks, rebuild the lists if anything changed, serve them."""
    embed = embed_catalog(progress=progress_for("embedding"))
    summary: dict[str, Any] = {
        "model": embed.model_id,
        "embedded": embed.embedded,
        "already": embed.already,
        "removed": embed.removed,
        "skipped": [f"{pid}: {reason}" for pid, reason in embed.skipped[:50]],
        "skipped_count": len(embed.skipped),
        "seconds_embed": round(embed.seconds, 1),
    }
    if lists_up_to_date(embed):
        # Nothing changed since the last build: serve the existing lists as they are.
        neighbour_cache().activate(embed.model_id)
        return {**summary, "products": len(store_for(embed.model_id)), "rebuilt": False}
    lists = build_neighbours(embed.model_id, progress=progress_for("neighbours"))
    return {
        **summary,
        "products": lists.products,
        "rebuilt": True,
        "seconds_neighbours": round(lists.seconds_compute + lists.seconds_write, 1),
    }


@dataclass
class UpdateReport:
    """What one product's update did."""

    product_id: int
    action: str  # embedded | unchanged | removed | absent
    rewritten: list[int] = field(default_factory=list)
    deleted_lists: list[int] = field(default_factory=list)


def update_product(product_id: int, backbone: Any = None) -> UpdateReport:
    """Bring one product's embedding and every list it touches up to date, without a rebuild;
    raises ``ValueError`` when its photo cannot be read (the product's index job fails)."""
    batch = update_products([product_id], backbone=backbone)
    if batch.skipped:
        raise ValueError(f"product {product_id} not embedded: {batch.skipped[0][1]}")
    if product_id in batch.removed:
        action = "removed"
    elif product_id in batch.embedded:
        action = "embedded"
    elif product_id in batch.absent:
        action = "absent"
    else:
        action = "unchanged"
    return UpdateReport(product_id, action, batch.rewritten, batch.deleted_lists)
