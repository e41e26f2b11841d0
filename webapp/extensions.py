"""Extensions, created unbound and bound to the app in create_app()."""

from __future__ import annotations

import redis
from celery import Celery, Task
from flask import Flask, current_app
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf import CSRFProtect
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    """Declarative base for the typed SQLAlchemy 2.0 models."""


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
csrf = CSRFProtect()
login_manager = LoginManager()
login_manager.login_view = "account.login"
login_manager.login_message = "Please sign in to see that page."
login_manager.login_message_category = "info"
# Limits are declared by the views (webapp.ratelimit), keyed by client address unless a limit
# says otherwise. Fixed here, not per app: no X-RateLimit headers on every page (the 429
# answer carries Retry-After), and a failing counter store never fails a request.
limiter = Limiter(
    key_func=get_remote_address,
    strategy="fixed-window",
    headers_enabled=False,
    swallow_errors=True,
    in_memory_fallback_enabled=True,
    key_prefix="shop",
)


def get_redis():
    """The app's Redis client, created on first use with short timeouts (pages must not hang)."""
    client = current_app.extensions.get("redis")
    if client is None:
        timeout = current_app.config["REDIS_TIMEOUT"]
        client = redis.Redis.from_url(
            current_app.config["REDIS_URL"],
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        current_app.extensions["redis"] = client
    return client


def send_task(name: str, args: tuple = (), kwargs: dict | None = None, **options: object):
    """Enqueue the worker task registered under ``name`` (``worker.tasks.<function>``).

    The web tier sends work by name and never imports the worker's code; the queue comes
    from the Celery app's routes by task name. ``options`` are Celery's (e.g. ``task_id``).
    """
    celery_app = current_app.extensions["celery"]
    return celery_app.send_task(name, args=args, kwargs=kwargs or {}, **options)


def celery_init_app(app: Flask) -> Celery:
    """Bind a Celery app to this Flask app (Flask docs' pattern): tasks run in an app context."""

    class FlaskTask(Task):
        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object(
        {
            "broker_url": app.config["REDIS_URL"],
            "result_backend": app.config["REDIS_URL"],
            "task_ignore_result": True,
            "task_default_queue": "default",
            # Model work runs on its own queue so page-facing tasks never wait behind it, and
            # catalogue-wide builds on theirs, so a photo search never waits behind a build.
            "task_routes": {
                "worker.tasks.ml_index_catalog": {"queue": "index"},
                "worker.tasks.ml_build_neighbours": {"queue": "index"},
                "worker.tasks.ml_tune_catalog": {"queue": "index"},
                "worker.tasks.ml_heal_index": {"queue": "index"},
                "worker.tasks.ml_index_import": {"queue": "index"},
                "worker.tasks.ml_calibrate_duplicates": {"queue": "index"},
                "worker.tasks.ml_build_shard": {"queue": "index"},
                "worker.tasks.ml_*": {"queue": "ml"},
            },
            "task_acks_late": True,
            # A message unacknowledged this long is handed to another worker: longer than the
            # longest job (tuning the backbone on a 2-core machine takes up to an hour).
            "broker_transport_options": {"visibility_timeout": 4 * 3600},
            "task_reject_on_worker_lost": True,
            "worker_prefetch_multiplier": 1,
            "broker_connection_retry_on_startup": True,
            "result_expires": 3600,
        }
    )
    celery_app.conf.update(app.config.get("CELERY", {}))
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app
