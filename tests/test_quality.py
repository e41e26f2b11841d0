"""``flask model evaluate`` on a small labelled catalogue, and the admin Quality page."""

from __future__ import annotations

import json

from tests.conftest import save_photo, write_query_folder
from webapp.quality import services


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


# -- the page ------------------------------------------------------------------------------------


def stored_result(app, model_id="efficientnet_lite0-57934424-160-avg") -> dict:
    """A plausible stored result, written where the evaluate command writes it."""
    result = {
        "kind": "leave-one-out",
        "created_at": "2026-01-01T00:00:00+00:00",
        "commit": "abc1234",
        "seconds": 61.5,
        "machine": {"host": "box", "cpu": "Test CPU", "cores": 2, "load_average": [1.0, 1.0, 1.0]},
        "base_model": model_id,
        "catalogue_products": 41071,
        "queries_from": "catalogue products of articleTypes with >= 500 images",
        "command": "flask --app wsgi model evaluate --head all",
        "options": {"k": 10},
        "reference": {"name": "ResNet50 (reference report)", "table": services.ev.REFERENCE_TABLE},
        "models": [
            {
                "name": name,
                "model_id": f"{model_id}{suffix}",
                "ranking": "leave-one-out",
                "queries": 30000,
                "index": 41071,
                "table": {
                    f: {"0.2": base + 0.1, "0.1": base + 0.05, "0": base}
                    for f in ("articleType", "gender", "gender+articleType")
                },
                "precision_at_k": {"articleType": 0.8, "gender": 0.85, "gender+articleType": 0.7},
                "colour_match_at_k": 0.55,
                "map_at_k": 0.66,
                "classifier": {},
                "latency": {"mean_ms": 1.2, "what": "batched"},
            }
            for name, suffix, base in (("plain", "", 0.4), ("tuned", ".ft12345678", 0.9))
        ],
    }
    with app.app_context():
        services.save_result(result)
    return result


def test_quality_page_shows_tables_and_charts(app, auth, client):
    stored_result(app)
    auth.login(role="admin")
    page = client.get("/admin/quality/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Product pages (leave-one-out over the catalogue)" in html
    assert html.count("<svg") == 3  # one chart per feature
    assert html.count("<polyline") == 9  # two models + the reference, in each chart
    assert "efficientnet_lite0-57934424-160-avg.ft12345678" in html
    assert "82.21&nbsp;%" in html  # the reference row
    assert "90.00&nbsp;%" in html  # tuned, tolerance 0
    assert "flask --app wsgi model evaluate --head all" in html
    assert "<script" not in html.split("</main>")[0].split('<main id="main"')[1]
    assert "style=" not in html  # the CSP forbids inline styles


def test_quality_page_without_results_says_how_to_get_them(app, auth, client):
    auth.login(role="admin")
    html = client.get("/admin/quality/").get_data(as_text=True)
    assert "No evaluation yet" in html and "model evaluate" in html


def test_quality_page_is_for_admins_only(app, auth, client):
    anonymous = client.get("/admin/quality/")
    assert anonymous.status_code == 302 and "/account/login" in anonymous.headers["Location"]
    auth.login(role="shopper")
    assert client.get("/admin/quality/").status_code == 403


def test_chart_axis_is_round_and_text_is_escaped():
    import re

    from webapp.quality.charts import Series, line_chart

    svg = str(line_chart("a <b>", ["0", "0.1", "0.2"], [Series("x<y", [0.45, 0.58, None])]))
    # lowest point 45 % -> axis from 40 % in steps of 20 points; the gap (None) is skipped
    assert re.findall(r">(\d+)%<", svg) == ["40", "60", "80", "100"]
    assert svg.count("<circle") == 2
    assert "a &lt;b&gt;" in svg and "x&lt;y" in svg and "<b>" not in svg
