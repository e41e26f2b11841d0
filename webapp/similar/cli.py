"""CLI for the similarity index: ``flask catalog embed|neighbours|index-status`` and
``flask model tune|check-backbone``."""

from __future__ import annotations

import os
import re
from pathlib import Path

import click
from flask import current_app
from flask.cli import AppGroup

from webapp import jobs
from webapp.cli import CliProgress
from webapp.similar.tuning import VAL_FRACTION

OFFLINE_INPUT_SIZE = 160
# What each stage of tuning is called on the terminal.
TUNE_STAGES = {
    "maps": "Feature maps",
    "colours": "Colour descriptors",
    "training": "Training",
    "embedding": "Tuned embeddings",
    "neighbours": "Neighbour lists",
}

model_cli = AppGroup(
    "model", help="Image models: backbone choice, tuning, heads, calibration, evaluation."
)


def register(catalog_cli: AppGroup, app) -> None:
    """Add the index commands to the catalog group and the model group to the app."""

    @catalog_cli.command("embed")
    @click.option("--now", is_flag=True, help="Run here instead of enqueueing for a worker.")
    def embed_command(now: bool) -> None:
        """Embed the catalogue's photos and rebuild the neighbour lists (resumable)."""
        if now:
            from webapp.similar import indexing

            summary = indexing.index_catalog(
                lambda stage: CliProgress(stage.capitalize(), "products")
            )
            click.echo(
                f"Model {summary['model']}: {summary['embedded']} embedded, "
                f"{summary['already']} already done, {summary['removed']} removed, "
                f"{summary['skipped_count']} skipped ({summary['seconds_embed']}s)."
            )
            for line in summary["skipped"][:20]:
                click.echo(f"  skipped {line}")
            verb = "rebuilt" if summary["rebuilt"] else "unchanged"
            click.echo(f"Neighbour lists {verb}: {summary['products']} products, now served.")
            return
        from worker.tasks import INDEX_JOB, ml_index_catalog

        task_id, new = jobs.enqueue_once(INDEX_JOB, ml_index_catalog.delay)
        verb = "Enqueued" if new else "Already running:"
        click.echo(
            f"{verb} index job {task_id}; `flask --app wsgi catalog index-status` shows progress."
        )

    @catalog_cli.command("neighbours")
    @click.option("--now", is_flag=True, help="Run here instead of enqueueing for a worker.")
    def neighbours_command(now: bool) -> None:
        """Rebuild every neighbour list of the configured backbone, then serve them."""
        if now:
            from webapp.similar import indexing

            model_id = indexing.load_backbone().model_id
            lists = indexing.build_neighbours(
                model_id, progress=CliProgress("Neighbours", "products")
            )
            click.echo(
                f"Neighbour lists: {lists.products} products, K={lists.k}, computed in "
                f"{lists.seconds_compute:.1f}s, written in {lists.seconds_write:.1f}s, now served."
            )
            return
        from worker.tasks import INDEX_JOB, ml_build_neighbours

        task_id, new = jobs.enqueue_once(INDEX_JOB, ml_build_neighbours.delay)
        click.echo(f"{'Enqueued' if new else 'Already running:'} neighbour job {task_id}.")

    @catalog_cli.command("index-status")
    def index_status_command() -> None:
        """Show the served model, its list count and any index job in flight."""
        from celery.result import AsyncResult

        from ml.cache import NeighbourCache
        from webapp.extensions import get_redis
        from worker.tasks import INDEX_JOB

        cache = NeighbourCache(get_redis())
        active = cache.active_model()
        click.echo(f"Served model: {active or 'none yet'}")
        if active:
            meta = cache.meta(active)
            click.echo(f"  lists: {meta.get('count')} products, K={meta.get('k')}")
        task_id = jobs.in_flight(INDEX_JOB)
        if task_id:
            res = AsyncResult(task_id)
            info = res.info if isinstance(res.info, dict) else {}
            click.echo(
                f"Job {task_id}: {res.state} {info.get('stage', '')} "
                f"{info.get('done', '')}/{info.get('total', '')}"
            )
        else:
            click.echo("No index job in flight.")

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
        if now:
            from webapp.similar import tuning

            summary = tuning.tune_catalog(
                epochs=epochs,
                val_fraction=val_fraction,
                activate=not no_activate,
                progress_for=lambda stage: CliProgress(
                    TUNE_STAGES.get(stage, stage.capitalize()),
                    "epochs" if stage == "training" else "products",
                ),
                say=lambda line: click.echo(line, err=True),
            )
            click.echo(format_tune_summary(summary))
            return
        from worker.tasks import INDEX_JOB, ml_tune_catalog

        task_id, new = jobs.enqueue_once(
            INDEX_JOB,
            lambda: ml_tune_catalog.delay(
                epochs=epochs, val_fraction=val_fraction, activate=not no_activate
            ),
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
        from ml.backbones import resnet50_weights_status

        ok, reason = resnet50_weights_status(cfg["RESNET50_WEIGHTS"])
        if ok:
            click.echo(f"Backbone: resnet50 ({reason}).")
            return
        path = os.path.join(current_app.instance_path, "config.py")
        write_setting(path, "EMBEDDING_BACKBONE", "efficientnet_lite0")
        if not cfg["EMBEDDING_INPUT_SIZE"]:
            # Catalogue photos are 60x80: at 160 px EfficientNet-Lite0 embeds about three times
            # faster on a CPU than at 224 (see README, Performance).
            write_setting(path, "EMBEDDING_INPUT_SIZE", OFFLINE_INPUT_SIZE)
        click.echo(
            f"ResNet50's ImageNet weights are not available ({reason}); using efficientnet_lite0 "
            f"instead, written to {path} (change EMBEDDING_BACKBONE there to switch back)."
        )

    app.cli.add_command(model_cli)


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
