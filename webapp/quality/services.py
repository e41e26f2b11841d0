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

KINDS = ("leave-one-out", "held-out", "queries")
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
        for path in root.glob(f"*/evaluations/latest-{kind}.json"):
            try:
                result = json.loads(path.read_text())
            except (OSError, ValueError):
                logger.warning("unreadable evaluation %s", path)
                continue
            if kind not in out or result.get("created_at", "") > out[kind].get("created_at", ""):
                out[kind] = result
    return out
