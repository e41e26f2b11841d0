"""Accounts: register, sign in, sign out, and the preferences page."""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user, logout_user

from webapp import ratelimit
from webapp.account.forms import (
    PreferencesResetForm,
    PreferencesUpdateForm,
    UserLoginForm,
    UserRegisterForm,
)
from webapp.account.services import (
    EmailTakenError,
    authenticate,
    catalogue_choices,
    register_user,
    safe_next_url,
    sign_in,
)
from webapp.preferences import Preferences, current_preferences, save_preferences

bp = Blueprint("account", __name__)

# A submitted form that comes back (bad input, wrong password) is answered with 400 and
# the form re-rendered with its errors; a good one redirects (post/redirect/get).

# One message for an unknown email and a wrong password, so the form does not reveal
# which addresses have accounts.
WRONG_CREDENTIALS = "Wrong email or password."


def _next_url() -> str | None:
    """The safe ``next`` target from the query string or the submitted form."""
    return safe_next_url(request.values.get("next"))


@bp.route("/login", methods=["GET", "POST"])
@ratelimit.signin
def login() -> ResponseReturnValue:
    """Sign in with email and password, then go back where the shopper came from."""
    next_url = _next_url()
    if current_user.is_authenticated:
        return redirect(next_url or url_for("shop.catalog"))
    form = UserLoginForm()
    if form.validate_on_submit():
        user = authenticate(form.email.data, form.password.data)
        if user is None:
            form.form_errors.append(WRONG_CREDENTIALS)
        else:
            merged = sign_in(user, remember=form.remember.data)
            flash("Welcome back. You are signed in.", "success")
            if merged:
                flash(
                    "The preferences you set before signing in were added to your account.", "info"
                )
            return redirect(next_url or url_for("shop.catalog"))
    status = 400 if form.is_submitted() else 200
    return render_template("account/login.html", form=form, next_url=next_url), status


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    """Sign out (POST with a CSRF token, so another site cannot sign a shopper out)."""
    if current_user.is_authenticated:
        logout_user()
        flash("You have signed out.", "info")
    return redirect(url_for("shop.catalog"))


@bp.route("/register", methods=["GET", "POST"])
@ratelimit.register
def register() -> ResponseReturnValue:
    """Create a shopper account and sign in with it."""
    next_url = _next_url()
    if current_user.is_authenticated:
        flash("You are already signed in.", "info")
        return redirect(next_url or url_for("shop.catalog"))
    form = UserRegisterForm()
    if form.validate_on_submit():
        try:
            user = register_user(form.email.data, form.password.data)
        except EmailTakenError:
            form.email.errors.append(
                "An account with this email address already exists. Sign in instead."
            )
        else:
            merged = sign_in(user)
            flash("Your account is ready and you are signed in.", "success")
            if merged:
                flash("The preferences you set before registering were kept.", "info")
            return redirect(next_url or url_for("shop.catalog"))
    status = 400 if form.is_submitted() else 200
    return render_template("account/register.html", form=form, next_url=next_url), status


@bp.route("/preferences", methods=["GET", "POST"])
def preferences() -> ResponseReturnValue:
    """Show and save disliked colours, preferred genders and hidden categories."""
    reset_form = PreferencesResetForm()
    if "clear" in request.form:
        if reset_form.validate_on_submit():
            save_preferences(Preferences())
            flash("Your preferences were reset.", "success")
        return redirect(url_for("account.preferences"))

    choices = catalogue_choices()
    form = PreferencesUpdateForm()
    form.set_choices(choices)
    if form.validate_on_submit():
        save_preferences(form.to_preferences())
        flash("Your preferences were saved.", "success")
        return redirect(url_for("account.preferences"))
    if not form.is_submitted():
        form.fill(current_preferences())
    selected = form.selected()
    # A category group starts open when something inside it is ticked, so a shopper sees
    # what they hid without opening every group.
    open_groups = {
        group.name
        for group in choices.tree
        if group.name in selected["master"]
        or any(
            sub.name in selected["sub"] or selected["type"].intersection(sub.types)
            for sub in group.subs
        )
    }
    status = 400 if form.is_submitted() else 200
    return (
        render_template(
            "account/preferences.html",
            form=form,
            reset_form=reset_form,
            choices=choices,
            selected=selected,
            open_groups=open_groups,
        ),
        status,
    )
