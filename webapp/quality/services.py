"""Stored evaluation results for the admin Quality page: where ``flask model evaluate``
keeps them (beside each base model's embeddings) and the latest of each kind.

The evaluation itself runs in a worker or the command line, never in a page; this module
only reads the JSON it leaves.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from flask import current_app

from webapp.registry import store_for

logger = logging.getLogger(__name__)

KINDS = ("leave-one-out", "held-out", "queries", "year-split")
# The offline measure of the "For you" feed (``flask model evaluate-feed``): simulated
# shoppers rather than retrieval queries, so it is stored and shown apart from KINDS.
FEED_KIND = "feed"
# The stored result's format version, written into every result so that a reader can tell
# formats apart.
RESULT_VERSION = 1


def evaluations_folder(model_id: str) -> Path:
    """Where a base model's evaluation results are kept: beside its embeddings."""
    return store_for(model_id).path / "evaluations"


def latest_results(model_folder: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """{kind: the most recent stored result of that kind, over every base model}."""
    root = Path(model_folder or current_app.config["MODEL_FOLDER"])
    out: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        result = latest_of_kind(root, kind)
        if result is not None:
            out[kind] = result
    return out


def latest_feed_result(model_folder: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The most recent stored offline measure of the feed, over every model, or None."""
    return latest_of_kind(Path(model_folder or current_app.config["MODEL_FOLDER"]), FEED_KIND)


def latest_of_kind(root: Path, kind: str) -> dict[str, Any] | None:
    """The most recent readable ``latest-<kind>.json`` under ``root``'s model folders."""
    latest: dict[str, Any] | None = None
    for path in root.glob(f"*/evaluations/latest-{kind}.json"):
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            logger.warning("unreadable evaluation %s", path)
            continue
        if latest is None or result.get("created_at", "") > latest.get("created_at", ""):
            latest = result
    return latest
