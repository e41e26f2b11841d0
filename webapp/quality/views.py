"""The admin Quality page: the latest evaluation of each kind as tables and charts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, render_template
from markupsafe import Markup

from ml.evaluation import FEATURES, REFERENCE_NAME, REFERENCE_TABLE
from ml.metrics import TOLERANCES, tolerance_key
from webapp.admin.views import require_admin
from webapp.quality import services
from webapp.quality.charts import Series, legend_classes, line_chart

bp = Blueprint("quality", __name__)
# The same rule as every admin page: sign in first, admins only.
bp.before_request(require_admin)

KIND_TITLES = {
    "leave-one-out": "Product pages (leave-one-out over the catalogue)",
    "held-out": "Photo search on held-out photos (--split)",
    "queries": "Photo search on a query folder (--queries)",
    "year-split": "Photo search, the published protocol: even years trained on, odd years "
    "searched (--protocol year-split)",
}
# Charts read left to right from strict to lenient.
CHART_TOLERANCES = tuple(sorted(TOLERANCES))


@dataclass
class ReportView:
    """What the template shows for one stored evaluation."""

    kind: str
    title: str
    result: dict[str, Any]
    charts: list[Markup] = field(default_factory=list)
    legend: list[tuple[str, str]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)


def report_view(kind: str, result: dict[str, Any]) -> ReportView:
    """Tables and charts for one result."""
    reference = result.get("reference", {}).get("table", REFERENCE_TABLE)
    view = ReportView(kind, KIND_TITLES.get(kind, kind), result)
    x_labels = [tolerance_key(t) for t in CHART_TOLERANCES]
    for feature in FEATURES:
        series = [
            Series(
                f"{m['name']} ({m['model_id']})",
                [m["table"][feature].get(x) for x in x_labels],
            )
            for m in result.get("models", [])
        ]
        series.append(Series(REFERENCE_NAME, [reference[feature][x] for x in x_labels], True))
        view.charts.append(line_chart(f"{feature}: performance by tolerance", x_labels, series))
        if not view.legend:
            view.legend = legend_classes(series)
    for m in result.get("models", []):
        view.rows.append(
            {
                "model": m,
                "cells": [
                    (feature, key, m["table"][feature].get(key), reference[feature][key])
                    for feature in FEATURES
                    for key in (tolerance_key(t) for t in TOLERANCES)
                ],
            }
        )
    return view


@bp.get("/")
def quality_report():
    """The latest stored evaluations: the report's table beside ours, other metrics, charts;
    and the latest offline measure of the "For you" feed."""
    results = services.latest_results()
    reports = [report_view(kind, results[kind]) for kind in services.KINDS if kind in results]
    return render_template(
        "admin/quality.html",
        reports=reports,
        feed=services.latest_feed_result(),
        features=FEATURES,
        tolerances=[tolerance_key(t) for t in TOLERANCES],
        reference_name=REFERENCE_NAME,
    )
