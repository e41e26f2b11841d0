"""Rate limits: sign-in and registration per account and per address, uploads per address.

Flask-Limiter does the counting (``webapp.extensions.limiter``); this module says what is
limited and how much, from the ``RATELIMIT_*`` settings, read on each request so a test or
an operator can change them without a restart of the code that declares them.

Counters live in Redis (``RATELIMIT_STORAGE_URI``, default ``REDIS_URL``) so every web
process shares them. When Redis cannot be reached, each process counts in memory until it
can again (Flask-Limiter's in-memory fallback, checked with back-off): a Redis outage turns
into neither errors nor an open door.

Sign-in limits count only failed attempts (a re-rendered form, status 400), per account
(the submitted email, whatever address it comes from: a slow distributed guess) and per
address (whatever accounts it tries). Registration counts every attempt. Uploads share one
budget per address across photo search and compare, pages and API together, and the admin's
product and bulk-import forms another.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TypeVar

from flask import Flask, Response, current_app, request

from webapp.extensions import limiter

F = TypeVar("F", bound=Callable)

SIGNIN_MESSAGE = "Too many failed sign-in attempts. Signing in is paused for a while."
REGISTER_MESSAGE = "Too many registration attempts from your address."
UPLOAD_MESSAGE = "Too many photo uploads from your address."
ADMIN_UPLOAD_MESSAGE = "Too many uploads from your address."
# Used when the counter's window cannot be read (storage failing right now).
DEFAULT_RETRY_S = 60


def init_app(app: Flask) -> None:
    """Point the limiter at the configured storage (Redis by default) and bind it."""
    cfg = app.config
    if not cfg.get("RATELIMIT_STORAGE_URI"):
        cfg["RATELIMIT_STORAGE_URI"] = cfg["REDIS_URL"]
    if str(cfg["RATELIMIT_STORAGE_URI"]).startswith(("redis://", "rediss://", "unix://")):
        # A page must never hang on a counter: Redis gets the web tier's short timeouts.
        timeout = float(cfg["REDIS_TIMEOUT"])
        cfg.setdefault(
            "RATELIMIT_STORAGE_OPTIONS",
            {"socket_timeout": timeout, "socket_connect_timeout": timeout},
        )
    app.before_request(read_form_first)
    limiter.init_app(app)


def _setting(name: str) -> Callable[[], str]:
    """The limit string of setting ``name``, read when a request is checked."""
    return lambda: str(current_app.config[name])


def account_key() -> str:
    """The account a sign-in or registration names: its email, as the forms normalise it."""
    email = request.form.get("email", "")
    return "account:" + email.strip().lower()[:254]


def read_form_first() -> None:
    """Parse the body of a view whose limit is keyed on its form before the limiter runs.

    A body over a form limit is then answered (413) here, once: were it first parsed inside
    the limiter's key function, Flask-Limiter would take the error for a failing counter
    store and fall back to counting in memory."""
    if request.method == "POST":
        view = current_app.view_functions.get(request.endpoint or "")
        if getattr(view, "limit_keys_on_form", False):
            request.form  # noqa: B018 (parse now)


def _failed_form(response: Response) -> bool:
    """A submitted form that came back with errors (wrong password, bad input)."""
    return response.status_code == 400


def signin(view: F) -> F:
    """Limit failed sign-ins per address and per account (POST only)."""
    for limit, key in (
        ("RATELIMIT_SIGNIN_ADDRESS", None),
        ("RATELIMIT_SIGNIN_ACCOUNT", account_key),
    ):
        view = limiter.limit(
            _setting(limit),
            key_func=key,
            methods=["POST"],
            deduct_when=_failed_form,
            error_message=SIGNIN_MESSAGE,
        )(view)
    view.limit_keys_on_form = True  # type: ignore[attr-defined]
    return view


def register(view: F) -> F:
    """Limit registration attempts per address and per email (POST only)."""
    for key in (None, account_key):
        view = limiter.limit(
            _setting("RATELIMIT_REGISTER"),
            key_func=key,
            methods=["POST"],
            error_message=REGISTER_MESSAGE,
        )(view)
    view.limit_keys_on_form = True  # type: ignore[attr-defined]
    return view


#: Photo search and compare uploads, pages and API: one budget per address.
uploads = limiter.shared_limit(
    _setting("RATELIMIT_UPLOADS"), scope="uploads", methods=["POST"], error_message=UPLOAD_MESSAGE
)
#: The admin's product photo and bulk-import forms: one budget per address.
admin_uploads = limiter.shared_limit(
    _setting("RATELIMIT_ADMIN_UPLOADS"),
    scope="admin-uploads",
    methods=["POST"],
    error_message=ADMIN_UPLOAD_MESSAGE,
)


def retry_after_s() -> int:
    """Seconds until the limit this request broke lets it through again (at least 1)."""
    current = limiter.current_limit
    if current is None:
        return DEFAULT_RETRY_S
    try:
        return max(1, math.ceil(current.window.reset_time - time.time()))
    except Exception:  # noqa: BLE001 - the storage failed between the check and now
        return DEFAULT_RETRY_S


def describe_wait(seconds: int) -> str:
    """A wait in the shopper's terms: "45 seconds", "about 3 minutes", "about 1 hour"."""
    if seconds < 90:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    if seconds < 90 * 60:
        return f"about {round(seconds / 60)} minutes"
    hours = round(seconds / 3600)
    return f"about {hours} hour{'s' if hours != 1 else ''}"
