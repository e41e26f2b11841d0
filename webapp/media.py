"""Where a product's photo lives on disk."""

from __future__ import annotations

import os
from pathlib import Path

from werkzeug.security import safe_join


def image_file(image_path: str | None, media_folder: str | os.PathLike) -> Path | None:
    """The file behind ``Product.image_path``: absolute paths as they are (a catalogue read in
    place), relative ones inside the media folder; None when unset or escaping the folder."""
    if not image_path:
        return None
    if os.path.isabs(image_path):
        return Path(image_path)
    joined = safe_join(os.fspath(media_folder), image_path)
    return Path(joined) if joined else None
