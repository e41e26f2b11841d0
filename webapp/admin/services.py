"""Inventory upkeep: create, edit, (de)activate and delete products.

Plain functions over the DB session and the media folder, so views, CLI commands and
background jobs share one path. Each commits its own change and then calls
:func:`on_product_changed`, the single place where follow-up work (embeddings, neighbour
lists) is triggered.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from flask import current_app
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from webapp.extensions import db, send_task
from webapp.inventory import index_state
from webapp.models import Product
from webapp.uploads import ValidatedImage, remove_stored_image, store_image

logger = logging.getLogger(__name__)

# Attributes a caller may set; id, image and timestamps are managed here.
EDITABLE_FIELDS: frozenset[str] = frozenset(
    {
        "name",
        "gender",
        "master_category",
        "sub_category",
        "article_type",
        "base_colour",
        "season",
        "year",
        "usage",
        "price",
        "stock",
        "active",
    }
)

MEDIA_SUBDIR = "products"


class ProductChange(enum.StrEnum):
    """What happened to a product, as passed to :func:`on_product_changed`."""

    CREATED = "created"
    UPDATED = "updated"  # attributes only: the photo is unchanged
    IMAGE_CHANGED = "image_changed"  # the photo (and possibly attributes) changed
    ACTIVATED = "activated"
    DEACTIVATED = "deactivated"
    DELETED = "deleted"


class ProductNotFound(LookupError):
    """No product has that id."""


class ProductSaveError(RuntimeError):
    """The change could not be saved; the message is meant for the admin."""


def on_product_changed(product_id: int, change: ProductChange) -> None:
    """Hook run after every committed product change: enqueue the similarity-index upkeep."""
    logger.info("product %s %s", product_id, change.value)
    if change in (ProductChange.UPDATED, ProductChange.ACTIVATED, ProductChange.DEACTIVATED):
        # Looks did not change: pages read attributes and the active flag while choosing.
        return
    try:
        result = send_task(index_state.UPDATE_TASK, (product_id,))
    except (OperationalError, RedisError, OSError) as exc:
        # The change is committed; the next `flask catalog embed` picks it up.
        logger.warning("could not enqueue index upkeep for product %s: %s", product_id, exc)
        return
    if result is not None and change != ProductChange.DELETED:
        try:
            # The product page shows its index state (queued, running, done).
            index_state.record(product_id, result.id, change.value)
        except (RedisError, OSError) as exc:
            logger.warning("could not record the index state of product %s: %s", product_id, exc)


def _media_folder() -> str:
    return current_app.config["MEDIA_FOLDER"]


def _clean(data: Mapping[str, Any], *, partial: bool) -> dict[str, Any]:
    """Keep known attributes, trim text, turn empty text into None; require a name."""
    unknown = set(data) - EDITABLE_FIELDS
    if unknown:
        raise ValueError(f"unknown product fields: {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, str):
            value = value.strip() or None
        if key == "price" and value is not None and not isinstance(value, Decimal):
            value = Decimal(str(value))
        if key == "active":
            value = bool(value)
        values[key] = value
    if (not partial or "name" in values) and not values.get("name"):
        raise ValueError("a product needs a name")
    return values


def _next_product_id() -> int:
    """One past the largest id: catalogue ids are explicit, so there is no sequence."""
    return (db.session.scalar(select(func.max(Product.id))) or 0) + 1


def get_product(product_id: int) -> Product:
    """The product with this id, or ProductNotFound."""
    product = db.session.get(Product, product_id)
    if product is None:
        raise ProductNotFound(product_id)
    return product


def create_product(data: Mapping[str, Any], image: ValidatedImage) -> Product:
    """Store the photo and insert a product with the next free id."""
    values = _clean(data, partial=False)
    values.setdefault("active", True)
    media = _media_folder()
    image_path = store_image(image, media, MEDIA_SUBDIR)
    try:
        # Two admins saving at once can pick the same id; the loser retries once.
        for attempt in (1, 2):
            product = Product(
                id=_next_product_id(),
                image_path=image_path,
                image_sha256=image.sha256,
                **values,
            )
            db.session.add(product)
            try:
                db.session.commit()
                break
            except IntegrityError:
                db.session.rollback()
                logger.warning("product id %s was taken (attempt %d)", product.id, attempt)
                if attempt == 2:
                    raise ProductSaveError(
                        "The product could not be saved because another one was being added "
                        "at the same time. Please try again."
                    ) from None
    except BaseException:
        db.session.rollback()
        remove_stored_image(image_path, media)
        raise
    on_product_changed(product.id, ProductChange.CREATED)
    return product


def update_product(
    product_id: int, data: Mapping[str, Any], image: ValidatedImage | None = None
) -> Product:
    """Change a product's attributes and, when ``image`` is given, replace its photo."""
    product = get_product(product_id)
    values = _clean(data, partial=True)
    media = _media_folder()
    old_path = product.image_path
    new_path = store_image(image, media, MEDIA_SUBDIR) if image is not None else None
    try:
        for key, value in values.items():
            setattr(product, key, value)
        if image is not None:
            product.image_path = new_path
            product.image_sha256 = image.sha256
        db.session.commit()
    except BaseException:
        db.session.rollback()
        remove_stored_image(new_path, media)
        raise
    if new_path is not None and old_path != new_path:
        # Only after the commit: until then the old photo is still the product's photo.
        _remove_if_unused(old_path, media)
    on_product_changed(
        product.id, ProductChange.IMAGE_CHANGED if image is not None else ProductChange.UPDATED
    )
    return product


def set_active(product_id: int, active: bool) -> Product:
    """Show (active) or hide (inactive) a product in the shop, keeping its data."""
    product = get_product(product_id)
    if product.active == active:
        return product
    product.active = active
    db.session.commit()
    on_product_changed(product.id, ProductChange.ACTIVATED if active else ProductChange.DEACTIVATED)
    return product


def delete_product(product_id: int) -> None:
    """Delete a product and its uploaded photo (never a catalogue photo read in place)."""
    product = get_product(product_id)
    image_path = product.image_path
    db.session.delete(product)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise ProductSaveError(
            "This product is still referenced elsewhere and cannot be deleted; "
            "deactivate it instead."
        ) from None
    _remove_if_unused(image_path, _media_folder())
    on_product_changed(product_id, ProductChange.DELETED)


def _remove_if_unused(image_path: str | None, media: str) -> None:
    """Remove a stored photo unless another product still points at it."""
    if not image_path:
        return
    still_used = db.session.scalar(
        select(func.count()).select_from(Product).where(Product.image_path == image_path)
    )
    if not still_used:
        # remove_stored_image ignores absolute paths: catalogue photos read in place stay.
        remove_stored_image(image_path, media)
