"""The feed's offline measure: ``flask model evaluate-feed`` on a small synthetic catalogue,
stored where the Quality page reads it."""

from __future__ import annotations

import json

import pytest

from tests.test_feed import MODEL, build_shop
from webapp.quality.services import latest_feed_result


def test_evaluate_feed_beats_most_viewed_and_marked_colours_recede(app, redis_db, runner):
    build_shop(app, per=8, k=20)
    result = runner.invoke(args=["model", "evaluate-feed", "--shoppers", "40", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "feed / most viewed" in result.output and "Saved to" in result.output
    with app.app_context():
        stored = latest_feed_result()
    assert stored["kind"] == "feed" and stored["base_model"] == MODEL
    assert stored["shoppers"] == 40 and stored["shoppers_with_colour"] == 20
    assert stored["catalogue_products"] == 96
    assert stored["command"].startswith("flask --app wsgi model evaluate-feed --shoppers 40")
    rec = stored["recommenders"]
    assert set(rec) == {"feed", "last_liked", "most_viewed"}
    assert rec["feed"]["hit_rate"] > rec["most_viewed"]["hit_rate"]
    assert rec["feed"]["any_hit"] >= rec["most_viewed"]["any_hit"]
    marks = stored["not_interested"]
    assert marks["shoppers"] > 0 and marks["share_after"] < marks["share_before"]
    met = stored["targets"]
    ratio = rec["feed"]["hit_rate"] / rec["most_viewed"]["hit_rate"]
    assert met["hit_rate_vs_most_viewed"] == pytest.approx(ratio, rel=1e-4)
    cut = marks["share_after"] / marks["share_before"]
    assert met["share_after_vs_before"] == pytest.approx(cut, rel=1e-4)


def test_evaluate_feed_is_on_the_quality_page(app, redis_db, runner, auth, client, tmp_path):
    build_shop(app, per=8, k=20)
    out = tmp_path / "feed.json"
    result = runner.invoke(args=["model", "evaluate-feed", "--shoppers", "10", "--json", str(out)])
    assert result.exit_code == 0, result.output
    stored = json.loads(out.read_text())
    auth.login(role="admin")
    html = client.get("/admin/quality/").get_data(as_text=True)
    assert "“For you” feed (simulated shoppers)" in html
    assert stored["command"] in html
    feed_rate = stored["recommenders"]["feed"]["hit_rate"]
    assert f"{100 * feed_rate:.2f}&nbsp;%" in html
    assert "No evaluation yet" not in html


def test_evaluate_feed_without_lists_says_what_to_do(app, redis_db, runner):
    result = runner.invoke(args=["model", "evaluate-feed"])
    assert result.exit_code != 0
    assert "catalog embed" in result.output
