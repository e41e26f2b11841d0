"""CLI commands: user create-admin, catalog stats, config table."""

from __future__ import annotations

import io

from sqlalchemy import select

from cli.progress import CliProgress
from tests.conftest import add_product
from webapp.extensions import db
from webapp.models import Role, User


def find_user(app, email: str) -> User | None:
    with app.app_context():
        user = db.session.scalar(select(User).where(User.email == email))
        if user is not None:
            db.session.expunge(user)
        return user


def test_create_admin_with_password_option(any_db_app):
    runner = any_db_app.test_cli_runner()
    result = runner.invoke(
        args=["user", "create-admin", "  Boss@Example.COM ", "--password", "s3cret-pass"]
    )

    assert result.exit_code == 0, result.output
    assert "Created the admin account boss@example.com." in result.output
    user = find_user(any_db_app, "boss@example.com")
    assert user is not None and user.role == Role.ADMIN and user.is_admin
    assert user.check_password("s3cret-pass")
    assert user.password_hash != "s3cret-pass"


def test_create_admin_prompts_twice_without_echo(app):
    result = app.test_cli_runner().invoke(
        args=["user", "create-admin", "owner@example.com"], input="long-password\nlong-password\n"
    )
    assert result.exit_code == 0, result.output
    assert "long-password" not in result.output  # hidden input
    assert "Repeat for confirmation" in result.output
    assert find_user(app, "owner@example.com").check_password("long-password")


def test_create_admin_prompt_rejects_a_mismatch_then_accepts(app):
    result = app.test_cli_runner().invoke(
        args=["user", "create-admin", "owner@example.com"],
        input="first-password\nother-password\nlong-password\nlong-password\n",
    )
    assert result.exit_code == 0, result.output
    assert "do not match" in result.output
    assert find_user(app, "owner@example.com").check_password("long-password")


def make_user(app, email: str, password: str, role: Role) -> None:
    with app.app_context():
        user = User(email=email, role=role)
        user.set_password(password)
        db.session.add(user)
        db.session.commit()


def test_create_admin_promotes_an_existing_shopper(any_db_app):
    make_user(any_db_app, "shopper@example.com", "old-password", Role.SHOPPER)
    result = any_db_app.test_cli_runner().invoke(
        args=["user", "create-admin", "SHOPPER@example.com", "--password", "new-password"]
    )

    assert result.exit_code == 0, result.output
    assert "it is now an admin" in result.output
    user = find_user(any_db_app, "shopper@example.com")
    assert user.role == Role.ADMIN
    assert user.check_password("new-password") and not user.check_password("old-password")
    with any_db_app.app_context():
        assert db.session.scalar(select(db.func.count(User.id))) == 1


def test_create_admin_on_an_existing_admin_changes_the_password(app):
    make_user(app, "admin@example.com", "old-password", Role.ADMIN)
    result = app.test_cli_runner().invoke(
        args=["user", "create-admin", "admin@example.com", "--password", "new-password"]
    )
    assert "is already an admin; its password has been changed" in result.output
    assert find_user(app, "admin@example.com").check_password("new-password")


def test_create_admin_rejects_a_bad_email_and_a_short_password(app):
    runner = app.test_cli_runner()
    bad_email = runner.invoke(args=["user", "create-admin", "not-an-email", "--password", "x" * 12])
    assert bad_email.exit_code == 2
    assert "Invalid value for EMAIL" in bad_email.output
    assert "Traceback" not in bad_email.output

    short = runner.invoke(args=["user", "create-admin", "a@example.com", "--password", "short"])
    assert short.exit_code == 2
    assert "at least 8 characters" in short.output
    with app.app_context():
        assert db.session.scalar(select(db.func.count(User.id))) == 0


def test_create_admin_without_schema_explains_the_fix(app):
    with app.app_context():
        db.drop_all()
    result = app.test_cli_runner().invoke(
        args=["user", "create-admin", "a@example.com", "--password", "long-password"]
    )
    assert result.exit_code == 1
    assert "db upgrade" in result.output and "Traceback" not in result.output


def test_catalog_stats_counts_products(app):
    with app.app_context():
        add_product(id=1, master_category="Apparel", image_path="catalog/1.jpg", stock=0)
        add_product(id=2, master_category="Apparel", active=False)
        add_product(id=3, master_category="Footwear", image_path="catalog/3.jpg")
    result = app.test_cli_runner().invoke(args=["catalog", "stats"])

    assert result.exit_code == 0, result.output
    lines = [" ".join(line.split()) for line in result.output.splitlines()]
    assert "Products: 3" in lines
    assert "Active: 2" in lines
    assert "With an image: 2" in lines
    assert "Out of stock: 1" in lines
    assert lines.index("Apparel 2") < lines.index("Footwear 1")


def test_config_table_still_prints(runner):
    result = runner.invoke(args=["config", "table"])
    assert result.exit_code == 0
    assert "| `CATALOG_IMAGE_MODE` | `CATALOG_IMAGE_MODE` |" in result.output


def test_import_progress_draws_a_bar_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    progress = CliProgress(stream=stream)
    for done in (0, 500, 1000):
        progress(done, 1000)
    progress.close()
    assert "Importing" in stream.getvalue() and "100%" in stream.getvalue()


def test_import_progress_prints_about_ten_lines_otherwise():
    stream = io.StringIO()
    progress = CliProgress(stream=stream)
    for done in range(0, 1001, 50):
        progress(done, 1000)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "Importing: 0/1000 rows" and lines[-1] == "Importing: 1000/1000 rows"
    assert 10 <= len(lines) <= 12
