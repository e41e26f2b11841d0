"""Incremental index upkeep: the one path that brings products' embeddings, and only the
neighbour lists they enter or leave, up to date without a rebuild.

A single product edited in the admin pages and a bulk import's thousands of rows go through
:func:`update_products`: embed the photos the store lacks (one store part per chunk), drop
the products that left, then rewrite the lists that gain or lose one of them, in one pass.

Resumable: before the first vector is replaced, the plan (which products change and their
old vectors) can be saved to ``plan_path``. A run killed half-way starts again from that
plan: chunks already in the store are not embedded twice, and the list pass is recomputed
from the store and the plan, which gives the same lists whether or not some were written
before.

The full build (:mod:`worker.jobs.indexing`) shares two of its steps: embedding photos
chunk by chunk (:mod:`worker.jobs.photos`) and the K-th scores kept with the lists.

Concurrency: the worker's processes run updates side by side. Embedding needs no lock (each
chunk is a store part of its own); the list pass (read the index, load the store, rewrite,
write the index) runs under the model's lists lock (:meth:`NeighbourCache.writing`), which a
full build holds too while it writes. Rewriting a list is always right (it is recomputed
from the whole store), so the only risk is a list that should change and is not rewritten;
each update probes with its own products after their vectors are in the store, under the
lock, against the K-th scores of the lists as they are, which finds every such list. A full
build computes from a snapshot and then, under the lock, catches up with what was stored
since (:func:`catch_up_lists`).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flask import current_app
from sqlalchemy import select

from ml.cache import NeighbourCache
from ml.neighbours import top_k_rows
from ml.store import EmbeddingStore
from ml.vector_index import nearest_others
from webapp.extensions import db
from webapp.media import image_file
from webapp.models import Product
from webapp.registry import image_key, load_backbone, neighbour_cache, store_for
from worker.jobs.photos import embed_photos, embed_with
from worker.jobs.search_index import CatalogueIndex, catalogue_index

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
# Float error allowed when deciding whether a product reaches another's K-th score.
SCORE_TOLERANCE = 1e-5
# Compact the store once this many parts have piled up (each admin change writes one).
COMPACT_AFTER_PARTS = 50
# Rows of the similarity matrix computed at once (rows x catalogue floats in memory).
BLOCK = 512
SQL_CHUNK = 5000
# Rows compared at once when a build catches up with the store.
CATCH_UP_BLOCK = 65_536
# Past 50,000 products: nearest products of a changed one whose lists are checked for it.
REVERSE_CANDIDATES = 1000


def kth_scores(scores: np.ndarray, k: int) -> np.ndarray:
    """The score a newcomer must beat to enter each list (-inf while a list is not full)."""
    if scores.shape[1] < k:
        return np.full(len(scores), -np.inf, np.float32)
    return scores[:, k - 1].astype(np.float32)


@dataclass
class BatchUpdateReport:
    """What one incremental update did (``absent``: no photo and nothing stored)."""

    model_id: str
    embedded: list[int] = field(default_factory=list)
    unchanged: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    absent: list[int] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    rewritten: list[int] = field(default_factory=list)
    deleted_lists: list[int] = field(default_factory=list)
    lists_updated: bool = False
    # Stored and unchanged but without a list (an earlier run stopped between its embedding
    # and its list pass): listed now.
    relisted: list[int] = field(default_factory=list)


@dataclass
class Plan:
    """Which products change, and the vectors they had before (for the lists they leave)."""

    embed: list[int]
    remove: list[int]
    old_ids: np.ndarray
    old_vectors: np.ndarray

    def save(self, path: Path) -> None:
        """Write atomically, so a reader finds the whole plan or none."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".plan-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(
                    fh,
                    embed=np.asarray(self.embed, np.int64),
                    remove=np.asarray(self.remove, np.int64),
                    old_ids=self.old_ids,
                    old_vectors=self.old_vectors,
                )
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> Plan:
        """Read a saved plan."""
        with np.load(path) as data:
            return cls(
                data["embed"].tolist(),
                data["remove"].tolist(),
                data["old_ids"],
                data["old_vectors"],
            )


def _current_keys(product_ids: list[int]) -> dict[int, tuple[str | None, str | None]]:
    """{id: (image_path, image_sha256)} for the ids that exist."""
    found: dict[int, tuple[str | None, str | None]] = {}
    for start in range(0, len(product_ids), SQL_CHUNK):
        chunk = product_ids[start : start + SQL_CHUNK]
        rows = db.session.execute(
            select(Product.id, Product.image_path, Product.image_sha256).where(
                Product.id.in_(chunk)
            )
        ).all()
        found.update({r.id: (r.image_path, r.image_sha256) for r in rows})
    db.session.rollback()  # end the read transaction: embedding may take a while
    return found


def make_plan(product_ids: list[int], store: EmbeddingStore, current: dict) -> Plan:
    """Compare the products with the store: what to embed, what to drop, and the old vectors."""
    stored = store.keys_of(product_ids)
    embed, remove = [], []
    for pid in product_ids:
        path, sha = current.get(pid, (None, None))
        if not path:
            if pid in stored:
                remove.append(pid)
        elif stored.get(pid) != image_key(path, sha):
            embed.append(pid)
    old_ids = np.asarray([p for p in [*embed, *remove] if p in stored], np.int64)
    old_vectors = store.get(old_ids.tolist()) if len(old_ids) else np.empty((0, 0), np.float32)
    return Plan(embed, remove, old_ids, np.asarray(old_vectors, np.float32))


def update_products(
    product_ids: Iterable[int],
    *,
    backbone: Any = None,
    plan_path: str | os.PathLike | None = None,
    progress: Progress | None = None,
    chunk: int = 256,
) -> BatchUpdateReport:
    """Bring products' embeddings and every list they touch up to date, without a rebuild."""
    backbone = backbone or load_backbone()
    store = store_for(backbone.model_id)
    wanted = sorted({int(p) for p in product_ids})
    current = _current_keys(wanted)
    path = Path(plan_path) if plan_path else None
    if path is not None and path.exists():
        plan = Plan.load(path)
    else:
        plan = make_plan(wanted, store, current)
        if path is not None:
            plan.save(path)

    report = BatchUpdateReport(backbone.model_id)
    changing = {*plan.embed, *plan.remove}
    for pid in wanted:
        if pid not in changing:
            (report.unchanged if current.get(pid, (None,))[0] else report.absent).append(pid)
    cache = neighbour_cache()
    unlisted = _unlisted(cache, backbone.model_id, report.unchanged)
    if not changing and not unlisted:
        # Nothing moved in visual space (attribute edits, say): every list stays as it is.
        return report
    if changing:
        _embed_planned(store, backbone, plan, current, report, progress, chunk)
    with cache.writing(backbone.model_id) as renew:
        if cache.meta(backbone.model_id).get("complete") == "1":
            report.relisted = unlisted
            _rewrite_lists(cache, store, backbone.model_id, plan, report, renew)
            report.lists_updated = True
    if store.part_count() >= COMPACT_AFTER_PARTS:
        store.compact()
    return report


def _unlisted(cache: NeighbourCache, model_id: str, stored: list[int]) -> list[int]:
    """The stored products that have no list although the model's lists are complete."""
    if not stored or cache.meta(model_id).get("complete") != "1":
        return []
    found = []
    for start in range(0, len(stored), SQL_CHUNK):
        chunk = stored[start : start + SQL_CHUNK]
        lists = cache.get_lists(model_id, chunk)
        found += [p for p, got in zip(chunk, lists, strict=True) if got is None]
    return found


def _embed_planned(
    store: EmbeddingStore,
    backbone: Any,
    plan: Plan,
    current: dict,
    report: BatchUpdateReport,
    progress: Progress | None,
    chunk: int,
) -> None:
    """Embed the plan's photos the store still lacks, drop the products that left."""
    wanted = [*plan.embed, *plan.remove]
    stored = store.keys_of(wanted)
    media = current_app.config["MEDIA_FOLDER"]
    todo = [
        (pid, image_file(current[pid][0], media), image_key(*current[pid]))
        for pid in plan.embed
        if pid in current and current[pid][0] and stored.get(pid) != image_key(*current[pid])
    ]
    if progress:
        progress(0, len(todo))
    _, report.skipped = embed_photos(
        store,
        embed_with(backbone),
        todo,
        chunk=chunk,
        after_chunk=(lambda done: progress(done, len(todo))) if progress else None,
    )
    gone = [p for p in plan.remove if p in store.keys_of(plan.remove)]
    if gone:
        store.write_part(deleted=gone)
    stored = store.keys_of(wanted)
    report.embedded = [p for p in plan.embed if p in stored]
    report.removed = list(plan.remove)


def _rewrite_lists(
    cache: NeighbourCache,
    store: EmbeddingStore,
    model_id: str,
    plan: Plan,
    report: BatchUpdateReport,
    renew: Callable[[], object] = lambda: None,
) -> None:
    """Rewrite the lists that gain or lose one of the products; leave every other list alone.
    Runs under the lists lock; ``renew()`` keeps it between blocks."""
    catalogue = catalogue_index(model_id)
    if catalogue.nearest is not None:
        _rewrite_lists_indexed(cache, store, catalogue, plan, report, renew)
        return
    k = int(cache.meta(model_id)["k"])
    ids, vectors = store.load()
    vectors = np.asarray(vectors, np.float32)
    kth = _known_kth(cache, model_id, ids)
    known = ~np.isnan(kth)

    probed = np.asarray([*report.embedded, *report.relisted], np.int64)
    new_rows = np.flatnonzero(np.isin(ids, probed))
    probes = [vectors[new_rows]]
    if len(plan.old_vectors) and plan.old_vectors.shape[1] == vectors.shape[1]:
        probes.append(plan.old_vectors)
    probe = np.concatenate(probes) if len(ids) else np.empty((0, 0), np.float32)

    affected = ~known  # products without a list yet get one
    affected[new_rows] = True
    threshold = kth - SCORE_TOLERANCE
    for start in range(0, len(probe), BLOCK):
        sims = vectors @ probe[start : start + BLOCK].T
        affected |= (sims >= threshold[:, None]).any(axis=1)
    rows = np.flatnonzero(affected)
    kk = min(k, len(ids) - 1)
    rewritten: list[int] = []
    if kk > 0:
        for start in range(0, len(rows), BLOCK):
            renew()
            block = rows[start : start + BLOCK]
            sims = vectors[block] @ vectors.T
            sims[np.arange(len(block)), block] = -np.inf
            idx, scores = top_k_rows(sims, kk)
            cache.write_lists(model_id, ids[block], ids[idx], scores)
            kth[block] = kth_scores(scores, k)
            rewritten.extend(ids[block].tolist())
    report.rewritten = rewritten
    if plan.remove:
        cache.delete_lists(model_id, plan.remove)
        report.deleted_lists = list(plan.remove)
    cache.write_index(model_id, ids, kth, k=k, complete=True)


def _known_kth(cache: NeighbourCache, model_id: str, ids: np.ndarray) -> np.ndarray:
    """Each product's K-th score as the lists record it (NaN: the product has no list)."""
    old_ids, old_kth = cache.read_index(model_id)
    kth = np.full(len(ids), np.nan, np.float32)
    if len(old_ids):
        pos = np.minimum(np.searchsorted(old_ids, ids), len(old_ids) - 1)
        known = old_ids[pos] == ids
        kth[known] = old_kth[pos[known]]
    return kth


def _rewrite_lists_indexed(
    cache: NeighbourCache,
    store: EmbeddingStore,
    catalogue: CatalogueIndex,
    plan: Plan,
    report: BatchUpdateReport,
    renew: Callable[[], object],
) -> None:
    """``_rewrite_lists`` for a catalogue served through its vector index (past 50,000
    products): the lists a product may enter or leave are among its ``REVERSE_CANDIDATES``
    nearest (a list takes a newcomer only if it is nearer than the list's K-th), and the
    rewritten lists are asked of the index, as the full build makes them; nothing scans the
    whole catalogue."""
    model_id, ids, live = catalogue.model_id, catalogue.ids, catalogue.nearest
    k = int(cache.meta(model_id)["k"])
    kth = _known_kth(cache, model_id, ids)
    probed = np.asarray([*report.embedded, *report.relisted], np.int64)
    new_rows = np.flatnonzero(np.isin(ids, probed))
    probes = [store.get(ids[new_rows])]
    if len(plan.old_vectors) and plan.old_vectors.shape[1] == catalogue.dim:
        probes.append(plan.old_vectors)
    probe = np.concatenate(probes)
    affected = np.isnan(kth)  # products without a list yet get one
    affected[new_rows] = True
    if len(probe):
        near, scores = live.query(probe, min(REVERSE_CANDIDATES, len(ids)), full=False)
        found = near >= 0
        rows = np.searchsorted(ids, near[found])
        reached = scores[found] >= kth[rows] - SCORE_TOLERANCE
        affected[rows[reached]] = True
    rows = np.flatnonzero(affected)
    kk = min(k, len(ids) - 1)
    for start in range(0, len(rows) if kk > 0 else 0, BLOCK):
        renew()
        block = rows[start : start + BLOCK]
        near, scores = nearest_others(live, ids[block], store.get(ids[block]), kk, full=False)
        cache.write_lists(model_id, ids[block], near, scores)
        kth[block] = kth_scores(scores, k)
    report.rewritten = ids[rows].tolist() if kk > 0 else []
    if plan.remove:
        cache.delete_lists(model_id, plan.remove)
        report.deleted_lists = list(plan.remove)
    cache.write_index(model_id, ids, np.nan_to_num(kth, nan=-np.inf), k=k, complete=True)


def catch_up_lists(
    cache: NeighbourCache,
    store: EmbeddingStore,
    model_id: str,
    snapshot: tuple[np.ndarray, np.ndarray, np.ndarray],
    renew: Callable[[], object] = lambda: None,
) -> BatchUpdateReport:
    """After a full build wrote lists computed from ``snapshot`` (ids, vectors, keys as the
    build read the store): rewrite the lists that products stored, changed or removed since
    then enter or leave, the incremental way. Call it holding the lists lock: updates that
    ran during the build's computation wrote lists the build has just overwritten."""
    ids, vectors, keys = snapshot
    report = BatchUpdateReport(model_id)
    now_ids, now_vectors, now_keys = store.load_with_keys()
    if now_ids is ids and now_vectors is vectors and now_keys is keys:
        return report  # the store hands back the very arrays it gave: nothing changed
    # Changed: new, or another key (photo), or another vector (a part written without keys).
    pos = np.minimum(np.searchsorted(ids, now_ids), max(len(ids) - 1, 0))
    changed = np.ones(len(now_ids), bool)
    if len(ids):
        same = ids[pos] == now_ids
        same[same] = keys[pos[same]] == now_keys[same]
        rows = np.flatnonzero(same)
        for start in range(0, len(rows), CATCH_UP_BLOCK):  # a block at a time: no copy of all
            block = rows[start : start + CATCH_UP_BLOCK]
            same[block] = np.all(
                np.asarray(vectors[pos[block]]) == np.asarray(now_vectors[block]), axis=1
            )
        changed = ~same
    report.embedded = now_ids[changed].tolist()
    report.removed = np.setdiff1d(ids, now_ids).tolist()
    if not report.embedded and not report.removed:
        return report
    old_ids = np.intersect1d(ids, np.asarray([*report.embedded, *report.removed], np.int64))
    old_vectors = (
        np.asarray(vectors[np.searchsorted(ids, old_ids)], np.float32)
        if len(old_ids)
        else np.empty((0, 0), np.float32)
    )
    plan = Plan(report.embedded, report.removed, old_ids, old_vectors)
    _rewrite_lists(cache, store, model_id, plan, report, renew)
    report.lists_updated = True
    logger.info(
        "lists of %s caught up with %d products stored and %d removed during the build",
        model_id,
        len(report.embedded),
        len(report.removed),
    )
    return report
