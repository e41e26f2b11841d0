"""Accounts (placeholder)."""

from flask import Blueprint

bp = Blueprint("account", __name__)


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Sign in."""
    return "login"


@bp.post("/logout")
def logout():
    """Sign out."""
    return "logout"


@bp.route("/register", methods=["GET", "POST"])
def register():
    """Register."""
    return "register"


@bp.route("/preferences", methods=["GET", "POST"])
def preferences():
    """Preferences."""
    return "preferences"
