"""Celery entry point: ``celery -A worker.celery_app worker``.

Builds the Flask app (configuration, DB) and exposes its Celery app; models are not loaded
here but lazily inside tasks, once per worker process (STYLE.md, "Models load once").
"""

from webapp import create_app

flask_app = create_app()
celery_app = flask_app.extensions["celery"]

# Importing the tasks module registers the @shared_task functions with this app.
import worker.tasks  # noqa: E402,F401
