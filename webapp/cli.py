"""Flask CLI commands: ``flask --app wsgi catalog|user|config ...``."""

from __future__ import annotations

import csv
import sys
from typing import IO, Any

import click
from flask import Flask, current_app
from flask.cli import AppGroup

catalog_cli = AppGroup("catalog", help="Import and maintain the product catalogue.")
user_cli = AppGroup("user", help="Manage user accounts.")
config_cli = AppGroup("config", help="Show configuration.")

# How many skipped rows the import summary lists before pointing at --report.
SKIPS_SHOWN = 50
PASSWORD_MIN_LENGTH = 8


@config_cli.command("table")
def config_table() -> None:
    """Print the configuration table (Markdown) that the README embeds."""
    from webapp.config import markdown_table

    click.echo(markdown_table())


class CliProgress:
    """Progress on stderr: a bar on a terminal, a line per tenth otherwise."""

    def __init__(
        self, label: str = "Importing", noun: str = "rows", stream: IO[str] | None = None
    ) -> None:
        self.label = label
        self.noun = noun
        self.stream = stream or sys.stderr
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar: click.progressbar[int] | None = None  # type: ignore[type-arg]
        self.done = 0
        self.next_report = 0

    def __call__(self, done: int, total: int) -> None:
        """Called by the job after each batch."""
        if self.interactive:
            if self.bar is None:
                self.bar = click.progressbar(length=total, label=self.label, file=self.stream)
                self.bar.__enter__()
            self.bar.update(done - self.done)
            if done >= total:
                self.close()  # end the bar before the importer logs its summary
        elif done >= self.next_report or done == total:
            click.echo(f"{self.label}: {done}/{total} {self.noun}", file=self.stream)
            self.next_report = done + max(total // 10, 1)
        self.done = done

    def close(self) -> None:
        """Finish the bar so the summary starts on a fresh line."""
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


@catalog_cli.command("import")
@click.argument("path", type=click.Path(path_type=str))
@click.option(
    "--images",
    "image_mode",
    type=click.Choice(["inplace", "copy"]),
    default=None,
    help="Reference images where they are, or copy them into the media folder. "
    "Default: the CATALOG_IMAGE_MODE setting.",
)
@click.option(
    "--limit", type=click.IntRange(min=1), default=None, help="Import only the first N rows."
)
@click.option(
    "--report",
    type=click.Path(dir_okay=False, writable=True, path_type=str),
    default=None,
    help="Write every skipped row (line, id, reason) to this CSV file.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Rows written per database transaction.",
)
def catalog_import(
    path: str, image_mode: str | None, limit: int | None, report: str | None, batch_size: int
) -> None:
    """Import or update products from PATH: a folder with styles.csv and images/<id>.jpg."""
    from webapp.catalog.importer import import_catalog
    from webapp.catalog.parsing import CatalogError
    from webapp.extensions import db

    config = current_app.config
    mode = image_mode or config["CATALOG_IMAGE_MODE"]
    progress = CliProgress("Importing", "rows")
    try:
        result = import_catalog(
            path,
            session=db.session,
            image_mode=mode,
            media_folder=config["MEDIA_FOLDER"],
            progress=progress,
            batch_size=batch_size,
            limit=limit,
            max_image_pixels=config.get("MAX_IMAGE_PIXELS"),
        )
    except CatalogError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        progress.close()

    where = "copied to the media folder" if mode == "copy" else "referenced in place"
    click.echo(f"Imported {result.styles_path} in {result.seconds:.1f} s (images {where}).")
    for label, count in result.counts().items():
        click.echo(f"  {label + ':':<10} {count}")
    if result.skipped:
        click.echo("Skipped rows:")
        for skip in result.skipped[:SKIPS_SHOWN]:
            ident = f"id {skip.product_id}" if skip.product_id else "no id"
            click.echo(f"  line {skip.line} ({ident}): {skip.reason}")
        hidden = len(result.skipped) - SKIPS_SHOWN
        if hidden > 0:
            more = f"  ... and {hidden} more"
            click.echo(more + ("" if report else " (use --report FILE to list them all)"))
    if report:
        try:
            with open(report, "w", encoding="utf-8", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["line", "id", "reason"])
                writer.writerows([s.line, s.product_id, s.reason] for s in result.skipped)
        except OSError as exc:
            raise click.ClickException(f"cannot write the report {report}: {exc.strerror}") from exc
        click.echo(f"Skipped rows written to {report}.")


@catalog_cli.command("stats")
def catalog_stats() -> None:
    """Print product counts: total, active, with an image, in stock, per masterCategory."""
    from sqlalchemy import func
    from sqlalchemy.exc import SQLAlchemyError

    from webapp.extensions import db
    from webapp.models import Product

    count = func.count(Product.id)
    session = db.session
    try:
        _print_stats(session, count)
    except SQLAlchemyError as exc:
        raise click.ClickException(database_problem(exc)) from exc


def _print_stats(session: Any, count: Any) -> None:
    """The body of ``catalog stats``."""
    from sqlalchemy import select

    from webapp.models import Product

    totals = {
        "Products": session.scalar(select(count)),
        "Active": session.scalar(select(count).where(Product.active.is_(True))),
        "With an image": session.scalar(select(count).where(Product.image_path.is_not(None))),
        "Out of stock": session.scalar(select(count).where(Product.stock == 0)),
    }
    for label, value in totals.items():
        click.echo(f"{label + ':':<15} {value}")
    rows = session.execute(
        select(Product.master_category, count)
        .group_by(Product.master_category)
        .order_by(count.desc(), Product.master_category)
    ).all()
    if rows:
        click.echo("By masterCategory:")
        for category, value in rows:
            click.echo(f"  {category or '(none)':<20} {value}")


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
    from email_validator import EmailNotValidError, validate_email
    from sqlalchemy import func, select
    from sqlalchemy.exc import SQLAlchemyError

    from webapp.extensions import db
    from webapp.models import Role, User

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
        user.set_password(password)
        db.session.add(user)
        message = f"Created the admin account {email}."
    elif user.role == Role.ADMIN:
        user.set_password(password)
        message = f"{user.email} is already an admin; its password has been changed."
    else:
        user.role = Role.ADMIN
        user.set_password(password)
        message = f"{user.email} already had an account: it is now an admin, with the new password."
    try:
        db.session.commit()
    except SQLAlchemyError as exc:
        db.session.rollback()
        raise click.ClickException(database_problem(exc)) from exc
    click.echo(message)


def database_problem(exc: Exception) -> str:
    """A one-paragraph explanation of a database error, with the usual fix."""
    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    return (
        f"the database is not ready ({detail}). Create or update the schema with "
        "`flask --app wsgi db upgrade`."
    )


def register(app: Flask) -> None:
    """Attach the command groups to the app."""
    app.cli.add_command(catalog_cli)
    app.cli.add_command(user_cli)
    app.cli.add_command(config_cli)
