"""Building and keeping up the similarity index: runs in workers (or the CLI), never in pages.

Three jobs, each idempotent (ARCHITECTURE.md rule 3):

* ``embed_catalog``: embed every product photo not yet embedded by the configured backbone
  (or whose photo changed), chunk by chunk, each chunk committed as an atomic part; a killed
  job resumes where it stopped.
* ``build_neighbours``: exact top-K for every product into Redis under the model id, then one
  atomic switch makes the lists the served ones.
* ``update_product``: after a product is created, edited or deleted, re-embed it if its photo
  changed and rewrite only the lists it enters or leaves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from flask import current_app
from sqlalchemy import select

from ml.cache import NeighbourCache
from ml.neighbours import all_neighbours, top_k_rows
from ml.store import EmbeddingStore
from webapp.extensions import db, get_redis
from webapp.media import image_file
from webapp.models import Product

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
# Float error allowed when deciding whether a product reaches another's K-th score.
SCORE_TOLERANCE = 1e-5
# Compact the store once this many parts have piled up (each admin change writes one).
COMPACT_AFTER_PARTS = 50


class ModelUnavailable(ValueError):
    """A model id this install cannot run (unknown backbone, missing weights or network)."""


def load_backbone(tuned: bool = True):
    """The configured embedder: the catalogue-tuned backbone ``EMBEDDING_TUNED`` selects
    (``auto``: the newest one tuned for the configured backbone), else the plain backbone.
    ``tuned=False`` always gives the plain one. Built once per process."""
    from ml.backbones import get_backbone

    cfg = current_app.config
    base = get_backbone(
        cfg["EMBEDDING_BACKBONE"],
        input_size=cfg["EMBEDDING_INPUT_SIZE"] or None,
        pooling=cfg["EMBEDDING_POOLING"],
        resnet_weights=cfg["RESNET50_WEIGHTS"],
        cache_dir=cfg["MODEL_FOLDER"],
    )
    choice = str(cfg["EMBEDDING_TUNED"]).strip()
    if not tuned or choice == "off":
        return base
    if choice == "auto":
        folder = newest_network(base.model_id)
        return base if folder is None else _tuned_backbone(folder, base)
    from ml.finetune import base_model_id

    if base_model_id(choice) != base.model_id:
        raise ModelUnavailable(
            f"EMBEDDING_TUNED={choice} was not tuned from the configured backbone "
            f"{base.model_id}; set EMBEDDING_TUNED=auto, or a model id of this backbone"
        )
    return _tuned_backbone(network_folder(choice), base)


def network_folder(model_id: str):
    """Where a tuned network's weights live: ``<MODEL_FOLDER>/<model id>/network``."""
    return store_for(model_id).path / "network"


def newest_network(base_id: str):
    """The folder of the newest network tuned from ``base_id``, or None."""
    from pathlib import Path

    from ml.finetune import TUNED_MARK

    found = []
    for meta in Path(current_app.config["MODEL_FOLDER"]).glob(
        f"{base_id}{TUNED_MARK}*/network/meta.json"
    ):
        try:
            found.append((meta.stat().st_mtime, meta.parent))
        except FileNotFoundError:  # replaced while listing
            continue
    return max(found)[1] if found else None


_tuned_cache: dict[str, tuple[float, object]] = {}


def _tuned_backbone(folder, base):
    """The tuned backbone saved in ``folder`` on top of ``base``, cached per process."""
    from ml.finetune import TunedNetwork

    try:
        mtime = (folder / "meta.json").stat().st_mtime
    except FileNotFoundError as exc:
        raise ModelUnavailable(
            f"no tuned network at {folder}: run `flask --app wsgi model tune` first"
        ) from exc
    key = str(folder)
    cached = _tuned_cache.get(key)
    if cached is None or cached[0] != mtime:
        cached = (mtime, TunedNetwork.load(folder).backbone(base))
        _tuned_cache[key] = cached
        logger.info("tuned backbone %s loaded", cached[1].model_id)
    return cached[1]


def backbone_for(model_id: str):
    """The embedder whose vectors carry ``model_id``: the configured one, or one rebuilt
    from the id (backbone name, weights, input size, pooling, tuned network); raises
    ``ModelUnavailable`` saying why when this install cannot run it."""
    from ml.backbones import BACKBONE_NAMES, get_backbone
    from ml.finetune import base_model_id, is_tuned_id

    try:
        configured = load_backbone()
    except Exception as exc:  # noqa: BLE001 - weights missing etc.: try the id's own backbone
        logger.warning("configured backbone unavailable: %s", exc)
        configured = None
    if configured is not None and configured.model_id == model_id:
        return configured
    base_id = base_model_id(model_id)
    name, _, rest = base_id.partition("-")
    parts = rest.split("-")
    if name not in BACKBONE_NAMES or len(parts) != 3 or not parts[1].isdigit():
        raise ModelUnavailable(f"Model {model_id} is not one this shop can run.")
    digest, size, pooling = parts
    cfg = current_app.config
    try:
        base = get_backbone(
            name,
            input_size=int(size),
            pooling=pooling,
            weights="random" if digest.startswith("seed") and name != "tiny" else "imagenet",
            resnet_weights=cfg["RESNET50_WEIGHTS"],
            cache_dir=cfg["MODEL_FOLDER"],
        )
    except Exception as exc:  # noqa: BLE001 - unknown pooling, weights unavailable...
        raise ModelUnavailable(f"Model {model_id} cannot be loaded here: {exc}") from exc
    if base.model_id != base_id:
        raise ModelUnavailable(
            f"Model {model_id} cannot be loaded here: the available weights give {base.model_id}."
        )
    if not is_tuned_id(model_id):
        return base
    try:
        return _tuned_backbone(network_folder(model_id), base)
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"Model {model_id} cannot be loaded here: {exc}") from exc


def store_for(model_id: str) -> EmbeddingStore:
    """The embedding store of a model id under the configured model folder."""
    return EmbeddingStore(current_app.config["MODEL_FOLDER"], model_id)


def neighbour_cache() -> NeighbourCache:
    """The Redis neighbour lists."""
    return NeighbourCache(get_redis())


def image_key(image_path: str | None, image_sha256: str | None) -> str:
    """What an embedding was computed from: the photo's digest, else its path."""
    return image_sha256 or f"path:{image_path}"


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
    backbone=None, *, chunk: int = 512, progress: Progress | None = None
) -> EmbedReport:
    """Embed every product photo the store lacks (or that changed); drop products that left."""
    started = time.perf_counter()
    backbone = backbone or load_backbone()
    store = store_for(backbone.model_id)
    media = current_app.config["MEDIA_FOLDER"]
    rows = db.session.execute(
        select(Product.id, Product.image_path, Product.image_sha256)
        .where(Product.image_path.is_not(None))
        .order_by(Product.id)
    ).all()
    db.session.rollback()  # end the read transaction: the job may run for many minutes
    stored = store.keys_by_id()
    wanted = {r.id: image_key(r.image_path, r.image_sha256) for r in rows}
    todo = [r for r in rows if stored.get(r.id) != wanted[r.id]]
    report = EmbedReport(backbone.model_id, total=len(rows), already=len(rows) - len(todo))

    gone = sorted(set(stored) - set(wanted))
    if gone:
        store.write_part(deleted=gone)
        report.removed = len(gone)
    if progress:
        progress(report.already, report.total)
    batch_size = current_app.config["EMBEDDING_BATCH_SIZE"]
    for start in range(0, len(todo), chunk):
        ids, keys, images = [], [], []
        for r in todo[start : start + chunk]:
            path = image_file(r.image_path, media)
            try:
                images.append(_read_image(path))
            except (OSError, ValueError) as exc:
                report.skipped.append((r.id, f"unreadable photo {path}: {exc}"))
                continue
            ids.append(r.id)
            keys.append(wanted[r.id])
        if ids:
            store.write_part(ids, backbone.embed(images, batch_size=batch_size), keys=keys)
            report.embedded += len(ids)
        if progress:
            progress(report.already + min(start + chunk, len(todo)), report.total)
    store.compact()
    report.seconds = time.perf_counter() - started
    for product_id, reason in report.skipped[:20]:
        logger.warning("product %s not embedded: %s", product_id, reason)
    return report


def _read_image(path):
    """Decode a photo for the backbone (RGB, orientation applied)."""
    from ml.preprocess import load_image

    if path is None:
        raise ValueError("no photo path")
    return load_image(path)


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
    """Exact top-K lists for every embedded product, written under the model id, then served."""
    k = k or current_app.config["NEIGHBOURS_K"]
    cache = neighbour_cache()
    ids, vectors = store_for(model_id).load()
    if len(ids) < 2:
        raise ValueError(
            f"model {model_id} has {len(ids)} embedded products; embed the catalogue first"
        )
    t0 = time.perf_counter()
    idx, scores = all_neighbours(np.asarray(vectors), k, progress=progress)
    t1 = time.perf_counter()
    old_ids, old_kth = cache.read_index(model_id)
    # Mark incomplete while lists are rewritten, so a crash never leaves a "complete" mix.
    cache.write_index(model_id, old_ids, old_kth, k=k, complete=False)
    cache.write_lists(model_id, ids, ids[idx], scores)
    cache.delete_lists(model_id, np.setdiff1d(old_ids, ids))
    cache.write_index(model_id, ids, kth_scores(scores, k), k=k, complete=True, full_build=True)
    t2 = time.perf_counter()
    if activate:
        cache.activate(model_id)
    logger.info(
        "neighbour lists for %s: %d products, compute %.1fs, write %.1fs",
        model_id,
        len(ids),
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


def index_catalog(progress_for: Callable[[str], Progress | None] = lambda stage: None) -> dict:
    """Embed what the store lacks, rebuild the lists if anything changed, serve them."""
    embed = embed_catalog(progress=progress_for("embedding"))
    summary: dict[str, object] = {
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


def kth_scores(scores: np.ndarray, k: int) -> np.ndarray:
    """The score a newcomer must beat to enter each list (-inf while a list is not full)."""
    if scores.shape[1] < k:
        return np.full(len(scores), -np.inf, np.float32)
    return scores[:, k - 1].astype(np.float32)


@dataclass
class UpdateReport:
    """What one incremental update did."""

    product_id: int
    action: str  # embedded | unchanged | removed | absent
    rewritten: list[int] = field(default_factory=list)
    deleted_lists: list[int] = field(default_factory=list)


def update_product(product_id: int, backbone=None) -> UpdateReport:
    """Bring one product's embedding and every list it touches up to date, without a rebuild."""
    backbone = backbone or load_backbone()
    model_id = backbone.model_id
    store = store_for(model_id)
    product = db.session.get(Product, product_id)
    stored_keys = store.keys_by_id()
    old_vec = store.get([product_id])[0] if product_id in stored_keys else None

    if product is None or not product.image_path:
        if old_vec is None:
            return UpdateReport(product_id, "absent")
        store.write_part(deleted=[product_id])
        new_vec, action = None, "removed"
    else:
        key = image_key(product.image_path, product.image_sha256)
        if stored_keys.get(product_id) == key:
            # Attribute edits do not move a product in visual space; pages read attributes live.
            return UpdateReport(product_id, "unchanged")
        path = image_file(product.image_path, current_app.config["MEDIA_FOLDER"])
        new_vec = backbone.embed([_read_image(path)])[0]
        store.write_part([product_id], new_vec[None, :], keys=[key])
        action = "embedded"

    report = UpdateReport(product_id, action)
    cache = neighbour_cache()
    if cache.meta(model_id).get("complete") == "1":
        _update_lists(cache, store, model_id, product_id, old_vec, new_vec, report)
    if len(store._parts()) >= COMPACT_AFTER_PARTS:
        store.compact()
    return report


def _update_lists(cache, store, model_id, product_id, old_vec, new_vec, report) -> None:
    """Rewrite the lists that gain or lose ``product_id``; leave every other list untouched."""
    k = int(cache.meta(model_id)["k"])
    ids, vectors = store.load()
    vectors = np.asarray(vectors)
    old_index_ids, old_kth = cache.read_index(model_id)
    kth = np.full(len(ids), np.nan, np.float32)
    pos = np.searchsorted(old_index_ids, ids)
    pos = np.minimum(pos, max(len(old_index_ids) - 1, 0))
    known = (old_index_ids[pos] == ids) if len(old_index_ids) else np.zeros(len(ids), bool)
    kth[known] = old_kth[pos[known]]

    affected = ~known  # products without a list yet get one
    for vec in (old_vec, new_vec):
        if vec is not None:
            affected |= vectors @ vec >= kth - SCORE_TOLERANCE
    if new_vec is not None:
        affected |= ids == product_id
    rows = np.flatnonzero(affected)
    if len(rows):
        sims = vectors[rows] @ vectors.T
        sims[np.arange(len(rows)), rows] = -np.inf
        idx, scores = top_k_rows(sims, min(k, len(ids) - 1))
        cache.write_lists(model_id, ids[rows], ids[idx], scores)
        kth[rows] = kth_scores(scores, k)
        report.rewritten = ids[rows].tolist()
    if new_vec is None:
        cache.delete_lists(model_id, [product_id])
        report.deleted_lists = [product_id]
    cache.write_index(model_id, ids, kth, k=k, complete=True)
