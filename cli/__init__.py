"""The ``flask`` command groups: ``flask --app wsgi <group> <command>``.

One module per group. The commands sit above the worker: with ``--now`` they run a job in
this process (``worker.jobs``), otherwise they enqueue it for a worker. The web server never
imports this package (gunicorn serves ``webapp:create_app()``).
"""

from __future__ import annotations

from flask import Flask

from cli.catalog import catalog_cli
from cli.config import config_cli
from cli.inventory import inventory_cli
from cli.model import model_cli
from cli.search import search_cli
from cli.user import user_cli

GROUPS = (catalog_cli, config_cli, inventory_cli, model_cli, search_cli, user_cli)


def register_commands(app: Flask) -> None:
    """Attach every command group to the app's ``flask`` command."""
    for group in GROUPS:
        app.cli.add_command(group)
