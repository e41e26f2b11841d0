"""Each product's index state (queued, running, done, failed), kept in Redis.

The web process records the task id when it enqueues ``ml_update_product``; the worker moves
the state on through Celery's task signals (``worker.signals``), so the admin's product page
can show it without asking Celery for results that expire. Keys live a week: after that the
page says nothing.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from webapp.extensions import get_redis

logger = logging.getLogger(__name__)

KEY = "inventory:product-job:{product_id}"
TTL_S = 7 * 24 * 3600
UPDATE_TASK = "worker.tasks.ml_update_product"
LABELS = {
    "queued": "Queued: waiting for a worker",
    "running": "Running: embedding the photo and updating the similar-products lists",
    "done": "Done: the similar-products lists are up to date",
    "failed": "Failed: see the worker log; saving the product again retries",
    "none": "No index work recorded for this product",
    "unknown": "The job state is unavailable right now",
}


def _decode(raw: dict) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in raw.items()
    }


# The worker may finish a fast job before the web process gets to record it: then the
# record keeps the state the worker's signals wrote instead of going back to "queued".
_RECORD = """
if redis.call('hget', KEYS[1], 'task_id') ~= ARGV[1] then
  redis.call('del', KEYS[1])
  redis.call('hset', KEYS[1], 'task_id', ARGV[1], 'state', 'queued')
end
redis.call('hset', KEYS[1], 'change', ARGV[2], 'queued_at', ARGV[3])
return redis.call('expire', KEYS[1], ARGV[4])
"""


def record(product_id: int, task_id: str, change: str, client=None) -> None:
    """Remember that the index upkeep of this product was enqueued as task ``task_id``."""
    client = client or get_redis()
    client.eval(
        _RECORD, 1, KEY.format(product_id=product_id), task_id, change, f"{time.time():.3f}", TTL_S
    )


def state(product_id: int) -> dict[str, Any]:
    """A product's index state: state, label, change, times and the latest task's summary."""
    try:
        raw = _decode(get_redis().hgetall(KEY.format(product_id=product_id)))
    except Exception as exc:  # Redis down or slow: the page still renders
        logger.warning("index state of product %s unavailable: %s", product_id, exc)
        return {"state": "unknown", "label": LABELS["unknown"]}
    if not raw:
        return {"state": "none", "label": LABELS["none"]}
    current = raw.get("state", "queued")
    out: dict[str, Any] = {
        "state": current,
        "label": LABELS.get(current, current),
        "change": raw.get("change"),
        "task_id": raw.get("task_id"),
    }
    for name in ("queued_at", "started_at", "finished_at"):
        if raw.get(name):
            out[name] = float(raw[name])
    for name in ("action", "rewritten"):
        if raw.get(name):
            out[name] = raw[name]
    return out
