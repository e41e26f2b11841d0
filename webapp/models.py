"""Typed SQLAlchemy 2.0 models shared by every blueprint."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from decimal import Decimal

from flask_login import UserMixin
from sqlalchemy import (
    Boolean,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship
from werkzeug.security import check_password_hash, generate_password_hash

from webapp.extensions import db, login_manager


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


class Product(db.Model):
    """A catalogue product; ``id`` is the catalogue's own id (styles.csv ``id``)."""

    __tablename__ = "product"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(300))
    gender: Mapped[str | None] = mapped_column(String(40), index=True)
    master_category: Mapped[str | None] = mapped_column(String(80), index=True)
    sub_category: Mapped[str | None] = mapped_column(String(80), index=True)
    article_type: Mapped[str | None] = mapped_column(String(80), index=True)
    base_colour: Mapped[str | None] = mapped_column(String(60), index=True)
    season: Mapped[str | None] = mapped_column(String(40), index=True)
    year: Mapped[int | None] = mapped_column(Integer)
    usage: Mapped[str | None] = mapped_column(String(60), index=True)
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

    __table_args__ = (
        Index("ix_product_active_type_colour", "active", "article_type", "base_colour"),
        Index("ix_product_active_year", "active", "year"),
    )

    @property
    def in_stock(self) -> bool:
        """Unknown stock counts as available; only an explicit 0 is out of stock."""
        return self.stock is None or self.stock > 0

    def __repr__(self) -> str:
        return f"<Product {self.id} {self.name!r}>"


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


@login_manager.user_loader
def load_user(user_id: str) -> User | None:
    """Flask-Login's session -> user lookup."""
    try:
        return db.session.get(User, int(user_id))
    except (TypeError, ValueError):
        return None
