"""Background jobs that must not run twice at once: a Redis marker per job name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery.result import AsyncResult

from webapp.extensions import get_redis

KEY = "jobs:{name}"
# A marker outlives a worker that died without clearing it by at most this long.
MARKER_TTL_S = 24 * 3600
FINISHED = {"SUCCESS", "FAILURE", "REVOKED"}


def in_flight(name: str) -> str | None:
    """The id of the job of this name that is queued or running, if any."""
    task_id = get_redis().get(KEY.format(name=name))
    if task_id is None:
        return None
    task_id = task_id.decode()
    if AsyncResult(task_id).state in FINISHED:
        get_redis().delete(KEY.format(name=name))
        return None
    return task_id


def enqueue_once(name: str, enqueue: Callable[[], Any]) -> tuple[str, bool]:
    """Enqueue unless a job of this name is in flight: (task id, True if newly enqueued)."""
    running = in_flight(name)
    if running:
        return running, False
    result = enqueue()
    # NX: if two callers race, the first marker wins and both report that job.
    if not get_redis().set(KEY.format(name=name), result.id, nx=True, ex=MARKER_TTL_S):
        return get_redis().get(KEY.format(name=name)).decode(), False
    return result.id, True


def finished(name: str, task_id: str | None) -> None:
    """Clear the marker when the job that set it ends."""
    if task_id and get_redis().get(KEY.format(name=name)) in (task_id.encode(), task_id):
        get_redis().delete(KEY.format(name=name))
