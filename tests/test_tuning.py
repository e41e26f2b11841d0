"""``flask model tune``: the catalogue-tuned backbone trained, embedded, listed and served."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from ml.store import EmbeddingStore
from ml.tuned.config import base_model_id, is_tuned_id
from ml.tuned.network import TunedBackbone
from tests.conftest import add_product, save_photo, write_query_folder
from webapp import exclusive, registry
from webapp.preferences import Preferences
from worker import tasks
from worker.jobs import indexing, photo_search


@pytest.fixture
def tuned(labelled):
    """The labelled catalogue with a backbone tuned on it (3 epochs) and served."""
    app, base_id = labelled
    app.config.update(EMBEDDING_TUNED="auto", TUNE_EPOCHS=3)
    result = app.test_cli_runner().invoke(args=["model", "tune", "--now"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        model_id = registry.neighbour_cache().active_model()
    return app, base_id, model_id, result.output


def test_tune_trains_embeds_lists_and_switches(tuned):
    app, base_id, model_id, output = tuned
    assert is_tuned_id(model_id) and base_model_id(model_id) == base_id
    assert f"Tuned model {model_id} (from {base_id})" in output
    assert "Validation accuracy (products held back)" in output
    assert "Confidence temperatures (calibrated on them): subCategory" in output
    assert "epoch 3/3" in output  # progress per epoch
    assert "Pages and photo search now use it." in output
    with app.app_context():
        store = registry.store_for(model_id)
        assert len(store) == 48
        meta = registry.neighbour_cache().meta(model_id)
        assert meta["complete"] == "1" and meta["count"] == "48"
        folder = store.path
        assert (folder / "network" / "meta.json").exists()
        heads = json.loads((folder / "heads" / "meta.json").read_text())
        assert heads["model_id"] == model_id and sorted(heads["heads"]) == ["colour", "sub", "type"]
        # the maps and colour descriptors are kept for the next tuning
        maps = [p.name for p in Path(app.config["MODEL_FOLDER"]).iterdir() if ".maps-" in p.name]
        assert maps == [f"{base_id}.maps-conv1-v2"]
        # the workers' embedder is now the tuned one; the plain one stays reachable
        embedder = registry.load_backbone()
        assert isinstance(embedder, TunedBackbone) and embedder.model_id == model_id
        assert registry.load_backbone(tuned=False).model_id == base_id
    # product pages serve the tuned lists
    answer = app.test_client().get("/api/products/2000/similar?n=4").get_json()
    assert answer["model"] == model_id and len(answer["items"]) == 4


def test_the_tuned_model_embeds_a_photo_as_its_stored_maps_do(tuned):
    app, _, model_id, _ = tuned
    with app.app_context():
        embedder = registry.backbone_for(model_id)
        stored = registry.store_for(model_id).get([2000, 2001])
        media = Path(app.config["MEDIA_FOLDER"])
        fresh = embedder.embed([media / "q0.jpg", media / "q1.jpg"])
    assert np.min(np.sum(stored * fresh, axis=1)) > 0.999


def test_setting_chooses_tuned_plain_or_a_named_network(tuned):
    app, base_id, model_id, _ = tuned
    with app.app_context():
        app.config["EMBEDDING_TUNED"] = "off"
        assert registry.load_backbone().model_id == base_id
        app.config["EMBEDDING_TUNED"] = model_id
        assert registry.load_backbone().model_id == model_id
        app.config["EMBEDDING_TUNED"] = base_id + ".ft00000000"
        with pytest.raises(registry.ModelUnavailable, match="model tune"):
            registry.load_backbone()
        app.config["EMBEDDING_TUNED"] = "efficientnet_lite0-57934424-160-avg.ft12345678"
        with pytest.raises(registry.ModelUnavailable, match="not tuned from the configured"):
            registry.load_backbone()
        with pytest.raises(registry.ModelUnavailable, match="cannot be loaded here"):
            registry.backbone_for(base_id + ".ft00000000")


def test_a_new_product_reaches_the_tuned_lists(tuned, tmp_path):
    app, _, model_id, _ = tuned
    with app.app_context():
        add_product(
            id=2100,
            name="New red shirt",
            base_colour="Red",
            image_path=save_photo(tmp_path / "media", "new.jpg", "Red", 99),
        )
        report = indexing.update_product(2100)
        assert report.action == "embedded" and 2100 in report.rewritten
        assert 2100 in registry.store_for(model_id).ids()
        ids, _ = registry.neighbour_cache().read_index(model_id)
        assert 2100 in ids.tolist()


def test_photo_search_uses_the_tuned_model_and_its_heads(tuned, tmp_path):
    app, _, model_id, _ = tuned
    with app.app_context():
        relative = "search-uploads/query.jpg"
        save_photo(Path(app.config["MEDIA_FOLDER"]), relative, "Blue", 7)
        result = photo_search.search_photo(relative, Preferences(), 6)
    assert result["model"] == model_id
    assert result["heads"] and result["heads"].startswith("heads")
    assert len(result["items"]) == 6
    fields = {p["field"] for p in result["predictions"]}
    assert {"gender", "article_type", "sub_category", "base_colour"} <= fields


def test_evaluation_scores_the_tuned_backbone_beside_the_plain_one(tuned, tmp_path):
    app, base_id, model_id, _ = tuned
    runner = app.test_cli_runner()
    out = tmp_path / "loo.json"
    result = runner.invoke(
        args=["model", "evaluate", "--min-type-count", "0", "--k", "5", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert [m["name"] for m in data["models"]] == ["plain", "tuned"]
    assert data["models"][1]["model_id"] == model_id and data["base_model"] == base_id
    assert "its stored embeddings" in result.output  # leave-one-out reads what pages serve
    assert f"--model {model_id}" in data["command"]

    split = tmp_path / "split.json"
    result = runner.invoke(
        args=[
            "model",
            "evaluate",
            "--split",
            "0.25",
            "--head",
            "tuned",
            "--k",
            "5",
            "--latency-sample",
            "2",
            "--json",
            str(split),
        ]
    )
    assert result.exit_code == 0, result.output
    # trained on the 36 kept products only (never on the held-out 12), a share of them held
    # back to validate and calibrate, as `model tune` does
    tuned = re.search(
        r"Tuning the backbone on (\d+) products \((\d+) of the kept ones held back", result.output
    )
    assert tuned and int(tuned[1]) + int(tuned[2]) == 36 and int(tuned[2]) > 0
    (model,) = json.loads(split.read_text())["models"]
    assert model["queries"] == 12 and model["index"] == 36
    assert model["model_id"] != model_id  # a network of its own, trained on the kept rows
    assert "the tuned backbone's heads" in model["classifier"]
    assert model["latency"]["n"] == 2
    again = runner.invoke(
        args=["model", "evaluate", "--split", "0.25", "--head", "tuned", "--k", "5", "--no-save"]
    )
    assert again.exit_code == 0 and "Tuning the backbone" not in again.output  # cached


def test_a_query_folder_is_embedded_by_the_tuned_backbone(tuned, tmp_path):
    app, _, model_id, _ = tuned
    folder = write_query_folder(tmp_path / "queries")
    out = tmp_path / "queries.json"
    result = app.test_cli_runner().invoke(
        args=[
            "model",
            "evaluate",
            "--queries",
            str(folder),
            "--head",
            "tuned",
            "--k",
            "5",
            "--latency-sample",
            "0",
            "--no-save",
            "--json",
            str(out),
        ]
    )
    assert result.exit_code == 0, result.output
    assert f"Embedding 3 query photos with {model_id}" in result.output
    (model,) = json.loads(out.read_text())["models"]
    assert model["model_id"] == model_id and model["queries"] == 3 and model["index"] == 48
    assert "the tuned backbone's heads" in model["classifier"]


def test_index_job_queues_the_first_tuning_once(labelled, redis_db):
    app, _ = labelled

    with app.app_context():
        app.config["EMBEDDING_TUNED"] = "off"
        summary = tasks.ml_index_catalog.apply().get()
        assert "tuning_job" not in summary
        app.config["EMBEDDING_TUNED"] = "auto"
        summary = tasks.ml_index_catalog.apply().get()
        assert summary["tuning_job"] == exclusive.in_flight(exclusive.INDEX)
        # the tuning waits on the index queue for a worker, under the one-at-a-time marker
        assert redis_db.llen("index") == 1
        message = json.loads(redis_db.lindex("index", 0))
        assert message["headers"]["task"] == "worker.tasks.ml_tune_catalog"


def test_tuning_on_shopper_like_views_keeps_them_for_the_next_run(labelled):
    app, base_id = labelled
    app.config.update(EMBEDDING_TUNED="auto", TUNE_EPOCHS=1, TUNE_SHOPPER_VIEWS=1)
    result = app.test_cli_runner().invoke(args=["model", "tune", "--now"])
    assert result.exit_code == 0, result.output
    assert "Shopper-like views: 1 of each photo" in result.output
    folder = Path(app.config["MODEL_FOLDER"]) / f"{base_id}.shoppers-conv1-1-v1"
    with app.app_context():
        model_id = registry.neighbour_cache().active_model()
        network = registry.load_backbone().network
        assert network.config.shopper_views == 1 and is_tuned_id(model_id)
        stored = EmbeddingStore(app.config["MODEL_FOLDER"], folder.name, dtype=np.float16)
        assert len(stored) == 48
    before = {p.name: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
    again = app.test_cli_runner().invoke(args=["model", "tune", "--now"])
    assert again.exit_code == 0, again.output
    # nothing changed in the catalogue: the stored views are used as they are
    assert {p.name: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()} == before


def test_an_unknown_cut_layer_is_a_clear_error(labelled):
    app, _ = labelled
    app.config.update(EMBEDDING_TUNED="auto", TUNE_CUT="no_such_layer")
    result = app.test_cli_runner().invoke(args=["model", "tune", "--now"])
    assert result.exit_code != 0
    assert "has no layer 'no_such_layer'" in result.output
    assert "Traceback" not in result.output


def test_an_unknown_precision_is_a_clear_error(labelled):
    app, _ = labelled
    app.config.update(EMBEDDING_TUNED="auto", TUNE_PRECISION="float16")
    result = app.test_cli_runner().invoke(args=["model", "tune", "--now"])
    assert result.exit_code != 0
    assert "TUNE_PRECISION" in result.output and "float16" in result.output
    assert "Traceback" not in result.output


def test_a_shopper_share_outside_zero_to_one_is_a_clear_error(labelled):
    app, _ = labelled
    app.config.update(EMBEDDING_TUNED="auto", TUNE_SHOPPER_VIEWS=1, TUNE_SHOPPER_SHARE=1.5)
    result = app.test_cli_runner().invoke(args=["model", "tune", "--now"])
    assert result.exit_code != 0
    assert "TUNE_SHOPPER_SHARE" in result.output and "shopper_share" in result.output
    assert "Traceback" not in result.output
