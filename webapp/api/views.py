"""JSON API: similar products (and, later, photo search jobs)."""

from __future__ import annotations

from flask import Blueprint, abort, current_app, jsonify, request, url_for

from webapp.preferences import current_preferences
from webapp.shop.services import get_product_or_404
from webapp.similar.services import MAX_N, SimilarResult, similar_products, with_overrides

bp = Blueprint("api", __name__)


def int_arg(name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high], else a 400 saying so."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        abort(400, f"'{name}' must be a whole number between {low} and {high}.")
    if not low <= value <= high:
        abort(400, f"'{name}' must be between {low} and {high}.")
    return value


def list_arg(name: str) -> list[str]:
    """A comma-separated or repeated query parameter."""
    values = []
    for raw in request.args.getlist(name):
        values += [v.strip() for v in raw.split(",") if v.strip()]
    return values


def result_json(result: SimilarResult) -> dict:
    """The shared JSON shape of a list of recommendations."""
    return {
        "status": result.status,
        "model": result.model_id,
        "message": result.message or None,
        "items": [
            {
                "id": item.product.id,
                "name": item.product.name,
                "score": round(item.score, 4),
                "url": url_for("shop.product_detail", product_id=item.product.id),
                "image_url": url_for("shop.product_image", product_id=item.product.id),
                "gender": item.product.gender,
                "article_type": item.product.article_type,
                "base_colour": item.product.base_colour,
                "price": None if item.product.price is None else str(item.product.price),
                "reasons": item.reasons,
            }
            for item in result.items
        ],
    }


@bp.get("/products/<int:product_id>/similar")
def product_similar(product_id: int):
    """Products that look like this one, with the signed-in shopper's preferences applied."""
    product = get_product_or_404(product_id)
    n = int_arg("n", current_app.config["SIMILAR_PRODUCTS_N"], 1, MAX_N)
    genders = list_arg("gender")
    if len(genders) > 1:
        abort(400, "'gender' takes one value.")
    prefs = with_overrides(
        current_preferences(), list_arg("exclude_colours"), genders[0] if genders else None
    )
    result = similar_products(product, prefs, n)
    body = {"product_id": product.id, **result_json(result)}
    if result.status != "ok":
        return jsonify(body), 503, {"Retry-After": "30"}
    return jsonify(body)
