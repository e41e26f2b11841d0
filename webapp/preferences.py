"""A shopper's preferences: one value type for anonymous (session) and signed-in shoppers.

What they do to the products a shopper is shown is decided in ``webapp.eligibility``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flask import session
from flask_login import current_user
from sqlalchemy.exc import IntegrityError

from webapp.extensions import db
from webapp.models import PreferenceItem

# Category levels a shopper may hide, as FACETS keys.
HIDE_LEVELS = ("master", "sub", "type")


@dataclass
class Preferences:
    """Disliked colours, preferred genders and hidden categories. Empty means no filtering."""

    disliked_colours: set[str] = field(default_factory=set)
    genders: set[str] = field(default_factory=set)
    hidden: dict[str, set[str]] = field(default_factory=lambda: {k: set() for k in HIDE_LEVELS})
    hide_disliked_colours: bool = True

    @property
    def is_empty(self) -> bool:
        """True when nothing would be filtered."""
        return not (
            (self.disliked_colours and self.hide_disliked_colours)
            or self.genders
            or any(self.hidden.values())
        )

    def merged(self, other: Preferences) -> Preferences:
        """Union of two sets of preferences (used when an anonymous shopper signs in)."""
        return Preferences(
            disliked_colours=self.disliked_colours | other.disliked_colours,
            genders=self.genders | other.genders,
            hidden={k: self.hidden[k] | other.hidden[k] for k in HIDE_LEVELS},
            hide_disliked_colours=self.hide_disliked_colours and other.hide_disliked_colours,
        )

    def items(self) -> list[tuple[str, str]]:
        """(kind, value) pairs, the stored form."""
        pairs = [("colour", c) for c in sorted(self.disliked_colours)]
        pairs += [("gender", g) for g in sorted(self.genders)]
        for level in HIDE_LEVELS:
            pairs += [(level, v) for v in sorted(self.hidden[level])]
        return pairs

    @classmethod
    def from_items(
        cls, pairs: list[tuple[str, str]], hide_disliked_colours: bool = True
    ) -> Preferences:
        """Inverse of items()."""
        prefs = cls(hide_disliked_colours=hide_disliked_colours)
        for kind, value in pairs:
            if kind == "colour":
                prefs.disliked_colours.add(value)
            elif kind == "gender":
                prefs.genders.add(value)
            elif kind in HIDE_LEVELS:
                prefs.hidden[kind].add(value)
        return prefs

    def to_session(self) -> dict[str, Any]:
        """JSON-safe form for the signed cookie session."""
        return {"items": self.items(), "hide_colours": self.hide_disliked_colours}

    @classmethod
    def from_session(cls, data: dict[str, Any] | None) -> Preferences:
        """Inverse of to_session(); tolerates a missing or malformed value."""
        if not isinstance(data, dict):
            return cls()
        pairs = [
            tuple(p) for p in data.get("items", []) if isinstance(p, (list, tuple)) and len(p) == 2
        ]
        return cls.from_items(pairs, bool(data.get("hide_colours", True)))


SESSION_KEY = "preferences"


def current_preferences() -> Preferences:
    """The preferences of whoever makes the current request."""
    if current_user.is_authenticated:
        return user_preferences(current_user)
    return Preferences.from_session(session.get(SESSION_KEY))


def user_preferences(user: Any) -> Preferences:
    """The preferences stored for a signed-in user."""
    return Preferences.from_items(
        [(p.kind, p.value) for p in user.preference_items], user.hide_disliked_colours
    )


def store_user_preferences(user: Any, prefs: Preferences) -> None:
    """Make the user's PreferenceItem rows match ``prefs`` (not committed).

    Rows are diffed rather than deleted and re-added: a flush inserts before it deletes,
    so re-adding an unchanged (kind, value) would trip the unique constraint.
    """
    wanted = set(prefs.items())
    current = {(item.kind, item.value): item for item in user.preference_items}
    for key, item in current.items():
        if key not in wanted:
            user.preference_items.remove(item)
    for kind, value in sorted(wanted - current.keys()):
        user.preference_items.append(PreferenceItem(kind=kind, value=value))
    user.hide_disliked_colours = prefs.hide_disliked_colours


def save_user_preferences(user: Any, prefs: Preferences) -> None:
    """Store and commit a user's preferences."""
    store_user_preferences(user, prefs)
    try:
        db.session.commit()
    except IntegrityError:
        # A concurrent save (a double-clicked button) added the same row first: diff
        # against what is stored now and try once more.
        db.session.rollback()
        store_user_preferences(user, prefs)
        db.session.commit()


def save_preferences(prefs: Preferences) -> None:
    """Keep ``prefs`` for whoever makes the current request: DB rows or the session."""
    if current_user.is_authenticated:
        save_user_preferences(current_user, prefs)
    elif prefs == Preferences():
        session.pop(SESSION_KEY, None)
    else:
        session[SESSION_KEY] = prefs.to_session()
