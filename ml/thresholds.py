"""Reading a model's thresholds from its folder: the duplicate threshold and the compare threshold.

Both are calibrated by worker jobs and stored beside the model's embeddings, under
``<model folder>/<model id>/``:

* ``duplicates.json``: the embedding cosine above which two photos count as near duplicates
  (the admin's duplicate check and the bulk import's report);
* ``compare.json``: the score above which the two-image compare calls two photos similar.

Flask-free and cheap (one small JSON file), so pages, workers and the command line read
them the same way. The writers live with the code that fits them (``ml.compare_threshold``
and the worker's threshold jobs); the file names are defined here only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

DUPLICATE_FILE = "duplicates.json"
COMPARE_FILE = "compare.json"
# Used until a model's duplicate threshold is calibrated: high enough that only very close
# photos are flagged.
DEFAULT_DUPLICATE_THRESHOLD = 0.95


def duplicate_threshold_file(model_folder: str | os.PathLike, model_id: str) -> Path:
    """Where a model's calibrated duplicate threshold lives."""
    return Path(model_folder) / model_id / DUPLICATE_FILE


def duplicate_threshold_info(
    model_folder: str | os.PathLike, model_id: str
) -> dict[str, Any] | None:
    """The stored duplicate threshold of a model and the figures behind it, or None."""
    try:
        return json.loads(duplicate_threshold_file(model_folder, model_id).read_text())
    except (OSError, ValueError):
        return None


def duplicate_threshold(
    model_folder: str | os.PathLike, model_id: str | None, configured: float = 0.0
) -> tuple[float, str]:
    """(threshold, where it came from: setting, calibrated or default) for a model id.

    A positive ``configured`` value (the ``DUPLICATE_COSINE`` setting) overrides the
    calibrated one.
    """
    if configured and float(configured) > 0:
        return float(configured), "setting"
    if model_id:
        try:
            info = duplicate_threshold_info(model_folder, model_id)
            if info is not None:
                return float(info["threshold"]), "calibrated"
        except (ValueError, KeyError, TypeError):
            pass
    return DEFAULT_DUPLICATE_THRESHOLD, "default"


def compare_threshold_file(model_folder: str | os.PathLike, model_id: str) -> Path:
    """Where a model's calibrated compare threshold lives."""
    return Path(model_folder) / model_id / COMPARE_FILE


def load_compare_threshold(model_folder: str | os.PathLike, model_id: str) -> dict | None:
    """The stored compare threshold of a model id, or None when it was never calibrated."""
    try:
        return json.loads(compare_threshold_file(model_folder, model_id).read_text())
    except FileNotFoundError:
        return None


def compare_threshold(
    model_folder: str | os.PathLike, model_id: str, default: float
) -> tuple[float, dict | None]:
    """(threshold, the stored record or None) for a model id; ``default`` when uncalibrated."""
    stored = load_compare_threshold(model_folder, model_id)
    return (float(stored["threshold"]) if stored else float(default)), stored
