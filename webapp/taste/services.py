"""Where a shopper's taste is kept: the signed cookie session for anonymous shoppers, the
``taste_item`` table for accounts; folded into the account on sign-in.

Every change loads the taste, applies one of ``webapp.taste.entries``' pure functions and
stores the difference, so the two stores follow the same rules. The taste of the current
request is loaded once and kept on ``flask.g``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from flask import g, has_request_context, session
from flask_login import current_user
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from webapp.extensions import db
from webapp.models import Product, TasteItem
from webapp.taste import entries
from webapp.taste.entries import KINDS, Taste

logger = logging.getLogger(__name__)

SESSION_KEY = "taste"
# An anonymous shopper's lists are cut to these lengths (oldest dropped) so the cookie
# session stays within the 4 KB browsers keep, beside the largest preferences (about 2 KB
# with every value of the reference catalogue ticked); an account keeps every like and mark.
SESSION_LIMITS = {"likes": 30, "views": entries.VIEWS_KEPT, "not_interested": 30}

Change = Callable[[Taste], Taste]


def current_taste() -> Taste:
    """The taste of whoever makes the current request (loaded once per request)."""
    cached = g.get("_taste")
    if cached is None:
        if current_user.is_authenticated:
            cached = user_taste(current_user.id)
        else:
            cached = Taste.from_session(session.get(SESSION_KEY))
        g._taste = cached
    return cached


def not_interested_ids() -> frozenset[int]:
    """Products the current shopper never wants recommended (empty outside a request)."""
    return current_taste().not_interested_ids if has_request_context() else frozenset()


def record_view(product_id: int) -> Taste:
    """A product page seen by the current shopper."""
    return _apply(lambda taste, now: entries.viewed(taste, product_id, now))


def like(product_id: int) -> Taste:
    """The current shopper likes a product."""
    return _apply(lambda taste, now: entries.liked(taste, product_id, now))


def unlike(product_id: int) -> Taste:
    """The current shopper takes their like back."""
    return _apply(lambda taste, now: entries.unliked(taste, product_id))


def mark_not_interested(product_id: int) -> Taste:
    """The current shopper never wants this product recommended again."""
    return _apply(lambda taste, now: entries.marked_not_interested(taste, product_id, now))


def undo_not_interested(product_id: int) -> Taste:
    """The current shopper takes their "not interested" back."""
    return _apply(lambda taste, now: entries.unmarked_not_interested(taste, product_id))


def clear(kind: str) -> Taste:
    """Forget the current shopper's likes, views, marks or (``"all"``) everything."""
    if kind not in entries.CLEAR_KINDS:
        raise ValueError(f"kind must be one of {', '.join(entries.CLEAR_KINDS)}, not {kind!r}")
    return _apply(lambda taste, now: entries.cleared(taste, kind))


def merge_session_taste(user: Any) -> bool:
    """Fold the taste kept in the session into the user's stored one (on sign-in).

    Returns True when there was one to merge. It leaves the session only once the merged
    taste is committed, so a failed save loses nothing. Products deleted since are dropped.
    """
    g.pop("_taste", None)  # whoever it was loaded for, it is the account's from now on
    data = session.get(SESSION_KEY)
    if data is None:
        return False
    anonymous = _existing_products(Taste.from_session(data))
    _save_user(user.id, lambda stored: entries.merged(stored, anonymous))
    session.pop(SESSION_KEY, None)
    return True


def _apply(change: Callable[[Taste, float], Taste]) -> Taste:
    """Apply a change to the current shopper's taste, store it, and return the new taste."""
    now = time.time()
    if current_user.is_authenticated:
        taste = _save_user(current_user.id, lambda stored: change(stored, now))
    else:
        taste = change(current_taste(), now)
        if taste.is_empty:
            session.pop(SESSION_KEY, None)
        else:
            session[SESSION_KEY] = taste.to_session(SESSION_LIMITS)
            taste = Taste.from_session(session[SESSION_KEY])
    g._taste = taste
    return taste


# -- the database: signed-in shoppers ---------------------------------------------------------


def user_taste(user_id: int) -> Taste:
    """The taste stored for an account (one query)."""
    rows = db.session.execute(
        select(TasteItem.kind, TasteItem.product_id, TasteItem.at)
        .where(TasteItem.user_id == user_id)
        # Rows written in one go share a time; the later-written (higher id) is the newer.
        .order_by(TasteItem.at.desc(), TasteItem.id.desc())
    )
    lists: dict[str, entries.Entries] = {kind: [] for kind in KINDS}
    for kind, product_id, at in rows:
        if kind in lists:
            lists[kind].append((product_id, _timestamp(at)))
    return Taste(**lists)


def _save_user(user_id: int, change: Change) -> Taste:
    """Load, change and store an account's taste, committed; once more on a clash."""
    for attempt in (1, 2):
        stored = user_taste(user_id)
        taste = change(stored)
        _store_difference(user_id, stored, taste)
        try:
            db.session.commit()
        except IntegrityError:
            # A concurrent request (a double click) wrote the same row first, or the
            # product was deleted meanwhile: start again from what is stored now.
            db.session.rollback()
            if attempt == 2:
                raise
            logger.info("taste of user %s changed concurrently; retrying", user_id)
    return taste


def _store_difference(user_id: int, before: Taste, after: Taste) -> None:
    """Delete, insert and re-time rows so the table holds ``after`` (not committed)."""
    for kind in KINDS:
        old, new = dict(getattr(before, kind)), dict(getattr(after, kind))
        gone = old.keys() - new.keys()
        if gone:
            db.session.execute(
                delete(TasteItem).where(
                    TasteItem.user_id == user_id,
                    TasteItem.kind == kind,
                    TasteItem.product_id.in_(sorted(gone)),
                )
            )
        # Oldest first, so rows that share a time read back newest first (by id).
        for pid, at in reversed(getattr(after, kind)):
            if pid not in old:
                db.session.add(
                    TasteItem(user_id=user_id, kind=kind, product_id=pid, at=_datetime(at))
                )
            elif old[pid] != at:
                db.session.execute(
                    update(TasteItem)
                    .where(
                        TasteItem.user_id == user_id,
                        TasteItem.kind == kind,
                        TasteItem.product_id == pid,
                    )
                    .values(at=_datetime(at))
                )
        db.session.flush()


def _existing_products(taste: Taste) -> Taste:
    """``taste`` without products that no longer exist (rows must point at real products)."""
    ids = {pid for kind in KINDS for pid, _ in getattr(taste, kind)}
    if not ids:
        return taste
    found = set(db.session.scalars(select(Product.id).where(Product.id.in_(sorted(ids)))))
    return Taste(
        **{kind: [(p, at) for p, at in getattr(taste, kind) if p in found] for kind in KINDS}
    )


def _datetime(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def _timestamp(at: datetime) -> float:
    # SQLite hands back naive datetimes; they were written in UTC.
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()
