"""Admin area: the inventory (list, search, create, edit, (de)activate, delete)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_login import current_user
from sqlalchemy import distinct, or_, select
from werkzeug.routing import BuildError

from webapp import ratelimit
from webapp.account.services import safe_next_url
from webapp.admin import services
from webapp.admin.forms import (
    TEXT_FIELDS,
    ActionForm,
    ProductCreateForm,
    ProductEditForm,
    ProductFilterForm,
)
from webapp.extensions import db, login_manager
from webapp.media import image_file
from webapp.models import Product
from webapp.uploads import InvalidImage, ValidatedImage, validate_upload

logger = logging.getLogger(__name__)

bp = Blueprint("admin", __name__)

# As elsewhere on the site: a submitted form that comes back with errors is answered 400;
# a save that lost a race with another admin, 409.

PAGE_SIZE = 50
# Largest value of the 32-bit id column: longer digit strings are searched as names only.
MAX_ID = 2**31 - 1
# How many existing values each attribute box suggests.
MAX_SUGGESTIONS = 300


@bp.before_request
def require_admin() -> ResponseReturnValue | None:
    """Every admin page: anonymous visitors sign in first; signed-in non-admins get a 403."""
    if not current_user.is_authenticated:
        flash(login_manager.login_message, login_manager.login_message_category)
        # After signing in the browser comes back with a GET, so a POST-only URL is no use.
        if request.method in ("GET", "HEAD"):
            next_url = request.full_path.rstrip("?")
        else:
            next_url = url_for("admin.product_list")
        return redirect(url_for(login_manager.login_view, next=next_url))
    if not current_user.is_admin:
        abort(403)
    return None


@bp.context_processor
def admin_helpers() -> dict[str, Any]:
    """Template helpers for admin pages."""

    def shop_url(product: Product) -> str | None:
        # The shop shows active products only; the link is left out until the page exists.
        if not product.active:
            return None
        try:
            return url_for("shop.product_detail", product_id=product.id)
        except BuildError:
            return None

    return {"shop_url": shop_url}


def get_product_or_404(product_id: int) -> Product:
    """Load a product for an admin page, or answer 404."""
    product = db.session.get(Product, product_id)
    if product is None:
        abort(404, f"There is no product with id {product_id}.")
    return product


def _facet_options() -> dict[str, list[str]]:
    """Existing values of each text attribute, suggested while typing."""
    options: dict[str, list[str]] = {}
    for name in TEXT_FIELDS:
        column = getattr(Product, name)
        stmt = (select(distinct(column)).where(column.is_not(None)).order_by(column)).limit(
            MAX_SUGGESTIONS
        )
        options[name] = list(db.session.scalars(stmt))
    return options


@bp.get("/")
def index() -> ResponseReturnValue:
    """The admin area starts at the product list."""
    return redirect(url_for(".product_list"))


@bp.get("/products")
def product_list() -> ResponseReturnValue:
    """Products, newest id first: search by name or exact id, filter by status, paginated."""
    filters = ProductFilterForm(formdata=request.args)
    filters.validate()
    query = filters.q.data if not filters.q.errors else None
    status = filters.status.data if filters.status.data in ("active", "inactive") else "all"

    stmt = select(Product)
    if query:
        conditions = [Product.name.icontains(query, autoescape=True)]
        if query.isascii() and query.isdigit() and int(query) <= MAX_ID:
            conditions.append(Product.id == int(query))
        stmt = stmt.where(or_(*conditions))
    if status != "all":
        stmt = stmt.where(Product.active.is_(status == "active"))
    stmt = stmt.order_by(Product.id.desc())

    page = request.args.get("page", 1, type=int)
    results = db.paginate(stmt, page=page, per_page=PAGE_SIZE, error_out=False)
    return render_template(
        "admin/product_list.html",
        filters=filters,
        results=results,
        # Page links keep the filters; None values are left out of the URL.
        filter_args={"q": query, "status": None if status == "all" else status},
        query=query,
        status=status,
    )


def _save_product_form(
    form: ProductCreateForm | ProductEditForm,
    save: Callable[[dict[str, Any], ValidatedImage | None], Product],
    saved: Callable[[Product], str],
) -> tuple[ResponseReturnValue | None, int]:
    """Validate a product form and its photo, save, flash: the redirect after a save (None
    otherwise) and the status to render the form with (400 with errors, 409 lost a race)."""
    if form.validate_on_submit():
        try:
            image = validate_upload(form.image.data) if form.image.data else None
            product = save(form.product_data(), image)
        except InvalidImage as exc:
            form.image.errors.append(exc.message)
        except services.ProductSaveError as exc:
            flash(str(exc), "error")
            return None, 409
        else:
            flash(saved(product), "success")
            return redirect(url_for(".product_edit", product_id=product.id)), 200
    return None, 400 if form.is_submitted() else 200


@bp.route("/products/new", methods=["GET", "POST"])
@ratelimit.admin_uploads
def product_create() -> ResponseReturnValue:
    """Add a product: every attribute plus a required photo."""
    form = ProductCreateForm()
    # The form requires a photo, so ``image`` is never None once it validates.
    done, status = _save_product_form(
        form,
        services.create_product,
        lambda product: f"Product {product.id} “{product.name}” was created.",
    )
    if done is not None:
        return done
    return (
        render_template("admin/product_create.html", form=form, options=_facet_options()),
        status,
    )


@bp.route("/products/<int:product_id>/edit", methods=["GET", "POST"])
@ratelimit.admin_uploads
def product_edit(product_id: int) -> ResponseReturnValue:
    """Change a product's attributes; the photo is replaced only when a new one is chosen."""
    product = get_product_or_404(product_id)
    form = ProductEditForm(obj=product)
    done, status = _save_product_form(
        form,
        lambda data, image: services.update_product(product.id, data, image),
        lambda saved: f"Product {saved.id} was saved.",
    )
    if done is not None:
        return done
    return (
        render_template(
            "admin/product_edit.html",
            form=form,
            product=product,
            options=_facet_options(),
            **product_panels(product),
        ),
        status,
    )


def _set_active(product_id: int, active: bool) -> ResponseReturnValue:
    """Shared body of deactivate and reactivate."""
    product = get_product_or_404(product_id)
    form = ActionForm()
    if not form.validate_on_submit():
        abort(400)
    services.set_active(product.id, active)
    word = "reactivated: it is shown in the shop" if active else "deactivated: it is hidden"
    flash(f"Product {product.id} was {word}.", "success")
    return redirect(
        safe_next_url(form.next.data) or url_for(".product_edit", product_id=product.id)
    )


@bp.post("/products/<int:product_id>/deactivate")
def product_deactivate(product_id: int) -> ResponseReturnValue:
    """Hide a product from the shop, keeping its data."""
    return _set_active(product_id, False)


@bp.post("/products/<int:product_id>/reactivate")
def product_reactivate(product_id: int) -> ResponseReturnValue:
    """Show a deactivated product in the shop again."""
    return _set_active(product_id, True)


@bp.route("/products/<int:product_id>/delete", methods=["GET", "POST"])
def product_delete(product_id: int) -> ResponseReturnValue:
    """Ask for confirmation, then delete the product and its uploaded photo."""
    product = get_product_or_404(product_id)
    # The confirmation page's form carries only the CSRF token, checked for every POST.
    if ActionForm().validate_on_submit():
        name = product.name
        try:
            services.delete_product(product.id)
        except services.ProductSaveError as exc:
            flash(str(exc), "error")
            return redirect(url_for(".product_edit", product_id=product_id))
        flash(f"Product {product_id} “{name}” was deleted.", "success")
        return redirect(url_for(".product_list"))
    return render_template("admin/product_delete.html", product=product)


@bp.get("/products/<int:product_id>/image")
def product_image(product_id: int) -> ResponseReturnValue:
    """A product's photo, inactive products included (the shop serves active ones only)."""
    product = get_product_or_404(product_id)
    path = image_file(product.image_path, current_app.config["MEDIA_FOLDER"])
    if path is None or not path.is_file():
        abort(404, "This product has no photo.")
    return send_file(path, conditional=True)


# Bulk imports, duplicate checks and the index panel (webapp/inventory) live under
# /admin/inventory/ and share this blueprint's admin-only rule.
from webapp.inventory.views import bp as inventory_bp  # noqa: E402
from webapp.inventory.views import product_panels  # noqa: E402

bp.register_blueprint(inventory_bp, url_prefix="/inventory")
