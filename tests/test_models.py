"""Models on SQLite and PostgreSQL, and the migrations that build their schema."""

from __future__ import annotations

import uuid

import flask_migrate
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError

from tests.conftest import PG_ADMIN_URL, add_product, base_config
from webapp import create_app
from webapp.extensions import db
from webapp.models import PreferenceItem, Product, Role, User, built_on, compared_on
from webapp.preferences import Preferences


def test_password_is_hashed_and_checked(any_db_app):
    with any_db_app.app_context():
        user = User(email="a@example.com")
        user.set_password("correct horse")
        db.session.add(user)
        db.session.commit()
        user_id = user.id
        db.session.expunge_all()

        stored = db.session.get(User, user_id)
        assert "correct horse" not in stored.password_hash
        assert stored.check_password("correct horse")
        assert not stored.check_password("wrong horse")
        assert stored.role == Role.SHOPPER and not stored.is_admin


def test_email_is_unique(any_db_app):
    with any_db_app.app_context():
        db.session.add_all([User(email="a@example.com", password_hash="x") for _ in range(2)])
        with pytest.raises(IntegrityError):
            db.session.commit()
        db.session.rollback()


@pytest.mark.parametrize(("stock", "expected"), [(None, True), (0, False), (1, True), (25, True)])
def test_in_stock_treats_unknown_stock_as_available(stock, expected):
    assert Product(id=1, name="Shirt", stock=stock).in_stock is expected


def test_product_defaults_and_timestamps(any_db_app):
    with any_db_app.app_context():
        add_product(id=42, name="Kurta")
        db.session.expunge_all()
        stored = db.session.get(Product, 42)
        assert stored.active is True
        assert stored.created_at is not None and stored.updated_at is not None
        assert stored.price is None and stored.stock is None and stored.in_stock
        assert repr(stored) == "<Product 42 'Kurta'>"


def test_preferences_round_trip_through_preference_items(any_db_app):
    prefs = Preferences(
        disliked_colours={"Pink", "Olive"},
        genders={"Women"},
        hidden={"master": {"Personal Care"}, "sub": set(), "type": {"Socks", "Briefs"}},
        hide_disliked_colours=False,
    )
    with any_db_app.app_context():
        user = User(email="p@example.com", password_hash="x")
        user.hide_disliked_colours = prefs.hide_disliked_colours
        user.preference_items = [PreferenceItem(kind=k, value=v) for k, v in prefs.items()]
        db.session.add(user)
        db.session.commit()
        user_id = user.id
        db.session.expunge_all()

        stored = db.session.get(User, user_id)
        loaded = Preferences.from_items(
            [(i.kind, i.value) for i in stored.preference_items], stored.hide_disliked_colours
        )
        assert loaded == prefs
        assert len(stored.preference_items) == 6


def test_preference_items_are_unique_and_deleted_with_their_user(any_db_app):
    with any_db_app.app_context():
        user = User(email="q@example.com", password_hash="x")
        user.preference_items = [PreferenceItem(kind="colour", value="Red")]
        db.session.add(user)
        db.session.commit()

        db.session.add(PreferenceItem(user_id=user.id, kind="colour", value="Red"))
        with pytest.raises(IntegrityError):
            db.session.commit()
        db.session.rollback()

        db.session.delete(db.session.get(User, user.id))
        db.session.commit()
        assert db.session.scalar(select(db.func.count(PreferenceItem.id))) == 0


# --- migrations ------------------------------------------------------------------------------


@pytest.fixture
def fresh_postgres_uri():
    """An empty PostgreSQL database of its own, so the migration starts from nothing."""
    psycopg = pytest.importorskip("psycopg")
    name = f"shop_mig_{uuid.uuid4().hex[:10]}"
    admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    yield f"{base}/{name}"
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_migrations_build_exactly_the_model_schema(backend, tmp_path, request):
    if backend == "sqlite":
        uri = f"sqlite:///{tmp_path / 'migrated.sqlite3'}"
    else:
        uri = request.getfixturevalue("fresh_postgres_uri")
    app = create_app(base_config(tmp_path, uri))
    with app.app_context():
        flask_migrate.upgrade()
        inspector = inspect(db.engine)
        assert {"product", "user_account", "preference_item", "alembic_version"} <= set(
            inspector.get_table_names()
        )
        indexes = {ix["name"] for ix in inspector.get_indexes("product")}
        dialect = db.engine.dialect.name
        expected = {ix.name for ix in Product.__table__.indexes if built_on(ix, dialect)}
        assert {"ix_product_active_type_colour", "ix_product_image_sha256"} <= expected
        # catalogue search through trigrams where the database has them
        assert ("ix_product_name_trgm" in expected) == (backend == "postgres")
        assert indexes == expected

        # A model change without its migration shows up here as a difference.
        with db.engine.connect() as connection:
            context = MigrationContext.configure(
                connection,
                opts={"compare_type": True, "include_object": compared_on(dialect)},
            )
            assert compare_metadata(context, db.metadata) == []

        flask_migrate.downgrade(revision="base")
        assert set(inspect(db.engine).get_table_names()) <= {"alembic_version"}
        db.engine.dispose()
