"""Account forms: register, sign in, preferences."""

from __future__ import annotations

from typing import Any

from flask_wtf import FlaskForm
from wtforms import BooleanField, EmailField, PasswordField, SelectMultipleField, SubmitField
from wtforms.validators import DataRequired, Email, EqualTo, InputRequired, Length

from webapp.account.services import CatalogueChoices
from webapp.preferences import Preferences
from webapp.validators import PlainText

PASSWORD_MIN_LENGTH = 8
# Long enough for any passphrase, short enough that hashing stays cheap.
PASSWORD_MAX_LENGTH = 256


def _normalise_email(value: Any) -> Any:
    """Trim and lower-case a submitted email so lookups and uniqueness ignore case."""
    return value.strip().lower() if isinstance(value, str) else value


class UserRegisterForm(FlaskForm):
    """Create a shopper account."""

    email = EmailField(
        "Email",
        filters=[_normalise_email],
        validators=[
            DataRequired("Enter your email address."),
            Length(max=254, message="That email address is too long."),
            PlainText(),
            Email("Enter a valid email address, like name@example.com."),
        ],
        render_kw={"autocomplete": "email"},
    )
    password = PasswordField(
        "Password",
        validators=[
            InputRequired("Choose a password."),
            Length(
                min=PASSWORD_MIN_LENGTH,
                max=PASSWORD_MAX_LENGTH,
                message=f"Use between {PASSWORD_MIN_LENGTH} and {PASSWORD_MAX_LENGTH} characters.",
            ),
        ],
        description=f"At least {PASSWORD_MIN_LENGTH} characters.",
        render_kw={"autocomplete": "new-password"},
    )
    confirm = PasswordField(
        "Repeat the password",
        validators=[
            InputRequired("Repeat the password."),
            EqualTo("password", message="The two passwords do not match."),
        ],
        render_kw={"autocomplete": "new-password"},
    )
    submit = SubmitField("Create account")


class UserLoginForm(FlaskForm):
    """Sign in with email and password."""

    email = EmailField(
        "Email",
        filters=[_normalise_email],
        validators=[DataRequired("Enter your email address."), PlainText()],
        render_kw={"autocomplete": "email"},
    )
    password = PasswordField(
        "Password",
        validators=[InputRequired("Enter your password.")],
        render_kw={"autocomplete": "current-password"},
    )
    remember = BooleanField("Keep me signed in on this device")
    submit = SubmitField("Sign in")


def _catalogue_field(what: str) -> SelectMultipleField:
    """A multi-choice field that accepts only the catalogue's own values."""
    return SelectMultipleField(
        choices=[],
        invalid_choice_message=f"Not one of the catalogue's {what}: '%(value)s'.",
    )


class PreferencesUpdateForm(FlaskForm):
    """Disliked colours, preferred genders and hidden categories."""

    colours = _catalogue_field("colours")
    genders = _catalogue_field("genders")
    hide_master = _catalogue_field("master categories")
    hide_sub = _catalogue_field("sub-categories")
    hide_type = _catalogue_field("article types")
    hide_disliked_colours = BooleanField(
        "Hide products in my disliked colours from the catalogue", default=True
    )
    submit = SubmitField("Save preferences")

    def set_choices(self, choices: CatalogueChoices) -> None:
        """Allow exactly the values the catalogue has now."""
        self.colours.choices = choices.colours
        self.genders.choices = choices.genders
        self.hide_master.choices = choices.masters
        self.hide_sub.choices = choices.subs
        self.hide_type.choices = choices.types

    def fill(self, prefs: Preferences) -> None:
        """Show stored preferences (on GET, before anything is submitted)."""
        self.colours.data = sorted(prefs.disliked_colours)
        self.genders.data = sorted(prefs.genders)
        self.hide_master.data = sorted(prefs.hidden["master"])
        self.hide_sub.data = sorted(prefs.hidden["sub"])
        self.hide_type.data = sorted(prefs.hidden["type"])
        self.hide_disliked_colours.data = prefs.hide_disliked_colours

    def to_preferences(self) -> Preferences:
        """The submitted preferences as the shared value type."""
        return Preferences(
            disliked_colours=set(self.colours.data or ()),
            genders=set(self.genders.data or ()),
            hidden={
                "master": set(self.hide_master.data or ()),
                "sub": set(self.hide_sub.data or ()),
                "type": set(self.hide_type.data or ()),
            },
            hide_disliked_colours=bool(self.hide_disliked_colours.data),
        )

    def selected(self) -> dict[str, set[str]]:
        """What is ticked now, per field, for rendering the checkboxes."""
        return {
            "colours": set(self.colours.data or ()),
            "genders": set(self.genders.data or ()),
            "master": set(self.hide_master.data or ()),
            "sub": set(self.hide_sub.data or ()),
            "type": set(self.hide_type.data or ()),
        }


class PreferencesResetForm(FlaskForm):
    """Forget every preference."""

    clear = SubmitField("Reset preferences")
