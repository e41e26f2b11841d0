"""``flask search``: photo search housekeeping."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from webapp.search.services import cleanup_uploads

search_cli = AppGroup("search", help="Photo search housekeeping.")


@search_cli.command("cleanup")
@click.option(
    "--older-than",
    type=click.FloatRange(0, None),
    default=None,
    help="Minutes (default: SEARCH_RETENTION_MINUTES).",
)
def cleanup_command(older_than: float | None) -> None:
    """Delete uploaded query photos older than the retention period."""
    removed = cleanup_uploads(None if older_than is None else older_than * 60)
    click.echo(f"Removed {removed} uploaded photo(s).")
