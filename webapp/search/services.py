"""Photo search and compare requests: uploads, their records in Redis, results, retention.

The web tier stores the upload under a generated name, writes a search request's record and
enqueues its task by name on the ``ml`` queue (``worker.tasks.ml_search_photo`` /
``ml_compare_photos``); the worker writes the answer into the same record. Pages and the API
read the record; nothing here imports the worker or TensorFlow.

A search request's record, JSON under ``search:job:<id>`` with the retention period as its TTL::

    {"id", "kind": "search" | "compare", "state": "queued" | "running" | "done" | "failed",
     "created_at", "queued_at", "images": [relative paths], "n", "all_categories", "prefs",
     "crop": [x, y, w, h] relative or null (``webapp.search.crop``), "model", "owner", "user_id" (who may read it: ``access``), "attempts" (runs begun),
     "resent_at", "started_at", "ended_at", "worker" (who runs or ran it),
     "result": {...} (done), "error": message, "code": HTTP status (failed)}

When a request ends the worker pushes to ``search:done:<id>`` so a waiting page wakes at once.
Pages and the API read and wait through ``watchdog``, which makes sure every pending request
still has somebody working on it; only its owner (``access``) may read it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from flask import current_app
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError
from sqlalchemy import select

from webapp import healing
from webapp.extensions import db, get_redis, send_task
from webapp.models import Product
from webapp.preferences import Preferences
from webapp.search import access, liveness
from webapp.search.crop import Box
from webapp.search.liveness import UNAVAILABLE
from webapp.similar.selection import reasons
from webapp.similar.services import SimilarItem, SimilarResult
from webapp.taste import not_interested_ids
from webapp.uploads import ValidatedImage, media_file_path, store_image

logger = logging.getLogger(__name__)

UPLOAD_SUBDIR = "search-uploads"
REQUEST_KEY = "search:job:{id}"
DONE_KEY = "search:done:{id}"
CLEANUP_KEY = "search:cleanup"
REQUEST_ID_RE = re.compile(r"^[0-9a-f]{32}$")
MODEL_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,120}$")
PENDING = ("queued", "running")
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
    """Request ids are 32 lowercase hex digits (random; only the owner may read one: ``access``)."""
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
    crop: Box | None = None,
) -> str:
    """Store the uploads, write the request's record and enqueue its task; returns its id.
    ``crop``: the part of a search's photo to search (a box ``check_crop`` accepted)."""
    media = current_app.config["MEDIA_FOLDER"]
    request_id = uuid.uuid4().hex
    paths = [store_image(image, media, UPLOAD_SUBDIR) for image in images]
    now = time.time()
    record = {
        "id": request_id,
        "kind": kind,
        "state": "queued",
        "created_at": now,
        "queued_at": now,
        "images": paths,
        "n": n,
        "all_categories": all_categories,
        "prefs": (prefs or Preferences()).to_session(),
        "crop": None if crop is None else list(crop),
        # Products the shopper marked "not interested" are left out while choosing.
        "exclude": sorted(not_interested_ids()) if kind == "search" else [],
        "model": model,
        "attempts": 0,
        **access.owner_fields(),
    }
    try:
        pipe = get_redis().pipeline(transaction=False)
        pipe.set(_key(request_id), json.dumps(record), ex=retention_s())
        pipe.zadd(liveness.PENDING_KEY, {request_id: now})
        pipe.execute()
        enqueue(kind, request_id)
    except (RedisError, OSError, KombuOperationalError) as exc:
        logger.warning("could not enqueue %s request: %s", kind, exc)
        for path in paths:
            remove_upload(path)
        _delete_quietly(_key(request_id))
        with contextlib.suppress(RedisError):
            get_redis().zrem(liveness.PENDING_KEY, request_id)
        raise SearchRequestError(UNAVAILABLE) from exc
    return request_id


def enqueue(kind: str, request_id: str) -> None:
    """Send the request's task by name (again, for a resend: the worker answers it once)."""
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
    """Wake whoever waits on this request (it has ended: no sweep looks at it again)."""
    pipe = get_redis().pipeline(transaction=False)
    pipe.rpush(DONE_KEY.format(id=request_id), 1)
    pipe.expire(DONE_KEY.format(id=request_id), 120)
    pipe.zrem(liveness.PENDING_KEY, request_id)
    pipe.execute()


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
    # The crop box searched (None: the whole photo) and where the product was found in it.
    crop: list[float] | None = None
    product_box: list[float] | None = None
    # Even the best result is far from the photo (below the close-match cosine).
    no_close_match: bool = False
    # What the worker's steps cost (parts of ``elapsed_ms``): decoding the upload, finding
    # the product in the photo, embedding it, ranking and choosing from the catalogue.
    decode_ms: float | None = None
    foreground_ms: float | None = None
    embed_ms: float | None = None
    rank_ms: float | None = None
    # Other products showing the same picture as a shown product's card, by its id.
    also: dict[int, list[Product]] = field(default_factory=dict)


def search_view(record: dict[str, Any]) -> SearchView:
    """Turn a search request's record into products with scores and reasons (one DB query)."""
    state = record["state"]
    request_id = record["id"]
    crop = record.get("crop")
    if state in PENDING and record.get("unavailable"):
        result = SimilarResult("unavailable", message=UNAVAILABLE)
        return SearchView(
            request_id, state, result, [], None, record["all_categories"], None, 503, crop=crop
        )
    if state in PENDING:
        result = SimilarResult("pending", message="Searching the catalogue...")
        return SearchView(
            request_id, state, result, [], None, record["all_categories"], None, 202, crop=crop
        )
    if state == "failed":
        if record.get("code", 503) == 503:
            healing.heal_if_unserved("photo search found no served model")
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
            crop=crop,
        )
    found = record["result"]
    also = {int(k): v for k, v in (found.get("also") or {}).items()}
    groups = [[item[0], *also.get(item[0], [])] for item in found["items"]]
    ids = [pid for group in groups for pid in group]
    rows = {p.id: p for p in db.session.scalars(select(Product).where(Product.id.in_(ids)))}
    predicted = SimpleNamespace(
        **{p["field"]: p["value"] for p in found["predictions"] if p.get("confident")}
    )
    items, listed = [], {}
    # Marked "not interested" after the search ran: dropped from its page at once.
    marked = not_interested_ids()
    for group, (_, score, level) in zip(groups, found["items"], strict=True):
        # Deleted or withdrawn since the search ran, or just marked: another product listing
        # the same picture takes the card, if there is one.
        shown = [rows[p] for p in group if p in rows and rows[p].active and p not in marked]
        if not shown:
            continue
        product = shown[0]
        why = [LEVEL_REASONS[level]] if level in LEVEL_REASONS else []
        items.append(SimilarItem(product, float(score), why + reasons(predicted, product)))
        if len(shown) > 1:
            listed[product.id] = shown[1:]
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
        crop=crop,
        product_box=found.get("product_box"),
        no_close_match=bool(found.get("no_close_match")) and bool(items),
        decode_ms=found.get("decode_ms"),
        foreground_ms=found.get("foreground_ms"),
        embed_ms=found.get("embed_ms"),
        rank_ms=found.get("rank_ms"),
        also=listed,
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
