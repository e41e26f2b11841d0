"""Which products a shopper may be shown (webapp.eligibility): the SQL clauses, the check of
one product and the mask over columns say the same thing, and that thing is the rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select

from webapp.eligibility import (
    ACTIVE,
    COLUMNS,
    Eligibility,
    ProductColumns,
    eligible_clauses,
)
from webapp.extensions import db
from webapp.models import Product
from webapp.preferences import Preferences

GENDERS = ["Men", "Women", "Unisex"]
MASTERS = ["Apparel", "Footwear"]
SUBS = ["Topwear", "Shoes"]
TYPES = ["Shirts", "Jeans", "Watches"]
COLOURS = ["Red", "Blue", "Black"]


def maybe(values: list[str]):
    return st.one_of(st.none(), st.sampled_from(values))


def some(values: list[str]):
    return st.sets(st.sampled_from(values), max_size=2)


PRODUCT_ROWS = st.lists(
    st.fixed_dictionaries(
        {
            "gender": maybe(GENDERS),
            "master_category": maybe(MASTERS),
            "sub_category": maybe(SUBS),
            "article_type": maybe(TYPES),
            "base_colour": maybe(COLOURS),
            "active": st.booleans(),
            "stock": st.one_of(st.none(), st.integers(-1, 3)),
        }
    ),
    max_size=12,
)


@st.composite
def preferences(draw) -> Preferences:
    return Preferences(
        disliked_colours=draw(some(COLOURS)),
        genders=draw(some(GENDERS)),
        hidden={"master": draw(some(MASTERS)), "sub": draw(some(SUBS)), "type": draw(some(TYPES))},
        hide_disliked_colours=draw(st.booleans()),
    )


def shown(p, prefs: Preferences, in_stock: bool) -> bool:
    """The rule in words, written out here independently of the code under test."""
    if not p.active:
        return False
    if in_stock and p.stock is not None and p.stock <= 0:
        return False
    if prefs.genders and p.gender not in prefs.genders:
        return False
    if (
        p.master_category in prefs.hidden["master"]
        or p.sub_category in prefs.hidden["sub"]
        or p.article_type in prefs.hidden["type"]
    ):
        return False
    return not (prefs.hide_disliked_colours and p.base_colour in prefs.disliked_colours)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=PRODUCT_ROWS, prefs=preferences(), in_stock=st.booleans())
def test_sql_check_and_mask_agree_with_the_rule(any_db_app, rows, prefs, in_stock):
    with any_db_app.app_context():
        db.session.execute(delete(Product))
        db.session.add_all(Product(id=i + 1, name=f"P{i}", **row) for i, row in enumerate(rows))
        db.session.commit()
        stored = db.session.scalars(select(Product).order_by(Product.id)).all()
        eligibility = Eligibility.of(prefs, in_stock=in_stock)

        from_sql = set(db.session.scalars(select(Product.id).where(*eligibility.clauses())))
        by_check = {p.id for p in stored if eligibility.allows(p)}
        mask = eligibility.mask(ProductColumns.load([p.id for p in stored]))
        by_mask = {p.id for p, ok in zip(stored, mask, strict=True) if ok}
        expected = {p.id for p in stored if shown(p, prefs, in_stock)}
        assert from_sql == by_check == by_mask == expected


def test_mask_over_plain_arrays_treats_none_and_nan_as_unknown():
    columns = {
        "active": np.array([True, True, True, False, True]),
        "stock": np.array([None, 0, math.nan, 5, 2], dtype=object),
        "gender": ["Men", "Men", None, "Men", "Women"],
        "master_category": ["Apparel"] * 5,
        "sub_category": [None] * 5,
        "article_type": np.array(["Shirts", "Shirts", "Shirts", "Shirts", "Jeans"], dtype=object),
        "base_colour": [None, "Red", "Blue", "Blue", "Red"],
    }
    prefs = Preferences(disliked_colours={"Red"})
    # Row 0: no colour is not a disliked colour; row 1: out of stock (and red); row 2: NaN
    # stock is unknown stock; row 3: inactive; row 4: red.
    assert Eligibility.of(prefs).mask(columns).tolist() == [True, False, True, False, False]
    assert Eligibility.of(prefs, in_stock=False).mask(columns).tolist() == [
        True,
        False,
        True,
        False,
        False,
    ]
    only_men = Preferences(genders={"Men"}, hide_disliked_colours=False)
    # A product without a gender fails a gender preference, as SQL's IN does with NULL.
    assert Eligibility.of(only_men).mask(columns).tolist() == [True, False, False, False, False]
    assert ACTIVE.mask(columns).tolist() == [True, True, True, False, True]


def test_mask_needs_the_columns_its_conditions_read():
    with pytest.raises(KeyError, match="stock"):
        Eligibility.of(Preferences()).mask({"active": [True]})
    with pytest.raises(ValueError, match="length"):
        ProductColumns.from_arrays({"active": [True], "stock": [1, 2]})
    empty = ProductColumns.from_arrays({name: [] for name in COLUMNS})
    assert Eligibility.of(Preferences()).mask(empty).shape == (0,)


def test_loaded_columns_follow_the_ids_and_unknown_ids_are_never_eligible(app):
    with app.app_context():
        db.session.add_all(
            [
                Product(id=1, name="In stock", stock=3, active=True),
                Product(id=2, name="Sold out", stock=0, active=True),
            ]
        )
        db.session.commit()
        columns = ProductColumns.load(np.array([2, 99, 1], np.int64))
        assert Eligibility.of(Preferences()).mask(columns).tolist() == [False, False, True]
        assert ACTIVE.mask(columns).tolist() == [True, False, True]


def test_eligible_clauses_are_the_recommendation_rule():
    prefs = Preferences(genders={"Women"}, disliked_colours={"Red"})
    compiled = [str(c.compile()) for c in eligible_clauses(prefs)]
    assert compiled == [str(c.compile()) for c in Eligibility.of(prefs).clauses()]
    assert len(compiled) == 4  # active, in stock, gender, colour
