"""The admin Quality page: the latest stored evaluation of each kind as tables and charts."""

from __future__ import annotations

from ml.evaluation import REFERENCE_TABLE
from worker.jobs.evaluation import save_result


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
        "reference": {"name": "ResNet50 (reference report)", "table": REFERENCE_TABLE},
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
        save_result(result)
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
