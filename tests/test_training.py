"""``flask model train``'s job (``worker.jobs.training``): heads trained on a model's stored
embeddings and the catalogue's labels, then its compare threshold calibrated."""

from __future__ import annotations

import json

import pytest

from worker.jobs import training


def test_training_saves_heads_and_the_compare_threshold_beside_the_embeddings(labelled):
    app, model_id = labelled
    lines: list[str] = []
    with app.app_context():
        trained = training.run(training.TrainOptions(min_count=2, epochs=3), say=lines.append)
    assert trained.embedded.model_id == model_id  # the served model by default
    assert len(trained.embedded.ids) == 48 and len(trained.embedded.labels["type"]) == 48
    meta = json.loads((trained.folder / "meta.json").read_text())
    assert meta["model_id"] == model_id and set(meta["validation"]) == {"sub", "type", "colour"}
    text = "\n".join(lines)
    assert "subCategory" in text and "gender+articleType" in text and "baseColour" in text
    assert f"Heads saved to {trained.folder}" in text
    assert "Compare threshold: score >=" in text
    compare = json.loads((trained.folder.parent / "compare.json").read_text())
    assert compare["model_id"] == model_id
    # The compare threshold alone (``model calibrate``), the same fit on the same pairs.
    again: list[str] = []
    with app.app_context():
        fitted = training.calibrate_compare(None, 0.9, 0, say=again.append)
    assert fitted.model_id == model_id and round(fitted.threshold, 6) == compare["threshold"]
    assert again[-1].startswith("Compare threshold: score >=")


def test_training_without_embeddings_says_what_to_do(app, redis_db):
    app.config["EMBEDDING_BACKBONE"] = "tiny"
    with app.app_context(), pytest.raises(training.TrainingError, match="embed the catalogue"):
        training.load_embedded(None)
