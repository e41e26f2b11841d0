"""Image uploads: check what a file really is, then store it under a generated name.

Used by the admin product forms and by photo search. The checks, in order:

1. the body is not empty;
2. Pillow recognises the *content* as JPEG, PNG or WebP (the file name and the client's
   content type are never trusted; only those three decoders are even tried);
3. each side is within ``max_side`` and width x height within ``max_pixels``, checked from
   the header before any pixel is decoded (Pillow's own decompression-bomb limit applies as
   well, whichever is stricter). Together they bound the decode time: the pixel budget
   bounds the work, the side bound stops a strip, which passes the budget yet decodes
   slowly (a 1 x 40,000,000 PNG weighs tens of KB and took seconds); refused here, a
   bomb costs nothing;
4. ``verify()`` walks the file's structure, then a fresh decode of the whole file catches
   truncated files that ``verify()`` lets through (a JPEG at an eighth of its size: every
   byte of it is still read and entropy-decoded, so a cut or damaged file is still found,
   at a fraction of the cost of computing 12 megapixels nobody looks at here);
5. animated images (animated WebP, APNG) are refused: a product photo is one still
   picture, and keeping only the first frame would silently store something other than
   what the uploader chose.

Every failure raises :class:`InvalidImage` whose message can be shown to the uploader.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import tempfile
import uuid
from dataclasses import dataclass
from typing import BinaryIO

from flask import current_app
from PIL import Image
from werkzeug.datastructures import FileStorage

from webapp.media import OutsideMediaFolder, image_file, media_path

logger = logging.getLogger(__name__)

# Pillow format name -> extension used when the file is stored.
ALLOWED_FORMATS: dict[str, str] = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}
# For the form-level FileAllowed check (a first hint for the uploader; the content decides).
ALLOWED_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
MIMETYPES: dict[str, str] = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}

NOT_AN_IMAGE = "This file is not a JPEG, PNG or WebP image."
# Longest side accepted when a caller names none (the MAX_IMAGE_SIDE setting's default).
DEFAULT_MAX_SIDE = 16_384


class InvalidImage(ValueError):
    """An upload that is not an acceptable image; ``message`` is meant for the uploader."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class ValidatedImage:
    """An upload whose content passed every check, with what was learnt about it."""

    data: bytes
    format: str
    width: int
    height: int
    sha256: str
    original_filename: str | None = None

    @property
    def extension(self) -> str:
        """Extension for the stored file, from the detected format."""
        return ALLOWED_FORMATS[self.format]

    @property
    def mimetype(self) -> str:
        """Content type matching the detected format."""
        return MIMETYPES[self.format]


def _read_source(source: FileStorage | bytes | BinaryIO) -> tuple[bytes, str | None]:
    """The raw bytes of an upload and its original name (metadata only)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), None
    if isinstance(source, FileStorage):
        data = source.stream.read()
        return data, source.filename or None
    if hasattr(source, "read"):
        return source.read(), getattr(source, "name", None)
    raise TypeError(f"expected an upload, bytes or a binary file, got {type(source).__name__}")


def _format_pixels(n: int) -> str:
    """Pixel counts in the shopper's terms (megapixels)."""
    return f"{n / 1_000_000:.1f} megapixels" if n >= 100_000 else f"{n:,} pixels"


def validate_upload(source: FileStorage | bytes | BinaryIO) -> ValidatedImage:
    """``validate_image`` under the app's ``MAX_IMAGE_PIXELS`` and ``MAX_IMAGE_SIDE``."""
    cfg = current_app.config
    return validate_image(
        source, max_pixels=int(cfg["MAX_IMAGE_PIXELS"]), max_side=int(cfg["MAX_IMAGE_SIDE"])
    )


def validate_image(
    source: FileStorage | bytes | BinaryIO, *, max_pixels: int, max_side: int = DEFAULT_MAX_SIDE
) -> ValidatedImage:
    """Check that an upload really is a still JPEG, PNG or WebP image within ``max_pixels``
    and ``max_side``."""
    if max_pixels <= 0 or max_side <= 0:
        raise ValueError("max_pixels and max_side must be positive")
    data, filename = _read_source(source)
    if not data:
        raise InvalidImage("The file is empty. Please choose a photo to upload.")

    allowed = list(ALLOWED_FORMATS)
    try:
        with Image.open(io.BytesIO(data), formats=allowed) as img:
            fmt = img.format
            width, height = img.size
            # Header only so far: refuse huge images before a single pixel is decoded.
            _check_pixels(width, height, max_pixels, max_side)
            img.verify()
        with Image.open(io.BytesIO(data), formats=allowed) as img:
            # Phone cameras write multi-picture JPEGs (MPO): the first picture is the photo,
            # the others are previews, and browsers show the first. They are plain JPEGs.
            if fmt == "MPO":
                fmt = "JPEG"
            elif getattr(img, "is_animated", False) or getattr(img, "n_frames", 1) > 1:
                raise InvalidImage("Animated images are not accepted. Please upload a still photo.")
            if fmt == "JPEG":
                img.draft(None, (max(1, width // 8), max(1, height // 8)))
            img.load()
    except InvalidImage:
        raise
    except Image.DecompressionBombError as exc:
        # Pillow's own guard fires at open() for images far beyond its limit.
        raise InvalidImage(
            f"The image is too large: the limit is {_format_pixels(max_pixels)}."
        ) from exc
    except Exception as exc:
        # Corrupt data surfaces as many exception types (OSError, SyntaxError, ValueError,
        # struct.error, EOFError...); for the uploader they all mean the same thing.
        logger.info("rejected upload %r: %s: %s", filename, type(exc).__name__, exc)
        if isinstance(exc, OSError) and "truncated" in str(exc):
            raise InvalidImage(
                "The image is incomplete (the file seems truncated). Please upload it again."
            ) from exc
        if isinstance(exc, Image.UnidentifiedImageError):
            raise InvalidImage(NOT_AN_IMAGE) from exc
        raise InvalidImage("The image could not be read; the file may be damaged.") from exc

    if fmt not in ALLOWED_FORMATS:  # pragma: no cover - open() only tries the allowed decoders
        raise InvalidImage(NOT_AN_IMAGE)
    return ValidatedImage(
        data=data,
        format=fmt,
        width=width,
        height=height,
        sha256=hashlib.sha256(data).hexdigest(),
        original_filename=filename,
    )


def _check_pixels(width: int, height: int, max_pixels: int, max_side: int) -> None:
    """Refuse empty or oversized dimensions."""
    if width <= 0 or height <= 0:
        raise InvalidImage("The image has no pixels.")
    if max(width, height) > max_side:
        raise InvalidImage(
            f"The image is too large ({width} x {height} pixels): "
            f"each side may be at most {max_side:,} pixels."
        )
    if width * height > max_pixels:
        raise InvalidImage(
            f"The image is too large ({width} x {height} pixels): "
            f"the limit is {_format_pixels(max_pixels)}."
        )


def store_image(validated: ValidatedImage, media_folder: str, subdir: str = "products") -> str:
    """Save an image under a generated name, atomically; return its path relative to media."""
    try:
        target_dir = media_path(subdir, media_folder, allow_absolute=False)
    except OutsideMediaFolder as exc:
        raise ValueError(f"invalid media subfolder: {subdir!r}") from exc
    if target_dir is None:
        raise ValueError("invalid media subfolder: ''")
    os.makedirs(target_dir, exist_ok=True)
    name = uuid.uuid4().hex + validated.extension
    # Write beside the target and rename: readers never see a half-written photo, and a
    # failure leaves nothing behind.
    fd, tmp_path = tempfile.mkstemp(dir=target_dir, prefix=".upload-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(validated.data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_path, os.path.join(target_dir, name))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp_path)
        raise
    relative = (target_dir / name).relative_to(os.path.realpath(media_folder)).as_posix()
    logger.info(
        "stored image %s (%s, %dx%d, sha256 %s, uploaded as %r)",
        relative,
        validated.format,
        validated.width,
        validated.height,
        validated.sha256[:12],
        validated.original_filename,
    )
    return relative


def media_file_path(relative_path: str | None, media_folder: str) -> str | None:
    """A file we stored, as a string; kept for callers not yet moved to ``image_file``."""
    path = image_file(relative_path, media_folder, allow_absolute=False)
    return None if path is None else str(path)


def remove_stored_image(relative_path: str | None, media_folder: str) -> bool:
    """Delete a stored upload; never touches anything outside ``media_folder``."""
    try:
        path = media_path(relative_path, media_folder, allow_absolute=False)
    except OutsideMediaFolder:
        return False  # a catalogue photo read in place, or a bad row: not ours to delete
    if path is None:
        return False
    try:
        os.remove(path)
    except FileNotFoundError:
        return False
    except OSError:
        logger.warning("could not remove stored image %s", path, exc_info=True)
        return False
    logger.info("removed stored image %s", relative_path)
    return True
