"""Photo search and compare requests: uploads, their records in Redis, waiting, results, retention.

The web tier stores the upload under a generated name, writes a search request's record and
enqueues its task by name on the ``ml`` queue (``worker.tasks.ml_search_photo`` /
``ml_compare_photos``); the worker writes the answer into the same record. Pages and the API
read the record; nothing here imports the worker or TensorFlow.

A search request's record, JSON under ``search:job:<id>`` with the retention period as its TTL::

    {"id", "kind": "search" | "compare", "state": "queued" | "running" | "done" | "failed",
     "created_at", "images": [relative paths], "n", "all_categories", "prefs", "model",
     "result": {...} (done), "error": message, "code": HTTP status (failed)}

When a request ends the worker pushes to ``search:done:<id>`` so a waiting page wakes at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import redis as redis_lib
from flask import current_app
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError
from sqlalchemy import select

from webapp.extensions import db, get_redis, send_task
from webapp.models import Product
from webapp.preferences import Preferences
from webapp.similar.selection import reasons
from webapp.similar.services import SimilarItem, SimilarResult
from webapp.uploads import ValidatedImage, media_file_path, store_image

logger = logging.getLogger(__name__)

UPLOAD_SUBDIR = "search-uploads"
REQUEST_KEY = "search:job:{id}"
DONE_KEY = "search:done:{id}"
CLEANUP_KEY = "search:cleanup"
REQUEST_ID_RE = re.compile(r"^[0-9a-f]{32}$")
MODEL_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,120}$")
PENDING = ("queued", "running")
UNAVAILABLE = "Photo search is unavailable right now. Please try again shortly."
MAX_N = 50
# The worker task that answers each kind of request.
TASKS = {"search": "worker.tasks.ml_search_photo", "compare": "worker.tasks.ml_compare_photos"}
# What each search level means to a shopper (set by the worker per item).
LEVEL_REASONS = {
    "photo": "practically the same photo",
    "colour": "in the predicted type and colour",
    "type": "in the predicted type",
    "sub": "in the predicted category",
    "all": "from all categories",
}


class SearchRequestError(Exception):
    """A search request that cannot be created or read right now; ``code`` is the HTTP status."""

    def __init__(self, message: str, code: int = 503) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def retention_s() -> int:
    """How long uploads and search request records are kept, in seconds."""
    return max(60, int(current_app.config["SEARCH_RETENTION_MINUTES"] * 60))


def valid_request_id(request_id: str) -> bool:
    """Request ids are 32 lowercase hex digits (random: knowing one is what grants access)."""
    return bool(REQUEST_ID_RE.match(request_id or ""))


def _key(request_id: str) -> str:
    return REQUEST_KEY.format(id=request_id)


def create_request(
    kind: str,
    images: list[ValidatedImage],
    *,
    n: int = 0,
    all_categories: bool = False,
    prefs: Preferences | None = None,
    model: str | None = None,
) -> str:
    """Store the uploads, write the request's record and enqueue its task; returns its id."""
    media = current_app.config["MEDIA_FOLDER"]
    request_id = uuid.uuid4().hex
    paths = [store_image(image, media, UPLOAD_SUBDIR) for image in images]
    record = {
        "id": request_id,
        "kind": kind,
        "state": "queued",
        "created_at": time.time(),
        "images": paths,
        "n": n,
        "all_categories": all_categories,
        "prefs": (prefs or Preferences()).to_session(),
        "model": model,
    }
    try:
        get_redis().set(_key(request_id), json.dumps(record), ex=retention_s())
        _enqueue(kind, request_id)
    except (RedisError, OSError, KombuOperationalError) as exc:
        logger.warning("could not enqueue %s request: %s", kind, exc)
        for path in paths:
            remove_upload(path)
        _delete_quietly(_key(request_id))
        raise SearchRequestError(UNAVAILABLE) from exc
    return request_id


def _enqueue(kind: str, request_id: str) -> None:
    # The task id is the request id, so the worker log and the record name the same thing.
    send_task(TASKS[kind], (request_id,), task_id=request_id)


def _delete_quietly(key: str) -> None:
    """Delete a key, ignoring a Redis that is down (nothing to clean then anyway)."""
    with contextlib.suppress(RedisError):
        get_redis().delete(key)


def get_request(request_id: str) -> dict[str, Any] | None:
    """The request's record, or None when the id is malformed, unknown or expired."""
    if not valid_request_id(request_id):
        return None
    try:
        raw = get_redis().get(_key(request_id))
    except RedisError as exc:
        raise SearchRequestError(UNAVAILABLE) from exc
    return None if raw is None else json.loads(raw)


def update_request(request_id: str, **changes: Any) -> dict[str, Any] | None:
    """Merge changes into a request's record (keeping its TTL); None when it expired meanwhile."""
    raw = get_redis().get(_key(request_id))
    if raw is None:
        return None
    record = {**json.loads(raw), **changes}
    get_redis().set(_key(request_id), json.dumps(record), keepttl=True)
    return record


def notify_done(request_id: str) -> None:
    """Wake whoever waits on this request."""
    pipe = get_redis().pipeline(transaction=False)
    pipe.rpush(DONE_KEY.format(id=request_id), 1)
    pipe.expire(DONE_KEY.format(id=request_id), 120)
    pipe.execute()


def wait_for_request(request_id: str, timeout: float) -> dict[str, Any] | None:
    """The request's record once it has ended, or as it stands when ``timeout`` seconds pass."""
    record = get_request(request_id)
    deadline = time.monotonic() + timeout
    if record is None or record["state"] not in PENDING or timeout <= 0:
        return record
    # A client of its own: the shared one times out after REDIS_TIMEOUT, shorter than a wait.
    client = current_app.extensions.get("search_redis")
    if client is None:
        client = redis_lib.Redis.from_url(
            current_app.config["REDIS_URL"],
            socket_timeout=current_app.config["SEARCH_WAIT_TIMEOUT"] + 5,
            socket_connect_timeout=current_app.config["REDIS_TIMEOUT"],
        )
        current_app.extensions["search_redis"] = client
    done_key = DONE_KEY.format(id=request_id)
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return record
            popped = client.blpop([done_key], timeout=max(0.01, left))
            if popped is not None:
                client.rpush(done_key, 1)  # put it back for any other waiter
            record = get_request(request_id)
            if record is None or record["state"] not in PENDING:
                return record
    except redis_lib.RedisError as exc:
        raise SearchRequestError(UNAVAILABLE) from exc


def request_photo_path(record: dict[str, Any], index: int = 0) -> str | None:
    """The absolute path of a request's uploaded photo, if it is still kept."""
    images = record.get("images") or []
    if index >= len(images):
        return None
    path = media_file_path(images[index], current_app.config["MEDIA_FOLDER"])
    return path if path and os.path.isfile(path) else None


# -- results for pages and the API ----------------------------------------------------------


@dataclass
class SearchView:
    """What a results page or the API shows for a search request."""

    request_id: str
    state: str
    result: SimilarResult
    predictions: list[dict[str, Any]]
    searched: str | None
    all_categories: bool
    elapsed_ms: float | None
    code: int
    heads: str | None = None


def search_view(record: dict[str, Any]) -> SearchView:
    """Turn a search request's record into products with scores and reasons (one DB query)."""
    state = record["state"]
    request_id = record["id"]
    if state in PENDING:
        result = SimilarResult("pending", message="Searching the catalogue...")
        return SearchView(request_id, state, result, [], None, record["all_categories"], None, 202)
    if state == "failed":
        result = SimilarResult("failed", message=record.get("error") or "The search failed.")
        return SearchView(
            request_id,
            state,
            result,
            [],
            None,
            record["all_categories"],
            None,
            record.get("code", 503),
        )
    found = record["result"]
    ids = [item[0] for item in found["items"]]
    rows = {p.id: p for p in db.session.scalars(select(Product).where(Product.id.in_(ids)))}
    predicted = SimpleNamespace(
        **{p["field"]: p["value"] for p in found["predictions"] if p.get("confident")}
    )
    items = []
    for product_id, score, level in found["items"]:
        product = rows.get(product_id)
        if product is None or not product.active:
            continue  # deleted or withdrawn since the search ran
        why = [LEVEL_REASONS[level]] if level in LEVEL_REASONS else []
        items.append(SimilarItem(product, float(score), why + reasons(predicted, product)))
    result = SimilarResult(
        "ok", items, message=found.get("message") or "", model_id=found.get("model")
    )
    return SearchView(
        request_id,
        state,
        result,
        found["predictions"],
        found.get("searched"),
        record["all_categories"],
        found.get("elapsed_ms"),
        200,
        found.get("heads"),
    )


# -- retention ------------------------------------------------------------------------------


def remove_upload(relative: str) -> None:
    """Delete one uploaded photo now (compare photos go as soon as they are scored)."""
    path = media_file_path(relative, current_app.config["MEDIA_FOLDER"])
    if path:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def cleanup_uploads(max_age_s: float | None = None, now: float | None = None) -> int:
    """Delete uploaded query photos older than the retention period; returns how many went."""
    max_age_s = retention_s() if max_age_s is None else max_age_s
    now = time.time() if now is None else now
    folder = os.path.join(current_app.config["MEDIA_FOLDER"], UPLOAD_SUBDIR)
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        try:
            if entry.is_file(follow_symlinks=False) and now - entry.stat().st_mtime > max_age_s:
                os.remove(entry.path)
                removed += 1
        except FileNotFoundError:
            continue  # another cleanup got there first
    if removed:
        logger.info("removed %d expired search upload(s)", removed)
    return removed


def cleanup_if_due(every_s: int = 60) -> int:
    """Run ``cleanup_uploads`` at most once a minute across all workers (a Redis marker)."""
    if not get_redis().set(CLEANUP_KEY, 1, nx=True, ex=every_s):
        return 0
    return cleanup_uploads()
