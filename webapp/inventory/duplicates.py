"""Duplicate photos: byte-identical (sha256), the same picture re-encoded (perceptual hash),
and near duplicates (embedding cosine above the model's duplicate threshold).

Plain functions over the DB session, Redis and the media folder; no TensorFlow. The
embedding check reads the product's own neighbour list, which the worker writes a few
seconds after a save, so it costs one Redis read. Hashing the whole catalogue is worker
work (``worker.jobs.hashing``); the product page hashes only its own photo when needed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from flask import current_app
from redis.exceptions import RedisError
from sqlalchemy import and_, func, select

from webapp.extensions import db
from webapp.inventory import perceptual
from webapp.media import image_file
from webapp.models import Product, ProductImageHash
from webapp.registry import neighbour_cache
from webapp.thresholds import duplicate_threshold

logger = logging.getLogger(__name__)

MAX_MATCHES = 6
KIND_RANK = {"exact": 0, "perceptual": 1, "similar": 2}
SQL_CHUNK = 2000
# A product's hash row counts only while it was made from the product's current photo: a hash
# of an older photo says nothing about the current one.
CURRENT_HASH = and_(
    ProductImageHash.product_id == Product.id,
    ProductImageHash.image_sha256 == Product.image_sha256,
)


@dataclass
class Match:
    """Another product whose photo matches: how, and how closely (1.0 = identical)."""

    product: Product
    how: str  # exact | perceptual | similar
    score: float
    detail: str


@dataclass
class DuplicateCheck:
    """What the duplicate check found for one product."""

    matches: list[Match] = field(default_factory=list)
    reviewed_at: datetime | None = None
    reviewed_by: str | None = None
    similar_checked: bool = False
    threshold: float | None = None
    threshold_source: str | None = None

    @property
    def needs_review(self) -> bool:
        """Matches found and nobody decided to keep the product yet."""
        return bool(self.matches) and self.reviewed_at is None


def photo_hash(product_id: int, image_path: str | None, sha: str | None) -> str | None:
    """The perceptual hash of a product's photo, or None when it cannot be read (or has no
    sha256 to tell later whether the hash is still the photo's)."""
    path = image_file(image_path, current_app.config["MEDIA_FOLDER"])
    if path is None or not sha:
        return None
    try:
        return perceptual.phash_file(path)
    except Exception as exc:  # any undecodable file: the check simply has no hash for it
        logger.info("no perceptual hash for product %s (%s): %s", product_id, path, exc)
        return None


def ensure_hash(product: Product) -> ProductImageHash | None:
    """The product's hash row, computed now when missing or made for an older photo."""
    row = db.session.get(ProductImageHash, product.id)
    if row is not None and row.image_sha256 == product.image_sha256:
        return row
    value = photo_hash(product.id, product.image_path, product.image_sha256)
    if value is None:
        return None
    if row is None:
        row = ProductImageHash(product_id=product.id)
        db.session.add(row)
    row.image_sha256 = product.image_sha256
    row.phash = value
    row.computed_at = datetime.now(UTC)
    row.reviewed_at = row.reviewed_by = None  # a new photo needs a new look
    db.session.commit()
    return row


# Per process and database: (signature, ids, hashes, shas). Loading 40,000 hashes takes
# about half a second; the signature costs a few milliseconds.
_hash_cache: dict[str, tuple] = {}


def _hashes_signature() -> tuple:
    """Changes whenever a hash row or a product's photo does."""
    hashes = db.session.execute(select(func.count(), func.max(ProductImageHash.computed_at))).one()
    products = db.session.execute(select(func.count(), func.max(Product.updated_at))).one()
    return (*hashes, *products)


def catalogue_hashes() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(product ids, hash array, photo sha256s) of every product's current photo hash."""
    key = str(db.engine.url)
    signature = _hashes_signature()
    cached = _hash_cache.get(key)
    if cached is not None and cached[0] == signature:
        return cached[1], cached[2], cached[3]
    rows = db.session.execute(
        select(ProductImageHash.product_id, ProductImageHash.phash, ProductImageHash.image_sha256)
        .join(Product, CURRENT_HASH)
        .order_by(ProductImageHash.product_id)
    ).all()
    result = (
        np.asarray([r[0] for r in rows], np.int64),
        perceptual.to_array(r[1] for r in rows),
        [r[2] for r in rows],
    )
    _hash_cache[key] = (signature, *result)
    return result


def find_matches(
    product_ids: list[int], *, similar: bool = True
) -> dict[int, list[tuple[int, str, float, str]]]:
    """For each product: (other id, how, score, detail) for every exact, perceptual and
    (when ``similar``) embedding match, best first; at most MAX_MATCHES each."""
    found: dict[int, list[tuple[int, str, float, str]]] = {pid: [] for pid in product_ids}
    products: dict[int, str | None] = {}
    for start in range(0, len(product_ids), SQL_CHUNK):
        chunk = product_ids[start : start + SQL_CHUNK]
        for pid, sha in db.session.execute(
            select(Product.id, Product.image_sha256).where(Product.id.in_(chunk))
        ):
            products[pid] = sha
    # Exact: the same bytes.
    shas = sorted({s for s in products.values() if s})
    by_sha: dict[str, list[int]] = {}
    for start in range(0, len(shas), SQL_CHUNK):
        for pid, sha in db.session.execute(
            select(Product.id, Product.image_sha256)
            .where(Product.image_sha256.in_(shas[start : start + SQL_CHUNK]))
            .order_by(Product.id)
        ):
            by_sha.setdefault(sha, []).append(pid)
    for pid, sha in products.items():
        for other in by_sha.get(sha or "", []):
            if other != pid:
                found[pid].append((other, "exact", 1.0, "byte-identical photo"))
    # Perceptual: the same picture, re-encoded or rescaled.
    max_bits = int(current_app.config["DUPLICATE_HASH_DISTANCE"])
    cat_ids, cat_hashes, cat_shas = catalogue_hashes()
    if len(cat_ids):
        pos = {pid: i for i, pid in enumerate(cat_ids.tolist())}
        query = [pid for pid in products if pid in pos]
        if query:
            q = cat_hashes[[pos[p] for p in query]]
            bits = cat_hashes.shape[1] * 64
            for qi, ci, dist in perceptual.close_pairs(q, cat_hashes, max_bits):
                pid, other = query[qi], int(cat_ids[ci])
                if other == pid or products.get(pid) == cat_shas[ci]:
                    continue  # itself, or already listed as byte-identical
                found[pid].append(
                    (
                        other,
                        "perceptual",
                        1 - dist / bits,
                        f"the same picture re-encoded or rescaled ({dist} of {bits} bits differ)",
                    )
                )
    if similar:
        _similar_matches(products, found)
    for pid in found:
        seen: set[int] = set()
        unique = []
        # The surest kind of match first: identical bytes, then the same picture, then alike.
        for m in sorted(found[pid], key=lambda m: (KIND_RANK[m[1]], -m[2], m[0])):
            if m[0] not in seen:
                seen.add(m[0])
                unique.append(m)
        found[pid] = unique[:MAX_MATCHES]
    return found


def _similar_matches(products: dict, found: dict) -> bool:
    """Add neighbours above the threshold from each product's own list; False if unavailable."""
    try:
        cache = neighbour_cache()
        model_id = cache.active_model()
        if model_id is None:
            return False
        threshold, _ = duplicate_threshold(model_id)
        ids = list(products)
        lists = cache.get_lists(model_id, ids)
    except RedisError as exc:
        logger.warning("similar-photo check unavailable: %s", exc)
        return False
    for pid, entry in zip(ids, lists, strict=True):
        if entry is None:
            continue
        for other, score in zip(entry[0].tolist(), entry[1].tolist(), strict=True):
            if score >= threshold and other != pid:
                found[pid].append(
                    (int(other), "similar", float(score), f"looks alike (cosine {score:.3f})")
                )
    return True


def check_product(product: Product) -> DuplicateCheck:
    """Everything the product page shows about the product's possible duplicates."""
    hash_row = ensure_hash(product) if product.image_path else None
    matches = find_matches([product.id]).get(product.id, [])
    others = {
        p.id: p
        for p in db.session.scalars(select(Product).where(Product.id.in_([m[0] for m in matches])))
    }
    check = DuplicateCheck(
        matches=[
            Match(others[o], how, score, detail) for o, how, score, detail in matches if o in others
        ]
    )
    if hash_row is not None:
        check.reviewed_at, check.reviewed_by = hash_row.reviewed_at, hash_row.reviewed_by
    try:
        cache = neighbour_cache()
        model_id = cache.active_model()
        check.similar_checked = (
            model_id is not None and cache.get_list(model_id, product.id) is not None
        )
        check.threshold, check.threshold_source = duplicate_threshold(model_id)
    except RedisError:
        check.similar_checked = False
    return check


def mark_reviewed(product: Product, reviewer: str) -> None:
    """Record that an admin keeps this product despite its possible duplicates."""
    row = ensure_hash(product)
    if row is None:
        row = ProductImageHash(
            product_id=product.id, image_sha256=product.image_sha256 or "", phash="0" * 64
        )
        db.session.add(row)
    row.reviewed_at = datetime.now(UTC)
    row.reviewed_by = reviewer
    db.session.commit()


@dataclass
class Group:
    """Products sharing one photo."""

    key: str
    products: list[Product]


def identical_groups(page: int = 1, per_page: int = 20) -> tuple[list[Group], int, int]:
    """One page of byte-identical groups (largest first), the number of groups and products."""
    counted = (
        select(
            Product.image_sha256.label("sha"),
            func.count().label("n"),
            func.min(Product.id).label("first"),
        )
        .where(Product.image_sha256.is_not(None))
        .group_by(Product.image_sha256)
        .having(func.count() > 1)
        .subquery()
    )
    total_groups, total_products = db.session.execute(
        select(func.count(), func.coalesce(func.sum(counted.c.n), 0))
    ).one()
    page_rows = (
        db.session.execute(
            select(counted.c.sha)
            .order_by(counted.c.n.desc(), counted.c.first)
            .limit(per_page)
            .offset((page - 1) * per_page)
        )
        .scalars()
        .all()
    )
    members = db.session.scalars(
        select(Product).where(Product.image_sha256.in_(page_rows)).order_by(Product.id)
    ).all()
    groups = {sha: Group(sha, []) for sha in page_rows}
    for p in members:
        groups[p.image_sha256].products.append(p)
    return list(groups.values()), int(total_groups), int(total_products)


def lookalike_groups(limit: int = 50) -> tuple[list[Group], int]:
    """Photos with the same perceptual hash but different bytes, and how many such groups."""
    counted = (
        select(
            ProductImageHash.phash.label("phash"),
            func.min(ProductImageHash.product_id).label("first"),
        )
        .join(Product, CURRENT_HASH)
        .group_by(ProductImageHash.phash)
        .having(func.count(func.distinct(ProductImageHash.image_sha256)) > 1)
        .subquery()
    )
    total = db.session.scalar(select(func.count()).select_from(counted)) or 0
    keys = db.session.scalars(select(counted.c.phash).order_by(counted.c.first).limit(limit)).all()
    rows = db.session.execute(
        select(ProductImageHash.phash, Product)
        .join(Product, CURRENT_HASH)
        .where(ProductImageHash.phash.in_(keys))
        .order_by(Product.id)
    ).all()
    groups = {k: Group(k, []) for k in keys}
    for key, product in rows:
        groups[key].products.append(product)
    return list(groups.values()), int(total)


def hash_coverage() -> tuple[int, int]:
    """(products with a current hash, products with a photo)."""
    with_photo = db.session.scalar(
        select(func.count()).select_from(Product).where(Product.image_sha256.is_not(None))
    )
    hashed = db.session.scalar(
        select(func.count()).select_from(ProductImageHash).join(Product, CURRENT_HASH)
    )
    return int(hashed or 0), int(with_photo or 0)
