"""Accounts: registration, authentication, sign-in and the catalogue's preference choices."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import cache
from urllib.parse import urlsplit

from flask import session
from flask_login import login_user
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash

from webapp.eligibility import ACTIVE
from webapp.extensions import db
from webapp.models import Product, Role, User
from webapp.preferences import (
    SESSION_KEY,
    Preferences,
    save_user_preferences,
    user_preferences,
)
from webapp.taste import merge_session_taste

logger = logging.getLogger(__name__)


class EmailTakenError(ValueError):
    """An account with this email address already exists."""


def normalise_email(email: str) -> str:
    """The stored form of an email address: trimmed and lower case."""
    return email.strip().lower()


def find_user_by_email(email: str) -> User | None:
    """The account for ``email``, compared case-insensitively."""
    # lower() on both sides so accounts stored before normalisation still match.
    return db.session.scalars(
        select(User).where(func.lower(User.email) == normalise_email(email))
    ).first()


def register_user(email: str, password: str) -> User:
    """Create a shopper account; raise EmailTakenError when the email is in use."""
    email = normalise_email(email)
    if find_user_by_email(email) is not None:
        raise EmailTakenError(email)
    user = User(email=email, role=Role.SHOPPER)
    user.set_password(password)
    db.session.add(user)
    try:
        db.session.commit()
    except IntegrityError as exc:
        # Two registrations for the same email raced past the check above.
        db.session.rollback()
        raise EmailTakenError(email) from exc
    logger.info("registered user %s", user.id)
    return user


@cache
def _dummy_hash() -> str:
    """A hash to check against when no account matches, made once per process."""
    return generate_password_hash("no account has this password")


def authenticate(email: str, password: str) -> User | None:
    """The user whose email and password match, else None."""
    user = find_user_by_email(email)
    if user is None:
        # Spend the same time as a real check so response times do not reveal which
        # email addresses have accounts.
        check_password_hash(_dummy_hash(), password)
        return None
    return user if user.check_password(password) else None


def merge_session_preferences(user: User) -> bool:
    """Fold the preferences kept in the session into the user's stored ones.

    Returns True when there were session preferences to merge. They leave the session only
    once the merged set is committed, so a failed save loses nothing.
    """
    data = session.get(SESSION_KEY)
    if data is None:
        return False
    anonymous = Preferences.from_session(data)
    save_user_preferences(user, user_preferences(user).merged(anonymous))
    session.pop(SESSION_KEY, None)
    return True


def sign_in(user: User, remember: bool = False) -> bool:
    """Sign ``user`` in and merge what they chose while anonymous (their preferences and
    their taste); True if there were preferences to merge."""
    login_user(user, remember=remember)
    # Likes, views and "not interested" marks join the account quietly: the taste page
    # lists them.
    merge_session_taste(user)
    return merge_session_preferences(user)


def safe_next_url(target: str | None) -> str | None:
    """``target`` when it is a relative path on this site, else None (no open redirects)."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return None
    # Browsers treat "\" like "/" and drop tabs and newlines, so "/\evil.example" and
    # "/\t/evil.example" would leave the site.
    if any(ch == "\\" or ord(ch) < 0x21 or ord(ch) == 0x7F for ch in target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return None
    return target


@dataclass(frozen=True)
class SubCategoryGroup:
    """A subCategory and the article types shown under it."""

    name: str
    types: list[str]


@dataclass(frozen=True)
class MasterCategoryGroup:
    """A masterCategory and its subCategories."""

    name: str
    subs: list[SubCategoryGroup]


@dataclass(frozen=True)
class CatalogueChoices:
    """The values a shopper may pick on the preferences page: the catalogue's own."""

    colours: list[str] = field(default_factory=list)
    genders: list[str] = field(default_factory=list)
    tree: list[MasterCategoryGroup] = field(default_factory=list)

    @property
    def masters(self) -> list[str]:
        """Every masterCategory, sorted."""
        return [group.name for group in self.tree]

    @property
    def subs(self) -> list[str]:
        """Every subCategory, sorted."""
        return sorted(sub.name for group in self.tree for sub in group.subs)

    @property
    def types(self) -> list[str]:
        """Every articleType, sorted."""
        return sorted(t for group in self.tree for sub in group.subs for t in sub.types)

    @property
    def is_empty(self) -> bool:
        """True when the catalogue has no active products to choose from."""
        return not (self.colours or self.genders or self.tree)


def _distinct_values(column) -> list[str]:
    """Sorted distinct non-empty values of a Product column among active products."""
    rows = db.session.scalars(
        select(column).where(*ACTIVE.clauses(), column.is_not(None), column != "").distinct()
    )
    return sorted(rows)


def _category_tree() -> list[MasterCategoryGroup]:
    """masterCategory -> subCategory -> articleType from one grouped query.

    The catalogue files a few article types under more than one subCategory (and a few
    subCategories under more than one masterCategory). Each is shown once, under the
    parent holding most of its products, so every checkbox on the page is unique.
    """
    rows = db.session.execute(
        select(
            Product.master_category,
            Product.sub_category,
            Product.article_type,
            func.count(),
        )
        .where(
            *ACTIVE.clauses(),
            Product.master_category.is_not(None),
            Product.sub_category.is_not(None),
            Product.article_type.is_not(None),
            Product.master_category != "",
            Product.sub_category != "",
            Product.article_type != "",
        )
        .group_by(Product.master_category, Product.sub_category, Product.article_type)
    ).all()
    sub_parents: dict[str, Counter[str]] = defaultdict(Counter)
    type_parents: dict[str, Counter[str]] = defaultdict(Counter)
    for master, sub, article_type, count in rows:
        sub_parents[sub][master] += count
        type_parents[article_type][sub] += count

    def home(counter: Counter[str]) -> str:
        # Most products first, then alphabetical, so the layout is stable across loads.
        return min(counter.items(), key=lambda kv: (-kv[1], kv[0]))[0]

    types_by_sub: dict[str, list[str]] = defaultdict(list)
    for article_type, parents in type_parents.items():
        types_by_sub[home(parents)].append(article_type)
    subs_by_master: dict[str, list[str]] = defaultdict(list)
    for sub, parents in sub_parents.items():
        subs_by_master[home(parents)].append(sub)
    return [
        MasterCategoryGroup(
            name=master,
            subs=[
                SubCategoryGroup(name=sub, types=sorted(types_by_sub[sub]))
                for sub in sorted(subs_by_master[master])
            ],
        )
        for master in sorted(subs_by_master)
    ]


def catalogue_choices() -> CatalogueChoices:
    """Colours, genders and the category tree of the active catalogue (three queries)."""
    return CatalogueChoices(
        colours=_distinct_values(Product.base_colour),
        genders=_distinct_values(Product.gender),
        tree=_category_tree(),
    )
