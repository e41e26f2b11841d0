"""Where a file named in the database or in a search request lives on disk: one rule.

A relative path names a file under the media folder (uploads, copied catalogue photos). It
may not lead out of that folder, whether through ``..`` or through a link, nor name the
folder itself: such a path is a bad row, never a file to read, serve or delete. An absolute
path is a catalogue photo read in place (only the importer writes one); it is taken as it
is where a product's photo is wanted, and refused where only files that we stored
ourselves may be meant (``allow_absolute=False``: deleting, search uploads).

Flask-free: the media folder is an argument, so the worker and the CLI use it as they are.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)


class OutsideMediaFolder(ValueError):
    """A stored path that does not name a file inside the media folder."""


def media_path(
    path: str | None, media_folder: str | os.PathLike[str], *, allow_absolute: bool = True
) -> Path | None:
    """The file behind a stored path; None when no path is stored.

    Raises ``OutsideMediaFolder`` for a relative path that leads out of the media folder
    (or names the folder itself), and for an absolute one unless ``allow_absolute``. The
    file need not exist: a caller that reads it handles its absence.
    """
    if not path:
        return None
    if os.path.isabs(path):
        if allow_absolute:
            return Path(path)
        raise OutsideMediaFolder(f"{path!r} is not a file stored in the media folder")
    try:
        root = os.path.realpath(media_folder)
        candidate = os.path.realpath(os.path.join(root, path))
    except ValueError as exc:  # a NUL byte: no file has that name
        raise OutsideMediaFolder(f"{path!r} is not a file name") from exc
    if candidate == root or os.path.commonpath([root, candidate]) != root:
        raise OutsideMediaFolder(f"{path!r} leads out of the media folder")
    return Path(candidate)


def image_file(
    image_path: str | None, media_folder: str | os.PathLike[str], *, allow_absolute: bool = True
) -> Path | None:
    """``media_path`` for readers that skip what they cannot use: None when no path is
    stored or when it leads out of the media folder (logged)."""
    try:
        return media_path(image_path, media_folder, allow_absolute=allow_absolute)
    except OutsideMediaFolder as exc:
        logger.warning("ignoring a stored path: %s", exc)
        return None
