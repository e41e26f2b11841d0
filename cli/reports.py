"""How the model commands print what a job did: tuning summaries and evaluation reports."""

from __future__ import annotations

from typing import Any

from ml.evaluation import FEATURES, REFERENCE_NAME, REFERENCE_TABLE, closed_set_name
from ml.metrics import TOLERANCES, tolerance_key


# What each stage of tuning is called on the terminal.
def format_tune_summary(summary: dict) -> str:
    """What a tuning run did, for the terminal."""
    lines = [
        f"Tuned model {summary['model']} (from {summary['base_model']}): trained on "
        f"{summary['trained_on']} of {summary['products']} products in "
        f"{summary['seconds_training']:.0f} s; maps and colours {summary['seconds_maps']:.0f} s, "
        f"lists {summary['seconds_neighbours']:.0f} s, {summary['seconds']:.0f} s in all."
    ]
    names = {"sub": "subCategory", "type": "gender+articleType", "colour": "baseColour"}
    if summary["validation"]:
        figures = ", ".join(f"{names[k]} {100 * v:.2f} %" for k, v in summary["validation"].items())
        lines.append(f"Validation accuracy (products held back): {figures}.")
    if summary.get("temperatures"):
        figures = ", ".join(f"{names[k]} {v:.3g}" for k, v in summary["temperatures"].items())
        lines.append(f"Confidence temperatures (calibrated on them): {figures}.")
    if summary["compare_threshold"] is not None:
        lines.append(f"Compare threshold: score >= {summary['compare_threshold']}.")
    if summary["duplicate_threshold"] is not None:
        lines.append(f"Duplicate check: cosine >= {summary['duplicate_threshold']}.")
    lines.append(
        "Pages and photo search now use it."
        if summary["activated"]
        else "Its lists are built; the previous model is still served."
    )
    return "\n".join(lines)


def _pct(value: Any) -> str:
    return "   n/a" if value is None else f"{100 * value:6.2f}"


def format_result(result: dict[str, Any]) -> list[str]:
    """The printed report: a header, then per model the report's table beside ours."""
    m = result["machine"]
    lines = [
        f"Quality evaluation: {result['kind']}, k={result['options']['k']}",
        f"  base model {result['base_model']} · commit {result['commit']} · "
        f"{result['catalogue_products']} catalogue products",
        f"  machine {m['host']}: {m['cpu']}, {m['cores']} cores, load {m['load_average']}",
        f"  queries: {result['queries_from']}",
        f"  took {result['seconds']} s",
    ]
    reference = result.get("reference", {}).get("table", REFERENCE_TABLE)
    for model in result["models"]:
        lines += [
            "",
            f"[{model['name']}] {model['model_id']}",
            f"  {model['description']}; ranking: {model['ranking']}",
            f"  {model['queries']} queries, {model['index']} products indexed",
        ]
        lines += _table_lines(model["table"], reference)
        lines += _measure_lines(model)
    if result.get("protocol"):
        lines += _protocol_lines(result["protocol"], result["models"])
    return lines


def _protocol_lines(protocol: dict[str, Any], models: list[dict[str, Any]]) -> list[str]:
    """The published protocol's figure (top-1 articleType on the most common types) of each
    classifier, on each set of types, answered among them and among every type; the
    published figures beside them."""
    sets = protocol.get("type_sets") or {f"top {len(protocol['top_types'])} types": []}
    cols = [(closed_set_name(name), f"articleType ({name})") for name in sets]
    lines = [
        "",
        f"Protocol {protocol['name']}: trained on {protocol['kept']} products of even years, "
        f"tested on {protocol['held']} of odd years; top-1 articleType, %:",
        f"  {'':<58}" + "".join(f"{name:^28}" for name in sets),
        f"  {'classifier':<58}"
        + f"{'among them':>14}{'any type':>14}" * len(cols)
        + f"{'all types':>12}",
    ]
    for model in models:
        for name, scores in (model.get("classifier") or {}).items():
            if not any(key in scores for _, key in cols):
                continue
            cells = "".join(
                f"{_pct(scores[c]) if c in scores else 'n/a':>14}"
                f"{_pct(scores[k]) if k in scores else 'n/a':>14}"
                for c, k in cols
            )
            label = f"[{model['name']}] {name}"
            lines.append(f"  {label:<58}{cells}{_pct(scores['articleType']):>12}")
    for name, value in protocol["published"].items():
        # under the last set's "among them": the catalogue's types, as published
        lines.append(f"  {name:<58}{'':>{28 * (len(cols) - 1)}}{_pct(value):>14}")
    for name, types in sets.items():
        if types:
            lines.append(f"  {name}: {', '.join(types)}")
    lines.append(
        "  'among them': the answer chosen among the set's types, as a classifier trained on "
        "them alone answers (the published protocol); 'any type': it may name any type. The "
        "published figures are on the catalogue's top types (the 20 most common of the whole "
        "dataset), answered among them."
    )
    return lines


def _table_lines(table: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    """A model's share of queries within each tolerance, beside the reference report's."""
    cols = [tolerance_key(t) for t in TOLERANCES]
    lines = [
        "  Performance (share of queries whose top-k error <= tolerance), ours vs "
        f"{REFERENCE_NAME}, %:",
        "  " + f"{'feature':<20}" + "".join(f"{'tol ' + c:>24}" for c in cols),
        "  " + f"{'':<20}" + "".join(f"{'ours  report    diff':>24}" for _ in cols),
    ]
    for feature in FEATURES:
        cells = []
        for c in cols:
            ours = table[feature][c]
            ref = reference[feature][c]
            diff = "   n/a" if ours is None else f"{100 * (ours - ref):+6.2f}"
            cells.append(f"{_pct(ours)}  {_pct(ref)}  {diff}")
        lines.append("  " + f"{feature:<20}" + "".join(f"{cell:>24}" for cell in cells))
    return lines


def _measure_lines(model: dict[str, Any]) -> list[str]:
    """A model's other figures: precision@k, ranking alone, classifiers, levels, latency, time."""
    p = model["precision_at_k"]
    lines = [
        f"  precision@k: articleType {_pct(p['articleType']).strip()} %, gender "
        f"{_pct(p['gender']).strip()} %, gender+articleType "
        f"{_pct(p['gender+articleType']).strip()} %; colour-match@k "
        f"{model['colour_match_at_k']:.3f}; mAP@k (gender+articleType) {model['map_at_k']:.3f}"
    ]
    if model.get("ranking_only"):
        r = model["ranking_only"]
        lines.append(
            "  ranking alone (no classifier): gender+articleType tol 0 "
            f"{_pct(r['table']['gender+articleType']['0']).strip()} %, articleType tol 0.2 "
            f"{_pct(r['table']['articleType']['0.2']).strip()} %, colour-match@k "
            f"{r['colour_match_at_k']:.3f}"
        )
    for name, scores in (model.get("classifier") or {}).items():
        parts = ", ".join(f"{field} {_pct(v).strip()} %" for field, v in scores.items())
        lines.append(f"  classifier accuracy ({name}): {parts}")
    if model.get("levels"):
        lines.append(f"  search levels used: {model['levels']}")
    lat = model.get("latency") or {}
    if "p50_ms" in lat:
        lines.append(
            f"  latency: p50 {lat['p50_ms']} ms, p95 {lat['p95_ms']} ms over {lat['n']} "
            f"({lat['what']})"
        )
    elif "mean_ms" in lat:
        lines.append(f"  latency: {lat['mean_ms']} ms ({lat['what']})")
    lines.append(f"  time: build {model['seconds']['build']} s, rank {model['seconds']['rank']} s")
    return lines
