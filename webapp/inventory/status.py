"""The index status panel: what is served, how complete it is, the queues and the workers.

Everything here is read from Redis, the DB and the model folder's small files; nothing
loads a model or the embeddings themselves.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from celery.result import AsyncResult
from flask import current_app
from sqlalchemy import func, select

from webapp import exclusive, healing, registry
from webapp.extensions import db, get_redis
from webapp.inventory.stage_clock import describe
from webapp.models import Product
from webapp.thresholds import duplicate_threshold, duplicate_threshold_info

logger = logging.getLogger(__name__)

PING_TIMEOUT_S = 1.0


def embedded_ids_count(model_id: str) -> int | None:
    """How many products a model's embedding store holds (None when it cannot be read)."""
    try:
        return registry.store_for(model_id).id_count()
    except (OSError, ValueError, KeyError) as exc:
        logger.warning("cannot count the embeddings of %s: %s", model_id, exc)
        return None


def queue_names() -> list[str]:
    """The Celery queues tasks are sent to: the default one and every routed one."""
    conf = current_app.extensions["celery"].conf
    names = [conf.task_default_queue or "celery"]
    for route in (conf.task_routes or {}).values():
        queue = route.get("queue") if isinstance(route, dict) else None
        if queue and queue not in names:
            names.append(queue)
    return names


def _when(value: str | None) -> datetime | None:
    try:
        return datetime.fromtimestamp(float(value), UTC) if value else None
    except (TypeError, ValueError):
        return None


def workers_alive(timeout: float = PING_TIMEOUT_S) -> list[str] | None:
    """Names of the workers that answered a ping, or None when the broker is unreachable."""
    celery_app = current_app.extensions["celery"]
    try:
        replies = celery_app.control.ping(timeout=timeout) or []
    except Exception as exc:
        logger.warning("cannot ping the workers: %s", exc)
        return None
    return sorted(name for reply in replies for name in reply)


def is_embedding_model(name: str) -> bool:
    """True for a model whose embeddings can serve lists (not a store of feature maps or of
    colour descriptors, which only feed training and evaluation)."""
    return ".maps-" not in name and not name.startswith("colour-")


def index_status(ping: bool = True) -> dict[str, Any]:
    """Everything the panel shows, JSON-ready apart from datetimes."""
    started = time.perf_counter()
    status: dict[str, Any] = {"redis_ok": True}
    status["products"] = db.session.scalar(select(func.count()).select_from(Product)) or 0
    status["with_photo"] = (
        db.session.scalar(
            select(func.count()).select_from(Product).where(Product.image_path.is_not(None))
        )
        or 0
    )
    models_root = Path(current_app.config["MODEL_FOLDER"])
    folders = sorted(
        p
        for p in models_root.glob("*")
        if p.is_dir()
        and ((p / "parts").exists() or (p / "state.json").exists())
        and is_embedding_model(p.name)
    )
    try:
        redis = get_redis()
        cache = registry.neighbour_cache()
        # Lists lost with Redis's data are rebuilt from the embeddings (shown as the index job).
        healing.heal_if_needed()
        active = cache.active_model()
        status["queues"] = {name: int(redis.llen(name)) for name in queue_names()}
        status["jobs"] = {
            name: exclusive.in_flight(name)
            for name in (exclusive.INDEX, exclusive.HASHING, exclusive.DUPLICATE_THRESHOLD)
        }
        metas = {p.name: cache.meta(p.name) for p in folders}
        if active and active not in metas:
            metas[active] = cache.meta(active)
    except Exception as exc:
        logger.warning("index status: Redis unavailable: %s", exc)
        status["redis_ok"] = False
        active, metas = None, {p.name: {} for p in folders}
        status["queues"], status["jobs"] = {}, {}
    models = []
    for model_id, meta in sorted(metas.items(), key=lambda kv: (kv[0] != active, kv[0])):
        threshold, source = duplicate_threshold(model_id)
        models.append(
            {
                "model_id": model_id,
                "active": model_id == active,
                "embedded": embedded_ids_count(model_id),
                "lists": int(meta["count"]) if meta.get("count") else 0,
                "k": meta.get("k"),
                "complete": meta.get("complete") == "1",
                "built_at": _when(meta.get("built_at")),
                "updated_at": _when(meta.get("updated_at")),
                "threshold": threshold,
                "threshold_source": source,
                "threshold_info": duplicate_threshold_info(model_id),
            }
        )
    status["active"] = active
    status["models"] = models
    status["index_job"] = _job_state(status["jobs"].get(exclusive.INDEX))
    status["workers"] = workers_alive() if ping else None
    status["seconds"] = round(time.perf_counter() - started, 3)
    return status


def _job_state(task_id: str | None) -> dict[str, Any] | None:
    """State and progress of a queued or running task; ``time_left`` (``describe``'s
    sentences: the stage, the time left in it and in the whole job) while it reports
    stage timings."""
    if not task_id:
        return None
    try:
        result = AsyncResult(task_id)
        info = result.info if isinstance(result.info, dict) else {}
        state = result.state
    except Exception:
        return {"task_id": task_id, "state": "UNKNOWN"}
    time_left = describe(info) if state == "PROGRESS" else None
    return {"task_id": task_id, "state": state, **info, "time_left": time_left}
