"""The request class: a body refused with 413 says which limit it hit.

Werkzeug answers three different limits with the same bare ``RequestEntityTooLarge``: the
whole body over ``max_content_length``, a multipart form with more parts than
``MAX_FORM_PARTS``, and one text field over ``MAX_FORM_MEMORY_SIZE``. Telling a client who
sent 10,000 tiny fields that "the limit is 8 MB" sends them looking in the wrong place, so
the form parser here counts the parts it has seen (the boundary lines, as the body streams
through, nothing kept) and re-raises with a description naming the limit that was hit.
The error handler shows that description; the size limit keeps its own message there.
"""

from __future__ import annotations

from typing import IO, Any

from flask import Request
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge
from werkzeug.formparser import FormDataParser


class _PartCounter:
    """A read-only stream wrapper that counts multipart delimiters as the body goes by."""

    def __init__(self, stream: IO[bytes], delimiter: bytes) -> None:
        self._stream = stream
        self._delimiter = delimiter
        self._tail = b""
        self.delimiters = 0
        self.over_length = False

    def read(self, size: int = -1) -> bytes:
        """Read from the body, counting the delimiters in what was read."""
        try:
            data = self._stream.read(size)
        except RequestEntityTooLarge:
            self.over_length = True  # the body itself is longer than allowed
            raise
        if data and self._delimiter:
            window = self._tail + data
            self.delimiters += window.count(self._delimiter)
            # Keep enough of the end that a delimiter split across two reads is seen once.
            keep = len(self._delimiter) - 1
            self._tail = window[-keep:] if keep else b""
        return data


NOT_A_FORM = "The request body is not a multipart/form-data form: no part starts with its boundary."


def form_parts_message(max_parts: int) -> str:
    """What a client that sent too many form fields is told."""
    return (
        f"That form has too many fields: at most {max_parts:,} fields and files are accepted "
        "in one request."
    )


def form_field_message(max_bytes: int) -> str:
    """What a client that sent an oversized text field is told."""
    return (
        f"A form field is too large: each text field may hold at most {max_bytes:,} bytes "
        "(files are limited by the upload size instead)."
    )


class CountingFormDataParser(FormDataParser):
    """Werkzeug's form parser, re-raising a 413 with the form limit that was hit."""

    def parse(
        self,
        stream: IO[bytes],
        mimetype: str,
        content_length: int | None,
        options: dict[str, str] | None = None,
    ) -> Any:
        """Parse as Werkzeug does; a 413 from a form limit names that limit."""
        if mimetype != "multipart/form-data":
            return super().parse(stream, mimetype, content_length, options)
        boundary = (options or {}).get("boundary", "").encode("latin-1", "replace")
        counter = _PartCounter(stream, b"--" + boundary if boundary else b"")
        try:
            return super().parse(counter, mimetype, content_length, options)  # type: ignore[arg-type]
        except RequestEntityTooLarge as exc:
            if counter.over_length:
                raise
            if counter.delimiters == 0:
                # No part ever began: not a form at all, whatever its size (a body sent
                # without a length is cut off here before the size limit is reached).
                raise BadRequest(NOT_A_FORM) from exc
            if self.max_form_parts is not None and counter.delimiters > self.max_form_parts:
                raise RequestEntityTooLarge(form_parts_message(self.max_form_parts)) from exc
            if self.max_form_memory_size is not None:
                raise RequestEntityTooLarge(form_field_message(self.max_form_memory_size)) from exc
            raise


class ShopRequest(Request):
    """Flask's request, with a form parser that says which form limit a 413 hit."""

    form_data_parser_class = CountingFormDataParser
