"""``flask model``: backbone choice, tuning, photo-search heads, compare threshold, evaluation."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import click
from flask import current_app
from flask.cli import AppGroup

from cli.progress import CliProgress
from cli.reports import format_result, format_tune_summary
from ml.backbones import resnet50_weights_status
from ml.evaluation import REFERENCE_MIN_TYPE_COUNT
from webapp import exclusive
from webapp.inventory.stage_clock import STAGE_LABELS, UNITS
from worker.jobs import evaluation, training, tuning
from worker.jobs.evaluation.feed import FeedOptions, format_feed_result, run_feed
from worker.jobs.evaluation.options import WILD_GENERATED
from worker.jobs.evaluation.wild import format_wild_result
from worker.jobs.tuning import VAL_FRACTION

# Catalogue photos are 60x80: at 160 px EfficientNet-Lite0 embeds about three times faster on
# a CPU than at 224 (README, Performance).
OFFLINE_INPUT_SIZE = 160

model_cli = AppGroup(
    "model",
    help="Image models: backbone choice, tuning, heads, compare threshold, evaluation.",
)


@model_cli.command("tune")
@click.option("--now", is_flag=True, help="Run here instead of enqueueing for a worker.")
@click.option(
    "--epochs",
    type=click.IntRange(1, 200),
    help="Training epochs (default: TUNE_EPOCHS).",
)
@click.option(
    "--val-fraction",
    default=VAL_FRACTION,
    show_default=True,
    type=click.FloatRange(0.0, 0.5),
    help="Share of the products held back to report validation accuracy and calibrate the "
    "classifiers' confidences (0: train on all, uncalibrated).",
)
@click.option(
    "--no-activate",
    is_flag=True,
    help="Build the tuned model's lists but keep serving the old.",
)
def tune_command(now: bool, epochs: int | None, val_fraction: float, no_activate: bool) -> None:
    """Fine-tune the backbone on the catalogue's labels, embed every product with it, build
    its neighbour lists and switch pages and photo search to it."""
    try:  # the settings, checked before anything runs or is enqueued
        tuning.check_settings(epochs)
    except ValueError as exc:
        raise click.ClickException(f"Cannot tune: {exc}.") from None
    if now:
        summary = tuning.tune_catalog(
            epochs=epochs,
            val_fraction=val_fraction,
            activate=not no_activate,
            progress_for=lambda stage: CliProgress(
                STAGE_LABELS.get(stage, stage).capitalize(), UNITS.get(stage, "products")
            ),
            say=_note,
        )
        click.echo(format_tune_summary(summary))
        return
    task_id, new = exclusive.enqueue_once(
        exclusive.INDEX,
        "worker.tasks.ml_tune_catalog",
        kwargs={"epochs": epochs, "val_fraction": val_fraction, "activate": not no_activate},
    )
    verb = "Enqueued" if new else "Another index job is running:"
    click.echo(f"{verb} {task_id}; `flask --app wsgi catalog index-status` shows progress.")


@model_cli.command("check-backbone")
def check_backbone_command() -> None:
    """If ResNet50's ImageNet weights cannot be had, switch this install to EfficientNet-Lite0."""
    cfg = current_app.config
    if cfg["EMBEDDING_BACKBONE"] != "resnet50":
        click.echo(f"Backbone: {cfg['EMBEDDING_BACKBONE']}.")
        return

    ok, reason = resnet50_weights_status(cfg["RESNET50_WEIGHTS"])
    if ok:
        click.echo(f"Backbone: resnet50 ({reason}).")
        return
    path = os.path.join(current_app.instance_path, "config.py")
    write_setting(path, "EMBEDDING_BACKBONE", "efficientnet_lite0")
    if not cfg["EMBEDDING_INPUT_SIZE"]:
        write_setting(path, "EMBEDDING_INPUT_SIZE", OFFLINE_INPUT_SIZE)
    click.echo(
        f"ResNet50's ImageNet weights are not available ({reason}); using efficientnet_lite0 "
        f"instead, written to {path} (change EMBEDDING_BACKBONE there to switch back)."
    )


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
    type=click.Choice([*evaluation.HEADS, "all"]),
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
@click.option(
    "--wild",
    is_flag=False,
    flag_value=WILD_GENERATED,
    metavar="[DIR]",
    help="With --split: also search shopper-like photos of the same held-out products and "
    "print both side by side; made here (seeded by --seed), or read from DIR/images/<id>.jpg "
    "(bench/make_wild_queries.py writes such a folder).",
)
@click.option(
    "--protocol",
    type=click.Choice(evaluation.PROTOCOLS),
    help="A published split instead of --split's draw: year-split trains what the shop "
    "trains on the products of even years and searches those of odd years as uploaded "
    "photos; it prints top-1 articleType on the 20 most common types beside the published "
    "figures.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the --split draw.")
@click.option(
    "--compact",
    default=0,
    type=click.IntRange(0, 4096),
    metavar="DIMS",
    help="Photo searches rank with every vector projected to its top DIMS principal "
    "directions (COMPACT_DIMS: what a catalogue past 50,000 products indexes), to compare "
    "with the full vectors (0, the default).",
)
@click.option("--k", default=10, show_default=True, type=click.IntRange(1, 100))
@click.option(
    "--min-type-count",
    default=REFERENCE_MIN_TYPE_COUNT,
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
    wild: str | None,
    protocol: str | None,
    seed: int,
    compact: int,
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
    if wild and not split:
        raise click.UsageError("--wild photographs the products --split holds out: add --split")
    if protocol and (split or queries):
        raise click.UsageError("--protocol is a query set of its own: drop --split/--queries")
    try:
        model_id, network = evaluation.resolve_model_and_network(model)
        default = ("plain", "tuned") if network else ("plain",)
        chosen = evaluation.HEADS if "all" in heads else (heads or default)
        opts = evaluation.Options(
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
            wild=wild,
            compact=compact,
            protocol=protocol,
        )
        result = evaluation.run(opts, say=_note)
    except evaluation.EvaluationError as exc:
        raise click.ClickException(str(exc)) from exc
    for line in format_result(result) + format_wild_result(result):
        click.echo(line)
    _save(result, json_out, no_save)


@model_cli.command("evaluate-feed")
@click.option(
    "--shoppers",
    default=500,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Simulated shoppers (each likes 3 products of a hidden gender + article type, half "
    "of them of one colour too).",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the shoppers' draw.")
@click.option("--k", default=12, show_default=True, type=click.IntRange(1, 50))
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write here.")
@click.option("--no-save", is_flag=True, help="Do not store it as the latest feed measure.")
def evaluate_feed_command(
    shoppers: int, seed: int, k: int, json_out: str | None, no_save: bool
) -> None:
    """Measure the "For you" feed on simulated shoppers against the served neighbour lists:
    hit rate@k against most viewed and "similar to the last liked", and what marking
    3 products of a colour "not interested" does to that colour's share. Stored for the
    admin Quality page."""
    try:
        result = run_feed(FeedOptions(shoppers, seed, k), say=_note)
    except evaluation.EvaluationError as exc:
        raise click.ClickException(str(exc)) from exc
    for line in format_feed_result(result):
        click.echo(line)
    _save(result, json_out, no_save)


@model_cli.command("train")
@click.option("--model", "model_id", help="Model id (default: the served one).")
@click.option("--epochs", default=40, show_default=True, type=click.IntRange(1, 500))
@click.option(
    "--min-count",
    default=10,
    show_default=True,
    type=click.IntRange(2, 10_000),
    help="Classes with fewer examples are merged into '(other)'.",
)
@click.option("--val-fraction", default=0.2, show_default=True, type=click.FloatRange(0.05, 0.5))
@click.option(
    "--target-precision",
    default=0.9,
    show_default=True,
    type=click.FloatRange(0.5, 0.999),
    help="Precision the compare threshold is calibrated to.",
)
@click.option("--seed", default=0, show_default=True, type=int)
def train_command(
    model_id: str | None,
    epochs: int,
    min_count: int,
    val_fraction: float,
    target_precision: float,
    seed: int,
) -> None:
    """Train the photo search heads (sub-category, gender + type, colour) and calibrate
    the compare threshold on a model's embeddings; print validation accuracy and F1."""
    opts = training.TrainOptions(model_id, epochs, min_count, val_fraction, target_precision, seed)
    try:
        training.run(opts, say=click.echo, note=_note)
    except training.TrainingError as exc:
        raise click.ClickException(str(exc)) from exc


# The options of ``calibrate-compare``, in --help order; its old name ``calibrate`` takes them too.
CALIBRATE_OPTIONS = (
    click.option("--model", "model_id", help="Model id (default: the served one)."),
    click.option(
        "--target-precision", default=0.9, show_default=True, type=click.FloatRange(0.5, 0.999)
    ),
    click.option("--seed", default=0, show_default=True, type=int),
)


def calibrate_options(command: Callable) -> Callable:
    """Add ``CALIBRATE_OPTIONS`` to a command, as if each were a decorator above it."""
    for option in reversed(CALIBRATE_OPTIONS):
        command = option(command)
    return command


@model_cli.command("calibrate-compare")
@calibrate_options
def calibrate_compare_command(model_id: str | None, target_precision: float, seed: int) -> None:
    """Calibrate the two-image compare threshold on catalogue pairs."""
    try:
        training.calibrate_compare(model_id, target_precision, seed, say=click.echo, note=_note)
    except training.TrainingError as exc:
        raise click.ClickException(str(exc)) from exc


@model_cli.command("calibrate", hidden=True)
@click.pass_context
@calibrate_options
def calibrate_command(
    ctx: click.Context, model_id: str | None, target_precision: float, seed: int
) -> None:
    """The old name of ``calibrate-compare``."""
    click.echo("`model calibrate` is now `model calibrate-compare`.", err=True)
    ctx.invoke(
        calibrate_compare_command,
        model_id=model_id,
        target_precision=target_precision,
        seed=seed,
    )


def _note(line: str) -> None:
    """Progress and warnings go to stderr, results to stdout."""
    click.echo(line, err=True)


def _save(result: dict, json_out: str | None, no_save: bool) -> None:
    """Store a measure as the latest of its kind (unless ``no_save``) and/or write it to
    ``json_out``, and say where it went."""
    if not no_save or json_out:
        path = evaluation.save_result(result, json_out, store=not no_save)
        also = f" and {json_out}" if json_out and str(path) != json_out else ""
        click.echo(f"Saved to {path}{also}.")


def write_setting(path: str, name: str, value: str | int) -> None:
    """Set ``NAME = value`` in a Python config file, replacing an existing line."""
    line = f"{name} = {value!r}\n"
    text = Path(path).read_text() if os.path.exists(path) else ""
    pattern = re.compile(rf"^{re.escape(name)}\s*=.*$\n?", re.MULTILINE)
    if pattern.search(text):
        text = pattern.sub(line, text, count=1)
    else:
        text = (text if not text or text.endswith("\n") else text + "\n") + line
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
