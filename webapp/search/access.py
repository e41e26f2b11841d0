"""Who may read a search request: the session (or the account) that made it, and whoever
holds its share link.

A request's record carries ``owner``, a random token kept in the maker's Flask session (an
API client keeps it in its cookie jar), and ``user_id`` when the maker was signed in, so a
shopper who signs in on another device still sees their own searches. Anybody else gets the
same 404 as for an unknown id: the uploaded photo is the shopper's. The share link adds
``key``, an HMAC of the request id under the app's secret key: the owner hands it out on
purpose, and it lasts as long as the request does. Records written before owners existed
carry none and stay readable by id until they expire.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any

from flask import current_app, session
from flask_login import current_user
from itsdangerous import BadSignature, Signer

OWNER_SESSION_KEY = "search_owner"
SHARE_SALT = "search-share"


def owner_token() -> str:
    """The current session's search owner token, made on first use."""
    token = session.get(OWNER_SESSION_KEY)
    if not isinstance(token, str) or len(token) != 32:
        token = session[OWNER_SESSION_KEY] = secrets.token_hex(16)
    return token


def owner_fields() -> dict[str, Any]:
    """The fields that tie a new request to whoever makes it."""
    user_id = current_user.get_id() if current_user.is_authenticated else None
    return {"owner": owner_token(), "user_id": user_id}


def _signer() -> Signer:
    return Signer(current_app.config["SECRET_KEY"], salt=SHARE_SALT)


def share_key(request_id: str) -> str:
    """The key of a request's share link."""
    return _signer().get_signature(request_id).decode()


def valid_share_key(request_id: str, key: str | None) -> bool:
    """Whether ``key`` is the request's share key."""
    if not key:
        return False
    try:
        return _signer().verify_signature(request_id, key)
    except BadSignature:
        return False


def is_owner(record: dict[str, Any]) -> bool:
    """Whether the current session or account made the request."""
    if "owner" not in record:
        return True  # written before requests had owners
    token = session.get(OWNER_SESSION_KEY)
    if isinstance(token, str) and hmac.compare_digest(token, str(record["owner"] or "")):
        return True
    user_id = record.get("user_id")
    return bool(user_id) and current_user.is_authenticated and current_user.get_id() == user_id


def may_read(record: dict[str, Any], key: str | None = None) -> bool:
    """Whether the current caller may see the request: its owner, or with its share key."""
    return is_owner(record) or valid_share_key(record["id"], key)
