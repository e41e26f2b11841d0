"""The app with its command groups: ``flask --app wsgi <group> <command>``.

Commands sit above the worker (``--now`` runs a job in this process), so this module imports
the ``cli`` package. The web server serves the bare factory instead,
``gunicorn "webapp:create_app()"``, which loads no worker code.
"""

from cli import register_commands
from webapp import create_app

app = create_app()
register_commands(app)
