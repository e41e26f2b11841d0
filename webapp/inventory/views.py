"""Inventory pages, nested in the admin blueprint (``/admin/inventory/...``): every route
inherits the admin area's rule (sign in first; non-admins get a 403).

Bulk imports (upload, jobs list, live progress, report), the duplicate groups, a product's
index state, and the index status panel with "Rebuild everything".
"""

from __future__ import annotations

import logging
from typing import Any

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_login import current_user
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError
from sqlalchemy import select
from werkzeug.exceptions import RequestEntityTooLarge

from webapp import exclusive, ratelimit
from webapp.admin.forms import ActionForm
from webapp.extensions import csrf, db
from webapp.inventory import duplicates, imports, index_state
from webapp.inventory.forms import BulkImportForm
from webapp.inventory.safety import UploadRejected
from webapp.inventory.status import index_status
from webapp.models import ImportJob, Product

logger = logging.getLogger(__name__)

bp = Blueprint("inventory", __name__)

JOBS_PER_PAGE = 25
GROUPS_PER_PAGE = 20
REPORT_PREVIEW = 200


def get_job_or_404(job_id: int) -> ImportJob:
    """Load an import job, or answer 404."""
    job = imports.get_job(job_id)
    if job is None:
        abort(404, f"There is no import job {job_id}.")
    return job


def get_product_or_404(product_id: int) -> Product:
    """Load a product, or answer 404."""
    product = db.session.get(Product, product_id)
    if product is None:
        abort(404, f"There is no product with id {product_id}.")
    return product


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.0f} MB"


# -- bulk imports --------------------------------------------------------------------------


@bp.get("/imports")
def import_list() -> ResponseReturnValue:
    """Every bulk import, newest first: state, counts, who started it and when."""
    page = request.args.get("page", 1, type=int)
    results = db.paginate(
        select(ImportJob).order_by(ImportJob.id.desc()),
        page=page,
        per_page=JOBS_PER_PAGE,
        error_out=False,
    )
    return render_template(
        "admin/import_list.html",
        results=results,
        progress={job.id: imports.progress(job) for job in results.items},
    )


@bp.route("/imports/new", methods=["GET", "POST"])
@csrf.exempt  # checked below, once the larger upload limit of this form applies
@ratelimit.admin_uploads
def import_new() -> ResponseReturnValue:
    """Upload styles.csv and a ZIP of photos; the import runs as a background job."""
    limit = int(current_app.config["IMPORT_MAX_UPLOAD"])
    if request.method == "POST":
        request.max_content_length = limit
        try:
            request.files  # noqa: B018 (parse the body now, under this form's limit)
        except RequestEntityTooLarge as exc:
            # A form limit (too many parts) names itself; otherwise it is this form's size.
            message = (
                str(exc.description)
                if exc.description != RequestEntityTooLarge.description
                else f"That upload is too large: the limit for bulk imports is {_mb(limit)}."
            )
            return render_template("errors/error.html", code=413, message=message), 413
        if current_app.config.get("WTF_CSRF_ENABLED", True):
            csrf.protect()
    form = BulkImportForm()
    status, problem = 200, None
    if form.validate_on_submit():
        try:
            job = imports.create_job(form.styles.data, form.photos.data, current_user)
        except UploadRejected as exc:
            problem, status = exc.message, 400
        else:
            flash(f"Import job {job.id} was queued.", "success")
            return redirect(url_for(".import_detail", job_id=job.id))
    elif form.is_submitted():
        status = 400
    return (
        render_template("admin/import_new.html", form=form, problem=problem, limit=_mb(limit)),
        status,
    )


@bp.get("/imports/<int:job_id>")
def import_detail(job_id: int) -> ResponseReturnValue:
    """A job's live progress (the page polls its JSON) and, once done, its report."""
    job = get_job_or_404(job_id)
    info = imports.progress(job)
    rows = imports.report_rows(job.id, limit=REPORT_PREVIEW)
    linked = {
        p.id: p
        for p in db.session.scalars(
            select(Product).where(
                Product.id.in_(
                    {r.duplicate_of for r in rows if r.duplicate_of}
                    | {
                        int(r.product_id)
                        for r in rows
                        if r.kind == "duplicate" and (r.product_id or "").isdigit()
                    }
                )
            )
        )
    }
    return render_template(
        "admin/import_detail.html",
        job=job,
        info=info,
        rows=rows,
        linked=linked,
        preview=REPORT_PREVIEW,
        can_resume=imports.can_resume(job),
        action_form=ActionForm(),
    )


@bp.get("/imports/<int:job_id>/progress")
def import_progress(job_id: int) -> ResponseReturnValue:
    """The job's progress as JSON, for the page's polling script."""
    job = get_job_or_404(job_id)
    response = jsonify(imports.progress(job))
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/imports/<int:job_id>/report.csv")
def import_report(job_id: int) -> ResponseReturnValue:
    """Every skipped row, suspected duplicate and ignored file, as a CSV download."""
    job = get_job_or_404(job_id)
    return Response(
        stream_with_context(imports.report_csv(job.id)),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="import-{job.id}-report.csv"'},
    )


@bp.post("/imports/<int:job_id>/resume")
def import_resume(job_id: int) -> ResponseReturnValue:
    """Queue a failed or stalled job again at the stage it reached."""
    job = get_job_or_404(job_id)
    if not ActionForm().validate_on_submit():
        abort(400)
    if not imports.can_resume(job):
        flash("This job cannot be resumed: it is done, running, or its files are gone.", "error")
    elif imports.resume(job):
        flash(f"Import job {job.id} was queued again.", "success")
    else:
        flash("The task queue is unreachable; try again in a moment.", "error")
    return redirect(url_for(".import_detail", job_id=job.id))


# -- duplicates ------------------------------------------------------------------------------


@bp.get("/duplicates")
def duplicate_groups() -> ResponseReturnValue:
    """The catalogue's groups of byte-identical photos, and look-alikes by perceptual hash."""
    page = max(1, request.args.get("page", 1, type=int))
    groups, total_groups, total_products = duplicates.identical_groups(page, GROUPS_PER_PAGE)
    lookalikes, total_lookalikes = duplicates.lookalike_groups()
    hashed, with_photo = duplicates.hash_coverage()
    pages = max(1, -(-total_groups // GROUPS_PER_PAGE))
    try:
        hashing = exclusive.in_flight(exclusive.HASHING)
    except Exception:
        hashing = None
    return render_template(
        "admin/duplicate_groups.html",
        groups=groups,
        total_groups=total_groups,
        total_products=total_products,
        lookalikes=lookalikes,
        total_lookalikes=total_lookalikes,
        hashed=hashed,
        with_photo=with_photo,
        page=page,
        pages=pages,
        hashing=hashing,
        action_form=ActionForm(),
    )


@bp.post("/duplicates/hash")
def duplicate_hash() -> ResponseReturnValue:
    """Queue the perceptual hashing of every photo that has no hash yet."""
    if not ActionForm().validate_on_submit():
        abort(400)
    _enqueue_once(
        exclusive.HASHING, "worker.tasks.hash_product_images", "Hashing the catalogue's photos"
    )
    return redirect(url_for(".duplicate_groups"))


@bp.get("/products/<int:product_id>/index-job")
def product_index_job(product_id: int) -> ResponseReturnValue:
    """A product's index state (queued, running, done) and its possible duplicates."""
    product = get_product_or_404(product_id)
    check = duplicates.check_product(product)
    response = jsonify(
        {
            "product_id": product.id,
            "job": index_state.state(product.id),
            "duplicates": [
                {
                    "id": m.product.id,
                    "name": m.product.name,
                    "how": m.how,
                    "score": round(m.score, 4),
                    "detail": m.detail,
                    "edit_url": url_for("admin.product_edit", product_id=m.product.id),
                    "image_url": url_for("admin.product_image", product_id=m.product.id),
                }
                for m in check.matches
            ],
            "reviewed": check.reviewed_at is not None,
            "similar_checked": check.similar_checked,
        }
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/products/<int:product_id>/keep")
def product_keep(product_id: int) -> ResponseReturnValue:
    """Keep a product that looks like a duplicate: the warning goes away until its photo changes."""
    product = get_product_or_404(product_id)
    if not ActionForm().validate_on_submit():
        abort(400)
    duplicates.mark_reviewed(product, current_user.email)
    flash(f"Product {product.id} is kept; it will not be flagged again for this photo.", "success")
    return redirect(url_for("admin.product_edit", product_id=product.id))


def product_panels(product: Product) -> dict[str, Any]:
    """What the product edit page shows about index upkeep and duplicates."""
    return {
        "index_job": index_state.state(product.id),
        "duplicate_check": duplicates.check_product(product) if product.image_path else None,
    }


# -- index status ----------------------------------------------------------------------------


@bp.get("/index")
def index_panel() -> ResponseReturnValue:
    """Served model, embeddings and lists, last update, queues, workers; rebuild button."""
    return render_template(
        "admin/index_status.html", status=index_status(), action_form=ActionForm()
    )


def _enqueue_once(name: str, task_name: str, what: str) -> None:
    """Queue a task unless work of its kind is in flight; tell the admin which happened."""
    try:
        task_id, new = exclusive.enqueue_once(name, task_name)
    except (OperationalError, RedisError, OSError) as exc:
        logger.warning("could not queue %s: %s", name, exc)
        flash("The task queue is unreachable; try again in a moment.", "error")
        return
    if new:
        flash(f"{what}: queued (task {task_id[:8]}).", "success")
    else:
        flash(f"{what}: already queued or running (task {task_id[:8]}).", "info")


@bp.post("/index/rebuild")
def index_rebuild() -> ResponseReturnValue:
    """Rebuild every embedding and list beside the served ones; pages switch when complete."""
    if not ActionForm().validate_on_submit():
        abort(400)
    _enqueue_once(exclusive.INDEX, "worker.tasks.ml_index_catalog", "Rebuilding the index")
    return redirect(url_for(".index_panel"))


@bp.post("/index/tune")
def index_tune() -> ResponseReturnValue:
    """Tune the backbone on the catalogue; pages switch to its lists when they are complete."""
    if not ActionForm().validate_on_submit():
        abort(400)
    _enqueue_once(
        exclusive.INDEX, "worker.tasks.ml_tune_catalog", "Tuning the backbone on the catalogue"
    )
    return redirect(url_for(".index_panel"))


@bp.post("/index/calibrate")
def index_calibrate() -> ResponseReturnValue:
    """Calibrate the near-duplicate threshold of the served model on the catalogue."""
    if not ActionForm().validate_on_submit():
        abort(400)
    _enqueue_once(
        exclusive.DUPLICATE_THRESHOLD,
        "worker.tasks.ml_calibrate_duplicates",
        "Calibrating the duplicate check",
    )
    return redirect(url_for(".index_panel"))
