"""Which products a shopper may be shown: one rule, as SQL, as a check and as an array mask.

A product is eligible when it is active, in stock (unknown stock counts as available; only
zero or less is out of stock) and allowed by the shopper's preferences: of a preferred
gender when any is chosen (a product without a gender then fails), not in a hidden master
category, sub-category or article type, and not of a disliked colour when the shopper hides
those. A product without the attribute that a hiding rule tests is never hidden by it
(a missing colour is no colour). Catalogue pages list out-of-stock products too
(``in_stock=False``); everything that recommends products (similar products, photo
search) does not.

Each condition is written once, as a pair: a test of one attribute's value and the SQL
clause on the same column, side by side. The check of one product and the mask over
row-aligned columns both call the test; the database gets the clause.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from sqlalchemy import ColumnElement, or_, select, true

from webapp.extensions import db
from webapp.models import FACETS, Product, stock_available
from webapp.preferences import HIDE_LEVELS, Preferences

# Every Product attribute a condition may read, for callers that load columns themselves.
COLUMNS = (
    "active",
    "stock",
    "gender",
    "master_category",
    "sub_category",
    "article_type",
    "base_colour",
)


class Condition(Protocol):
    """One condition on one Product attribute."""

    column: str

    def test(self, value: Any) -> bool:
        """Whether a product with this attribute value passes."""

    def clause(self) -> ColumnElement[bool]:
        """The same condition as a where-clause on Product."""


@dataclass(frozen=True)
class IsActive:
    """Shown in the shop at all (admins deactivate products to hide them)."""

    column: str = "active"

    def test(self, value: Any) -> bool:
        """True for an active product."""
        return bool(value)

    def clause(self) -> ColumnElement[bool]:
        """``active = true``: PostgreSQL can use an index for it, not for ``IS TRUE``."""
        return Product.active == true()


@dataclass(frozen=True)
class InStock:
    """Unknown stock counts as available; only zero or less is out of stock."""

    column: str = "stock"

    def test(self, value: Any) -> bool:
        """True unless the stock is known to be zero or less (NaN counts as unknown)."""
        return stock_available(value)

    def clause(self) -> ColumnElement[bool]:
        """NULL or positive stock."""
        return or_(Product.stock.is_(None), Product.stock > 0)


@dataclass(frozen=True)
class OneOf:
    """The attribute is one of ``values``; a product without it fails (SQL's IN on NULL)."""

    column: str
    values: frozenset[str]

    def test(self, value: Any) -> bool:
        """True when the value is one of the wanted ones."""
        return value in self.values

    def clause(self) -> ColumnElement[bool]:
        """``column IN (values)``."""
        return getattr(Product, self.column).in_(sorted(self.values))


@dataclass(frozen=True)
class NoneOf:
    """The attribute is none of ``values``; a product without it passes."""

    column: str
    values: frozenset[str]

    def test(self, value: Any) -> bool:
        """True when the value is not a hidden one (a missing value never is)."""
        return value not in self.values

    def clause(self) -> ColumnElement[bool]:
        """``column IS NULL OR column NOT IN (values)``: NOT IN alone is never true for NULL."""
        column = getattr(Product, self.column)
        return or_(column.is_(None), column.not_in(sorted(self.values)))


@dataclass(frozen=True)
class NotAmong:
    """Not one of the products a shopper marked "not interested" (by id)."""

    column: str
    values: frozenset[int]

    def test(self, value: Any) -> bool:
        """True when the product is not excluded."""
        return value not in self.values

    def clause(self) -> ColumnElement[bool]:
        """``id NOT IN (values)`` (ids are never NULL)."""
        return getattr(Product, self.column).not_in(sorted(self.values))


def preference_conditions(prefs: Preferences) -> list[Condition]:
    """The conditions a shopper's preferences add.

    Hidden categories and preferred genders always apply; disliked colours only when the
    shopper chose to hide them.
    """
    conditions: list[Condition] = []
    if prefs.genders:
        conditions.append(OneOf("gender", frozenset(prefs.genders)))
    for level in HIDE_LEVELS:
        if prefs.hidden.get(level):
            conditions.append(NoneOf(FACETS[level], frozenset(prefs.hidden[level])))
    if prefs.hide_disliked_colours and prefs.disliked_colours:
        conditions.append(NoneOf("base_colour", frozenset(prefs.disliked_colours)))
    return conditions


@dataclass(frozen=True)
class ProductColumns:
    """Attributes of many products, row-aligned and factorised: per column, each row's code
    into that column's distinct values, so a mask tests each distinct value once."""

    size: int
    codes: Mapping[str, np.ndarray]
    values: Mapping[str, Sequence[Any]]

    @classmethod
    def from_arrays(cls, columns: Mapping[str, Sequence[Any]]) -> ProductColumns:
        """From row-aligned sequences keyed by Product attribute name (None = unknown)."""
        sizes = {len(values) for values in columns.values()}
        if len(sizes) > 1:
            raise ValueError("product columns differ in length")
        codes: dict[str, np.ndarray] = {}
        distinct: dict[str, list[Any]] = {}
        for name, column in columns.items():
            codes[name], distinct[name] = _factorise(column)
        return cls(sizes.pop() if sizes else 0, codes, distinct)

    @classmethod
    def load(cls, ids: Sequence[int]) -> ProductColumns:
        """The columns of the products ``ids``, in that order, from the database (one scan).

        An id with no row reads as an inactive product without attributes: never eligible.
        """
        stmt = select(Product.id, *(getattr(Product, name) for name in COLUMNS))
        rows = {row[0]: row[1:] for row in db.session.execute(stmt)}
        missing = (None,) * len(COLUMNS)
        aligned = [rows.get(int(pid), missing) for pid in ids]
        return cls.from_arrays(
            {name: [row[i] for row in aligned] for i, name in enumerate(COLUMNS)}
        )


def _factorise(column: Sequence[Any]) -> tuple[np.ndarray, list[Any]]:
    """Each row's code into the column's distinct values (None is a value like any other)."""
    values = column.tolist() if isinstance(column, np.ndarray) else column
    index: dict[Any, int] = {}
    codes = np.fromiter((index.setdefault(v, len(index)) for v in values), np.int64, len(values))
    return codes, list(index)


@dataclass(frozen=True)
class Eligibility:
    """Which products may be shown, as where-clauses, a check of one product and a mask."""

    conditions: tuple[Condition, ...]

    @classmethod
    def of(
        cls, prefs: Preferences, *, in_stock: bool = True, exclude: Collection[int] = ()
    ) -> Eligibility:
        """Active, in stock unless ``in_stock=False``, allowed by ``prefs`` and not one of
        ``exclude`` (the products the shopper marked "not interested")."""
        conditions: list[Condition] = [IsActive()]
        if in_stock:
            conditions.append(InStock())
        if exclude:
            conditions.append(NotAmong("id", frozenset(int(pid) for pid in exclude)))
        return cls((*conditions, *preference_conditions(prefs)))

    def clauses(self) -> list[ColumnElement[bool]]:
        """Where-clauses on Product (all must hold)."""
        return [condition.clause() for condition in self.conditions]

    def allows(self, product: Any) -> bool:
        """Whether one product (anything with the Product attributes) may be shown."""
        return all(c.test(getattr(product, c.column)) for c in self.conditions)

    def mask(self, columns: ProductColumns | Mapping[str, Sequence[Any]]) -> np.ndarray:
        """A bool per row of ``columns`` (``ProductColumns`` or row-aligned sequences keyed by
        Product attribute name): True where the product may be shown."""
        if not isinstance(columns, ProductColumns):
            columns = ProductColumns.from_arrays(columns)
        out = np.ones(columns.size, bool)
        for condition in self.conditions:
            name = condition.column
            if name not in columns.codes:
                raise KeyError(f"the eligibility mask needs the {name!r} column")
            values = columns.values[name]
            passes = np.fromiter((condition.test(v) for v in values), bool, len(values))
            out &= passes[columns.codes[name]]
        return out


# Shown to shoppers at all, whatever their preferences or the stock.
ACTIVE = Eligibility((IsActive(),))


def eligible_clauses(prefs: Preferences) -> list[ColumnElement[bool]]:
    """Where-clauses for products a shopper may be recommended: active, in stock, preferred."""
    return Eligibility.of(prefs).clauses()
