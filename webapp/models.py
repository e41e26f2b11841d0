"""Typed SQLAlchemy 2.0 models shared by every blueprint."""

from __future__ import annotations

import enum
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from flask_login import UserMixin
from sqlalchemy import (
    DDL,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    UniqueConstraint,
    event,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship
from werkzeug.security import check_password_hash, generate_password_hash

from webapp.extensions import db, login_manager


def built_on(item: Any, dialect: str) -> bool:
    """False for a schema item declared for other databases only (``ddl_if(dialect=...)``),
    such as PostgreSQL's trigram index."""
    only = getattr(getattr(item, "_ddl_if", None), "dialect", None)
    if only is None:
        return True
    return dialect == only if isinstance(only, str) else dialect in only


def compared_on(dialect: str) -> Callable[..., bool]:
    """Alembic's ``include_object`` for a database of ``dialect``: the model's items that
    this database does not build are not missing from it."""
    return lambda item, name, type_, reflected, compare_to: reflected or built_on(item, dialect)


def utcnow() -> datetime:
    """Timezone-aware now, for column defaults."""
    return datetime.now(UTC)


# The catalogue's facet columns: URL parameter -> model attribute. Order is display order.
FACETS: dict[str, str] = {
    "gender": "gender",
    "master": "master_category",
    "sub": "sub_category",
    "type": "article_type",
    "colour": "base_colour",
    "season": "season",
    "usage": "usage",
}


def stock_available(stock: Any) -> bool:
    """The stock rule: unknown stock (None or NaN) counts as available; only zero or less
    is out of stock. Eligibility's in-stock condition tests the same function."""
    return stock is None or not stock <= 0


class Product(db.Model):
    """A catalogue product; ``id`` is the catalogue's own id (styles.csv ``id``)."""

    __tablename__ = "product"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(300))
    gender: Mapped[str | None] = mapped_column(String(40))
    master_category: Mapped[str | None] = mapped_column(String(80))
    sub_category: Mapped[str | None] = mapped_column(String(80))
    article_type: Mapped[str | None] = mapped_column(String(80), index=True)
    base_colour: Mapped[str | None] = mapped_column(String(60))
    season: Mapped[str | None] = mapped_column(String(40))
    year: Mapped[int | None] = mapped_column(Integer)
    usage: Mapped[str | None] = mapped_column(String(60))
    price: Mapped[Decimal | None] = mapped_column(Numeric(10, 2))
    stock: Mapped[int | None] = mapped_column(Integer)
    # Relative paths are under MEDIA_FOLDER; absolute ones point at a catalogue read in place.
    image_path: Mapped[str | None] = mapped_column(String(500))
    image_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    # Shoppers only see active products, so every catalogue query filters on ``active``:
    # the facets index answers the catalogue's facet summary (one GROUP BY over every facet
    # column and the year) from the index alone, the (active, facet) indexes serve filters,
    # and the sort indexes (ending in the id, the tie-break) serve each order as ranges.
    __table_args__ = (
        Index(
            "ix_product_active_facets",
            "active",
            "gender",
            "master_category",
            "sub_category",
            "article_type",
            "base_colour",
            "season",
            "usage",
            "year",
        ),
        Index("ix_product_active_type_colour", "active", "article_type", "base_colour"),
        Index("ix_product_active_year", "active", "year", "id"),
        Index("ix_product_active_gender", "active", "gender"),
        Index("ix_product_active_master", "active", "master_category"),
        Index("ix_product_active_sub", "active", "sub_category"),
        Index("ix_product_active_colour", "active", "base_colour"),
        Index("ix_product_active_season", "active", "season"),
        Index("ix_product_active_usage", "active", "usage"),
        Index("ix_product_active_name", "active", "name", "id"),
        Index("ix_product_active_price", "active", "price", "id"),
        # Catalogue search (a substring of the name, ILIKE) through trigrams on PostgreSQL:
        # at a million products a rare word is found in a millisecond instead of a 0.4 s scan.
        Index(
            "ix_product_name_trgm",
            "name",
            postgresql_using="gin",
            postgresql_ops={"name": "gin_trgm_ops"},
        ).ddl_if(dialect="postgresql"),
    )

    @property
    def in_stock(self) -> bool:
        """Unknown stock counts as available; only zero or less is out of stock."""
        return stock_available(self.stock)

    def __repr__(self) -> str:
        return f"<Product {self.id} {self.name!r}>"


# The trigram index needs PostgreSQL's pg_trgm extension (a trusted one from PostgreSQL 13 on:
# a user who may create objects in the database may create it) before the table's indexes.
event.listen(
    Product.__table__,
    "before_create",
    DDL("CREATE EXTENSION IF NOT EXISTS pg_trgm").execute_if(dialect="postgresql"),
)


class Role(enum.StrEnum):
    """Who a user is to the shop."""

    SHOPPER = "shopper"
    ADMIN = "admin"


class User(UserMixin, db.Model):
    """A signed-up shopper or a store admin."""

    __tablename__ = "user_account"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[Role] = mapped_column(
        Enum(Role, native_enum=False, length=20, values_callable=lambda e: [m.value for m in e]),
        default=Role.SHOPPER,
    )
    hide_disliked_colours: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    preference_items: Mapped[list[PreferenceItem]] = relationship(
        back_populates="user", cascade="all, delete-orphan", lazy="selectin"
    )
    # Read through webapp.taste with one query when needed, never with the user.
    taste_items: Mapped[list[TasteItem]] = relationship(
        back_populates="user", cascade="all, delete-orphan", lazy="select"
    )

    def set_password(self, password: str) -> None:
        """Store a salted hash, never the password."""
        self.password_hash = generate_password_hash(password)

    def check_password(self, password: str) -> bool:
        """True when ``password`` matches the stored hash."""
        return check_password_hash(self.password_hash, password)

    @property
    def is_admin(self) -> bool:
        """Store admins may manage inventory."""
        return self.role == Role.ADMIN


class PreferenceItem(db.Model):
    """One preference of a user: a disliked colour, a preferred gender or a hidden category."""

    __tablename__ = "preference_item"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"))
    # kind: colour | gender | master | sub | type (the facet keys of FACETS)
    kind: Mapped[str] = mapped_column(String(20))
    value: Mapped[str] = mapped_column(String(80))

    user: Mapped[User] = relationship(back_populates="preference_items")

    __table_args__ = (UniqueConstraint("user_id", "kind", "value", name="uq_preference_item"),)


class TasteItem(db.Model):
    """One entry of a signed-in shopper's taste: a product they liked, viewed or marked
    "not interested" (``kind``: likes | views | not_interested), and when."""

    __tablename__ = "taste_item"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"))
    # A deleted product leaves its shoppers' tastes with it (the index serves that delete).
    product_id: Mapped[int] = mapped_column(
        ForeignKey("product.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(20))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    user: Mapped[User] = relationship(back_populates="taste_items")

    __table_args__ = (UniqueConstraint("user_id", "kind", "product_id", name="uq_taste_item"),)


@login_manager.user_loader
def load_user(user_id: str) -> User | None:
    """Flask-Login's session -> user lookup."""
    try:
        return db.session.get(User, int(user_id))
    except (TypeError, ValueError):
        return None


class ImportJobStatus(enum.StrEnum):
    """Where a bulk import job stands."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class ImportJob(db.Model):
    """A bulk import started from the browser: styles.csv + a ZIP of photos, run by a worker.

    The uploads wait in ``IMPORT_FOLDER/<id>/`` until the job is done. ``stage`` says which
    step a resumed job continues with: ``import`` (rows into the DB), then ``index``
    (embeddings and neighbour lists), then ``finished``.
    """

    __tablename__ = "import_job"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("user_account.id", ondelete="SET NULL"), index=True
    )
    # Kept beside user_id so the job list still says who started it after the account is gone.
    started_by: Mapped[str] = mapped_column(String(254))
    status: Mapped[ImportJobStatus] = mapped_column(
        Enum(
            ImportJobStatus,
            native_enum=False,
            length=20,
            values_callable=lambda e: [m.value for m in e],
        ),
        default=ImportJobStatus.QUEUED,
        index=True,
    )
    stage: Mapped[str] = mapped_column(String(20), default="import")
    csv_filename: Mapped[str | None] = mapped_column(String(255))
    zip_filename: Mapped[str | None] = mapped_column(String(255))
    task_id: Mapped[str | None] = mapped_column(String(155))
    rows_total: Mapped[int] = mapped_column(Integer, default=0)
    rows_done: Mapped[int] = mapped_column(Integer, default=0)
    inserted: Mapped[int] = mapped_column(Integer, default=0)
    updated: Mapped[int] = mapped_column(Integer, default=0)
    unchanged: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    duplicates: Mapped[int] = mapped_column(Integer, default=0)
    index_total: Mapped[int] = mapped_column(Integer, default=0)
    index_done: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[str | None] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    user: Mapped[User | None] = relationship()
    rows: Mapped[list[ImportJobRow]] = relationship(
        back_populates="job", cascade="all, delete-orphan", order_by="ImportJobRow.id"
    )

    def __repr__(self) -> str:
        return f"<ImportJob {self.id} {self.status.value}>"


class ImportJobRow(db.Model):
    """One line of an import job's report: a skipped row, an ignored file or a suspected duplicate.

    ``kind`` is ``skipped`` (the row was not imported), ``ignored`` (a ZIP member that is not
    a product photo) or ``duplicate`` (imported, but its photo matches another product's;
    ``match`` says how: ``exact``, ``perceptual`` or ``similar``).
    """

    __tablename__ = "import_job_row"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("import_job.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20))
    line: Mapped[int | None] = mapped_column(Integer)
    # As written in the file (it may not be a valid id); no foreign key: the report outlives
    # the products it mentions.
    product_id: Mapped[str | None] = mapped_column(String(40))
    reason: Mapped[str] = mapped_column(String(1000))
    match: Mapped[str | None] = mapped_column(String(20))
    duplicate_of: Mapped[int | None] = mapped_column(Integer)
    score: Mapped[float | None] = mapped_column(Float)

    job: Mapped[ImportJob] = relationship(back_populates="rows")

    __table_args__ = (Index("ix_import_job_row_job_kind", "job_id", "kind"),)


class ProductImageHash(db.Model):
    """A product photo's perceptual hash, for look-alike checks without decoding every photo.

    Keyed by product id without a foreign key, so deleting a product never waits on it;
    ``image_sha256`` tells whether the row still describes the product's current photo.
    ``reviewed_at`` is set when an admin decided to keep the product despite its duplicates.
    """

    __tablename__ = "product_image_hash"

    product_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    image_sha256: Mapped[str] = mapped_column(String(64))
    # 256-bit perceptual hash as 64 hex digits (webapp.inventory.perceptual).
    phash: Mapped[str] = mapped_column(String(64), index=True)
    computed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reviewed_by: Mapped[str | None] = mapped_column(String(254))
