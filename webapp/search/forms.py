"""Photo search forms: one photo to search with, two photos to compare, one-button actions."""

from __future__ import annotations

from flask_wtf import FlaskForm
from flask_wtf.file import FileAllowed, FileField, FileRequired
from wtforms import BooleanField, SubmitField

from webapp.uploads import ALLOWED_EXTENSIONS

PHOTO_HINT = "JPEG, PNG or WebP, one still photo."
ALLOWED_MESSAGE = "Only JPEG, PNG or WebP photos are accepted."
ACCEPT = "image/jpeg,image/png,image/webp"


def _photo_field(label: str, missing: str) -> FileField:
    return FileField(
        label,
        validators=[
            FileRequired(message=missing),
            FileAllowed(ALLOWED_EXTENSIONS, ALLOWED_MESSAGE),
        ],
        description=PHOTO_HINT,
        render_kw={"accept": ACCEPT},
    )


class PhotoSearchForm(FlaskForm):
    """Upload a photo to find products that look like it."""

    image = _photo_field("Your photo", "Please choose a photo to search with.")
    all_categories = BooleanField("Search within all categories (ignore the predicted category)")
    submit = SubmitField("Find similar products")


class PhotoCompareForm(FlaskForm):
    """Upload two photos to see how alike they are."""

    image_1 = _photo_field("First photo", "Please choose the first photo.")
    image_2 = _photo_field("Second photo", "Please choose the second photo.")
    submit = SubmitField("Compare the photos")


class ActionForm(FlaskForm):
    """A one-button POST form: only the CSRF token matters."""
