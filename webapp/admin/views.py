"""Admin area (placeholder)."""

from flask import Blueprint

bp = Blueprint("admin", __name__)


@bp.get("/products")
def product_list():
    """Products."""
    return "products"
