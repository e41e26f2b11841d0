"""Bulk import jobs, the worker side: the import stage and the index stage.

The web side (:mod:`webapp.inventory.imports`) checks the uploads, adds the
:class:`~webapp.models.ImportJob` row and its folder, and sends the first stage:

1. :func:`run_import` (``import_products``, default queue): extract the photos, upsert the
   rows through the catalogue importer (one commit per batch), write the report of skipped
   rows and files, hash the new photos and list exact and perceptual duplicates; then send
   the second stage;
2. :func:`run_index` (``ml_index_import``, ``index`` queue): embed the new and changed
   photos and update only the neighbour lists they touch (the one incremental upkeep path,
   :func:`worker.jobs.indexing.update_products`), list near duplicates, done.

Every step is idempotent, so a job is resumed by simply running its stage again: the
importer's upsert writes nothing twice, photos already extracted or embedded are skipped,
and the counts come from a snapshot of the products the file mentions, taken before the
first row was written (``baseline.json``), so a resumed job reports the same numbers as an
uninterrupted one. A lock per stage (:class:`~webapp.inventory.job_lock.JobLock`) keeps two
workers from running it at once. Workers resume unfinished jobs when they start
(:func:`resume_unfinished`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import current_app
from sqlalchemy import select

from ml.folders import write_json
from webapp import registry
from webapp.catalog.importer import import_catalog, read_styles
from webapp.catalog.parsing import CatalogError, ParsedStyles
from webapp.extensions import db
from webapp.inventory import duplicates
from webapp.inventory.imports import (
    BASELINE_NAME,
    CSV_NAME,
    IMAGES_DIR,
    OUTCOME_NAME,
    PLAN_NAME,
    ZIP_NAME,
    enqueue,
    job_folder,
    utcnow,
    zip_limits,
)
from webapp.inventory.job_lock import JobLock
from webapp.inventory.safety import UploadRejected, extract_photos, inspect_csv, inspect_zip
from webapp.models import ImportJob, ImportJobStatus, Product
from worker.jobs.hashing import hash_products
from worker.jobs.import_report import (
    count_duplicates,
    duplicate_rows,
    replace_rows,
    report_skips,
    similar_matches,
)
from worker.jobs.indexing import update_products

logger = logging.getLogger(__name__)

SQL_CHUNK = 2000
UNFINISHED = (ImportJobStatus.QUEUED, ImportJobStatus.RUNNING)


# -- the frame of both stages -----------------------------------------------------------------


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


def _run(
    job_id: int, stage: str, body: Callable[[ImportJob, JobLock], dict[str, Any]]
) -> dict[str, Any]:
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


# -- stage 1: rows ------------------------------------------------------------------------------


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


def _baseline(folder: Path, row_ids: list[int], columns: tuple[str, ...]) -> dict[int, str]:
    """Which products existed, and as what, before the first row was written (kept on disk)."""
    path = folder / BASELINE_NAME
    if path.exists():
        baseline = {int(k): v for k, v in json.loads(path.read_text()).items()}
    else:
        baseline = _fingerprints(row_ids, columns)
        write_json(path, baseline)
    db.session.rollback()
    return baseline


def _row_progress(
    job: ImportJob,
    lock: JobLock,
    parsed: ParsedStyles,
    baseline: dict[int, str],
    columns: tuple[str, ...],
) -> Callable[[int, int], None]:
    """The importer's progress callback: live counts on the job row after every batch."""
    live: dict[str, Any] = {"last": 0, "inserted": set(), "updated": set(), "skipped": set()}
    throttle = float(current_app.config["IMPORT_THROTTLE_S"])

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

    return progress


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
    baseline = _baseline(folder, row_ids, columns)
    job.rows_total = len(parsed.rows) + len(parsed.skips)
    db.session.commit()

    result = import_catalog(
        folder,
        session=db.session,
        image_mode="copy",
        media_folder=cfg["MEDIA_FOLDER"],
        progress=_row_progress(job, lock, parsed, baseline, columns),
        batch_size=int(cfg["IMPORT_BATCH_SIZE"]),
        max_image_pixels=int(cfg["MAX_IMAGE_PIXELS"]),
    )
    imported = [*result.inserted, *result.updated, *result.unchanged]
    now = _fingerprints(imported, columns)
    inserted = sorted(p for p in imported if p not in baseline)
    updated = sorted(p for p in imported if p in baseline and baseline[p] != now.get(p))
    unchanged = sorted(set(imported) - set(inserted) - set(updated))
    report_skips(job.id, result, plan, damaged, row_ids)

    changed = [*inserted, *updated]
    # Every photo needs a hash for the look-alike check: the new ones, and (once, on the
    # first import) the catalogue's.
    hash_products()
    matches = duplicates.find_matches(changed, similar=False)
    replace_rows(
        job.id,
        ("duplicate",),
        duplicate_rows(job.id, matches, line_of),
        match=("exact", "perceptual"),
    )
    write_json(
        folder / OUTCOME_NAME,
        {"affected": changed, "lines": {str(p): line_of[p] for p in changed}},
    )
    job.inserted, job.updated, job.unchanged = len(inserted), len(updated), len(unchanged)
    job.skipped = len(result.skipped)
    job.rows_done = job.rows_total
    job.duplicates = count_duplicates(job.id)
    job.stage = "index"
    job.index_total = len(changed)
    db.session.commit()
    logger.info("import job %s: rows in (%s); indexing %d", job.id, result.counts(), len(changed))
    enqueue(job)
    return {"job": job.id, "result": "imported", **result.counts()}


# -- stage 2: embeddings, lists, near duplicates ------------------------------------------------


def _index_stage(job: ImportJob, lock: JobLock) -> dict[str, Any]:
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

    backbone = registry.load_backbone()
    lock.refresh()
    report = update_products(
        affected, backbone=backbone, plan_path=folder / PLAN_NAME, progress=progress
    )
    lock.refresh()
    line_of = {int(pid): line for pid, line in outcome.get("lines", {}).items()}
    similar = similar_matches(backbone.model_id, report.embedded, job.id)
    replace_rows(
        job.id, ("duplicate",), duplicate_rows(job.id, similar, line_of), match=("similar",)
    )
    job.duplicates = count_duplicates(job.id)
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
