"""Bulk import jobs, the web side: upload checks, queueing a stage, progress and the report.

A job is an :class:`~webapp.models.ImportJob` row plus a working folder
``IMPORT_FOLDER/<id>/`` holding the uploads. Two Celery tasks run it, one stage each, sent
by name (the worker's code is never imported here):

1. ``worker.tasks.import_products`` (default queue): rows into the database, the report of
   skipped rows and files, exact and perceptual duplicates;
2. ``worker.tasks.ml_index_import`` (``index`` queue, by the Celery routes): embeddings and
   neighbour lists of the new and changed products, near duplicates, done.

Every step is idempotent, so a job is resumed by simply sending its stage again; a lock per
stage (:mod:`webapp.inventory.job_lock`) keeps two workers from running it at once, and a
job no live process holds can be resumed from its page.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import current_app
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError
from sqlalchemy import select
from werkzeug.datastructures import FileStorage

from webapp.catalog.importer import read_styles
from webapp.catalog.parsing import CatalogError, ParsedStyles
from webapp.extensions import db, send_task
from webapp.inventory.job_lock import JobLock
from webapp.inventory.safety import UploadRejected, ZipLimits, inspect_csv, inspect_zip
from webapp.models import ImportJob, ImportJobRow, ImportJobStatus, User
from webapp.validators import without_control_characters

logger = logging.getLogger(__name__)

CSV_NAME = "styles.csv"  # the names the catalogue importer expects
IMAGES_DIR = "images"
ZIP_NAME = "photos.zip"
BASELINE_NAME = "baseline.json"
OUTCOME_NAME = "outcome.json"
PLAN_NAME = "index-plan.npz"
IMPORT_TASK = "worker.tasks.import_products"
INDEX_TASK = "worker.tasks.ml_index_import"
STAGE_LABELS = {
    "import": "Importing rows",
    "index": "Embedding photos and updating similar-products lists",
    "finished": "Finished",
}


def utcnow() -> datetime:
    """Timezone-aware now."""
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; they were written in UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def imports_folder() -> Path:
    """Where the uploads of every job wait (by default beside the photos, which every
    worker already shares)."""
    folder = current_app.config.get("IMPORT_FOLDER")
    return Path(folder or os.path.join(current_app.config["MEDIA_FOLDER"], "imports"))


def job_folder(job_id: int) -> Path:
    """The working folder of one job."""
    return imports_folder() / str(int(job_id))


def zip_limits() -> ZipLimits:
    """The configured ZIP-bomb guards."""
    cfg = current_app.config
    return ZipLimits(
        max_uncompressed=int(cfg["IMPORT_MAX_UNCOMPRESSED"]),
        max_ratio=float(cfg["IMPORT_MAX_RATIO"]),
    )


def get_job(job_id: int) -> ImportJob | None:
    """One job, or None."""
    return db.session.get(ImportJob, job_id)


# -- starting a job ----------------------------------------------------------------------


def check_csv(path: Path) -> ParsedStyles:
    """Refuse an unusable styles.csv before it is queued: size, width, header, encoding."""
    if path.stat().st_size == 0:
        raise UploadRejected("styles.csv is empty: it has no header row.")
    inspect_csv(path)
    try:
        parsed = read_styles(str(path))
    except CatalogError as exc:
        raise UploadRejected(str(exc)) from exc
    if not parsed.rows and not parsed.skips:
        raise UploadRejected("styles.csv has a header but no product rows.")
    return parsed


def create_job(csv_file: FileStorage, zip_file: FileStorage, user: User) -> ImportJob:
    """Check and store the uploads, add the job row and queue its first stage.

    Raises UploadRejected (nothing is stored) when either file cannot be imported.
    """
    root = imports_folder()
    root.mkdir(parents=True, exist_ok=True)
    incoming = Path(tempfile.mkdtemp(prefix=".incoming-", dir=root))
    try:
        csv_path, zip_path = incoming / CSV_NAME, incoming / ZIP_NAME
        csv_file.save(csv_path)
        zip_file.save(zip_path)
        parsed = check_csv(csv_path)
        plan = inspect_zip(zip_path, zip_limits())
        if not plan.photos:
            raise UploadRejected(
                "The ZIP holds no product photos: name each photo <id>.jpg, with the id of "
                "its row in styles.csv."
            )
        job = ImportJob(
            user_id=user.id,
            started_by=user.email,
            # The client's file names are metadata only; PostgreSQL refuses NUL in text.
            csv_filename=without_control_characters(csv_file.filename or CSV_NAME)[:255],
            zip_filename=without_control_characters(zip_file.filename or ZIP_NAME)[:255],
            rows_total=len(parsed.rows) + len(parsed.skips),
            status=ImportJobStatus.QUEUED,
            stage="import",
        )
        db.session.add(job)
        db.session.commit()
        target = job_folder(job.id)
        if target.exists():  # left over from a database that was reset
            shutil.rmtree(target)
        os.replace(incoming, target)
    except BaseException:
        db.session.rollback()
        shutil.rmtree(incoming, ignore_errors=True)
        raise
    logger.info("import job %s queued by %s: %d rows", job.id, user.email, job.rows_total)
    enqueue(job)
    return job


def enqueue(job: ImportJob) -> bool:
    """Queue the job's current stage; False (and a note on the job) when the queue is down."""
    try:
        # Embedding a whole import is catalogue-scale work: the routes queue it with the
        # full index builds, so photo searches never wait behind it.
        result = send_task(INDEX_TASK if job.stage == "index" else IMPORT_TASK, (job.id,))
    except (OperationalError, RedisError, OSError) as exc:
        logger.warning("could not queue import job %s: %s", job.id, exc)
        job.message = "The task queue is unreachable; the job starts when a worker can take it."
        db.session.commit()
        return False
    job.task_id = result.id
    db.session.commit()
    return True


def resume(job: ImportJob) -> bool:
    """Queue an unfinished or failed job again at the stage it reached."""
    if job.status == ImportJobStatus.DONE:
        return False
    if job.status == ImportJobStatus.FAILED:
        if not (job_folder(job.id) / CSV_NAME).exists():
            return False
        job.status = ImportJobStatus.QUEUED
        job.message = None
        db.session.commit()
    return enqueue(job)


def can_resume(job: ImportJob) -> bool:
    """Failed with its files still there, or unfinished with no live worker holding it."""
    if job.status == ImportJobStatus.DONE:
        return False
    if not (job_folder(job.id) / CSV_NAME).exists() and job.stage == "import":
        return False
    if job.status == ImportJobStatus.FAILED:
        return True
    try:
        return not JobLock(job.id, job.stage).held()
    except Exception:
        return False


# -- progress and report -----------------------------------------------------------------


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def progress(job: ImportJob) -> dict[str, Any]:
    """The numbers a progress page shows, as JSON-ready values."""
    finished = job.status in (ImportJobStatus.DONE, ImportJobStatus.FAILED)
    index_units = job.index_total if job.stage != "import" else job.rows_total
    total = job.rows_total + index_units
    done_units = job.rows_done + (job.index_done if job.stage != "import" else 0)
    if job.status == ImportJobStatus.DONE:
        percent = 100
    else:
        percent = min(99, int(100 * done_units / total)) if total else 0
    eta = None
    started = _aware(job.started_at)
    if job.status == ImportJobStatus.RUNNING and started and 0 < done_units < total:
        elapsed = (utcnow() - started).total_seconds()
        eta = max(0.0, elapsed / done_units * (total - done_units))
    return {
        "id": job.id,
        "status": job.status.value,
        "stage": job.stage,
        "stage_label": STAGE_LABELS.get(job.stage, job.stage),
        "finished": finished,
        "percent": percent,
        "rows_total": job.rows_total,
        "rows_done": job.rows_done,
        "inserted": job.inserted,
        "updated": job.updated,
        "unchanged": job.unchanged,
        "skipped": job.skipped,
        "duplicates": job.duplicates,
        "index_total": job.index_total,
        "index_done": job.index_done,
        "eta_seconds": None if eta is None else round(eta, 1),
        "eta": None if eta is None else _duration(eta),
        "message": job.message,
        "started_by": job.started_by,
        "created_at": _aware(job.created_at).isoformat() if job.created_at else None,
        "started_at": started.isoformat() if started else None,
        "finished_at": _aware(job.finished_at).isoformat() if job.finished_at else None,
    }


REPORT_HEADER = ["kind", "line", "product_id", "match", "duplicate_of", "score", "reason"]
KIND_ORDER = {"skipped": 0, "duplicate": 1, "ignored": 2}


def report_rows(
    job_id: int, kind: str | None = None, limit: int | None = None
) -> list[ImportJobRow]:
    """The job's report rows: skipped rows, then suspected duplicates, then ignored files."""
    stmt = select(ImportJobRow).where(ImportJobRow.job_id == job_id)
    if kind:
        stmt = stmt.where(ImportJobRow.kind == kind)
    rows = list(db.session.scalars(stmt.order_by(ImportJobRow.id)))
    rows.sort(key=lambda r: (KIND_ORDER.get(r.kind, 9), r.line or 0, r.id))
    return rows[:limit] if limit else rows


def _cell(value: Any) -> str:
    """A CSV cell that a spreadsheet will not run as a formula."""
    text = "" if value is None else str(value)
    if text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        text = "'" + text
    return text


def report_csv(job_id: int) -> Iterator[str]:
    """The report as CSV text, streamed a row at a time."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(REPORT_HEADER)
    for row in report_rows(job_id):
        writer.writerow(
            [
                _cell(v)
                for v in (
                    row.kind,
                    row.line,
                    row.product_id,
                    row.match,
                    row.duplicate_of,
                    row.score,
                    row.reason,
                )
            ]
        )
        if buffer.tell() > 64 * 1024:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()
