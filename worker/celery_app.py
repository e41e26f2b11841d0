"""Celery entry point: ``celery -A worker.celery_app worker``.

Builds the Flask app (configuration, DB) and exposes its Celery app. Models are not loaded
here, in the parent process, but lazily inside tasks, once per worker process: a model built
before the fork would be copied into every child, and TensorFlow does not survive a fork.
"""

from webapp import create_app

flask_app = create_app()
celery_app = flask_app.extensions["celery"]

# Importing the tasks module registers the @shared_task functions with this app.
import worker.tasks  # noqa: E402,F401
