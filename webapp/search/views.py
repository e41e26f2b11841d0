"""Photo search pages: upload, results (updating themselves), search wider, two-image compare."""

from __future__ import annotations

import logging

from flask import (
    Blueprint,
    abort,
    current_app,
    redirect,
    render_template,
    send_file,
    url_for,
)
from flask.typing import ResponseReturnValue

from webapp.preferences import current_preferences
from webapp.search import services
from webapp.search.forms import ActionForm, PhotoCompareForm, PhotoSearchForm
from webapp.uploads import InvalidImage, validate_image

logger = logging.getLogger(__name__)

bp = Blueprint("search", __name__)

# How the results page names each predicted field.
PREDICTION_LABELS = {
    "article_type": "Type",
    "gender": "Gender",
    "sub_category": "Category",
    "base_colour": "Colour",
}
# Seconds between reloads of a results page that is still waiting (no-JavaScript fallback).
REFRESH_S = 2


def get_request_or_404(request_id: str, kind: str) -> dict:
    """A search request's record of this kind, or a 404 page (unknown, expired or malformed)."""
    try:
        record = services.get_request(request_id)
    except services.SearchRequestError as exc:
        abort(exc.code, exc.message)
    if record is None or record.get("kind") != kind:
        abort(404, "This search has expired or never existed. Please upload the photo again.")
    return record


def _validated(field):
    """The upload of a form field after the content checks; errors go onto the field."""
    try:
        return validate_image(field.data, max_pixels=current_app.config["MAX_IMAGE_PIXELS"])
    except InvalidImage as exc:
        field.errors = [*field.errors, exc.message]
        return None


@bp.route("/", methods=["GET", "POST"])
def photo_upload() -> ResponseReturnValue:
    """Upload a photo; the search runs in the background and its page fills in."""
    form = PhotoSearchForm()
    error = None
    if form.validate_on_submit():
        image = _validated(form.image)
        if image is not None:
            try:
                request_id = services.create_request(
                    "search",
                    [image],
                    n=current_app.config["SEARCH_RESULTS_N"],
                    all_categories=bool(form.all_categories.data),
                    prefs=current_preferences(),
                )
            except services.SearchRequestError as exc:
                error = exc.message
            else:
                return redirect(url_for("search.search_detail", request_id=request_id), 303)
    status = 503 if error else (400 if form.is_submitted() else 200)
    return render_template("search/photo_upload.html", form=form, error=error), status


@bp.get("/jobs/<request_id>")
def search_detail(request_id: str) -> ResponseReturnValue:
    """A search's page: the photo, the predicted categories and the results once ready."""
    record = get_request_or_404(request_id, "search")
    view = services.search_view(record)
    has_photo = services.request_photo_path(record) is not None
    return render_template(
        "search/search_detail.html",
        view=view,
        has_photo=has_photo,
        action_form=ActionForm(),
        pending=view.state in services.PENDING,
        labels=PREDICTION_LABELS,
        refresh_s=REFRESH_S,
    )


@bp.get("/jobs/<request_id>/photo")
def query_photo(request_id: str) -> ResponseReturnValue:
    """The uploaded photo of a search (kept for the retention period only)."""
    record = get_request_or_404(request_id, "search")
    path = services.request_photo_path(record)
    if path is None:
        abort(404, "This photo has been deleted.")
    response = send_file(path, max_age=0)
    response.headers["Cache-Control"] = "private, no-store"
    return response


@bp.post("/jobs/<request_id>/all")
def search_wider(request_id: str) -> ResponseReturnValue:
    """Search the same photo again within all categories (the classifier is overridden)."""
    record = get_request_or_404(request_id, "search")
    form = ActionForm()
    if not form.validate_on_submit():
        abort(400, "The form expired. Please reload the page and try again.")
    path = services.request_photo_path(record)
    if path is None:
        abort(404, "This photo has been deleted. Please upload it again.")
    with open(path, "rb") as fh:
        try:
            image = validate_image(fh, max_pixels=current_app.config["MAX_IMAGE_PIXELS"])
        except InvalidImage as exc:  # pragma: no cover - it passed the same check on upload
            abort(400, exc.message)
    try:
        new_id = services.create_request(
            "search",
            [image],
            n=record.get("n") or current_app.config["SEARCH_RESULTS_N"],
            all_categories=True,
            prefs=current_preferences(),
        )
    except services.SearchRequestError as exc:
        abort(exc.code, exc.message)
    return redirect(url_for("search.search_detail", request_id=new_id), 303)


@bp.route("/compare", methods=["GET", "POST"])
def compare_upload() -> ResponseReturnValue:
    """Upload two photos to learn how alike they look to the shop's model."""
    form = PhotoCompareForm()
    error = None
    if form.validate_on_submit():
        images = [_validated(form.image_1), _validated(form.image_2)]
        if all(images):
            try:
                request_id = services.create_request("compare", images)
            except services.SearchRequestError as exc:
                error = exc.message
            else:
                return redirect(url_for("search.compare_detail", request_id=request_id), 303)
    status = 503 if error else (400 if form.is_submitted() else 200)
    return render_template("search/compare_upload.html", form=form, error=error), status


@bp.get("/compare/<request_id>")
def compare_detail(request_id: str) -> ResponseReturnValue:
    """A compare's result: score, verdict and the calibrated threshold."""
    record = get_request_or_404(request_id, "compare")
    return render_template(
        "search/compare_detail.html",
        record=record,
        pending=record["state"] in services.PENDING,
        refresh_s=REFRESH_S,
    )
