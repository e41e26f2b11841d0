"""A model's thresholds: the duplicate threshold and the compare threshold, calibrated by
worker jobs, stored beside the model and read back the same way by pages and workers."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from ml import thresholds
from ml.duplicate_threshold import choose_threshold
from webapp.extensions import db
from webapp.models import Product
from webapp.thresholds import compare_threshold, duplicate_threshold, duplicate_threshold_info
from worker.jobs import indexing
from worker.jobs.thresholds import calibrate_compare_threshold, calibrate_duplicate_threshold


def test_duplicate_threshold_is_calibrated_and_stored_beside_the_model(catalogue):
    app, model_id, media = catalogue
    with app.app_context():
        digest = hashlib.sha256((media / "p0.jpg").read_bytes()).hexdigest()
        for pid in (1000, 1006):  # the same photo under two ids
            product = db.session.get(Product, pid)
            product.image_path, product.image_sha256 = "p0.jpg", digest
        db.session.commit()
        assert indexing.embed_catalog().embedded == 2
        result = calibrate_duplicate_threshold(negatives=5000)
        assert result["model_id"] == model_id and result["identical_groups"] == 1
        assert result["identical_min"] == pytest.approx(1.0) and result["nearest"] == 30
        assert result["negatives"] > 4000 and 0 < result["threshold"] <= 1.0
        assert duplicate_threshold(model_id) == (result["threshold"], "calibrated")
        assert duplicate_threshold_info(model_id)["rule"] == result["rule"]
        assert thresholds.duplicate_threshold_file(app.config["MODEL_FOLDER"], model_id).exists()
        app.config["DUPLICATE_COSINE"] = 0.97
        assert duplicate_threshold(model_id) == (0.97, "setting")


def test_choose_duplicate_threshold_rules():
    rng = np.random.default_rng(0)
    neg = rng.normal(0.3, 0.05, 100_000)
    stats = choose_threshold(np.full(1000, 0.99), neg)
    assert stats["rule"].startswith("midpoint") and stats["recall"] == 1.0
    assert stats["negative_q9999"] < stats["threshold"] < 0.99
    overlap = choose_threshold(np.full(100, 0.4), neg)
    assert overlap["threshold"] == overlap["negative_q9999"] and overlap["recall"] == 0.0
    # Nearest neighbours of new photos score higher than random pairs: they set the bar,
    # so that at most 2% of new photos are flagged.
    nearest = rng.uniform(0.8, 0.95, 2000)
    hard = choose_threshold(rng.uniform(0.9, 1.0, 600), neg, nearest)
    assert hard["threshold"] == hard["nearest_q98"] and hard["rule"].startswith("nearest")
    assert hard["false_alarms_new_photo"] == pytest.approx(0.02, abs=0.002)
    assert 0 < hard["recall"] < 1


def test_unreadable_or_missing_duplicate_threshold_falls_back_to_the_default(tmp_path):
    assert thresholds.duplicate_threshold(tmp_path, "m") == (
        thresholds.DEFAULT_DUPLICATE_THRESHOLD,
        "default",
    )
    path = thresholds.duplicate_threshold_file(tmp_path, "m")
    path.parent.mkdir()
    path.write_text(json.dumps(["not", "a", "record"]))
    assert thresholds.duplicate_threshold(tmp_path, "m")[1] == "default"
    path.write_text(json.dumps({"threshold": 0.9}))
    assert thresholds.duplicate_threshold(tmp_path, "m") == (0.9, "calibrated")
    assert thresholds.duplicate_threshold(tmp_path, "m", configured=0.5) == (0.5, "setting")


def test_compare_threshold_job_uses_products_with_type_and_colour(app, tmp_path):
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(4, 16))
    groups = np.repeat(np.arange(4), 30)
    vectors = centres[groups] + 0.2 * rng.normal(size=(len(groups), 16))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    types = [f"t{g % 2}" for g in groups]
    colours = [None if i % 10 == 0 else f"c{g // 2}" for i, g in enumerate(groups)]
    with app.app_context():
        assert compare_threshold("tiny-model") == (app.config["COMPARE_DEFAULT_THRESHOLD"], None)
        fitted = calibrate_compare_threshold(
            "tiny-model", vectors, {"type": types, "colour": colours}, target_precision=0.9
        )
        threshold, stored = compare_threshold("tiny-model")
    assert 0 < fitted.threshold <= 1 and fitted.precision >= 0.8
    assert threshold == pytest.approx(fitted.threshold, abs=1e-6)
    assert stored["target_precision"] == 0.9
    same = {"type": ["t"] * len(groups), "colour": ["c"] * len(groups)}
    with pytest.raises(ValueError, match="same key"), app.app_context():
        calibrate_compare_threshold("other", vectors, same)
