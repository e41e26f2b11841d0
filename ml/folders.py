"""Writing a folder of files so that readers see the old folder or the new one, never a mix."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


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
