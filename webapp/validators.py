"""Text that people type: no NUL, no other control characters.

Nobody types a control character into a name or an email box; one that arrives was pasted
by accident or sent on purpose. NUL is refused by PostgreSQL (a 500 where SQLite would
store it), and the others hide text in pages, CSV exports and logs. Forms refuse them with
a message on the field rather than dropping them silently, so what is saved is what was
seen. (The catalogue's search box, a GET link, drops them instead: there is no form to
correct there.)
"""

from __future__ import annotations

import re
from typing import Any

from wtforms.validators import ValidationError

# C0 controls (NUL, tab, newlines...), DEL and the C1 controls.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MESSAGE = "Remove the control characters (such as NUL) from this text: only plain text is accepted."


def has_control_characters(text: str | None) -> bool:
    """Whether ``text`` holds a control character."""
    return bool(text) and CONTROL_CHARACTERS.search(text) is not None


def without_control_characters(text: str) -> str:
    """``text`` with its control characters removed (for metadata such as a file's name)."""
    return CONTROL_CHARACTERS.sub("", text)


class PlainText:
    """A WTForms validator: refuse text holding a control character."""

    def __init__(self, message: str = MESSAGE) -> None:
        self.message = message

    def __call__(self, form: Any, field: Any) -> None:
        if isinstance(field.data, str) and has_control_characters(field.data):
            raise ValidationError(self.message)
