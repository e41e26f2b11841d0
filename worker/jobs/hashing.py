"""Perceptual hashes of the catalogue's photos, for the duplicate checks (worker work).

Hashing every photo takes minutes on a large catalogue, so it runs in a worker: the
``hash_product_images`` task (one at a time) and the bulk import's first stage. The admin's
product page hashes only its own product's photo (``webapp.inventory.duplicates``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from sqlalchemy import select

from webapp.extensions import db
from webapp.inventory.duplicates import photo_hash
from webapp.models import Product, ProductImageHash

logger = logging.getLogger(__name__)

SQL_CHUNK = 2000


def hash_products(
    product_ids: Iterable[int] | None = None,
    *,
    batch: int = 500,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Compute missing or stale hashes (for the given products, or the whole catalogue)."""
    stmt = (
        select(Product.id, Product.image_path, Product.image_sha256)
        .outerjoin(ProductImageHash, ProductImageHash.product_id == Product.id)
        .where(
            Product.image_path.is_not(None),
            Product.image_sha256.is_not(None),
            (ProductImageHash.product_id.is_(None))
            | (ProductImageHash.image_sha256 != Product.image_sha256),
        )
        .order_by(Product.id)
    )
    if product_ids is not None:
        wanted = sorted({int(p) for p in product_ids})
        todo = []
        for start in range(0, len(wanted), SQL_CHUNK):
            todo += db.session.execute(
                stmt.where(Product.id.in_(wanted[start : start + SQL_CHUNK]))
            ).all()
    else:
        todo = db.session.execute(stmt).all()
    db.session.rollback()
    done = 0
    for start in range(0, len(todo), batch):
        chunk = todo[start : start + batch]
        existing = {
            r.product_id: r
            for r in db.session.scalars(
                select(ProductImageHash).where(
                    ProductImageHash.product_id.in_([t.id for t in chunk])
                )
            )
        }
        now = datetime.now(UTC)
        for pid, path, sha in chunk:
            value = photo_hash(pid, path, sha)
            if value is None:
                continue
            row = existing.get(pid)
            if row is None:
                row = ProductImageHash(product_id=pid)
                db.session.add(row)
            row.image_sha256, row.phash, row.computed_at = sha, value, now
            row.reviewed_at = row.reviewed_by = None
            done += 1
        db.session.commit()
        if progress:
            progress(start + len(chunk), len(todo))
    return done
