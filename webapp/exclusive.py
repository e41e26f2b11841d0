"""One-at-a-time background work: a Redis marker per kind of work, holding the task id.

Catalogue-wide builds (embedding, neighbour lists, tuning), hashing every photo and
calibrating the duplicate threshold must never run twice at once: a second request while
one is queued or running reports the one in flight instead of enqueuing another.
"""

from __future__ import annotations

from typing import Any

from celery.result import AsyncResult

from webapp.extensions import get_redis, send_task

# The kinds of exclusive work; catalogue-wide builds share one marker so that an index
# build, a neighbour-list rebuild and a tuning run never overlap.
INDEX = "index-catalog"
HASHING = "hash-product-images"
DUPLICATE_THRESHOLD = "calibrate-duplicates"

KEY = "exclusive:{name}"
# A marker outlives a worker that died without clearing it by at most this long.
MARKER_TTL_S = 24 * 3600
FINISHED = {"SUCCESS", "FAILURE", "REVOKED"}


def in_flight(name: str) -> str | None:
    """The id of the task of this kind that is queued or running, if any."""
    task_id = get_redis().get(KEY.format(name=name))
    if task_id is None:
        return None
    task_id = task_id.decode()
    if AsyncResult(task_id).state in FINISHED:
        get_redis().delete(KEY.format(name=name))
        return None
    return task_id


def enqueue_once(
    name: str, task_name: str, args: tuple = (), kwargs: dict[str, Any] | None = None
) -> tuple[str, bool]:
    """Send the task ``task_name`` unless work of kind ``name`` is in flight:
    (task id, True if newly enqueued)."""
    running = in_flight(name)
    if running:
        return running, False
    result = send_task(task_name, args, kwargs)
    # NX: if two callers race, the first marker wins and both report that task.
    if not get_redis().set(KEY.format(name=name), result.id, nx=True, ex=MARKER_TTL_S):
        return get_redis().get(KEY.format(name=name)).decode(), False
    return result.id, True


def finished(name: str, task_id: str | None) -> None:
    """Clear the marker when the task that set it ends."""
    if task_id and get_redis().get(KEY.format(name=name)) in (task_id.encode(), task_id):
        get_redis().delete(KEY.format(name=name))
