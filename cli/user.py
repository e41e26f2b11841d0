"""``flask user``: accounts made from the command line."""

from __future__ import annotations

import click
from email_validator import EmailNotValidError, validate_email
from flask.cli import AppGroup
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from cli.progress import database_problem
from webapp.extensions import db
from webapp.models import Role, User

user_cli = AppGroup("user", help="Manage user accounts.")

PASSWORD_MIN_LENGTH = 8


@user_cli.command("create-admin")
@click.argument("email")
@click.option(
    "--password",
    prompt=True,
    hide_input=True,
    confirmation_prompt=True,
    help="The new password (asked for twice, hidden, when not given).",
)
def user_create_admin(email: str, password: str) -> None:
    """Create a store admin, or promote an existing account and set its password."""
    # Stored trimmed and lower case, as the sign-up form does, so sign-in finds it.
    email = email.strip().lower()
    try:
        validate_email(email, check_deliverability=False)
    except EmailNotValidError as exc:
        raise click.BadParameter(str(exc), param_hint="EMAIL") from exc
    if len(password) < PASSWORD_MIN_LENGTH:
        raise click.BadParameter(
            f"the password must have at least {PASSWORD_MIN_LENGTH} characters",
            param_hint="--password",
        )
    try:
        user = db.session.scalar(select(User).where(func.lower(User.email) == email))
    except SQLAlchemyError as exc:
        raise click.ClickException(database_problem(exc)) from exc
    if user is None:
        user = User(email=email, role=Role.ADMIN)
        db.session.add(user)
        message = f"Created the admin account {email}."
    elif user.role == Role.ADMIN:
        message = f"{user.email} is already an admin; its password has been changed."
    else:
        user.role = Role.ADMIN
        message = f"{user.email} already had an account: it is now an admin, with the new password."
    user.set_password(password)
    try:
        db.session.commit()
    except SQLAlchemyError as exc:
        db.session.rollback()
        raise click.ClickException(database_problem(exc)) from exc
    click.echo(message)
