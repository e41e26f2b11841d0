"""Photo search pages: upload, results (updating themselves), search wider or within another
part of the photo, two-image compare.

A request's pages and photo are its owner's (``access``): anybody else gets the 404 of an
unknown id, unless they came through the share link the owner's page offers (``?key=``).
"""

from __future__ import annotations

import logging

from flask import (
    Blueprint,
    abort,
    current_app,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)
from flask.typing import ResponseReturnValue

from webapp import ratelimit
from webapp.preferences import current_preferences
from webapp.search import access, services, watchdog
from webapp.search.crop import Box, InvalidCrop, from_percent, to_percent
from webapp.search.forms import ActionForm, CropSearchForm, PhotoCompareForm, PhotoSearchForm
from webapp.uploads import InvalidImage, validate_upload

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
    """A search request's record of this kind that the caller may read, or a 404 page
    (unknown, expired, malformed, or another session's without its share key)."""
    try:
        record = watchdog.read_request(request_id)
    except services.SearchRequestError as exc:
        abort(exc.code, exc.message)
    if (
        record is None
        or record.get("kind") != kind
        or not access.may_read(record, request.args.get("key"))
    ):
        abort(404, "This search has expired or never existed. Please upload the photo again.")
    return record


def sharing(record: dict, endpoint: str) -> dict:
    """Template values for a request's page: ``key``, the share key this viewer came with
    (kept on the page's own links), and ``share_url``, the link its owner may hand out."""
    key = request.args.get("key")
    if not access.is_owner(record):
        return {"key": key, "share_url": None}
    share_key = access.share_key(record["id"])
    url = url_for(endpoint, request_id=record["id"], key=share_key, _external=True)
    return {"key": None, "share_url": url}


def _validated(field):
    """The upload of a form field after the content checks; errors go onto the field."""
    try:
        return validate_upload(field.data)
    except InvalidImage as exc:
        field.errors = [*field.errors, exc.message]
        return None


def _crop_of(form) -> tuple[Box | None, str | None]:
    """(the box a form's four percentages make, None) or (None, what is wrong with them)."""
    try:
        return from_percent(form.crop_values()), None
    except InvalidCrop as exc:
        return None, f"That box cannot be searched: {exc.message}"


@bp.route("/", methods=["GET", "POST"])
@ratelimit.uploads
def photo_upload() -> ResponseReturnValue:
    """Upload a photo (and, with JavaScript, choose the part of it to search); the search
    runs in the background and its page fills in."""
    form = PhotoSearchForm()
    error = crop_error = None
    if form.validate_on_submit():
        image = _validated(form.image)
        crop, crop_error = _crop_of(form)
        if image is not None and crop_error is None:
            try:
                request_id = services.create_request(
                    "search",
                    [image],
                    n=current_app.config["SEARCH_RESULTS_N"],
                    all_categories=bool(form.all_categories.data),
                    prefs=current_preferences(),
                    crop=crop,
                )
            except services.SearchRequestError as exc:
                error = exc.message
            else:
                return redirect(url_for("search.search_detail", request_id=request_id), 303)
    form.set_crop(to_percent(None))
    status = 503 if error else (400 if form.is_submitted() else 200)
    return render_template(
        "search/photo_upload.html", form=form, error=error, crop_error=crop_error
    ), status


def _detail_page(record: dict, crop_form: CropSearchForm, crop_error: str | None = None) -> str:
    """A search's results page, its crop form filled in with the box searched (or, when the
    whole photo was, the product found in it)."""
    view = services.search_view(record)
    crop_form.set_crop(to_percent(view.crop or view.product_box))
    return render_template(
        "search/search_detail.html",
        view=view,
        has_photo=services.request_photo_path(record) is not None,
        action_form=ActionForm(),
        crop_form=crop_form,
        crop_error=crop_error,
        box=to_percent(view.crop) if view.crop else None,
        product_box=to_percent(view.product_box) if view.product_box else None,
        pending=view.state in services.PENDING,
        labels=PREDICTION_LABELS,
        refresh_s=REFRESH_S,
        **sharing(record, "search.search_detail"),
    )


@bp.get("/jobs/<request_id>")
def search_detail(request_id: str) -> ResponseReturnValue:
    """A search's page: the photo with the part searched, the predicted categories and the
    results once ready."""
    record = get_request_or_404(request_id, "search")
    return _detail_page(record, CropSearchForm(formdata=None))


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


def _search_again(record: dict, *, all_categories: bool, crop: Box | None) -> ResponseReturnValue:
    """A new search of the same photo (a request of its own, as a new upload would be), then
    its page."""
    path = services.request_photo_path(record)
    if path is None:
        abort(404, "This photo has been deleted. Please upload it again.")
    with open(path, "rb") as fh:
        try:
            image = validate_upload(fh)
        except InvalidImage as exc:  # pragma: no cover - it passed the same check on upload
            abort(400, exc.message)
    try:
        new_id = services.create_request(
            "search",
            [image],
            n=record.get("n") or current_app.config["SEARCH_RESULTS_N"],
            all_categories=all_categories,
            prefs=current_preferences(),
            crop=crop,
        )
    except services.SearchRequestError as exc:
        abort(exc.code, exc.message)
    return redirect(url_for("search.search_detail", request_id=new_id), 303)


@bp.post("/jobs/<request_id>/all")
def search_wider(request_id: str) -> ResponseReturnValue:
    """Search the same photo (and box) again within all categories (the classifier is
    overridden)."""
    record = get_request_or_404(request_id, "search")
    form = ActionForm()
    if not form.validate_on_submit():
        abort(400, "The form expired. Please reload the page and try again.")
    return _search_again(record, all_categories=True, crop=record.get("crop"))


@bp.post("/jobs/<request_id>/crop")
@ratelimit.uploads
def search_crop(request_id: str) -> ResponseReturnValue:
    """Search the same photo again within the box the shopper chose (the whole photo when
    the box covers it)."""
    record = get_request_or_404(request_id, "search")
    form = CropSearchForm()
    if not form.validate_on_submit():
        token = getattr(form, "csrf_token", None)  # absent where CSRF is off (tests)
        if token is not None and token.errors:
            abort(400, "The form expired. Please reload the page and try again.")
        return _detail_page(record, form, "Please give the box as four numbers."), 400
    crop, error = _crop_of(form)
    if error:
        return _detail_page(record, form, error), 400
    return _search_again(record, all_categories=bool(record.get("all_categories")), crop=crop)


@bp.route("/compare", methods=["GET", "POST"])
@ratelimit.uploads
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
        unavailable=bool(record.get("unavailable")),
        unavailable_message=services.UNAVAILABLE,
        refresh_s=REFRESH_S,
        **sharing(record, "search.compare_detail"),
    )
