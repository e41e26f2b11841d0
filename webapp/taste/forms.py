"""Taste forms: clearing one list, or all of them."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import HiddenField
from wtforms.validators import AnyOf

from webapp.taste.entries import CLEAR_KINDS


class TasteClearForm(FlaskForm):
    """Forget the likes, the recently viewed products, the "not interested" marks, or all."""

    kind = HiddenField(validators=[AnyOf(CLEAR_KINDS, message="Nothing to clear by that name.")])
