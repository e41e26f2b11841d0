"""A model's thresholds (``ml.thresholds``) read with the app's settings.

The duplicate threshold (the admin's duplicate check, the index status panel, the bulk
import's report) and the compare threshold (the two-image compare). Reading them costs one
small file; calibrating them is worker work.
"""

from __future__ import annotations

from typing import Any

from flask import current_app

from ml import thresholds


def duplicate_threshold(model_id: str | None) -> tuple[float, str]:
    """(threshold, source: setting, calibrated or default); ``DUPLICATE_COSINE`` > 0 wins."""
    cfg = current_app.config
    return thresholds.duplicate_threshold(
        cfg["MODEL_FOLDER"], model_id, float(cfg.get("DUPLICATE_COSINE") or 0)
    )


def duplicate_threshold_info(model_id: str) -> dict[str, Any] | None:
    """How a model's duplicate threshold was calibrated (figures and rule), or None."""
    return thresholds.duplicate_threshold_info(current_app.config["MODEL_FOLDER"], model_id)


def compare_threshold(model_id: str) -> tuple[float, dict | None]:
    """(threshold, stored record or None); ``COMPARE_DEFAULT_THRESHOLD`` when uncalibrated."""
    cfg = current_app.config
    return thresholds.compare_threshold(
        cfg["MODEL_FOLDER"], model_id, cfg["COMPARE_DEFAULT_THRESHOLD"]
    )
