"""``flask inventory``: the duplicate check's threshold and the catalogue's duplicate groups."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from webapp import registry
from webapp.inventory import duplicates
from worker.jobs import thresholds

inventory_cli = AppGroup("inventory", help="Store inventory: duplicate photos.")


@inventory_cli.command("calibrate-duplicates")
def calibrate_duplicates_command() -> None:
    """Calibrate the near-duplicate threshold of the served model here and now."""
    try:
        result = thresholds.calibrate_duplicate_threshold(
            backbone=registry.load_backbone(), copies=200
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    for key, value in result.items():
        click.echo(f"{key}: {value}")


@inventory_cli.command("calibrate", hidden=True)
@click.pass_context
def calibrate_command(ctx: click.Context) -> None:
    """The old name of ``calibrate-duplicates``."""
    click.echo("`inventory calibrate` is now `inventory calibrate-duplicates`.", err=True)
    ctx.invoke(calibrate_duplicates_command)


@inventory_cli.command("duplicate-groups")
def duplicate_groups_command() -> None:
    """Count the catalogue's groups of byte-identical photos."""
    _groups, total_groups, total_products = duplicates.identical_groups(1, 1)
    click.echo(f"{total_groups} groups of byte-identical photos, {total_products} products")
