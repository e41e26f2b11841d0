"""A shopper's taste: the products they like, the product pages they viewed and the products
they marked "not interested"; kept in the session for anonymous shoppers and in the database
for accounts, merged on sign-in."""

from webapp.taste.entries import CLEAR_KINDS, KINDS, VIEWS_KEPT, Taste
from webapp.taste.services import (
    clear,
    current_taste,
    like,
    mark_not_interested,
    merge_session_taste,
    not_interested_ids,
    record_view,
    undo_not_interested,
    unlike,
    user_taste,
)

__all__ = [
    "CLEAR_KINDS",
    "KINDS",
    "VIEWS_KEPT",
    "Taste",
    "clear",
    "current_taste",
    "like",
    "mark_not_interested",
    "merge_session_taste",
    "not_interested_ids",
    "record_view",
    "undo_not_interested",
    "unlike",
    "user_taste",
]
