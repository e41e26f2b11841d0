"""Bulk import jobs: upload checks, the import and index stages, progress and the report.

A job is an :class:`~webapp.models.ImportJob` row plus a working folder
``IMPORT_FOLDER/<id>/`` holding the uploads. Two Celery tasks run it, one stage each:

1. ``import_products`` (default queue): extract the photos, upsert the rows through the
   catalogue importer (one commit per batch), write the report of skipped rows and files,
   hash the new photos and list exact and perceptual duplicates;
2. ``ml_index_import`` (ml queue): embed the new and changed photos and update only the
   neighbour lists they touch (:mod:`webapp.inventory.upkeep`), list near duplicates, done.

Every step is idempotent, so a job is resumed by simply running its stage again: the
importer's upsert writes nothing twice, photos already extracted or embedded are skipped,
and the counts come from a snapshot of the products the file mentions, taken before the
first row was written (``baseline.json``), so a resumed job reports the same numbers as an
uninterrupted one. A Redis lock per job keeps two workers from running it at once; a lock
left by a killed worker on this machine is taken over at once, one from elsewhere after
its TTL. Workers resume unfinished jobs when they start (see ``worker/tasks.py``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from flask import current_app
from sqlalchemy import delete, func, select
from werkzeug.datastructures import FileStorage

from webapp.catalog.importer import import_catalog, read_styles
from webapp.catalog.parsing import CatalogError, ParsedStyles
from webapp.extensions import db, get_redis
from webapp.inventory import duplicates
from webapp.inventory.calibration import threshold_for
from webapp.inventory.safety import (
    UploadRejected,
    ZipLimits,
    extract_photos,
    inspect_csv,
    inspect_zip,
)
from webapp.models import ImportJob, ImportJobRow, ImportJobStatus, Product, User

logger = logging.getLogger(__name__)

CSV_NAME = "styles.csv"  # the names the catalogue importer expects
IMAGES_DIR = "images"
ZIP_NAME = "photos.zip"
BASELINE_NAME = "baseline.json"
OUTCOME_NAME = "outcome.json"
PLAN_NAME = "index-plan.npz"
LOCK_KEY = "inventory:import-lock:{job_id}:{stage}"
# Refreshed after every batch; a lock outlives a worker that vanished by at most this long.
LOCK_TTL_S = 300
SQL_CHUNK = 2000
# Embedding a whole import is catalogue-scale work: it queues with the full index builds,
# so photo searches on the "ml" queue never wait behind it.
BUILD_QUEUE = "index"
UNFINISHED = (ImportJobStatus.QUEUED, ImportJobStatus.RUNNING)
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


# -- starting a job (web) ---------------------------------------------------------------


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
            csv_filename=(csv_file.filename or CSV_NAME)[:255],
            zip_filename=(zip_file.filename or ZIP_NAME)[:255],
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
    from kombu.exceptions import OperationalError
    from redis.exceptions import RedisError

    from worker.tasks import import_products, ml_index_import

    try:
        if job.stage == "index":
            result = ml_index_import.apply_async(args=(job.id,), queue=BUILD_QUEUE)
        else:
            result = import_products.delay(job.id)
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


# -- the lock ---------------------------------------------------------------------------

_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)
_REFRESH = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('expire', KEYS[1], ARGV[2]) end return 0"
)


def _pid_alive(pid: int) -> bool:
    """True while the process runs; a killed process not yet reaped (a zombie) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # /proc/<pid>/stat: "pid (name) state ...": the name may hold spaces, the state follows it.
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc: the signal check above is all we have
    return state not in {"Z", "X"}


class JobLock:
    """One runner per job stage: a Redis key holding ``host:pid:nonce`` of the process running it.

    Per stage, so the import stage can queue the index stage before it lets go of its lock.
    """

    def __init__(self, job_id: int, stage: str) -> None:
        self.key = LOCK_KEY.format(job_id=job_id, stage=stage)
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.redis = get_redis()

    def _holder_dead(self, holder: str) -> bool:
        """A holder on this machine whose process is gone (a killed worker)."""
        host, _, rest = holder.partition(":")
        pid = rest.partition(":")[0]
        return host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid))

    def held(self) -> bool:
        """True while a live process holds the lock."""
        holder = self.redis.get(self.key)
        return holder is not None and not self._holder_dead(holder.decode())

    def acquire(self) -> bool:
        """Take the lock, taking it over from a dead holder on this machine."""
        if self.redis.set(self.key, self.token, nx=True, ex=LOCK_TTL_S):
            return True
        holder = self.redis.get(self.key)
        if holder is not None and self._holder_dead(holder.decode()):
            logger.info("taking over %s from a process that is gone (%s)", self.key, holder)
            self.redis.eval(_RELEASE, 1, self.key, holder)
            return bool(self.redis.set(self.key, self.token, nx=True, ex=LOCK_TTL_S))
        return False

    def refresh(self) -> None:
        """Keep the lock while the job makes progress."""
        self.redis.eval(_REFRESH, 1, self.key, self.token, LOCK_TTL_S)

    def release(self) -> None:
        """Let go, if still ours."""
        try:
            self.redis.eval(_RELEASE, 1, self.key, self.token)
        except Exception as exc:  # it expires on its own
            logger.warning("could not release %s: %s", self.key, exc)


# -- running a job (worker) ---------------------------------------------------------------


def _fail(job_id: int, message: str) -> dict[str, Any]:
    """Mark a job failed with a message for the admin."""
    db.session.rollback()
    job = db.session.get(ImportJob, job_id)
    if job is not None:
        job.status = ImportJobStatus.FAILED
        job.message = message[:1000]
        job.finished_at = utcnow()
        db.session.commit()
    logger.warning("import job %s failed: %s", job_id, message)
    return {"job": job_id, "result": "failed", "message": message}


def _run(job_id: int, stage: str, body) -> dict[str, Any]:
    """Shared frame of both stages: load, skip if not this stage's turn, lock, run, record."""
    job = db.session.get(ImportJob, job_id)
    if job is None:
        return {"job": job_id, "result": "missing"}
    if job.status in (ImportJobStatus.DONE, ImportJobStatus.FAILED):
        return {"job": job_id, "result": job.status.value}
    if job.stage != stage:
        if job.stage == "index" and stage == "import":
            enqueue(job)  # the import stage is over: make sure the next one is queued
        return {"job": job_id, "result": f"at stage {job.stage}"}
    lock = JobLock(job_id, stage)
    if not lock.acquire():
        return {"job": job_id, "result": "busy"}
    try:
        job.status = ImportJobStatus.RUNNING
        job.started_at = job.started_at or utcnow()
        job.message = None
        db.session.commit()
        return body(job, lock)
    except UploadRejected as exc:
        return _fail(job_id, exc.message)
    except CatalogError as exc:
        return _fail(job_id, str(exc))
    except Exception as exc:
        logger.exception("import job %s stopped", job_id)
        return _fail(
            job_id,
            f"The job stopped on an unexpected error ({type(exc).__name__}). "
            "Resume it once the cause is fixed; finished rows are kept.",
        )
    finally:
        lock.release()


def run_import(job_id: int) -> dict[str, Any]:
    """Stage 1: rows into the database, report of skipped rows, exact and perceptual duplicates."""
    return _run(job_id, "import", _import_stage)


def run_index(job_id: int) -> dict[str, Any]:
    """Stage 2: embeddings and neighbour lists for the new and changed products; then done."""
    return _run(job_id, "index", _index_stage)


def _fingerprints(ids: list[int], columns: tuple[str, ...]) -> dict[int, str]:
    """A digest of each product's importer-managed columns, to tell changed rows apart."""
    out: dict[int, str] = {}
    attrs = [getattr(Product, c) for c in columns]
    for start in range(0, len(ids), SQL_CHUNK):
        for row in db.session.execute(
            select(Product.id, *attrs).where(Product.id.in_(ids[start : start + SQL_CHUNK]))
        ):
            text = "\x1f".join("" if v is None else str(v) for v in row[1:])
            out[row[0]] = hashlib.sha1(text.encode()).hexdigest()
    return out


def _write_json(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _replace_rows(job_id: int, kinds: tuple[str, ...], rows: list[ImportJobRow], match=None):
    """Swap one part of the report for a freshly computed one (idempotent on re-runs)."""
    stmt = delete(ImportJobRow).where(ImportJobRow.job_id == job_id, ImportJobRow.kind.in_(kinds))
    if match is not None:
        stmt = stmt.where(ImportJobRow.match.in_(match))
    db.session.execute(stmt)
    db.session.add_all(rows)


def _import_stage(job: ImportJob, lock: JobLock) -> dict[str, Any]:
    folder = job_folder(job.id)
    csv_path, zip_path = folder / CSV_NAME, folder / ZIP_NAME
    if not csv_path.exists() or not zip_path.exists():
        raise UploadRejected("The uploaded files of this job are gone; start a new import.")
    cfg = current_app.config
    inspect_csv(csv_path)
    plan = inspect_zip(zip_path, zip_limits())
    damaged = extract_photos(zip_path, plan, folder / IMAGES_DIR)
    parsed = read_styles(str(csv_path))
    columns = (*parsed.attributes, "image_path", "image_sha256")
    row_ids = [r.id for r in parsed.rows]
    line_of = {r.id: r.line for r in parsed.rows}

    baseline_path = folder / BASELINE_NAME
    if baseline_path.exists():
        baseline = {int(k): v for k, v in json.loads(baseline_path.read_text()).items()}
    else:
        # Before the first row is written: which products existed, and as what.
        baseline = _fingerprints(row_ids, columns)
        _write_json(baseline_path, baseline)
    db.session.rollback()

    job.rows_total = len(parsed.rows) + len(parsed.skips)
    db.session.commit()
    live = {"last": 0, "inserted": set(), "updated": set(), "skipped": set()}
    throttle = float(cfg["IMPORT_THROTTLE_S"])

    def progress(done: int, total: int) -> None:
        batch = [r.id for r in parsed.rows[live["last"] : done]]
        live["last"] = done
        if batch:
            now = _fingerprints(batch, columns)
            for pid in batch:
                if pid not in now:
                    live["skipped"].add(pid)
                elif pid not in baseline:
                    live["inserted"].add(pid)
                elif baseline[pid] != now[pid]:
                    live["updated"].add(pid)
        job.rows_done = max(job.rows_done, len(parsed.skips) + done)
        job.inserted = max(job.inserted, len(live["inserted"]))
        job.updated = max(job.updated, len(live["updated"]))
        job.skipped = max(job.skipped, len(parsed.skips) + len(live["skipped"]))
        db.session.commit()
        lock.refresh()
        if throttle and 0 < done < total:
            time.sleep(throttle)

    result = import_catalog(
        folder,
        session=db.session,
        image_mode="copy",
        media_folder=cfg["MEDIA_FOLDER"],
        progress=progress,
        batch_size=int(cfg["IMPORT_BATCH_SIZE"]),
        max_image_pixels=int(cfg["MAX_IMAGE_PIXELS"]),
    )
    imported = [*result.inserted, *result.updated, *result.unchanged]
    now = _fingerprints(imported, columns)
    inserted = sorted(p for p in imported if p not in baseline)
    updated = sorted(p for p in imported if p in baseline and baseline[p] != now.get(p))
    unchanged = sorted(set(imported) - set(inserted) - set(updated))

    ignored = [*plan.ignored, *damaged]
    listed = set(row_ids)
    ignored += [
        (name, "no row in styles.csv has this id")
        for pid, name in sorted(plan.photos.items())
        if pid not in listed and not any(s.product_id == str(pid) for s in result.skipped)
    ]
    report = [
        ImportJobRow(
            job_id=job.id,
            kind="skipped",
            line=s.line,
            product_id=s.product_id[:40],
            reason=s.reason[:1000],
        )
        for s in result.skipped
    ]
    report += [
        ImportJobRow(job_id=job.id, kind="ignored", reason=f"{name}: {why}"[:1000])
        for name, why in ignored
    ]
    _replace_rows(job.id, ("skipped", "ignored"), report)
    db.session.commit()

    changed = [*inserted, *updated]
    # Every photo needs a hash for the look-alike check: the new ones, and (once, on the
    # first import) the catalogue's.
    duplicates.hash_products()
    matches = duplicates.find_matches(changed, similar=False)
    _replace_rows(
        job.id,
        ("duplicate",),
        _duplicate_rows(job.id, matches, line_of),
        match=("exact", "perceptual"),
    )
    _write_json(
        folder / OUTCOME_NAME,
        {"affected": changed, "lines": {str(p): line_of[p] for p in changed}},
    )
    job.inserted, job.updated, job.unchanged = len(inserted), len(updated), len(unchanged)
    job.skipped = len(result.skipped)
    job.rows_done = job.rows_total
    job.duplicates = _count_duplicates(job.id)
    job.stage = "index"
    job.index_total = len(changed)
    db.session.commit()
    logger.info("import job %s: rows in (%s); indexing %d", job.id, result.counts(), len(changed))
    enqueue(job)
    return {"job": job.id, "result": "imported", **result.counts()}


def _duplicate_rows(
    job_id: int, matches: dict[int, list[tuple[int, str, float, str]]], line_of: dict[int, int]
) -> list[ImportJobRow]:
    return [
        ImportJobRow(
            job_id=job_id,
            kind="duplicate",
            line=line_of.get(pid),
            product_id=str(pid),
            match=how,
            duplicate_of=other,
            score=round(score, 4),
            reason=f"possible duplicate of product {other}: {detail}"[:1000],
        )
        for pid, found in matches.items()
        for other, how, score, detail in found
    ]


def _count_duplicates(job_id: int) -> int:
    """Products of this job with at least one suspected duplicate."""
    return int(
        db.session.scalar(
            select(func.count(func.distinct(ImportJobRow.product_id))).where(
                ImportJobRow.job_id == job_id, ImportJobRow.kind == "duplicate"
            )
        )
        or 0
    )


def _index_stage(job: ImportJob, lock: JobLock) -> dict[str, Any]:
    from webapp.inventory.upkeep import update_products
    from webapp.similar import indexing

    folder = job_folder(job.id)
    outcome_path = folder / OUTCOME_NAME
    if not outcome_path.exists():
        raise UploadRejected("The working files of this job are gone; start a new import.")
    outcome = json.loads(outcome_path.read_text())
    affected = outcome["affected"]
    job.index_total = len(affected)
    db.session.commit()

    def progress(done: int, total: int) -> None:
        # ``total`` counts what is left to embed; rows embedded before a restart are done.
        job.index_done = max(job.index_done, len(affected) - total + done)
        db.session.commit()
        lock.refresh()

    backbone = indexing.load_backbone()
    lock.refresh()
    report = update_products(
        affected, backbone=backbone, plan_path=folder / PLAN_NAME, progress=progress
    )
    lock.refresh()
    line_of = {int(pid): line for pid, line in outcome.get("lines", {}).items()}
    similar = _similar_matches(backbone.model_id, report.embedded, job.id)
    _replace_rows(
        job.id, ("duplicate",), _duplicate_rows(job.id, similar, line_of), match=("similar",)
    )
    job.duplicates = _count_duplicates(job.id)
    job.index_done = job.index_total
    job.status = ImportJobStatus.DONE
    job.stage = "finished"
    job.finished_at = utcnow()
    notes = []
    if report.skipped:
        notes.append(f"{len(report.skipped)} photo(s) could not be embedded")
    if not report.lists_updated and report.embedded:
        notes.append("the similar-products lists come with the next full index build")
    job.message = "; ".join(notes).capitalize() + "." if notes else None
    db.session.commit()
    shutil.rmtree(folder, ignore_errors=True)
    logger.info(
        "import job %s done: %d embedded, %d lists rewritten",
        job.id,
        len(report.embedded),
        len(report.rewritten),
    )
    return {
        "job": job.id,
        "result": "done",
        "embedded": len(report.embedded),
        "rewritten": len(report.rewritten),
    }


def _similar_matches(
    model_id: str, product_ids: list[int], job_id: int
) -> dict[int, list[tuple[int, str, float, str]]]:
    """Near duplicates by embedding cosine, leaving out pairs already listed as identical."""
    from webapp.similar import indexing

    if not product_ids:
        return {}
    threshold, _source = threshold_for(model_id)
    ids, vectors = indexing.store_for(model_id).load()
    vectors = np.asarray(vectors, np.float32)
    listed = {
        (int(r.product_id), r.duplicate_of)
        for r in db.session.scalars(
            select(ImportJobRow).where(
                ImportJobRow.job_id == job_id, ImportJobRow.kind == "duplicate"
            )
        )
    }
    rows = np.flatnonzero(np.isin(ids, np.asarray(product_ids, np.int64)))
    found: dict[int, list[tuple[int, str, float, str]]] = {}
    for start in range(0, len(rows), 512):
        block = rows[start : start + 512]
        sims = vectors[block] @ vectors.T
        sims[np.arange(len(block)), block] = -np.inf
        for i, row in enumerate(block.tolist()):
            pid = int(ids[row])
            cols = np.flatnonzero(sims[i] >= threshold)
            best = cols[np.argsort(-sims[i, cols])][: duplicates.MAX_MATCHES]
            hits = [
                (
                    int(ids[c]),
                    "similar",
                    float(sims[i, c]),
                    f"looks alike (cosine {sims[i, c]:.3f})",
                )
                for c in best.tolist()
                if (pid, int(ids[c])) not in listed
            ]
            if hits:
                found[pid] = hits
    return found


def resume_unfinished() -> list[int]:
    """Queue again every unfinished job that no live process holds (run when a worker starts)."""
    resumed = []
    for job in db.session.scalars(select(ImportJob).where(ImportJob.status.in_(UNFINISHED))):
        if JobLock(job.id, job.stage).held():
            continue
        if enqueue(job):
            resumed.append(job.id)
    if resumed:
        logger.info("resumed import jobs %s", resumed)
    return resumed


# -- progress and report (web) ------------------------------------------------------------


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
