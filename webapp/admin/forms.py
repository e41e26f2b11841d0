"""Admin forms: product create/edit, list filters and the one-button action forms."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from flask_wtf import FlaskForm
from flask_wtf.file import FileAllowed, FileField, FileRequired
from wtforms import (
    BooleanField,
    DecimalField,
    HiddenField,
    IntegerField,
    SelectChoice,
    SelectField,
    StringField,
    SubmitField,
)
from wtforms.validators import DataRequired, Length, NumberRange, Optional, StopValidation

from webapp.uploads import ALLOWED_EXTENSIONS
from webapp.validators import PlainText

# Text attributes shared by both product forms: form field -> (label, max length).
TEXT_FIELDS: dict[str, tuple[str, int]] = {
    "gender": ("Gender", 40),
    "master_category": ("Master category", 80),
    "sub_category": ("Sub-category", 80),
    "article_type": ("Article type", 80),
    "base_colour": ("Base colour", 60),
    "season": ("Season", 40),
    "usage": ("Usage", 60),
}

IMAGE_HINT = "JPEG, PNG or WebP; a single still photo."
ALLOWED_MESSAGE = "Only JPEG, PNG or WebP images are accepted."

# Numeric(10, 2) holds at most 8 digits before the point.
MAX_PRICE = Decimal("99999999.99")
# Stock is a 32-bit integer column.
MAX_STOCK = 2**31 - 1


def _strip(value: Any) -> Any:
    """Trim text input; an empty box means "not set"."""
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return value


def _finite(form: FlaskForm, field: DecimalField) -> None:
    """Refuse NaN and infinity, which Decimal accepts but no price can be."""
    if field.data is not None and not field.data.is_finite():
        raise StopValidation("Enter a price from 0 to 99,999,999.99.")


def _text(label: str, max_length: int, datalist: str) -> StringField:
    return StringField(
        label,
        validators=[Optional(), Length(max=max_length), PlainText()],
        filters=[_strip],
        # Suggest values already in the catalogue without forcing them.
        render_kw={"list": datalist, "autocomplete": "off", "maxlength": max_length},
    )


class _ProductFields(FlaskForm):
    """Every Product attribute an admin can set."""

    name = StringField(
        "Name",
        validators=[
            DataRequired(message="Please give the product a name."),
            Length(max=300),
            PlainText(),
        ],
        filters=[_strip],
        render_kw={"maxlength": 300},
    )
    gender = _text(*TEXT_FIELDS["gender"], "options-gender")
    master_category = _text(*TEXT_FIELDS["master_category"], "options-master_category")
    sub_category = _text(*TEXT_FIELDS["sub_category"], "options-sub_category")
    article_type = _text(*TEXT_FIELDS["article_type"], "options-article_type")
    base_colour = _text(*TEXT_FIELDS["base_colour"], "options-base_colour")
    season = _text(*TEXT_FIELDS["season"], "options-season")
    usage = _text(*TEXT_FIELDS["usage"], "options-usage")
    year = IntegerField(
        "Year",
        validators=[
            Optional(),
            NumberRange(min=1900, max=2100, message="Enter a year such as 2012."),
        ],
    )
    price = DecimalField(
        "Price",
        places=2,
        validators=[
            Optional(),
            _finite,
            NumberRange(min=0, max=MAX_PRICE, message="Enter a price from 0 to 99,999,999.99."),
        ],
        description="Optional.",
    )
    stock = IntegerField(
        "Stock",
        validators=[
            Optional(),
            NumberRange(min=0, max=MAX_STOCK, message="Stock must be 0 or more."),
        ],
        description="Optional; leave empty if unknown (counts as available).",
    )
    active = BooleanField("Active (shown in the shop)", default=True)

    def product_data(self) -> dict[str, Any]:
        """The submitted Product attributes, as the services take them."""
        data = {name: getattr(self, name).data for name in ("name", *TEXT_FIELDS)}
        data.update(
            year=self.year.data,
            price=self.price.data,
            stock=self.stock.data,
            active=bool(self.active.data),
        )
        return data


class ProductCreateForm(_ProductFields):
    """New product: every attribute plus a required photo."""

    image = FileField(
        "Photo",
        validators=[
            FileRequired(message="Please choose a photo."),
            FileAllowed(ALLOWED_EXTENSIONS, ALLOWED_MESSAGE),
        ],
        description=IMAGE_HINT,
        render_kw={"accept": "image/jpeg,image/png,image/webp"},
    )
    submit = SubmitField("Create product")


class ProductEditForm(_ProductFields):
    """Existing product: the photo is replaced only when a new one is chosen."""

    image = FileField(
        "Replace photo",
        validators=[Optional(), FileAllowed(ALLOWED_EXTENSIONS, ALLOWED_MESSAGE)],
        description=IMAGE_HINT + " Leave empty to keep the current photo.",
        render_kw={"accept": "image/jpeg,image/png,image/webp"},
    )
    submit = SubmitField("Save changes")


class ProductFilterForm(FlaskForm):
    """List filters, read from the query string (a GET form needs no CSRF token)."""

    class Meta:
        csrf = False

    q = StringField(
        "Search", filters=[_strip], validators=[Optional(), Length(max=300), PlainText()]
    )
    status = SelectField(
        "Status",
        choices=[
            SelectChoice("all", "All"),
            SelectChoice("active", "Active"),
            SelectChoice("inactive", "Inactive"),
        ],
        default="all",
        validate_choice=False,
    )


class ActionForm(FlaskForm):
    """A one-button POST form (deactivate, reactivate, delete): only the CSRF token matters."""

    next = HiddenField()
