"""Writing a file or a folder of files so that readers see the old one or the new one,
never a mix."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def replace_folder(folder: str | os.PathLike, fill: Callable[[Path], None]) -> Path:
    """Let ``fill`` write into a fresh temporary folder beside ``folder``, then swap it in
    with two renames (the old folder, if any, is removed afterwards). A failure leaves the
    old folder as it was."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        fill(tmp)
        old = folder.with_name(f".{folder.name}-old")
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def write_json(
    path: str | os.PathLike, data: Any, *, indent: int | None = None, sort_keys: bool = False
) -> Path:
    """Write ``data`` as JSON to a temporary file beside ``path``, then rename it over
    ``path`` (creating the folder first); a failure leaves the old file as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=indent, sort_keys=sort_keys)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
