"""Celery signals of the worker: they move a product's index state along.

The web process records ``queued`` when it sends ``ml_update_product``
(``webapp.inventory.index_state.record``); these handlers write ``running`` when the task
starts and ``done`` or ``failed`` when it ends, through the Redis result backend's client.
Connected when ``worker.tasks`` is imported, so ``Task.apply`` in tests runs them too.

When the worker is ready, a thread of its main process also checks the served neighbour
lists at once and then every ``INDEX_HEAL_INTERVAL`` seconds, so lists that Redis lost
are rebuilt from the embeddings on disk without a manual command. A worker that consumes the
``ml`` queue also beats every few seconds from a thread of its main process: it says it is
alive (pages tell shoppers when no worker is) and settles stale search requests, all of
them at once when it starts (``worker.jobs.search_requests.beat``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery.signals import task_postrun, task_prerun, worker_ready

from webapp.inventory.index_state import KEY, TTL_S, UPDATE_TASK
from webapp.search import liveness

logger = logging.getLogger(__name__)

# The task the main process calls (not sends) to check the served lists: called directly,
# a task runs in the Flask app's context.
CHECK_TASK = "worker.tasks.check_index_lists"
# Seconds before checking again after a check that failed unexpectedly.
CHECK_RETRY_S = 60.0
_watch: threading.Thread | None = None


def _product_id(args, kwargs) -> int | None:
    value = kwargs.get("product_id") if kwargs else None
    if value is None and args:
        value = args[0]
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _move(sender, task_id: str, args, kwargs, fields: dict[str, Any]) -> None:
    """Update the product's record, if this task is still the latest one for it."""
    product_id = _product_id(args, kwargs)
    if product_id is None:
        return
    try:
        client = sender.backend.client  # the Redis result backend's client
    except AttributeError:
        return
    key = KEY.format(product_id=product_id)
    try:
        current = client.hget(key, "task_id")
        if current is not None and current.decode() != task_id:
            return  # a newer task was enqueued meanwhile
        client.hset(key, mapping={"task_id": task_id, **fields})
        client.expire(key, TTL_S)
    except Exception as exc:
        logger.warning("could not record the index state of product %s: %s", product_id, exc)


@task_prerun.connect
def _on_start(sender=None, task_id=None, args=None, kwargs=None, **_: Any) -> None:
    if sender is not None and sender.name == UPDATE_TASK:
        _move(sender, task_id, args, kwargs, {"state": "running", "started_at": time.time()})


@task_postrun.connect
def _on_end(sender=None, task_id=None, args=None, kwargs=None, retval=None, state=None, **_: Any):
    if sender is None or sender.name != UPDATE_TASK:
        return
    fields: dict[str, Any] = {"finished_at": time.time()}
    if state == "SUCCESS":
        fields["state"] = "done"
        if isinstance(retval, dict):
            fields["action"] = str(retval.get("action", ""))
            fields["rewritten"] = str(retval.get("rewritten", ""))
    else:
        fields["state"] = "failed"
    _move(sender, task_id, args, kwargs, fields)


@worker_ready.connect
def _watch_index_lists(sender=None, **_: Any) -> None:
    """Start the main process' check of the served neighbour lists (once per worker)."""
    global _watch
    check = getattr(getattr(sender, "app", None), "tasks", {}).get(CHECK_TASK)
    if check is None or _watch is not None:
        return
    _watch = threading.Thread(
        target=_watch_loop, args=(check,), name="index-lists-check", daemon=True
    )
    _watch.start()


def _watch_loop(check) -> None:
    """Check now, then again after the seconds each check returns; stop when it returns 0."""
    while True:
        try:
            wait = float(check())
        except Exception:  # the thread must outlive any one failure
            logger.warning("the neighbour list check failed", exc_info=True)
            wait = CHECK_RETRY_S
        if wait <= 0:
            return
        time.sleep(wait)


# The task the main process calls (not sends) for an ml worker's beat.
BEAT_TASK = "worker.tasks.search_heartbeat"
_beat: threading.Thread | None = None


def consumes_ml(sender: Any) -> bool:
    """Whether the worker that sent ``worker_ready`` consumes the ``ml`` queue."""
    try:
        return "ml" in sender.app.amqp.queues.consume_from
    except AttributeError:
        return False


@worker_ready.connect
def _start_search_beat(sender=None, **_: Any) -> None:
    """Start the main process' beat for photo search (once per worker, ml workers only)."""
    global _beat
    beat = getattr(getattr(sender, "app", None), "tasks", {}).get(BEAT_TASK)
    if beat is None or _beat is not None or not consumes_ml(sender):
        return
    _beat = threading.Thread(
        target=_beat_loop, args=(beat, sender.hostname), name="search-beat", daemon=True
    )
    _beat.start()


def _beat_loop(beat, node: str) -> None:
    """Beat now (as a worker that has just started), then every ``liveness.BEAT_S`` seconds."""
    startup = True
    while True:
        try:
            beat(node, startup)
            startup = False
        except Exception:  # the thread must outlive any one failure (Redis away, say)
            logger.warning("the photo search beat failed", exc_info=True)
        time.sleep(liveness.BEAT_S)
