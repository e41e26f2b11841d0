"""Flask CLI commands: ``flask --app wsgi catalog|user|config ...``."""

from __future__ import annotations

import click
from flask import Flask
from flask.cli import AppGroup

catalog_cli = AppGroup("catalog", help="Import and maintain the product catalogue.")
user_cli = AppGroup("user", help="Manage user accounts.")
config_cli = AppGroup("config", help="Show configuration.")


@config_cli.command("table")
def config_table() -> None:
    """Print the configuration table (Markdown) that the README embeds."""
    from webapp.config import markdown_table

    click.echo(markdown_table())


def register(app: Flask) -> None:
    """Attach the command groups to the app."""
    app.cli.add_command(catalog_cli)
    app.cli.add_command(user_cli)
    app.cli.add_command(config_cli)
