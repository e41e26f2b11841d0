"""``flask catalog``: import the catalogue, count it, embed it and build its neighbour lists."""

from __future__ import annotations

import csv
from typing import Any

import click
from celery.result import AsyncResult
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from cli.progress import CliProgress, database_problem
from webapp import exclusive, registry
from webapp.catalog.importer import import_catalog
from webapp.catalog.parsing import CatalogError
from webapp.extensions import db
from webapp.inventory.stage_clock import describe
from webapp.models import Product
from worker.jobs import indexing

catalog_cli = AppGroup("catalog", help="Import and maintain the product catalogue.")

# How many skipped rows the import summary lists before pointing at --report.
SKIPS_SHOWN = 50


@catalog_cli.command("import")
@click.argument("path", type=click.Path(path_type=str))
@click.option(
    "--images",
    "image_mode",
    type=click.Choice(["inplace", "copy"]),
    default=None,
    help="Reference images where they are, or copy them into the media folder. "
    "Default: the CATALOG_IMAGE_MODE setting.",
)
@click.option(
    "--limit", type=click.IntRange(min=1), default=None, help="Import only the first N rows."
)
@click.option(
    "--report",
    type=click.Path(dir_okay=False, writable=True, path_type=str),
    default=None,
    help="Write every skipped row (line, id, reason) to this CSV file.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Rows written per database transaction.",
)
def catalog_import(
    path: str, image_mode: str | None, limit: int | None, report: str | None, batch_size: int
) -> None:
    """Import or update products from PATH: a folder with styles.csv and images/<id>.jpg."""
    config = current_app.config
    mode = image_mode or config["CATALOG_IMAGE_MODE"]
    progress = CliProgress("Importing", "rows")
    try:
        result = import_catalog(
            path,
            session=db.session,
            image_mode=mode,
            media_folder=config["MEDIA_FOLDER"],
            progress=progress,
            batch_size=batch_size,
            limit=limit,
            max_image_pixels=config.get("MAX_IMAGE_PIXELS"),
        )
    except CatalogError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        progress.close()

    where = "copied to the media folder" if mode == "copy" else "referenced in place"
    click.echo(f"Imported {result.styles_path} in {result.seconds:.1f} s (images {where}).")
    for label, count in result.counts().items():
        click.echo(f"  {label + ':':<10} {count}")
    _print_skipped(result.skipped, report)


def _print_skipped(skipped: list, report: str | None) -> None:
    """List the first skipped rows; write them all to ``report`` when asked."""
    if skipped:
        click.echo("Skipped rows:")
        for skip in skipped[:SKIPS_SHOWN]:
            ident = f"id {skip.product_id}" if skip.product_id else "no id"
            click.echo(f"  line {skip.line} ({ident}): {skip.reason}")
        hidden = len(skipped) - SKIPS_SHOWN
        if hidden > 0:
            more = f"  ... and {hidden} more"
            click.echo(more + ("" if report else " (use --report FILE to list them all)"))
    if report:
        try:
            with open(report, "w", encoding="utf-8", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["line", "id", "reason"])
                writer.writerows([s.line, s.product_id, s.reason] for s in skipped)
        except OSError as exc:
            raise click.ClickException(f"cannot write the report {report}: {exc.strerror}") from exc
        click.echo(f"Skipped rows written to {report}.")


@catalog_cli.command("stats")
def catalog_stats() -> None:
    """Print product counts: total, active, with an image, in stock, per masterCategory."""
    try:
        _print_stats(db.session, func.count(Product.id))
    except SQLAlchemyError as exc:
        raise click.ClickException(database_problem(exc)) from exc


def _print_stats(session: Any, count: Any) -> None:
    """The body of ``catalog stats``."""
    totals = {
        "Products": session.scalar(select(count)),
        "Active": session.scalar(select(count).where(Product.active.is_(True))),
        "With an image": session.scalar(select(count).where(Product.image_path.is_not(None))),
        "Out of stock": session.scalar(select(count).where(Product.stock == 0)),
    }
    for label, value in totals.items():
        click.echo(f"{label + ':':<15} {value}")
    rows = session.execute(
        select(Product.master_category, count)
        .group_by(Product.master_category)
        .order_by(count.desc(), Product.master_category)
    ).all()
    if rows:
        click.echo("By masterCategory:")
        for category, value in rows:
            click.echo(f"  {category or '(none)':<20} {value}")


@catalog_cli.command("embed")
@click.option("--now", is_flag=True, help="Run here instead of enqueueing for a worker.")
def embed_command(now: bool) -> None:
    """Embed the catalogue's photos and rebuild the neighbour lists (resumable)."""
    if not now:
        task_id, new = exclusive.enqueue_once(exclusive.INDEX, "worker.tasks.ml_index_catalog")
        verb = "Enqueued" if new else "Already running:"
        click.echo(
            f"{verb} index job {task_id}; `flask --app wsgi catalog index-status` shows progress."
        )
        return
    summary = indexing.index_catalog(lambda stage: CliProgress(stage.capitalize(), "products"))
    click.echo(
        f"Model {summary['model']}: {summary['embedded']} embedded, "
        f"{summary['already']} already done, {summary['removed']} removed, "
        f"{summary['skipped_count']} skipped ({summary['seconds_embed']}s)."
    )
    for line in summary["skipped"][:20]:
        click.echo(f"  skipped {line}")
    verb = "rebuilt" if summary["rebuilt"] else "unchanged"
    click.echo(f"Neighbour lists {verb}: {summary['products']} products, now served.")


@catalog_cli.command("neighbours")
@click.option("--now", is_flag=True, help="Run here instead of enqueueing for a worker.")
def neighbours_command(now: bool) -> None:
    """Rebuild every neighbour list of the configured backbone, then serve them."""
    if not now:
        task_id, new = exclusive.enqueue_once(exclusive.INDEX, "worker.tasks.ml_build_neighbours")
        click.echo(f"{'Enqueued' if new else 'Already running:'} neighbour job {task_id}.")
        return
    model_id = registry.load_backbone().model_id
    lists = indexing.build_neighbours(model_id, progress=CliProgress("Neighbours", "products"))
    click.echo(
        f"Neighbour lists: {lists.products} products, K={lists.k}, computed in "
        f"{lists.seconds_compute:.1f}s, written in {lists.seconds_write:.1f}s, now served."
    )


@catalog_cli.command("index-status")
def index_status_command() -> None:
    """Show the served model, its list count and any index job in flight."""
    cache = registry.neighbour_cache()
    active = cache.active_model()
    click.echo(f"Served model: {active or 'none yet'}")
    if active:
        meta = cache.meta(active)
        click.echo(f"  lists: {meta.get('count')} products, K={meta.get('k')}")
    task_id = exclusive.in_flight(exclusive.INDEX)
    if not task_id:
        click.echo("No index job in flight.")
        return
    res = AsyncResult(task_id)
    info = res.info if isinstance(res.info, dict) else {}
    told = describe(info) if res.state == "PROGRESS" else None
    if told is None:
        where = (
            f" {info['stage']} {info.get('done')}/{info.get('total')}" if "stage" in info else ""
        )
        click.echo(f"Job {task_id}: {res.state}{where}")
        return
    click.echo(f"Job {task_id}: {res.state} {told['doing']}")
    click.echo(f"  this stage: {told['stage_left']}")
    click.echo(f"  whole job: {told['total_left']}; running for {told['elapsed']}")
