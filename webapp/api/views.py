"""JSON API: similar products, photo search requests and two-image compare."""

from __future__ import annotations

import time

from flask import Blueprint, abort, current_app, jsonify, request, url_for

from webapp.extensions import csrf
from webapp.preferences import current_preferences
from webapp.search.services import MAX_N as SEARCH_MAX_N
from webapp.search.services import (
    MODEL_ID_RE,
    PENDING,
    SearchRequestError,
    create_request,
    search_view,
    wait_for_request,
)
from webapp.shop.services import get_product_or_404
from webapp.similar.services import MAX_N, SimilarResult, similar_products, with_overrides
from webapp.uploads import InvalidImage, validate_image

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


# -- photo search and compare ---------------------------------------------------------------


def value_arg(name: str, default: int, low: int, high: int) -> int:
    """An integer from the query string or the form body within [low, high], else a 400."""
    raw = request.values.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        abort(400, f"'{name}' must be a whole number between {low} and {high}.")
    if not low <= value <= high:
        abort(400, f"'{name}' must be between {low} and {high}.")
    return value


def flag_arg(name: str) -> bool:
    """A yes/no parameter (1, true, yes, on) from the query string or the form body."""
    return request.values.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def uploaded_image(name: str):
    """The multipart file ``name`` after the content checks, else a 400 saying what is wrong."""
    upload = request.files.get(name)
    if upload is None:
        abort(400, f"Send the photo as a multipart/form-data file field named '{name}'.")
    try:
        return validate_image(upload, max_pixels=current_app.config["MAX_IMAGE_PIXELS"])
    except InvalidImage as exc:
        abort(400, f"'{name}': {exc.message}")


def wait_seconds() -> float:
    """How long this call may wait for the search request to end: ``wait=1`` (optionally
    ``timeout=S``)."""
    if not flag_arg("wait"):
        return 0.0
    limit = float(current_app.config["SEARCH_WAIT_TIMEOUT"])
    raw = request.values.get("timeout")
    if raw in (None, ""):
        return limit
    try:
        value = float(raw)
    except ValueError:
        abort(400, f"'timeout' must be a number of seconds up to {limit:g}.")
    if not 0 <= value <= limit:
        abort(400, f"'timeout' must be between 0 and {limit:g} seconds.")
    return value


def request_json(record: dict) -> tuple[dict, int]:
    """A search request's JSON body and HTTP status: 202 while pending, 200 when done."""
    head = {
        "job_id": record["id"],
        "kind": record["kind"],
        "state": record["state"],
        "status_url": url_for("api.request_status", request_id=record["id"]),
    }
    if record["kind"] == "search":
        view = search_view(record)
        body = {
            **head,
            **result_json(view.result),
            "predictions": view.predictions,
            "searched": view.searched,
            "all_categories": view.all_categories,
            "heads": view.heads,
            "worker_ms": view.elapsed_ms,
            "results_url": url_for("search.search_detail", request_id=record["id"]),
        }
        return body, view.code
    if record["state"] in PENDING:
        return {**head, "status": "pending"}, 202
    if record["state"] == "failed":
        return {**head, "status": "failed", "message": record.get("error")}, record.get("code", 503)
    return {**head, "status": "ok", **record["result"]}, 200


def _create(kind: str, images: list, **options) -> str:
    try:
        return create_request(kind, images, **options)
    except SearchRequestError as exc:
        abort(exc.code, exc.message)


@bp.post("/search")
@csrf.exempt
def photo_search():
    """Start a photo search (multipart ``image``, optional ``n``): ``{job_id}``, or the result
    itself with ``wait=1``."""
    image = uploaded_image("image")
    n = value_arg("n", current_app.config["SEARCH_RESULTS_N"], 1, SEARCH_MAX_N)
    genders = [g.strip() for g in request.values.getlist("gender") if g.strip()]
    if len(genders) > 1:
        abort(400, "'gender' takes one value.")
    colours = []
    for raw in request.values.getlist("exclude_colours"):
        colours += [c.strip() for c in raw.split(",") if c.strip()]
    prefs = with_overrides(current_preferences(), colours, genders[0] if genders else None)
    wait = wait_seconds()
    request_id = _create(
        "search", [image], n=n, all_categories=flag_arg("all_categories"), prefs=prefs
    )
    if wait:
        record = _wait(request_id, wait)
        body, code = request_json(record)
        return jsonify(body), code
    return jsonify(
        {
            "job_id": request_id,
            "status": "pending",
            "state": "queued",
            "status_url": url_for("api.request_status", request_id=request_id),
            "results_url": url_for("search.search_detail", request_id=request_id),
        }
    ), 202


def _wait(request_id: str, seconds: float) -> dict:
    try:
        record = wait_for_request(request_id, seconds)
    except SearchRequestError as exc:
        abort(exc.code, exc.message)
    if record is None:
        abort(404, "No such job: it may have expired. Please upload the photo again.")
    return record


@bp.get("/jobs/<request_id>")
def request_status(request_id: str):
    """A photo search or compare request: its status, and its results once done
    (``wait=1`` waits)."""
    record = _wait(request_id, wait_seconds())
    body, code = request_json(record)
    return jsonify(body), code


@bp.post("/compare")
@csrf.exempt
def photo_compare():
    """How alike two photos are (``image_1``, ``image_2``, optional ``model``): score in 0..1,
    similar or not against the model's calibrated threshold."""
    started = time.perf_counter()
    images = [uploaded_image("image_1"), uploaded_image("image_2")]
    model = (request.values.get("model") or "").strip() or None
    if model is not None and not MODEL_ID_RE.match(model):
        abort(400, "'model' must be a model id such as efficientnet_lite0-57934424-160-avg.")
    request_id = _create("compare", images, model=model)
    record = _wait(request_id, float(current_app.config["SEARCH_WAIT_TIMEOUT"]))
    body, code = request_json(record)
    if code == 200:
        body = {
            "score": body["score"],
            "similar": body["similar"],
            "threshold": body["threshold"],
            "model": body["model"],
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 1),
            "calibrated": body["calibrated"],
            "cosine": body["cosine"],
            "job_id": request_id,
        }
    return jsonify(body), code
