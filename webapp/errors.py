"""Error pages: HTML for pages, JSON for /api; never a stack trace."""

from __future__ import annotations

import logging

from flask import Flask, current_app, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException, InternalServerError, RequestEntityTooLarge

from webapp import ratelimit
from webapp.extensions import db

logger = logging.getLogger(__name__)

MESSAGES = {
    400: "The request could not be understood.",
    403: "You do not have permission to see this page.",
    404: "We could not find that page.",
    405: "That action is not allowed here.",
    413: "That upload is too large.",
    429: "Too many requests. Please slow down.",
    500: "Something went wrong on our side. It has been logged.",
}


def wants_json() -> bool:
    """API clients get JSON errors; browsers get pages."""
    return request.path.startswith("/api/") or (request.accept_mimetypes.best == "application/json")


def render_error(code: int, message: str | None = None):
    """One error page or JSON body for any status code."""
    message = message or MESSAGES.get(code, "Something went wrong.")
    if wants_json():
        return jsonify(error=message, status=code), code
    try:
        return render_template("errors/error.html", code=code, message=message), code
    except Exception:  # the page itself failed (e.g. the DB is down): plain text, still no trace
        logger.exception("error page failed to render")
        return f"{code}: {message}", code, {"Content-Type": "text/plain; charset=utf-8"}


def too_large_message(exc: HTTPException) -> str:
    """Which body limit a 413 hit: a form limit names itself, else the request's size limit
    (a view may raise it, as the bulk import does)."""
    if exc.description != RequestEntityTooLarge.description:
        return str(exc.description)
    limit = request.max_content_length or current_app.config["MAX_CONTENT_LENGTH"]
    size = f"{limit / 2**20:.0f} MB" if limit >= 2**20 else f"{limit / 2**10:.0f} KB"
    return f"That upload is too large: the limit is {size}."


def too_many_requests(exc: HTTPException):
    """The 429 answer: what was limited, how long to wait, and a ``Retry-After`` header."""
    wait = ratelimit.retry_after_s()
    message = exc.description if exc.description != type(exc).description else MESSAGES[429]
    headers = {"Retry-After": str(wait)}
    if wants_json():
        return jsonify(error=message, status=429, retry_after=wait), 429, headers
    try:
        page = render_template(
            "errors/429.html", code=429, message=message, wait=ratelimit.describe_wait(wait)
        )
    except Exception:  # the page itself failed (e.g. the DB is down): plain text, still no trace
        logger.exception("error page failed to render")
        headers["Content-Type"] = "text/plain; charset=utf-8"
        return f"429: {message} Try again in {wait} seconds.", 429, headers
    return page, 429, headers


def register(app: Flask) -> None:
    """Install the handlers."""

    @app.errorhandler(CSRFError)
    def csrf_error(exc: CSRFError):
        return render_error(
            400,
            f"The form expired or was tampered with ({exc.description}). "
            "Please go back, reload the page and try again.",
        )

    @app.errorhandler(413)
    def too_large(exc: HTTPException):
        return render_error(413, too_large_message(exc))

    @app.errorhandler(429)
    def too_many(exc: HTTPException):
        return too_many_requests(exc)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = exc.code or 500
        # Our own abort(code, description) messages are meant for the user.
        custom = exc.description if exc.description != type(exc).description else None
        return render_error(code, custom)

    @app.errorhandler(Exception)
    def unhandled(exc: Exception):
        # Roll back so the next request does not inherit a broken transaction.
        db.session.rollback()
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return render_error(500)

    @app.errorhandler(InternalServerError)
    def internal(exc: InternalServerError):
        db.session.rollback()
        return render_error(500)
