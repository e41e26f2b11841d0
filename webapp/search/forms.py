"""Photo search forms: one photo to search with (and the part of it to search), two photos to
compare, one-button actions."""

from __future__ import annotations

from flask_wtf import FlaskForm
from flask_wtf.file import FileAllowed, FileField, FileRequired
from wtforms import BooleanField, FloatField, SubmitField
from wtforms.validators import Optional
from wtforms.widgets import NumberInput

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


def _percent_field(label: str) -> FloatField:
    # Typed numbers as well as the box drawn over the photo: the box's keyboard fallback.
    # Their rule (webapp.search.crop) is checked on the four together, in the view.
    return FloatField(
        label, validators=[Optional()], widget=NumberInput(step="any", min=0, max=100)
    )


class CropFields(FlaskForm):
    """The part of the photo to search, as percentages of its width and height: left and top
    edges, width and height (the whole photo when left as they are)."""

    crop_x = _percent_field("Left edge (%)")
    crop_y = _percent_field("Top edge (%)")
    crop_w = _percent_field("Width (%)")
    crop_h = _percent_field("Height (%)")

    def crop_values(self) -> list[float | None]:
        """The four percentages as typed (None where empty)."""
        return [self.crop_x.data, self.crop_y.data, self.crop_w.data, self.crop_h.data]

    def set_crop(self, percent: dict[str, float]) -> None:
        """Fill the four fields from ``crop.to_percent``'s values (unless the form was sent)."""
        if not self.is_submitted():
            for key in "xywh":
                getattr(self, f"crop_{key}").data = percent[key]


class PhotoSearchForm(CropFields):
    """Upload a photo to find products that look like it."""

    image = _photo_field("Your photo", "Please choose a photo to search with.")
    all_categories = BooleanField("Search within all categories (ignore the predicted category)")
    submit = SubmitField("Find similar products")


class CropSearchForm(CropFields):
    """Search the same photo again, within another part of it."""

    submit = SubmitField("Search this part of the photo")


class PhotoCompareForm(FlaskForm):
    """Upload two photos to see how alike they are."""

    image_1 = _photo_field("First photo", "Please choose the first photo.")
    image_2 = _photo_field("Second photo", "Please choose the second photo.")
    submit = SubmitField("Compare the photos")


class ActionForm(FlaskForm):
    """A one-button POST form: only the CSRF token matters."""
