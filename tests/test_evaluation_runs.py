"""``flask model evaluate`` (``worker.jobs.evaluation``) on a small labelled catalogue."""

from __future__ import annotations

import json

from ml.wild import make_wild
from tests.conftest import save_photo, write_query_folder
from webapp.quality import services
from worker.jobs.evaluation.catalogue import load_catalogue
from worker.jobs.evaluation.runs import held_out


def test_leave_one_out_prints_the_report_table_and_stores_json(labelled, tmp_path):
    app, model_id = labelled
    out = tmp_path / "out.json"
    result = app.test_cli_runner().invoke(
        args=["model", "evaluate", "--min-type-count", "0", "--k", "5", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    text = result.output
    assert "leave-one-out" in text and model_id in text
    assert "ResNet50 (reference report)" in text
    # the report's rows, with its figures printed beside ours
    for feature, figure in (
        ("articleType", "82.21"),
        ("gender", "81.02"),
        ("gender+articleType", "67.50"),
    ):
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(feature + " "))
        assert figure in line
    data = json.loads(out.read_text())
    assert data["kind"] == "leave-one-out" and data["options"]["k"] == 5
    (model,) = data["models"]
    assert model["name"] == "plain" and model["queries"] == 48 and model["index"] == 48
    assert set(model["table"]) == {"articleType", "gender", "gender+articleType"}
    assert set(model["table"]["gender"]) == {"0.2", "0.1", "0"}
    # The photos are coloured rectangles: colour decides, and gender follows type exactly.
    assert model["table"]["gender"] == model["table"]["articleType"]
    assert 0 <= model["colour_match_at_k"] <= 1 and 0 <= model["map_at_k"] <= 1
    assert data["commit"] and data["machine"]["cores"]
    with app.app_context():
        latest = services.latest_results()
    assert latest["leave-one-out"]["created_at"] == data["created_at"]


def test_the_report_rule_keeps_only_common_article_types(labelled):
    app, _ = labelled
    result = app.test_cli_runner().invoke(
        args=["model", "evaluate", "--min-type-count", "25", "--no-save"]
    )
    # each type has 24 products: none reaches 25, so there is nothing to ask
    assert result.exit_code == 0, result.output
    assert "0 queries" in result.output


def test_held_out_split_never_indexes_the_queries(labelled, tmp_path):
    app, _ = labelled
    out = tmp_path / "split.json"
    result = app.test_cli_runner().invoke(
        args=[
            "model",
            "evaluate",
            "--split",
            "0.25",
            "--head",
            "all",
            "--k",
            "5",
            "--latency-sample",
            "3",
            "--json",
            str(out),
        ]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["kind"] == "held-out"
    assert data["split"]["held"] == 12 and data["split"]["kept"] == 36  # 25 % of each stratum
    names = [m["name"] for m in data["models"]]
    assert names == ["plain", "colour", "projection", "tuned"]
    for m in data["models"]:
        assert m["queries"] == 12 and m["index"] == 36
        assert "photo-search pipeline" in m["ranking"]
        assert m["latency"]["n"] == 3
    assert "photo-search heads" in data["models"][0]["classifier"]
    assert "projection" in data["models"][2]["classifier"]
    assert list(data["models"][3]["classifier"]) == ["the tuned backbone's heads"]
    # Colour decides these photos: adding the colour descriptor cannot make colour worse.
    assert data["models"][1]["colour_match_at_k"] >= data["models"][0]["colour_match_at_k"]
    # Same split again: the cached heads and projection are reused, the figures repeat.
    again = app.test_cli_runner().invoke(
        args=[
            "model",
            "evaluate",
            "--split",
            "0.25",
            "--head",
            "projection",
            "--k",
            "5",
            "--latency-sample",
            "0",
            "--no-save",
            "--json",
            str(tmp_path / "again.json"),
        ]
    )
    assert again.exit_code == 0, again.output
    assert "Training" not in again.output
    second = json.loads((tmp_path / "again.json").read_text())["models"][0]
    assert second["table"] == data["models"][2]["table"]
    # Both classifiers voting, the predicted colour first.
    voted = app.test_cli_runner().invoke(
        args=[
            "model",
            "evaluate",
            "--split",
            "0.25",
            "--head",
            "projection",
            "--k",
            "5",
            "--classifier",
            "ensemble",
            "--colour-first",
            "--latency-sample",
            "0",
            "--no-save",
            "--json",
            str(tmp_path / "voted.json"),
        ]
    )
    assert voted.exit_code == 0, voted.output
    third = json.loads((tmp_path / "voted.json").read_text())
    assert third["models"][0]["ranking"] == (
        "photo-search pipeline (classifier: heads + projection; predicted colour first)"
    )
    assert "--classifier ensemble --colour-first" in third["command"]
    assert "heads + projection" in third["models"][0]["classifier"]


def test_query_folder_of_products_outside_the_catalogue(labelled, tmp_path):
    app, _ = labelled
    folder = write_query_folder(tmp_path / "queries")
    result = app.test_cli_runner().invoke(
        args=[
            "model",
            "evaluate",
            "--queries",
            str(folder),
            "--k",
            "5",
            "--no-save",
            "--latency-sample",
            "2",
        ]
    )
    assert result.exit_code == 0, result.output
    assert (
        "3 photos of" in result.output
        and "1 catalogue products in the folder left out" in result.output
    )
    assert "3 queries, 48 products indexed" in result.output


def test_query_folder_must_hold_new_products(labelled, tmp_path):
    app, _ = labelled
    folder = tmp_path / "same"
    (folder / "images").mkdir(parents=True)
    save_photo(folder / "images", "2000.jpg", "Red", 1)
    (folder / "styles.csv").write_text(
        "id,gender,articleType,baseColour,subCategory\n2000,Men,Shirts,Red,Topwear\n"
    )
    result = app.test_cli_runner().invoke(args=["model", "evaluate", "--queries", str(folder)])
    assert result.exit_code != 0 and "outside the catalogue" in result.output


def test_evaluate_without_embeddings_says_what_to_do(app):
    app.config.update(EMBEDDING_BACKBONE="tiny")
    result = app.test_cli_runner().invoke(
        args=["model", "evaluate", "--model", "tiny-seed0-32-avg"]
    )
    assert result.exit_code != 0
    assert "embed" in result.output


def test_held_out_split_with_wild_photos_side_by_side(labelled, tmp_path):
    app, _ = labelled
    out = tmp_path / "wild.json"
    args = ["model", "evaluate", "--split", "0.25", "--wild", "--head", "plain"]
    args += ["--head", "colour", "--k", "5", "--latency-sample", "0", "--no-save"]
    result = app.test_cli_runner().invoke(args=[*args, "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    wild = data["wild"]
    assert "--split 0.25 --seed 0 --wild" in data["command"]
    assert [m["name"] for m in wild["models"]] == ["plain", "colour"]
    for studio, photo in zip(data["models"], wild["models"], strict=True):
        assert photo["queries"] == studio["queries"] == 12 and photo["index"] == 36
        assert "photo-search pipeline" in photo["ranking"]
    assert wild["foreground"]["applied"] and wild["foreground"]["n"] == 12
    assert "Wild photos: wild photos of the same 12 held-out products" in result.output
    assert "classifier gender+articleType" in result.output
    # The same seed makes the same photos: the figures repeat.
    again = app.test_cli_runner().invoke(args=[*args, "--json", str(tmp_path / "again.json")])
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "again.json").read_text())["wild"]["models"] == wild["models"]


def test_wild_photos_from_a_folder(labelled, tmp_path):
    app, model_id = labelled
    folder = tmp_path / "wild"
    (folder / "images").mkdir(parents=True)
    with app.app_context():
        cat = load_catalogue(model_id)
    _, held = held_out(cat.labels, 0.25, 0)
    for row in held[:5]:  # a folder may hold some of the held-out products only
        photo = make_wild(cat.photos[row], seed=7, size=(120, 160))
        (folder / "images" / f"{cat.ids[row]}.jpg").write_bytes(photo.jpeg)
    result = app.test_cli_runner().invoke(
        args=["model", "evaluate", "--split", "0.25", "--wild", str(folder), "--no-save"]
        + ["--latency-sample", "0", "--k", "5"]
    )
    assert result.exit_code == 0, result.output
    assert "same 5 held-out products (from " in result.output
    assert "5 queries, 36 products indexed" in result.output  # the studio side: the same five


def test_wild_needs_a_split(labelled):
    app, _ = labelled
    result = app.test_cli_runner().invoke(args=["model", "evaluate", "--wild"])
    assert result.exit_code != 0 and "--split" in result.output


def test_year_split_protocol_trains_on_even_years_and_asks_the_odd_ones(labelled, tmp_path):
    app, _ = labelled
    from webapp.extensions import db
    from webapp.models import Product

    with app.app_context():
        for i in range(48):  # every type and colour in both halves; one product has no year
            product = db.session.get(Product, 2000 + i)
            product.year = None if i == 47 else (2013 if (i // 2) % 4 == 3 else 2012)
        db.session.commit()
    out = tmp_path / "protocol.json"
    result = app.test_cli_runner().invoke(
        args=["model", "evaluate", "--protocol", "year-split", "--head", "plain",
              "--head", "tuned", "--k", "5", "--latency-sample", "0", "--json", str(out)]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["kind"] == "year-split"  # kept apart from --split's runs on the Quality page
    assert data["protocol"]["kept"] == 36 and data["protocol"]["held"] == 11
    assert sorted(data["protocol"]["top_types"]) == ["Jeans", "Shirts"]
    assert "--protocol year-split" in data["command"]
    for model in data["models"]:
        assert model["queries"] == 11 and model["index"] == 36
        for scores in model["classifier"].values():
            assert 0 <= scores["articleType (top 2 types)"] <= 1
            assert scores["articleType (top 2 types)"] == scores["articleType"]  # only 2 types
        for name in ("photo-search heads", "the tuned backbone's heads"):
            scores = model["classifier"].get(name)
            if scores is None:
                continue
            for types in ("top 2 types", "the catalogue's top 2 types"):
                # answered among the set's types, as the published protocol's classifier
                among = scores[f"articleType ({types}, answered among them)"]
                assert scores[f"articleType ({types})"] <= among <= 1
    assert data["protocol"]["type_sets"] == {
        "top 2 types": data["protocol"]["top_types"],
        "the catalogue's top 2 types": data["protocol"]["catalogue_top_types"],
    }
    assert "Protocol year-split: trained on 36 products of even years" in result.output
    assert "82.08" in result.output and "87.01" in result.output
    assert "among them" in result.output and "the catalogue's top 2 types" in result.output
    with app.app_context():
        assert services.latest_results()["year-split"]["created_at"] == data["created_at"]
    mixed = app.test_cli_runner().invoke(
        args=["model", "evaluate", "--protocol", "year-split", "--split", "0.2"]
    )
    assert mixed.exit_code != 0 and "--protocol" in mixed.output
