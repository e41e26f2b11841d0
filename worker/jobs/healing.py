"""Rebuilding the served neighbour lists after Redis lost them, from the embeddings on disk.

``check_lists`` runs in the worker's main process at start and then every
``INDEX_HEAL_INTERVAL`` seconds (``worker.signals``); pages ask for the same heal by task
name when they find no lists (``webapp.healing``). ``heal_index`` is the heal itself: the
configured backbone's model id as ``load_backbone`` resolves it (with ``EMBEDDING_TUNED=auto``,
the newest network tuned from it), then ``indexing.index_catalog``, which embeds only the
products the store lacks (none, after a Redis loss) and rebuilds the lists that are not up
to date, then serves them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import current_app
from sqlalchemy import func, select

from webapp import healing
from webapp.extensions import db
from webapp.models import Product
from webapp.registry import load_backbone, store_for
from worker.jobs import indexing
from worker.jobs.upkeep import Progress

logger = logging.getLogger(__name__)

# A heal embeds the few products whose update tasks were lost with Redis's data: at most
# this many, or a tenth of the photos, else it leaves the store to `flask catalog embed`.
EMBED_AT_MOST = 50


def check_lists() -> float:
    """Ask for a heal when the served lists are missing or incomplete; the seconds until the
    next check (0: self-healing is off)."""
    every = float(current_app.config["INDEX_HEAL_INTERVAL"])
    if every > 0:
        healing.heal_if_needed()
    return max(every, 0.0)


def _photo_count() -> int:
    """How many products have a photo (a complete store holds an embedding of each)."""
    count = db.session.scalar(
        select(func.count()).select_from(Product).where(Product.image_path.is_not(None))
    )
    db.session.rollback()  # end the read transaction before a long build
    return count or 0


def heal_index(
    progress_for: Callable[[str], Progress | None] = lambda stage: None,
) -> dict[str, Any]:
    """Rebuild the served lists from the stored embeddings when they are not whole; nothing
    when they are, or when the configured model's store lacks more than a few photos (that
    takes ``flask catalog embed``: a heal never embeds a catalogue)."""
    problem = healing.lists_problem()
    if problem is None:
        return {"healed": False, "problem": None}
    model_id = load_backbone().model_id
    stored, photos = store_for(model_id).id_count(), _photo_count()
    if stored == 0 or photos - stored > max(EMBED_AT_MOST, photos // 10):
        # Not a store that Redis outlived but one being filled (`flask catalog embed --now`
        # may be running) or never filled: embedding is that command's work.
        logger.warning(
            "neighbour lists need rebuilding (%s), but %s holds %d of %d photos: run "
            "`flask catalog embed`",
            problem,
            model_id,
            stored,
            photos,
        )
        return {"healed": False, "problem": problem, "model": model_id}
    logger.warning("rebuilding the neighbour lists of %s: %s", model_id, problem)
    summary = indexing.index_catalog(progress_for)
    if not summary["rebuilt"] and healing.lists_problem() is not None:
        # Lists lost one by one (an evicting Redis) leave the index looking up to date.
        lists = indexing.build_neighbours(summary["model"], progress=progress_for("neighbours"))
        summary.update(products=lists.products, rebuilt=True)
    logger.info(
        "neighbour lists of %s healed: %d products, %d embedded",
        summary["model"],
        summary["products"],
        summary["embedded"],
    )
    return {**summary, "healed": True, "problem": problem}
