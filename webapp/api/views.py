"""JSON API: similar products, photo search requests and two-image compare."""

from __future__ import annotations

import time

from flask import Blueprint, abort, current_app, jsonify, request, url_for
from redis.exceptions import RedisError
from werkzeug.datastructures import MultiDict

from webapp import feed, ratelimit
from webapp.extensions import csrf
from webapp.models import Product
from webapp.preferences import current_preferences
from webapp.registry import allowed_model_ids
from webapp.search import access
from webapp.search.crop import InvalidCrop, parse_crop
from webapp.search.services import MAX_N as SEARCH_MAX_N
from webapp.search.services import (
    PENDING,
    UNAVAILABLE,
    SearchRequestError,
    create_request,
    search_view,
)
from webapp.search.watchdog import wait_for_request
from webapp.shop.services import get_product_or_404
from webapp.similar.services import MAX_N, SimilarResult, similar_products, with_overrides
from webapp.taste import not_interested_ids
from webapp.uploads import InvalidImage, validate_upload
from webapp.validators import has_control_characters

bp = Blueprint("api", __name__)


def whole_number(name: str, raw: str, low: int, high: int) -> int:
    """Parameter ``name``'s text ``raw`` as an integer within [low, high], else a 400."""
    try:
        value = int(raw)
    except ValueError:
        abort(400, f"'{name}' must be a whole number between {low} and {high}.")
    if not low <= value <= high:
        abort(400, f"'{name}' must be between {low} and {high}.")
    return value


def int_arg(name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high], else a 400 saying so."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    return whole_number(name, raw, low, high)


def list_arg(name: str, source: MultiDict | None = None) -> list[str]:
    """A comma-separated or repeated parameter of the query string (or of ``source``)."""
    values = []
    for raw in (request.args if source is None else source).getlist(name):
        values += [v.strip() for v in raw.split(",") if v.strip()]
    return plain_text(name, values)


def plain_text(name: str, values: list[str]) -> list[str]:
    """``values`` of parameter ``name``, else a 400 when one holds a control character."""
    if any(has_control_characters(v) for v in values):
        abort(400, f"'{name}' must be plain text: control characters (such as NUL) are refused.")
    return values


def product_json(
    product: Product, score: float | None = None, reasons: list[str] | None = None
) -> dict:
    """One product of a list in the API's JSON (``score`` only where a list is ranked)."""
    return {
        "id": product.id,
        "name": product.name,
        "score": None if score is None else round(score, 4),
        "url": url_for("shop.product_detail", product_id=product.id),
        "image_url": url_for("shop.product_image", product_id=product.id),
        "gender": product.gender,
        "article_type": product.article_type,
        "base_colour": product.base_colour,
        "price": None if product.price is None else str(product.price),
        "reasons": reasons or [],
    }


def result_json(result: SimilarResult) -> dict:
    """The shared JSON shape of a list of recommendations."""
    return {
        "status": result.status,
        "model": result.model_id,
        "message": result.message or None,
        "items": [product_json(item.product, item.score, item.reasons) for item in result.items],
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
    result = similar_products(product, prefs, n, exclude=not_interested_ids())
    body = {"product_id": product.id, **result_json(result)}
    if result.status != "ok":
        return jsonify(body), 503, {"Retry-After": "30"}
    return jsonify(body)


@bp.get("/for-you")
def for_you():
    """The session's shopper's "For you" feed (``n`` products, preferences applied), in the
    similar-products shape; ``source`` is ``taste``, or ``new-in`` for the labelled fallback."""
    n = int_arg("n", feed.PAGE_N, 1, feed.MAX_N)
    result = feed.current_feed(n)
    body = {"title": result.title, "source": result.source, **result_json(result)}
    for item, out in zip(result.items, body["items"], strict=True):
        out["because"] = (
            None
            if item.because is None
            else {"id": item.because.id, "name": item.because.name, "how": item.how}
        )
    return jsonify(body)


# -- photo search and compare ---------------------------------------------------------------


def value_arg(name: str, default: int, low: int, high: int) -> int:
    """An integer from the query string or the form body within [low, high], else a 400."""
    raw = request.values.get(name)
    if raw is None or raw.strip() == "":
        return default
    return whole_number(name, raw, low, high)


def flag_arg(name: str) -> bool:
    """A yes/no parameter (1, true, yes, on) from the query string or the form body."""
    return request.values.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def crop_arg():
    """The ``crop=x,y,w,h`` box (relative units) from the query string or form body: None for
    none (or the whole photo), else a valid box, else a 400 saying what is wrong."""
    try:
        return parse_crop(request.values.get("crop"))
    except InvalidCrop as exc:
        abort(400, f"'crop': {exc.message}")


def uploaded_image(name: str):
    """The multipart file ``name`` after the content checks, else a 400 saying what is wrong."""
    upload = request.files.get(name)
    if upload is None:
        abort(400, f"Send the photo as a multipart/form-data file field named '{name}'.")
    try:
        return validate_upload(upload)
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


def request_json(record: dict, waited: bool = False) -> tuple[dict, int]:
    """A search request's JSON body and HTTP status: 202 while pending, 200 when done.

    While no worker takes photo searches the status is ``unavailable``: a 503 for a call
    that waited for the answer, a 202 for a plain poll (the request stays queued, and a
    worker that comes back still answers it).
    """
    page = "search.search_detail" if record["kind"] == "search" else "search.compare_detail"
    head = {
        "job_id": record["id"],
        "kind": record["kind"],
        "state": record["state"],
        "status_url": url_for("api.request_status", request_id=record["id"]),
        "share_url": url_for(
            page, request_id=record["id"], key=access.share_key(record["id"]), _external=True
        ),
    }
    unavailable_code = 503 if waited else 202
    if record["kind"] == "search":
        view = search_view(record)
        body = {
            **head,
            **result_json(view.result),
            "no_close_match": view.no_close_match,
            # Items keep the shape of /similar's: the other products listing the same
            # picture as an item go here, by the item's id.
            "also_listed_as": {
                str(pid): [
                    {
                        "id": p.id,
                        "name": p.name,
                        "url": url_for("shop.product_detail", product_id=p.id),
                    }
                    for p in others
                ]
                for pid, others in view.also.items()
            },
            "crop": view.crop,
            "product_box": view.product_box,
            "predictions": view.predictions,
            "searched": view.searched,
            "all_categories": view.all_categories,
            "heads": view.heads,
            "worker_ms": view.elapsed_ms,
            "decode_ms": view.decode_ms,
            "foreground_ms": view.foreground_ms,
            "embed_ms": view.embed_ms,
            "rank_ms": view.rank_ms,
            "results_url": url_for("search.search_detail", request_id=record["id"]),
        }
        return body, unavailable_code if view.result.status == "unavailable" else view.code
    if record["state"] in PENDING and record.get("unavailable"):
        return {**head, "status": "unavailable", "message": UNAVAILABLE}, unavailable_code
    if record["state"] in PENDING:
        return {**head, "status": "pending"}, 202
    if record["state"] == "failed":
        return {**head, "status": "failed", "message": record.get("error")}, record.get("code", 503)
    return {**head, "status": "ok", **record["result"]}, 200


def request_response(record: dict, waited: bool = False):
    """``request_json`` as a response; one that says "try again" says when (Retry-After)."""
    body, code = request_json(record, waited)
    headers = {"Retry-After": "60"} if body["status"] == "unavailable" or code == 503 else {}
    return jsonify(body), code, headers


def _create(kind: str, images: list, **options) -> str:
    try:
        return create_request(kind, images, **options)
    except SearchRequestError as exc:
        abort(exc.code, exc.message)


@bp.post("/search")
@csrf.exempt
@ratelimit.uploads
def photo_search():
    """Start a photo search (multipart ``image``, optional ``n``, ``crop=x,y,w,h``):
    ``{job_id}``, or the result itself with ``wait=1``."""
    crop = crop_arg()  # cheap checks first: a bad box costs no image decoding
    image = uploaded_image("image")
    n = value_arg("n", current_app.config["SEARCH_RESULTS_N"], 1, SEARCH_MAX_N)
    genders = plain_text(
        "gender", [g.strip() for g in request.values.getlist("gender") if g.strip()]
    )
    if len(genders) > 1:
        abort(400, "'gender' takes one value.")
    colours = list_arg("exclude_colours", request.values)
    prefs = with_overrides(current_preferences(), colours, genders[0] if genders else None)
    wait = wait_seconds()
    request_id = _create(
        "search", [image], n=n, all_categories=flag_arg("all_categories"), prefs=prefs, crop=crop
    )
    if wait:
        return request_response(_wait(request_id, wait), waited=True)
    return jsonify(
        {
            "job_id": request_id,
            "status": "pending",
            "state": "queued",
            "status_url": url_for("api.request_status", request_id=request_id),
            "results_url": url_for("search.search_detail", request_id=request_id),
            "share_url": url_for(
                "search.search_detail",
                request_id=request_id,
                key=access.share_key(request_id),
                _external=True,
            ),
        }
    ), 202


def _wait(request_id: str, seconds: float) -> dict:
    """The request's record after waiting up to ``seconds``; a 404 unless the caller made it
    (same session cookie, or signed in as the same account) or holds its share key."""
    try:
        record = wait_for_request(request_id, seconds)
    except SearchRequestError as exc:
        abort(exc.code, exc.message)
    if record is None or not access.may_read(record, request.args.get("key")):
        abort(404, "No such job: it may have expired. Please upload the photo again.")
    return record


@bp.get("/jobs/<request_id>")
def request_status(request_id: str):
    """A photo search or compare request: its status, and its results once done
    (``wait=1`` waits); only its maker's session or its share key may read it."""
    wait = wait_seconds()
    return request_response(_wait(request_id, wait), waited=wait > 0)


def model_arg() -> str | None:
    """The ``model`` a compare names: None, or one of the allowed ids, else a 400 naming them."""
    model = (request.values.get("model") or "").strip() or None
    if model is None:
        return None
    try:
        allowed = allowed_model_ids()
    except RedisError:
        abort(503, UNAVAILABLE)
    if model not in allowed:
        if not allowed:
            abort(400, "'model' cannot be chosen now: no model is served yet. Leave it out.")
        abort(400, f"'model' must be a model id this shop serves: {', '.join(allowed)}.")
    return model


@bp.post("/compare")
@csrf.exempt
@ratelimit.uploads
def photo_compare():
    """How alike two photos are (``image_1``, ``image_2``, optional ``model``): score in 0..1,
    similar or not against the model's calibrated threshold."""
    started = time.perf_counter()
    model = model_arg()
    images = [uploaded_image("image_1"), uploaded_image("image_2")]
    request_id = _create("compare", images, model=model)
    record = _wait(request_id, float(current_app.config["SEARCH_WAIT_TIMEOUT"]))
    if record["state"] != "done":
        return request_response(record, waited=True)
    body, code = request_json(record, waited=True)
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
