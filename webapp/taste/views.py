"""Likes and "not interested": the buttons' form posts (no JavaScript), their JSON API, and
the page where shoppers see and clear their taste.

The buttons on product cards submit one small form at the foot of every page (its CSRF
token and the page to come back to); ``static/js/taste.js`` sends the same clicks to the
API instead and updates the page in place. The API keeps CSRF protection: it acts on the
session's shopper, so a request must carry the page's token (header ``X-CSRFToken``).
"""

from __future__ import annotations

from flask import Blueprint, flash, jsonify, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import generate_csrf
from sqlalchemy import select

from webapp.account.services import safe_next_url
from webapp.api.views import product_json
from webapp.eligibility import ACTIVE
from webapp.extensions import db
from webapp.models import Product
from webapp.shop.services import get_product_or_404
from webapp.taste import (
    KINDS,
    VIEWS_KEPT,
    Taste,
    clear,
    current_taste,
    like,
    mark_not_interested,
    undo_not_interested,
    unlike,
)
from webapp.taste.forms import TasteClearForm
from webapp.taste.services import SESSION_LIMITS

bp = Blueprint("taste", __name__)

CLEARED = {
    "likes": "Your likes were cleared.",
    "views": "Your recently viewed products were cleared.",
    "not_interested": "Your “not interested” list was cleared.",
    "all": "Everything we kept about your taste was cleared.",
}


@bp.app_template_global()
def product_liked(product_id: int) -> bool:
    """Whether the current shopper likes this product (for the heart buttons)."""
    return product_id in current_taste().liked_ids


def _back(product: Product) -> ResponseReturnValue:
    """Back to the page the button was on (a safe local path), else the product's page."""
    target = safe_next_url(request.form.get("next"))
    return redirect(target or url_for("shop.product_detail", product_id=product.id), 303)


# -- the buttons without JavaScript -----------------------------------------------------------


@bp.post("/products/<int:product_id>/like")
def product_like(product_id: int) -> ResponseReturnValue:
    """Like a product, then go back."""
    product = get_product_or_404(product_id)
    like(product.id)
    flash(f"You like “{product.name}”.", "success")
    return _back(product)


@bp.post("/products/<int:product_id>/unlike")
def product_unlike(product_id: int) -> ResponseReturnValue:
    """Take a like back, then go back."""
    product = get_product_or_404(product_id)
    unlike(product.id)
    flash(f"“{product.name}” is no longer among your likes.", "info")
    return _back(product)


@bp.post("/products/<int:product_id>/not-interested")
def product_not_interested(product_id: int) -> ResponseReturnValue:
    """Never recommend this product again, then go back (where it is gone)."""
    product = get_product_or_404(product_id)
    mark_not_interested(product.id)
    flash(f"We will not recommend “{product.name}” again. Your taste page can undo it.", "info")
    return _back(product)


@bp.post("/products/<int:product_id>/not-interested/undo")
def product_not_interested_undo(product_id: int) -> ResponseReturnValue:
    """Take a "not interested" back, then go back."""
    product = get_product_or_404(product_id)
    undo_not_interested(product.id)
    flash(f"“{product.name}” may be recommended again.", "info")
    return _back(product)


# -- the page ---------------------------------------------------------------------------------


@bp.get("/account/taste")
def taste_detail() -> ResponseReturnValue:
    """The shopper's likes, recently viewed products and "not interested" list."""
    taste = current_taste()
    lists = _products_of(taste)
    return render_template(
        "taste/taste_detail.html",
        lists=lists,
        taste=taste,
        views_kept=VIEWS_KEPT,
        session_limits=SESSION_LIMITS,
    )


@bp.post("/account/taste/clear")
def taste_clear() -> ResponseReturnValue:
    """Clear one list (``kind``: likes, views, not_interested) or everything (``all``)."""
    form = TasteClearForm()
    if form.validate_on_submit():
        clear(form.kind.data)
        flash(CLEARED[form.kind.data], "success")
    else:
        flash("Nothing was cleared: please use the buttons on this page.", "warning")
    return redirect(url_for("taste.taste_detail"), 303)


def _products_of(taste: Taste) -> dict[str, list[Product]]:
    """Each list's products the shopper may see, newest first (one query for all three)."""
    ids = {pid for kind in KINDS for pid, _ in getattr(taste, kind)}
    rows: dict[int, Product] = {}
    if ids:
        rows = {
            p.id: p
            for p in db.session.scalars(
                select(Product).where(Product.id.in_(sorted(ids)), *ACTIVE.clauses())
            )
        }
    return {kind: [rows[pid] for pid, _ in getattr(taste, kind) if pid in rows] for kind in KINDS}


# -- the JSON API -----------------------------------------------------------------------------


def _taste_json(product: Product, taste: Taste, kind: str) -> dict:
    """A product's state after a change, and the list it changed, as the similar-products
    API lists products."""
    return {
        "product_id": product.id,
        "status": "ok",
        "message": None,
        "liked": product.id in taste.liked_ids,
        "not_interested": product.id in taste.not_interested_ids,
        "items": [product_json(p) for p in _products_of(taste)[kind]],
    }


@bp.route("/api/products/<int:product_id>/like", methods=["POST", "DELETE"])
def api_product_like(product_id: int) -> ResponseReturnValue:
    """POST likes a product, DELETE takes the like back; answers with the shopper's likes."""
    product = get_product_or_404(product_id)
    taste = like(product.id) if request.method == "POST" else unlike(product.id)
    return jsonify(_taste_json(product, taste, "likes"))


@bp.route("/api/products/<int:product_id>/not-interested", methods=["POST", "DELETE"])
def api_product_not_interested(product_id: int) -> ResponseReturnValue:
    """POST marks a product "not interested", DELETE undoes it; answers with the marked list."""
    product = get_product_or_404(product_id)
    if request.method == "POST":
        taste = mark_not_interested(product.id)
    else:
        taste = undo_not_interested(product.id)
    return jsonify(_taste_json(product, taste, "not_interested"))


@bp.get("/api/taste")
def api_taste() -> ResponseReturnValue:
    """The shopper's three lists, and the CSRF token their changes must carry."""
    lists = _products_of(current_taste())
    return jsonify(
        {
            "status": "ok",
            "csrf_token": generate_csrf(),
            **{kind: [product_json(p) for p in products] for kind, products in lists.items()},
        }
    )
