"""``flask model evaluate``: retrieval quality on the catalogue's labels, beside the report's."""

from __future__ import annotations

from typing import Any

import click
from flask import Flask
from flask.cli import AppGroup

from ml.evaluation import FEATURES, REFERENCE_NAME, REFERENCE_TABLE
from ml.metrics import TOLERANCES, tolerance_key
from webapp.quality import services


def register(model_cli: AppGroup, app: Flask) -> None:
    """Add ``evaluate`` to the ``model`` group."""

    @model_cli.command("evaluate")
    @click.option(
        "--model",
        "--backbone",
        "model",
        help="Model id, or a backbone name (its stored embeddings). Default: the served model.",
    )
    @click.option(
        "--head",
        "heads",
        multiple=True,
        type=click.Choice([*services.HEADS, "all"]),
        help="What ranks: plain (the backbone embedding), colour (+ colour descriptor), "
        "projection (projections trained on the frozen embedding), tuned (the catalogue-tuned "
        "backbone). Repeat for several; default plain, plus tuned when one is tuned.",
    )
    @click.option(
        "--queries",
        type=click.Path(exists=True, file_okay=False),
        help="Kaggle-style folder (styles.csv + images/) of products NOT in the catalogue, "
        "searched as uploaded photos. Default: leave-one-out over the catalogue.",
    )
    @click.option(
        "--split",
        type=click.FloatRange(0.01, 0.5),
        help="Hold out this share of the catalogue (stratified by gender + articleType; not "
        "indexed, not trained on) and search it as uploaded photos.",
    )
    @click.option("--seed", default=0, show_default=True, help="Seed of the --split draw.")
    @click.option("--k", default=10, show_default=True, type=click.IntRange(1, 100))
    @click.option(
        "--min-type-count",
        default=services.ev.REFERENCE_MIN_TYPE_COUNT,
        show_default=True,
        type=click.IntRange(0, None),
        help="Leave-one-out: only products of articleTypes with this many images are queries "
        "(the report's rule); 0 for all.",
    )
    @click.option(
        "--colour-weight",
        default=0.3,
        show_default=True,
        type=click.FloatRange(0.0, 1.0),
        help="Share of the cosine given to the colour descriptor (head 'colour').",
    )
    @click.option(
        "--classifier",
        type=click.Choice(["heads", "projection", "ensemble"]),
        default="heads",
        show_default=True,
        help="Photo searches: narrow with the photo-search heads; for head 'projection' also "
        "with the projection's own classes ('projection') or both averaged ('ensemble'). The "
        "tuned backbone always narrows with its own heads.",
    )
    @click.option(
        "--colour-first/--no-colour-first",
        default=None,
        help="Photo searches: within the predicted type, the predicted colour first (when "
        "the classifier is confident). Default: as the shop does (SEARCH_COLOUR_FIRST).",
    )
    @click.option(
        "--latency-sample",
        default=50,
        show_default=True,
        type=click.IntRange(0, 10_000),
        help="Photo searches timed one by one (0: skip).",
    )
    @click.option("--retrain", is_flag=True, help="Retrain cached heads and projections.")
    @click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write here.")
    @click.option("--no-save", is_flag=True, help="Do not store it as the latest evaluation.")
    def evaluate_command(
        model: str | None,
        heads: tuple[str, ...],
        queries: str | None,
        split: float | None,
        seed: int,
        k: int,
        min_type_count: int,
        colour_weight: float,
        classifier: str,
        colour_first: bool | None,
        latency_sample: int,
        retrain: bool,
        json_out: str | None,
        no_save: bool,
    ) -> None:
        """Measure recommendations on the catalogue's labels: the reference report's table side
        by side with ours, precision@k, colour-match@k, mAP@k, classifier accuracy, latency."""
        if queries and split:
            raise click.UsageError("--queries and --split are two kinds of query set: pick one")
        try:
            model_id, network = services.resolve_model_and_network(model)
            default = ("plain", "tuned") if network else ("plain",)
            chosen = services.HEADS if "all" in heads else (heads or default)
            opts = services.Options(
                model_id=model_id,
                network=network,
                heads=tuple(dict.fromkeys(chosen)),
                k=k,
                min_type_count=min_type_count,
                split=split,
                seed=seed,
                queries=queries,
                colour_weight=colour_weight,
                classifier=classifier,
                colour_first=colour_first,
                latency_sample=latency_sample,
                retrain=retrain,
            )
            result = services.run(opts, say=lambda line: click.echo(line, err=True))
        except services.EvaluationError as exc:
            raise click.ClickException(str(exc)) from exc
        for line in format_result(result):
            click.echo(line)
        if not no_save or json_out:
            path = services.save_result(result, json_out, store=not no_save)
            also = f" and {json_out}" if json_out and str(path) != json_out else ""
            click.echo(f"Saved to {path}{also}.")


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
    cols = [tolerance_key(t) for t in TOLERANCES]
    for model in result["models"]:
        lines += [
            "",
            f"[{model['name']}] {model['model_id']}",
            f"  {model['description']}; ranking: {model['ranking']}",
            f"  {model['queries']} queries, {model['index']} products indexed",
            "  Performance (share of queries whose top-k error <= tolerance), ours vs "
            f"{REFERENCE_NAME}, %:",
            "  " + f"{'feature':<20}" + "".join(f"{'tol ' + c:>24}" for c in cols),
            "  " + f"{'':<20}" + "".join(f"{'ours  report    diff':>24}" for _ in cols),
        ]
        for feature in FEATURES:
            cells = []
            for c in cols:
                ours = model["table"][feature][c]
                ref = reference[feature][c]
                diff = "   n/a" if ours is None else f"{100 * (ours - ref):+6.2f}"
                cells.append(f"{_pct(ours)}  {_pct(ref)}  {diff}")
            lines.append("  " + f"{feature:<20}" + "".join(f"{cell:>24}" for cell in cells))
        p = model["precision_at_k"]
        lines.append(
            f"  precision@k: articleType {_pct(p['articleType']).strip()} %, gender "
            f"{_pct(p['gender']).strip()} %, gender+articleType "
            f"{_pct(p['gender+articleType']).strip()} %; colour-match@k "
            f"{model['colour_match_at_k']:.3f}; mAP@k (gender+articleType) {model['map_at_k']:.3f}"
        )
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
        lines.append(
            f"  time: build {model['seconds']['build']} s, rank {model['seconds']['rank']} s"
        )
    return lines
