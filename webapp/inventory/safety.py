"""Checks on bulk-import uploads before anything is parsed or extracted.

Pure functions over files: the view runs them before it stores an upload, the worker again
before it extracts one. A ZIP is judged from its central directory alone (names, sizes,
ratios, offsets), so a ZIP bomb is refused without inflating a byte; a CSV is judged from its
raw line lengths and header width, so a file with a million columns never reaches the parser.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import zipfile
from dataclasses import dataclass, field
from typing import BinaryIO

logger = logging.getLogger(__name__)

# Members over this size must not compress better than the ratio limit.
RATIO_CHECK_FROM = 1024 * 1024
MAX_MEMBERS = 200_000
MAX_PHOTO_BYTES = 50 * 1024 * 1024
# A styles.csv line is about 150 bytes; the longest real product name is far below this.
MAX_CSV_LINE = 64 * 1024
MAX_CSV_COLUMNS = 200
# Local file header: 30 fixed bytes before the name, extra field and data.
LOCAL_HEADER = 30
PHOTO_NAME = re.compile(r"^(\d{1,10})\.jpe?g$", re.IGNORECASE)
IMAGE_SUFFIXES = (".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic")
MAX_ID = 2**31 - 1


class UploadRejected(ValueError):
    """An upload that cannot be imported at all; ``message`` is meant for the admin."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class ZipLimits:
    """How much a bulk-import ZIP may expand to."""

    max_uncompressed: int
    max_ratio: float
    max_members: int = MAX_MEMBERS
    max_photo_bytes: int = MAX_PHOTO_BYTES


@dataclass
class ZipPlan:
    """What a checked ZIP holds: the photo member for each product id, and what is ignored."""

    photos: dict[int, str] = field(default_factory=dict)
    ignored: list[tuple[str, str]] = field(default_factory=list)
    uncompressed: int = 0


def unsafe_name(name: str) -> str | None:
    """Why a member name could write outside the extraction folder, or None when it is safe."""
    if "\x00" in name:
        return "contains a NUL character"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "is an absolute path"
    if any(part == ".." for part in re.split(r"[\\/]", name)):
        return "climbs out of the folder with '..'"
    return None


def _human(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n} GB"  # pragma: no cover


def inspect_zip(source: str | os.PathLike | BinaryIO, limits: ZipLimits) -> ZipPlan:
    """Check a ZIP's directory against the limits and map ``<id>.jpg`` members to product ids."""
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        # The reason goes to the log: an OSError names the server's own path.
        logger.info("unreadable ZIP: %s: %s", type(exc).__name__, exc)
        raise UploadRejected(
            "The photo archive is not a readable ZIP file: it may be damaged or not a ZIP."
        ) from exc
    with archive:
        infos = archive.infolist()
    if len(infos) > limits.max_members:
        raise UploadRejected(
            f"The ZIP holds {len(infos):,} entries; at most {limits.max_members:,} are accepted."
        )
    plan = ZipPlan()
    compressed = 0
    for info in infos:
        problem = unsafe_name(info.filename)
        if problem:
            raise UploadRejected(
                f"The ZIP was refused: the entry {info.filename!r} {problem}. "
                "Entries must be plain names inside the archive."
            )
        if info.flag_bits & 0x1:
            raise UploadRejected(
                f"The ZIP was refused: {info.filename!r} is encrypted. Upload it without a password."
            )
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UploadRejected(f"The ZIP was refused: {info.filename!r} is a symbolic link.")
        if info.is_dir():
            continue
        plan.uncompressed += info.file_size
        compressed += info.compress_size
        if info.file_size > RATIO_CHECK_FROM and (
            info.compress_size == 0 or info.file_size / info.compress_size > limits.max_ratio
        ):
            raise UploadRejected(
                f"The ZIP was refused: {info.filename!r} would expand from "
                f"{_human(info.compress_size)} to {_human(info.file_size)}, more than "
                f"{limits.max_ratio:g} times its size (a ZIP bomb?)."
            )
    if plan.uncompressed > limits.max_uncompressed:
        raise UploadRejected(
            f"The ZIP was refused: its files would take {_human(plan.uncompressed)} unpacked; "
            f"the limit is {_human(limits.max_uncompressed)}."
        )
    if plan.uncompressed > RATIO_CHECK_FROM and (
        compressed == 0 or plan.uncompressed / compressed > limits.max_ratio
    ):
        raise UploadRejected(
            f"The ZIP was refused: it would expand from {_human(compressed)} to "
            f"{_human(plan.uncompressed)}, more than {limits.max_ratio:g} times its size "
            "(a ZIP bomb?)."
        )
    _check_overlaps(infos)
    _map_photos(infos, plan, limits)
    return plan


def _check_overlaps(infos: list[zipfile.ZipInfo]) -> None:
    """Refuse members whose data overlap: the trick behind non-recursive ZIP bombs."""
    ordered = sorted((i for i in infos if not i.is_dir()), key=lambda i: i.header_offset)
    for first, second in zip(ordered, ordered[1:], strict=False):
        end = (
            first.header_offset + LOCAL_HEADER + len(first.filename.encode()) + first.compress_size
        )
        if second.header_offset < end:
            raise UploadRejected(
                f"The ZIP was refused: the entries {first.filename!r} and {second.filename!r} "
                "share their data (a ZIP bomb trick)."
            )


def _map_photos(infos: list[zipfile.ZipInfo], plan: ZipPlan, limits: ZipLimits) -> None:
    """Photos are ``<id>.jpg`` in any folder of the archive; everything else is reported."""
    for info in infos:
        if info.is_dir():
            continue
        name = info.filename
        base = re.split(r"[\\/]", name)[-1]
        if base.startswith(".") or name.startswith("__MACOSX/"):
            plan.ignored.append((name, "hidden or system file"))
            continue
        match = PHOTO_NAME.match(base)
        if not match:
            if base.lower().endswith(IMAGE_SUFFIXES):
                reason = "only JPEG photos named <id>.jpg are imported"
            else:
                reason = "not a product photo (expected <id>.jpg)"
            plan.ignored.append((name, reason))
            continue
        product_id = int(match.group(1))
        if not 0 < product_id <= MAX_ID:
            plan.ignored.append((name, f"{product_id} is not a valid product id"))
        elif info.file_size > limits.max_photo_bytes:
            plan.ignored.append(
                (
                    name,
                    f"photo is {_human(info.file_size)}; the limit is "
                    f"{_human(limits.max_photo_bytes)}",
                )
            )
        elif product_id in plan.photos:
            plan.ignored.append(
                (
                    name,
                    f"another photo for product {product_id} came first: {plan.photos[product_id]}",
                )
            )
        else:
            plan.photos[product_id] = name


def extract_photos(
    source: str | os.PathLike, plan: ZipPlan, images_dir: str | os.PathLike
) -> list[tuple[str, str]]:
    """Write each planned photo to ``images_dir/<id>.jpg``; return members that failed.

    Idempotent: a photo already extracted with the right size is left alone. Every read is
    capped at the size the directory declared, whatever the compressed stream claims.
    """
    os.makedirs(images_dir, exist_ok=True)
    failed: list[tuple[str, str]] = []
    with zipfile.ZipFile(source) as archive:
        for product_id, name in plan.photos.items():
            info = archive.getinfo(name)
            dest = os.path.join(os.fspath(images_dir), f"{product_id}.jpg")
            if os.path.isfile(dest) and os.path.getsize(dest) == info.file_size:
                continue
            partial = dest + ".part"
            try:
                with archive.open(info) as src, open(partial, "wb") as out:
                    written = 0
                    while chunk := src.read(1024 * 1024):
                        written += len(chunk)
                        if written > info.file_size:
                            raise zipfile.BadZipFile("more data than its directory entry says")
                        out.write(chunk)
                os.replace(partial, dest)
            except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError) as exc:
                if os.path.exists(partial):
                    os.remove(partial)
                failed.append((name, f"damaged in the ZIP: {exc}"))
    return failed


def inspect_csv(
    source: str | os.PathLike | BinaryIO,
    *,
    max_line: int = MAX_CSV_LINE,
    max_columns: int = MAX_CSV_COLUMNS,
) -> int:
    """Refuse a styles.csv whose lines or header are absurdly long; return its line count."""
    handle = open(source, "rb") if isinstance(source, (str, os.PathLike)) else source  # noqa: SIM115
    try:
        header = handle.readline(max_line + 1)
        if not header.strip():
            raise UploadRejected("styles.csv is empty: it has no header row.")
        columns = header.count(b",") + 1
        if len(header) > max_line and not header.endswith(b"\n"):
            raise UploadRejected(
                f"styles.csv was refused: its header is longer than {_human(max_line)} "
                f"(over {columns:,} columns); a catalogue header has about ten columns and "
                f"at most {max_columns} are accepted."
            )
        if columns > max_columns:
            raise UploadRejected(
                f"styles.csv was refused: its header has {columns:,} columns; "
                f"at most {max_columns} are accepted."
            )
        lines = 1
        while line := handle.readline(max_line + 1):
            lines += 1
            if len(line) > max_line and not line.endswith(b"\n"):
                raise UploadRejected(
                    f"styles.csv was refused: line {lines} is longer than {_human(max_line)}."
                )
        return lines
    finally:
        if handle is not source:
            handle.close()
