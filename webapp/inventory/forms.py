"""Inventory forms: the bulk-import upload and one-button actions."""

from __future__ import annotations

from flask_wtf import FlaskForm
from flask_wtf.file import FileAllowed, FileField, FileRequired
from wtforms import SubmitField


class BulkImportForm(FlaskForm):
    """styles.csv and a ZIP of ``<id>.jpg`` photos."""

    styles = FileField(
        "styles.csv",
        validators=[
            FileRequired(message="Please choose the styles.csv file."),
            FileAllowed(["csv", "txt"], "The product list must be a .csv file."),
        ],
        description="The catalogue's columns (id, gender, masterCategory, …, productDisplayName); "
        "price and stock are optional.",
        render_kw={"accept": ".csv,text/csv"},
    )
    photos = FileField(
        "Photos (ZIP)",
        validators=[
            FileRequired(message="Please choose the ZIP file of photos."),
            FileAllowed(["zip"], "The photos must come as one .zip file."),
        ],
        description="One JPEG per product named <id>.jpg, in any folder of the archive.",
        render_kw={"accept": ".zip,application/zip"},
    )
    submit = SubmitField("Start the import")
