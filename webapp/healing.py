"""Self-healing of the neighbour lists after Redis lost its data.

Redis holds the neighbour lists, the switch naming the served model and the one-at-a-time
markers; the embeddings stay on disk. When Redis restarts without persistence (or is
flushed), pages find no served model. This module tells that apart cheaply (a few Redis
reads and a look at the model folder, never the embeddings themselves) and asks a worker,
by task name, to rebuild the lists from the stored embeddings: at most once per
``INDEX_HEAL_INTERVAL`` seconds across every process (a Redis key with that lifetime) and
never beside another catalogue-wide build (``exclusive.INDEX``). Pages keep saying "being
prepared" meanwhile; with Redis down nothing is asked and pages show their notice.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from flask import current_app

from ml.cache import NeighbourCache
from webapp import exclusive, registry
from webapp.extensions import get_redis

logger = logging.getLogger(__name__)

HEAL_TASK = "worker.tasks.ml_heal_index"
REQUESTED_KEY = "heal:requested"
# Lists checked for existence per look (a Redis that evicted keys loses them at random).
SAMPLE = 32
# A full build marks the served lists incomplete for the seconds it rewrites them; only a
# build that stopped half-way leaves them so for longer than this.
STALE_BUILD_S = 600


def has_embeddings() -> bool:
    """True when some model's embeddings are on disk (so there are lists to rebuild)."""
    root = Path(current_app.config["MODEL_FOLDER"])
    try:
        folders = [p for p in root.iterdir() if p.is_dir()]
    except FileNotFoundError:
        return False
    return any((p / "state.json").is_file() or any((p / "parts").glob("*.npz")) for p in folders)


def lists_problem() -> str | None:
    """What is wrong with the served neighbour lists, or None when they look whole (or when
    nothing was ever embedded: a new shop has nothing to heal). Raises ``RedisError``."""
    cache = registry.neighbour_cache()
    model_id = cache.active_model()
    if model_id is None:
        return "no model is served" if has_embeddings() else None
    meta = cache.meta(model_id)
    if not meta:
        return f"the lists of {model_id} are gone"
    if meta.get("complete") != "1":
        age = time.time() - float(meta.get("updated_at") or 0)
        return f"a build of {model_id}'s lists stopped half-way" if age > STALE_BUILD_S else None
    ids, _ = cache.read_index(model_id)
    if len(ids) != int(meta.get("count") or 0):
        return f"the list index of {model_id} is missing"
    missing = _missing_lists(cache, model_id, ids)
    return f"{missing} of {SAMPLE} sampled lists of {model_id} are missing" if missing else None


def _missing_lists(cache: NeighbourCache, model_id: str, ids: np.ndarray) -> int:
    """How many of a random sample of the indexed products have no list."""
    if not len(ids):
        return 0
    sample = np.random.default_rng().choice(ids, size=min(SAMPLE, len(ids)), replace=False)
    missing = _absent(cache, model_id, sample)
    if len(missing):
        # A product leaving the catalogue loses its list a moment before it leaves the
        # index: look again at those still indexed after that moment.
        time.sleep(0.5)
        again, _ = cache.read_index(model_id)
        missing = _absent(cache, model_id, missing[np.isin(missing, again)])
    return len(missing)


def _absent(cache: NeighbourCache, model_id: str, product_ids: np.ndarray) -> np.ndarray:
    """The ids among ``product_ids`` whose list key does not exist."""
    pipe = cache.r.pipeline(transaction=False)
    for pid in product_ids:
        pipe.exists(cache.key(model_id, "list", int(pid)))
    found = np.asarray(pipe.execute(), bool) if len(product_ids) else np.empty(0, bool)
    return np.asarray(product_ids)[~found]


def request_heal(reason: str) -> str | None:
    """Send the heal task by name (at most once per ``INDEX_HEAL_INTERVAL`` seconds, never
    beside another catalogue-wide build); its id when one was sent. Never raises: a page
    that asks must not fail because Redis or the broker is down."""
    every = int(current_app.config["INDEX_HEAL_INTERVAL"])
    if every <= 0:
        return None
    try:
        if not has_embeddings() or not get_redis().set(REQUESTED_KEY, reason, nx=True, ex=every):
            return None
        task_id, new = exclusive.enqueue_once(exclusive.INDEX, HEAL_TASK)
    except Exception as exc:  # noqa: BLE001 - healing is best effort; the page shows its notice
        logger.warning("could not ask for the neighbour lists to be rebuilt: %s", exc)
        return None
    if not new:
        return None  # a catalogue-wide build is in flight: it serves complete lists at its end
    logger.warning("neighbour lists need rebuilding (%s): heal task %s sent", reason, task_id)
    return task_id


def heal_if_unserved(reason: str) -> str | None:
    """``request_heal`` when no model is served (a failed photo search, say); never raises."""
    try:
        if registry.neighbour_cache().active_model() is not None:
            return None
    except Exception as exc:  # noqa: BLE001 - Redis is down: nothing to ask it
        logger.warning("cannot tell whether lists are served: %s", exc)
        return None
    return request_heal(reason)


def heal_if_needed() -> str | None:
    """Check the served lists (``lists_problem``) and ask for a heal when they are not whole;
    the problem found, if any. Never raises."""
    try:
        problem = lists_problem()
    except Exception as exc:  # noqa: BLE001 - Redis is down: the next check tries again
        logger.warning("cannot check the neighbour lists: %s", exc)
        return None
    if problem:
        request_heal(problem)
    return problem
