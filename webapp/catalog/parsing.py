"""Read a Kaggle-style ``styles.csv`` into validated rows. Pure: no database, no image files.

The parser accepts the raw Kaggle file as people download it:

- a UTF-8 byte-order mark before the header, and Windows (CRLF) line endings;
- product names with unquoted commas. Such a row has more fields than the header; the
  extra fields belong to ``productDisplayName`` (the only free-text column), so they are
  joined back with commas. Columns are located by header position, so columns after the
  name (``price``, ``stock``) are still read correctly;
- empty fields (stored as NULL), years written as ``2012.0``;
- rows that cannot be imported (no id, a non-numeric id, a duplicate id, a bad year, price
  or stock, a value longer than its column) are skipped, each with its line and reason.

Blank lines and rows whose fields are all empty are ignored: they are not products.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from webapp.models import Product
from webapp.validators import has_control_characters

# styles.csv header -> Product attribute. All of these must be present.
REQUIRED_COLUMNS: dict[str, str] = {
    "id": "id",
    "gender": "gender",
    "masterCategory": "master_category",
    "subCategory": "sub_category",
    "articleType": "article_type",
    "baseColour": "base_colour",
    "season": "season",
    "year": "year",
    "usage": "usage",
    "productDisplayName": "name",
}
# Extra columns a shop may add; when a column is absent the importer leaves it untouched.
OPTIONAL_COLUMNS: dict[str, str] = {"price": "price", "stock": "stock"}
# The free-text column that soaks up the extra fields of a row with unquoted commas.
NAME_COLUMN = "productDisplayName"

TEXT_ATTRIBUTES = (
    "name",
    "gender",
    "master_category",
    "sub_category",
    "article_type",
    "base_colour",
    "season",
    "usage",
)
# Column widths come from the model so a value that the database would reject is caught here.
TEXT_LIMITS: dict[str, int] = {
    attr: Product.__table__.c[attr].type.length  # type: ignore[attr-defined]
    for attr in TEXT_ATTRIBUTES
}
MAX_INT = 2**31 - 1  # INTEGER columns on PostgreSQL
MAX_PRICE = Decimal("99999999.99")  # NUMERIC(10, 2)
CENT = Decimal("0.01")
_DIGITS = re.compile(r"\d+")


class CatalogError(Exception):
    """The catalogue cannot be imported at all (missing file, bad header, unreadable text)."""


@dataclass(frozen=True)
class Skip:
    """A row that was not imported: its line in styles.csv, its id as written, and why."""

    line: int
    product_id: str
    reason: str


@dataclass(frozen=True)
class StyleRow:
    """One valid styles.csv row: the product id and the Product attributes it sets."""

    line: int
    id: int
    values: dict[str, Any]


@dataclass
class ParsedStyles:
    """The outcome of parsing: valid rows in file order, skipped rows, and the columns given."""

    rows: list[StyleRow] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)
    # Product attributes this file provides (always the Kaggle ones; price/stock when present).
    attributes: tuple[str, ...] = ()


class RowError(ValueError):
    """A single row is invalid; the message is the skip reason."""


def parse_styles(lines: Iterable[str], *, limit: int | None = None) -> ParsedStyles:
    """Parse styles.csv text lines (opened with ``newline=""``) into valid rows and skips."""
    records = _records(lines)
    try:
        header_line, header = next(records)
    except StopIteration:
        raise CatalogError("styles.csv is empty: it has no header row") from None
    columns = _header_columns(header, header_line)
    name_index = columns[NAME_COLUMN]
    width = len(header)
    result = ParsedStyles(
        attributes=tuple(
            [attr for attr in REQUIRED_COLUMNS.values() if attr != "id"]
            + [attr for col, attr in OPTIONAL_COLUMNS.items() if col in columns]
        )
    )
    first_seen: dict[int, int] = {}
    count = 0
    for line, fields in records:
        if not any(f.strip() for f in fields):
            continue
        if limit is not None and count >= limit:
            break
        count += 1
        raw_id = fields[columns["id"]].strip() if columns["id"] < len(fields) else ""
        if len(fields) < width:
            result.skips.append(Skip(line, raw_id, f"expected {width} fields, found {len(fields)}"))
            continue
        cells = _cells(fields, columns, name_index, len(fields) - width)
        raw_id = cells["id"]
        try:
            product_id = _parse_id(raw_id)
            if product_id in first_seen:
                raise RowError(
                    f"duplicate id {product_id} (first seen on line {first_seen[product_id]})"
                )
            first_seen[product_id] = line
            values = _parse_values(cells, product_id)
        except RowError as exc:
            result.skips.append(Skip(line, raw_id, str(exc)))
            continue
        result.rows.append(StyleRow(line, product_id, values))
    return result


def _records(lines: Iterable[str]) -> Iterator[tuple[int, list[str]]]:
    """CSV records with the line each one starts on; decoding and CSV errors become CatalogError."""
    reader = csv.reader(lines)
    next_line = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except UnicodeDecodeError as exc:
            raise CatalogError(
                f"styles.csv is not UTF-8 text (near line {next_line}): {exc.reason}"
            ) from exc
        except csv.Error as exc:
            raise CatalogError(f"styles.csv line {reader.line_num}: {exc}") from exc
        # A quoted field may span lines: the record starts where the previous one ended.
        yield next_line, fields
        next_line = reader.line_num + 1


def _header_columns(header: list[str], line: int) -> dict[str, int]:
    """Map the known column names to their positions; raise CatalogError when some are missing."""
    known = {name.lower(): name for name in [*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS]}
    columns: dict[str, int] = {}
    for index, raw in enumerate(header):
        name = raw.lstrip("\ufeff").strip()
        canonical = known.get(name.lower())
        if canonical is None:
            continue  # other columns are allowed and ignored
        if canonical in columns:
            raise CatalogError(f"styles.csv line {line}: column {name!r} appears twice")
        columns[canonical] = index
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    if missing:
        found = ", ".join(h.lstrip("\ufeff").strip() for h in header) or "nothing"
        raise CatalogError(
            f"styles.csv is missing required column(s): {', '.join(missing)} "
            f"(the header on line {line} has: {found})"
        )
    return columns


def _cells(
    fields: list[str], columns: dict[str, int], name_index: int, extra: int
) -> dict[str, str]:
    """The known columns' stripped text; ``extra`` surplus fields are rejoined into the name."""
    cells: dict[str, str] = {}
    for column, index in columns.items():
        if index < name_index:
            cells[column] = fields[index].strip()
        elif index == name_index:
            cells[column] = ",".join(fields[index : index + extra + 1]).strip()
        else:
            cells[column] = fields[index + extra].strip()
    return cells


def _parse_id(raw: str) -> int:
    """A catalogue id: a positive whole number that fits an INTEGER column."""
    if not raw:
        raise RowError("missing id")
    if not _DIGITS.fullmatch(raw):
        raise RowError(f"invalid id {raw!r}: expected a whole number")
    value = int(raw)
    if not 0 < value <= MAX_INT:
        raise RowError(f"id {raw} is out of range (1 to {MAX_INT})")
    return value


def _parse_values(cells: dict[str, str], product_id: int) -> dict[str, Any]:
    """The Product attributes of one row, validated; raise RowError with the reason."""
    values: dict[str, Any] = {}
    for column, attr in REQUIRED_COLUMNS.items():
        if attr in TEXT_LIMITS:
            text = cells[column]
            if len(text) > TEXT_LIMITS[attr]:
                raise RowError(f"{column} is longer than {TEXT_LIMITS[attr]} characters")
            if has_control_characters(text):
                # As the admin's forms: PostgreSQL refuses NUL, and the others hide text.
                raise RowError(f"{column} contains a control character (such as NUL)")
            values[attr] = text or None
    if values["name"] is None:
        # The name is required for display; build a plain one from the attributes we have.
        parts = [values["gender"], values["base_colour"], values["article_type"]]
        values["name"] = " ".join(p for p in parts if p) or f"Product {product_id}"
    values["year"] = _parse_year(cells["year"])
    if "price" in cells:
        values["price"] = _parse_price(cells["price"])
    if "stock" in cells:
        values["stock"] = _parse_stock(cells["stock"])
    return values


def _whole_number(raw: str) -> int | None:
    """``12`` or ``12.0`` as an int; None for anything else (``12.5``, ``abc``, ``inf``)."""
    try:
        number = Decimal(raw)
    except InvalidOperation:
        return None
    if not number.is_finite() or number != number.to_integral_value():
        return None
    return int(number)


def _parse_year(raw: str) -> int | None:
    """A four-digit year, ``2012`` or ``2012.0``; empty means unknown."""
    if not raw:
        return None
    year = _whole_number(raw)
    if year is None or not 1000 <= year <= 9999:
        raise RowError(f"invalid year {raw!r}: expected a four-digit year")
    return year


def _parse_price(raw: str) -> Decimal | None:
    """A non-negative price, rounded to cents as the NUMERIC(10, 2) column stores it."""
    if not raw:
        return None
    try:
        price = Decimal(raw)
    except InvalidOperation:
        price = None
    if price is None or not price.is_finite():
        raise RowError(f"invalid price {raw!r}: expected a number like 19.99")
    if price < 0:
        raise RowError(f"invalid price {raw!r}: must not be negative")
    # Rounded here so a re-import compares equal to what the database holds.
    price = price.quantize(CENT, rounding=ROUND_HALF_UP)
    if price > MAX_PRICE:
        raise RowError(f"invalid price {raw!r}: larger than {MAX_PRICE}")
    return price


def _parse_stock(raw: str) -> int | None:
    """A non-negative whole number of items; empty means unknown."""
    if not raw:
        return None
    stock = _whole_number(raw)
    if stock is None:
        raise RowError(f"invalid stock {raw!r}: expected a whole number")
    if not 0 <= stock <= MAX_INT:
        raise RowError(f"invalid stock {raw!r}: must be between 0 and {MAX_INT}")
    return stock
