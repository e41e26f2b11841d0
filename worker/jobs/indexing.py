"""Building and keeping up the similarity index: runs in workers (or the CLI), never in pages.

Each job is idempotent (running it twice leaves the same index as running it once):

* ``embed_catalog``: embed every product photo not yet embedded by the configured backbone
  (or whose photo changed), chunk by chunk, each chunk committed as an atomic part; a killed
  job resumes where it stopped.
* ``build_neighbours``: exact top-K for every product into Redis under the model id, then one
  atomic switch makes the lists the served ones. The lists are written under the model's
  lists lock, which incremental updates take too, and then caught up with what the store
  gained while they were computed.
* ``update_product`` / ``update_products``: after products are created, edited or deleted
  (one in the admin pages, thousands in a bulk import), re-embed those whose photo changed
  and rewrite only the lists they enter or leave. Both are the one incremental path of
  :mod:`worker.jobs.upkeep`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flask import current_app
from sqlalchemy import select

from ml.vector_index import neighbour_lists
from webapp.extensions import db
from webapp.media import image_file
from webapp.models import Product
from webapp.registry import image_key, load_backbone, neighbour_cache, store_for
from worker.jobs.photos import embed_photos, embed_with
from worker.jobs.upkeep import (
    BatchUpdateReport,
    Plan,
    Progress,
    catch_up_lists,
    kth_scores,
    update_products,
)

logger = logging.getLogger(__name__)

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
    model_id: str, *, k: int | None = None, activate: bool = True, progress: Progress | None = None
) -> NeighbourReport:
    """Top-K lists for every embedded product (exact, or through the vector index for a large
    catalogue: ``NEIGHBOURS_INDEX``), written under the model id, then served."""
    k = k or current_app.config["NEIGHBOURS_K"]
    cache = neighbour_cache()
    store = store_for(model_id)
    ids, vectors, keys = store.load_with_keys()
    if len(ids) < 2:
        raise ValueError(
            f"model {model_id} has {len(ids)} embedded products; embed the catalogue first"
        )
    if progress:
        progress(0, len(ids))  # the stage starts here, not when the first block is done
    t0 = time.perf_counter()
    kind = current_app.config["NEIGHBOURS_INDEX"]
    idx, scores = neighbour_lists(np.asarray(vectors), k, kind, progress=progress)
    t1 = time.perf_counter()
    with cache.writing(model_id) as renew:  # no incremental update writes meanwhile
        old_ids, old_kth = cache.read_index(model_id)
        # Mark incomplete while lists are rewritten, so a crash never leaves a "complete" mix.
        cache.write_index(model_id, old_ids, old_kth, k=k, complete=False)
        cache.write_lists(model_id, ids, ids[idx], scores)
        cache.delete_lists(model_id, np.setdiff1d(old_ids, ids))
        cache.write_index(model_id, ids, kth_scores(scores, k), k=k, complete=True, full_build=True)
        catch_up_lists(cache, store, model_id, (ids, vectors, keys), renew)
    t2 = time.perf_counter()
    if activate:
        cache.activate(model_id)
    logger.info(
        "neighbour lists for %s: %d products (index %s), compute %.1fs, write %.1fs",
        model_id,
        len(ids),
        kind,
        t1 - t0,
        t2 - t1,
    )
    return NeighbourReport(model_id, len(ids), k, t1 - t0, t2 - t1, activate)


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
