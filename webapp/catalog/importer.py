"""Import a Kaggle-style catalogue folder (``styles.csv`` + ``images/<id>.jpg``) into the DB.

Used by ``flask catalog import`` and reusable by background jobs (admin bulk imports): it
needs a SQLAlchemy session and plain arguments, nothing else from Flask.

The import is an upsert keyed by the catalogue id. Existing rows are loaded in one query;
new rows are inserted and changed rows updated in batches, one commit per batch, so a
re-run of the same file writes nothing and an interrupted run can simply be started again.
Only the columns the file provides are managed: ``price`` and ``stock`` are left alone when
the file has no such column, ``active`` is never changed, and products that are not in the
file are kept as they are.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from PIL import Image, UnidentifiedImageError
from sqlalchemy import exc as sa_exc
from sqlalchemy import insert, inspect, select, text, update
from sqlalchemy.orm import Session, scoped_session

from webapp.catalog.parsing import CatalogError, ParsedStyles, Skip, StyleRow, parse_styles
from webapp.models import Product

logger = logging.getLogger(__name__)

ImageMode = Literal["inplace", "copy"]
IMAGE_MODES: tuple[str, ...] = ("inplace", "copy")
STYLES_FILE = "styles.csv"
IMAGES_DIR = "images"
# Copied images live under MEDIA_FOLDER/<this>/<id>.jpg; the DB holds the relative path.
MEDIA_SUBDIR = "catalog"

Progress = Callable[[int, int], None]


@dataclass
class ImportResult:
    """What an import did: ids inserted, updated and unchanged, and the rows skipped."""

    inserted: list[int] = field(default_factory=list)
    updated: list[int] = field(default_factory=list)
    unchanged: list[int] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    styles_path: str = ""
    image_mode: str = "inplace"
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        """The four totals, for summaries and job progress."""
        return {
            "inserted": len(self.inserted),
            "updated": len(self.updated),
            "unchanged": len(self.unchanged),
            "skipped": len(self.skipped),
        }


@dataclass(frozen=True)
class CatalogSource:
    """Where a catalogue's styles.csv and image folder are."""

    styles_path: str
    images_dir: str


def resolve_source(path: str | os.PathLike[str]) -> CatalogSource:
    """Find styles.csv and images/ for a catalogue folder (or a path to its styles.csv)."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise CatalogError(f"{path} does not exist")
    if os.path.isdir(path):
        folder, styles = path, os.path.join(path, STYLES_FILE)
        if not os.path.isfile(styles):
            raise CatalogError(f"{path} has no {STYLES_FILE}")
    else:
        folder, styles = os.path.dirname(path), path
    images = os.path.join(folder, IMAGES_DIR)
    if not os.path.isdir(images):
        raise CatalogError(f"{folder} has no {IMAGES_DIR}/ folder next to {STYLES_FILE}")
    return CatalogSource(styles, images)


def read_styles(styles_path: str, *, limit: int | None = None) -> ParsedStyles:
    """Open styles.csv (UTF-8, with or without a byte-order mark) and parse it."""
    try:
        with open(styles_path, encoding="utf-8-sig", newline="") as handle:
            return parse_styles(handle, limit=limit)
    except OSError as exc:
        raise CatalogError(f"cannot read {styles_path}: {exc.strerror}") from exc


def check_image_bytes(data: bytes, max_pixels: int | None) -> str | None:
    """Why these bytes are not a usable image, or None when Pillow can read their header."""
    try:
        with warnings.catch_warnings():
            # We apply our own pixel limit below; Pillow's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
    except Image.DecompressionBombError:
        return "image is too large"
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        # Pillow's reasons name its own internals (an in-memory file's address): log them.
        logger.info("unreadable image: %s: %s", type(exc).__name__, exc)
        return "not a readable image"
    if max_pixels and width * height > max_pixels:
        return f"image is too large ({width}x{height} pixels)"
    return None


def import_catalog(
    path: str | os.PathLike[str],
    *,
    session: Session | scoped_session[Session],
    image_mode: str = "inplace",
    media_folder: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    batch_size: int = 1000,
    limit: int | None = None,
    max_image_pixels: int | None = None,
) -> ImportResult:
    """Upsert a catalogue folder into the product table and report what happened.

    ``image_mode`` "inplace" stores each image's absolute path; "copy" copies it to
    ``media_folder/catalog/<id>.jpg`` and stores that relative path. ``progress(done, total)``
    is called after each batch. Raises CatalogError when nothing can be imported.
    """
    started = time.perf_counter()
    _check_options(image_mode, media_folder, batch_size)
    source = resolve_source(path)
    parsed = read_styles(source.styles_path, limit=limit)
    _require_product_table(session)
    copy_dir = _make_copy_dir(media_folder) if image_mode == "copy" else None

    columns = (*parsed.attributes, "image_path", "image_sha256")
    existing = _load_existing(session, columns)
    result = ImportResult(
        skipped=list(parsed.skips), styles_path=source.styles_path, image_mode=image_mode
    )
    total = len(parsed.rows)
    if progress:
        progress(0, total)
    for start in range(0, total, batch_size):
        batch = parsed.rows[start : start + batch_size]
        images = [
            _prepare_image(row, source, copy_dir, existing.get(row.id), max_image_pixels)
            for row in batch
        ]
        inserts, updates = _sort_batch(batch, images, existing, columns, result)
        _write_batch(session, inserts, updates, batch)
        if progress:
            progress(start + len(batch), total)
    result.skipped.sort(key=lambda s: s.line)
    if result.inserted or result.updated:
        # Fresh planner statistics let SQLite and PostgreSQL pick the (active, facet) indexes.
        session.execute(text("ANALYZE"))
        session.commit()
    result.seconds = time.perf_counter() - started
    logger.info("catalogue import of %s: %s", source.styles_path, result.counts())
    return result


def _check_options(
    image_mode: str, media_folder: str | os.PathLike[str] | None, batch_size: int
) -> None:
    """A CatalogError for an unknown image mode, a copy without a folder or an empty batch."""
    if image_mode not in IMAGE_MODES:
        raise CatalogError(
            f"image mode must be one of {', '.join(IMAGE_MODES)}, not {image_mode!r}"
        )
    if image_mode == "copy" and not media_folder:
        raise CatalogError("copying images needs a media folder")
    if batch_size < 1:
        raise CatalogError("batch size must be at least 1")


def _make_copy_dir(media_folder: str | os.PathLike[str]) -> str:
    """The folder copied images go to, created when missing."""
    copy_dir = os.path.join(os.fspath(media_folder), MEDIA_SUBDIR)
    try:
        os.makedirs(copy_dir, exist_ok=True)
    except OSError as exc:
        raise CatalogError(f"cannot create {copy_dir}: {exc.strerror}") from exc
    return copy_dir


def _sort_batch(
    batch: list[StyleRow],
    images: list[tuple[str, str] | Skip],
    existing: dict[int, dict[str, Any]],
    columns: tuple[str, ...],
    result: ImportResult,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One batch's rows to insert and to update, given each row's prepared image; each row
    is recorded in ``result`` as inserted, updated, unchanged or skipped (image unusable)."""
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    now = datetime.now(UTC)
    for row, image in zip(batch, images, strict=True):
        old = existing.get(row.id)
        if isinstance(image, Skip):
            result.skipped.append(image)
            continue
        values = {**row.values, "image_path": image[0], "image_sha256": image[1]}
        if old is None:
            inserts.append(
                {"id": row.id, **values, "active": True, "created_at": now, "updated_at": now}
            )
            result.inserted.append(row.id)
        elif any(old[c] != values[c] for c in columns):
            updates.append({"id": row.id, **values, "updated_at": now})
            result.updated.append(row.id)
        else:
            result.unchanged.append(row.id)
    return inserts, updates


def _require_product_table(session: Session | scoped_session[Session]) -> None:
    """Fail early, with a hint, when the schema has not been created yet."""
    try:
        has_table = inspect(session.get_bind()).has_table(Product.__tablename__)
    except sa_exc.SQLAlchemyError as exc:
        raise CatalogError(f"cannot reach the database: {exc.__class__.__name__}: {exc}") from exc
    if not has_table:
        raise CatalogError(
            "the database has no product table yet: create the schema first "
            "(flask --app wsgi db upgrade)"
        )


def _load_existing(
    session: Session | scoped_session[Session], columns: tuple[str, ...]
) -> dict[int, dict[str, Any]]:
    """Every product's managed columns, in one query, keyed by id."""
    query = select(Product.id, *(getattr(Product, c) for c in columns))
    with warnings.catch_warnings():
        # SQLite keeps NUMERIC as a float; SQLAlchemy warns once. Prices are cents, so the
        # round trip is exact for the values the parser accepts.
        warnings.filterwarnings("ignore", message=".*does \\*not\\* support Decimal.*")
        rows = session.execute(query).all()
    return {row[0]: dict(zip(columns, row[1:], strict=True)) for row in rows}


def _prepare_image(
    row: StyleRow,
    source: CatalogSource,
    copy_dir: str | None,
    old: dict[str, Any] | None,
    max_pixels: int | None,
) -> tuple[str, str] | Skip:
    """Check (and in copy mode copy) a row's image: (image_path, sha256), or why it is skipped."""
    name = f"{row.id}.jpg"
    shown = f"{IMAGES_DIR}/{name}"
    src = os.path.join(source.images_dir, name)
    try:
        with open(src, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return Skip(row.line, str(row.id), f"image missing: {shown}")
    except OSError as exc:
        return Skip(row.line, str(row.id), f"image unreadable: {shown} ({exc.strerror})")
    if not data:
        return Skip(row.line, str(row.id), f"image empty: {shown}")
    digest = hashlib.sha256(data).hexdigest()
    # An image whose bytes are already in the DB passed this check before; only decode
    # new or changed files, which keeps a re-run of a large catalogue fast.
    if old is None or old["image_sha256"] != digest:
        problem = check_image_bytes(data, max_pixels)
        if problem:
            return Skip(row.line, str(row.id), f"image unreadable: {shown} ({problem})")
    if copy_dir is None:
        return src, digest
    relative = f"{MEDIA_SUBDIR}/{name}"
    _copy_image(
        data, os.path.join(copy_dir, name), unchanged=bool(old) and _same(old, relative, digest)
    )
    return relative, digest


def _same(old: dict[str, Any], relative: str, digest: str) -> bool:
    """True when the DB already points at this copy with these bytes."""
    return old["image_path"] == relative and old["image_sha256"] == digest


def _copy_image(data: bytes, dest: str, *, unchanged: bool) -> None:
    """Write an image into the media folder unless an identical copy is already there."""
    if unchanged and os.path.isfile(dest) and os.path.getsize(dest) == len(data):
        return
    partial = f"{dest}.part"
    try:
        with open(partial, "wb") as handle:
            handle.write(data)
        # Rename so a reader never sees half a file.
        os.replace(partial, dest)
    except OSError as exc:
        raise CatalogError(f"cannot write {dest}: {exc.strerror}") from exc


def _write_batch(
    session: Session | scoped_session[Session],
    inserts: list[dict[str, Any]],
    updates: list[dict[str, Any]],
    batch: list[StyleRow],
) -> None:
    """Insert and update one batch and commit it; a database error becomes a CatalogError."""
    if not inserts and not updates:
        return
    try:
        if inserts:
            session.execute(insert(Product), inserts)
        if updates:
            session.execute(update(Product), updates)
        session.commit()
    except sa_exc.SQLAlchemyError as exc:
        session.rollback()
        detail = getattr(exc, "orig", None) or exc
        raise CatalogError(
            f"the database refused the rows on lines {batch[0].line}-{batch[-1].line}: {detail}. "
            "Earlier batches were saved; running the import again continues safely."
        ) from exc
