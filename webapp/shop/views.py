"""The shop's catalogue, product pages and product photos."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)

from webapp.feed import PAGE_N, ROW_N, current_feed, has_signals
from webapp.media import OutsideMediaFolder, media_path
from webapp.preferences import current_preferences
from webapp.shop import facets, services
from webapp.shop.services import FACET_LABELS, SORTS, CatalogArgsError
from webapp.similar.services import similar_products
from webapp.taste import current_taste, not_interested_ids, record_view

logger = logging.getLogger(__name__)

bp = Blueprint("shop", __name__)
# Cached facet counts go stale when products change: every commit that changes them bumps
# the catalogue version, in this app's web, worker and command processes alike.
bp.record_once(lambda state: facets.watch_product_changes())

PLACEHOLDER_IMAGE = "img/placeholder.svg"


@bp.app_template_filter("price")
def format_price(value: Decimal | float | None) -> str:
    """A price with thousands separators and two decimals; empty when unknown."""
    return "" if value is None else f"{value:,.2f}"


def catalog_href_builder() -> Callable[[Mapping[str, Any]], str]:
    """A fast URL builder for catalogue links with the arguments of ``CatalogQuery.url_args``.

    A page holds a few hundred facet links; building each through url_for costs about three
    times as much as encoding the query string onto the catalogue's URL, found once.
    """
    base = url_for("shop.catalog")

    def href(args: Mapping[str, Any]) -> str:
        return f"{base}?{urlencode(args, doseq=True)}" if args else base

    return href


@bp.get("/")
def catalog() -> str:
    """The catalogue: facet filters, name search, sorting and pagination, all in the URL."""
    try:
        query = services.parse_catalog_args(request.args)
    except CatalogArgsError as exc:
        abort(400, str(exc))
    prefs = current_preferences()
    result = services.catalog_page(query, prefs, current_app.config["PRODUCTS_PER_PAGE"])
    # The "For you" row: on the first page of the whole catalogue, once the shopper has
    # liked or viewed something (the /for-you page shows the labelled fallback before that).
    feed = None
    if result.page == 1 and not query.is_filtered and has_signals(current_taste()):
        feed = current_feed(ROW_N)
    return render_template(
        "shop/catalog.html",
        query=query,
        result=result,
        feed=feed,
        facet_labels=FACET_LABELS,
        sorts=SORTS,
        preference_notes=services.preference_summary(prefs),
        catalog_href=catalog_href_builder(),
    )


@bp.get("/products/<int:product_id>")
def product_detail(product_id: int) -> str:
    """One product: photo, attributes and breadcrumbs to its categories; the shopper's
    recently viewed products remember it."""
    product = services.get_product_or_404(product_id)
    if product.active:
        record_view(product.id)
    similar = similar_products(
        product,
        current_preferences(),
        current_app.config["SIMILAR_PRODUCTS_N"],
        exclude=not_interested_ids(),
    )
    return render_template("shop/product_detail.html", product=product, similar=similar)


@bp.get("/for-you")
def for_you() -> str:
    """Products picked from the shopper's likes and views; the newest products, labelled,
    for a shopper with neither."""
    return render_template("shop/for_you.html", feed=current_feed(PAGE_N))


@bp.get("/products/<int:product_id>/image")
def product_image(product_id: int) -> Response:
    """The product's photo, cacheable; the placeholder when it has none."""
    product = services.get_product_or_404(product_id)
    try:
        path = media_path(product.image_path, current_app.config["MEDIA_FOLDER"])
    except OutsideMediaFolder as exc:
        # Stored paths come from our own importer and uploads; one that leads out of the
        # media folder is a bad row, never something to serve.
        logger.warning("product %s has an unsafe image path: %s", product.id, exc)
        abort(404)
    if path is None or not path.is_file():
        return redirect(url_for("static", filename=PLACEHOLDER_IMAGE))
    response = send_file(path, conditional=True, etag=True)
    response.cache_control.public = True
    return response
