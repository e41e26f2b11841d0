"""Celery signals of the worker: they move a product's index state along.

The web process records ``queued`` when it sends ``ml_update_product``
(``webapp.inventory.index_state.record``); these handlers write ``running`` when the task
starts and ``done`` or ``failed`` when it ends, through the Redis result backend's client.
Connected when ``worker.tasks`` is imported, so ``Task.apply`` in tests runs them too.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery.signals import task_postrun, task_prerun

from webapp.inventory.index_state import KEY, TTL_S, UPDATE_TASK

logger = logging.getLogger(__name__)


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
