"""The shop's application factory."""

from __future__ import annotations

import logging
import os
import secrets
import sys
from typing import Any

from flask import Flask

from webapp import config as settings
from webapp import (
    models,  # noqa: F401  (registers the models and the user loader)
    ratelimit,
)
from webapp.extensions import celery_init_app, csrf, db, login_manager, migrate
from webapp.request_body import ShopRequest
from webapp.urls import product_url

logger = logging.getLogger(__name__)

PROJECT_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the Flask app: config, instance folder, extensions, blueprints, errors.

    The ``flask`` command groups are attached by ``wsgi.py`` (the ``cli`` package), so
    the web server, which serves this factory, never loads the worker's code."""
    app = Flask(
        __name__,
        instance_relative_config=True,
        template_folder="../templates",
        static_folder="../static",
    )
    # Says which body limit a 413 hit (size, number of form parts, one field's size).
    app.request_class = ShopRequest
    load_config(app, test_config)
    os.makedirs(app.instance_path, exist_ok=True)
    os.makedirs(app.config["MEDIA_FOLDER"], exist_ok=True)
    configure_logging(app)
    register_extensions(app)
    register_blueprints(app)
    register_errorhandlers(app)
    register_security_headers(app)
    register_template_context(app)
    return app


def load_config(app: Flask, test_config: dict[str, Any] | None) -> None:
    """Defaults in code, then instance/config.py, then the environment (or a test config)."""
    app.config.from_mapping(settings.defaults())
    if test_config is None:
        app.config.from_pyfile("config.py", silent=True)
        app.config.update(settings.from_environment())
    else:
        app.config.update(test_config)
    for name, derive in settings.DERIVED_DEFAULTS.items():
        if not app.config.get(name):
            app.config[name] = derive(app.instance_path)
    if not os.path.isabs(app.config["CATALOG_PATH"]):
        app.config["CATALOG_PATH"] = os.path.normpath(
            os.path.join(PROJECT_ROOT, app.config["CATALOG_PATH"])
        )
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = secrets.token_hex(32)
        app.config["SECRET_KEY_IS_EPHEMERAL"] = True
    if app.config["CATALOG_IMAGE_MODE"] not in {"inplace", "copy"}:
        raise ValueError("CATALOG_IMAGE_MODE must be 'inplace' or 'copy'")


def configure_logging(app: Flask) -> None:
    """Log once, to stdout, at the configured level."""
    root = logging.getLogger()
    if not any(getattr(h, "_shop", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._shop = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(app.config["LOG_LEVEL"])
    if app.config.get("SECRET_KEY_IS_EPHEMERAL") and not app.testing:
        logger.warning("SECRET_KEY is not set: using a random key, sessions end on restart")


def register_extensions(app: Flask) -> None:
    """Bind the unbound extensions to this app."""
    db.init_app(app)
    migrate.init_app(app, db, directory=os.path.join(PROJECT_ROOT, "migrations"))
    # Before CSRF: an upload over its limit is refused before its body is parsed.
    ratelimit.init_app(app)
    csrf.init_app(app)
    login_manager.init_app(app)
    celery_init_app(app)


def register_blueprints(app: Flask) -> None:
    """Mount every area of the site."""
    from webapp.account.views import bp as account_bp
    from webapp.admin.views import bp as admin_bp
    from webapp.api.views import bp as api_bp
    from webapp.quality.views import bp as quality_bp
    from webapp.search.views import bp as search_bp
    from webapp.shop.views import bp as shop_bp
    from webapp.taste.views import bp as taste_bp

    app.register_blueprint(shop_bp)
    app.register_blueprint(api_bp, url_prefix="/api")
    app.register_blueprint(account_bp, url_prefix="/account")
    app.register_blueprint(admin_bp, url_prefix="/admin")
    app.register_blueprint(quality_bp, url_prefix="/admin/quality")
    app.register_blueprint(search_bp, url_prefix="/search")
    app.register_blueprint(taste_bp)


def register_errorhandlers(app: Flask) -> None:
    """Friendly error pages; never a stack trace."""
    from webapp.errors import register

    register(app)


def register_security_headers(app: Flask) -> None:
    """Basic security headers on every response."""
    from webapp.security import add_security_headers

    app.after_request(add_security_headers)


def register_template_context(app: Flask) -> None:
    """Values every template can use."""
    from webapp.preferences import current_preferences

    app.add_template_global(product_url)

    @app.context_processor
    def inject() -> dict[str, Any]:
        return {"preferences": current_preferences()}
