"""``flask config``: the settings table."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from webapp.config import markdown_table

config_cli = AppGroup("config", help="Show configuration.")


@config_cli.command("table")
def config_table() -> None:
    """Print the configuration table (Markdown) that the README embeds."""
    click.echo(markdown_table())
