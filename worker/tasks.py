"""Celery tasks: thin wrappers that take ids, call the indexing services, record progress."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable

from celery import shared_task

from webapp import jobs
from webapp.similar import indexing

logger = logging.getLogger(__name__)

INDEX_JOB = "index-catalog"


@shared_task(ignore_result=False)
def ping() -> dict[str, object]:
    """Health check: proves a worker is consuming the default queue."""
    return {"pong": True, "host": socket.gethostname(), "pid": os.getpid()}


def _progress(task, stage: str) -> Callable[[int, int], None]:
    """A progress callback that records PROGRESS state and logs every ~5%."""
    last = {"t": 0.0, "pct": -5}

    def report(done: int, total: int) -> None:
        pct = int(100 * done / total) if total else 100
        now = time.monotonic()
        if task.request.id and (now - last["t"] > 1 or done == total):
            task.update_state(state="PROGRESS", meta={"stage": stage, "done": done, "total": total})
            last["t"] = now
        if pct >= last["pct"] + 5 or done == total:
            logger.info("%s: %d/%d (%d%%)", stage, done, total, pct)
            last["pct"] = pct

    return report


@shared_task(bind=True, ignore_result=False)
def ml_index_catalog(self) -> dict[str, object]:
    """Embed what the store lacks, rebuild every neighbour list, then switch pages to them;
    with ``EMBEDDING_TUNED=auto`` and no tuned backbone yet, then tune one and switch again."""
    from webapp.similar import tuning

    try:
        summary = indexing.index_catalog(lambda stage: _progress(self, stage))
    finally:
        jobs.finished(INDEX_JOB, self.request.id)
    if tuning.should_tune():
        # A job of its own (under the same one-at-a-time marker): the plain lists are served
        # meanwhile, and neither job runs past the broker's visibility timeout.
        task_id, new = jobs.enqueue_once(INDEX_JOB, ml_tune_catalog.delay)
        logger.info(
            "no catalogue-tuned backbone yet (EMBEDDING_TUNED=auto): tuning job %s %s",
            task_id,
            "enqueued" if new else "already in flight",
        )
        summary["tuning_job"] = task_id
    return summary


@shared_task(bind=True, ignore_result=False)
def ml_tune_catalog(
    self, epochs: int | None = None, val_fraction: float = 0.1, activate: bool = True
) -> dict[str, object]:
    """Tune the backbone on the catalogue, embed every product with it, build and serve its
    lists (one catalogue-wide job at a time, like the index job)."""
    from webapp.similar import tuning

    try:
        return tuning.tune_catalog(
            epochs=epochs,
            val_fraction=val_fraction,
            activate=activate,
            progress_for=lambda stage: _progress(self, stage),
        )
    finally:
        jobs.finished(INDEX_JOB, self.request.id)


@shared_task(bind=True, ignore_result=False)
def ml_build_neighbours(self, model_id: str | None = None) -> dict[str, object]:
    """Rebuild every neighbour list of a model (default: the configured backbone's)."""
    try:
        model_id = model_id or indexing.load_backbone().model_id
        report = indexing.build_neighbours(model_id, progress=_progress(self, "neighbours"))
        return {"model": report.model_id, "products": report.products}
    finally:
        jobs.finished(INDEX_JOB, self.request.id)


@shared_task(ignore_result=False)
def ml_update_product(product_id: int) -> dict[str, object]:
    """After a product is created, edited or deleted: its embedding and the lists it touches."""
    report = indexing.update_product(product_id)
    return {"product_id": product_id, "action": report.action, "rewritten": len(report.rewritten)}


@shared_task(ignore_result=True)
def ml_search_photo(job_id: str) -> str:
    """Photo search: embed the uploaded photo, classify it, rank the catalogue, record the top N."""
    from webapp.search.pipeline import run_job

    return run_job(job_id)


@shared_task(ignore_result=True)
def ml_compare_photos(job_id: str) -> str:
    """Two-image compare: embed both photos and record their score against the threshold."""
    from webapp.search.pipeline import run_job

    return run_job(job_id)


@shared_task(ignore_result=True)
def cleanup_search_uploads() -> int:
    """Delete uploaded query photos older than the retention period (for a periodic schedule)."""
    from webapp.search.services import cleanup_uploads

    return cleanup_uploads()


# -- inventory: bulk imports, duplicate checks, product job states ------------------------

# Importing the module connects the signals that move a product's index job state along.
from celery.signals import worker_ready  # noqa: E402

from webapp.inventory import tracking as _tracking  # noqa: E402,F401

HASH_JOB = "hash-product-images"
CALIBRATE_JOB = "calibrate-duplicates"


@shared_task(ignore_result=False)
def import_products(job_id: int) -> dict[str, object]:
    """Bulk import, stage 1: rows into the DB, report, exact and perceptual duplicates."""
    from webapp.inventory import jobs as import_jobs

    return import_jobs.run_import(job_id)


@shared_task(ignore_result=False)
def ml_index_import(job_id: int) -> dict[str, object]:
    """Bulk import, stage 2: embed the new and changed photos, update the lists they touch."""
    from webapp.inventory import jobs as import_jobs

    return import_jobs.run_index(job_id)


@shared_task(ignore_result=False)
def resume_import_jobs() -> list[int]:
    """Queue again the bulk imports a stopped worker left unfinished."""
    from webapp.inventory import jobs as import_jobs

    return import_jobs.resume_unfinished()


@shared_task(bind=True, ignore_result=False)
def hash_product_images(self) -> dict[str, object]:
    """Compute the perceptual hash of every product photo that has none yet."""
    from webapp.inventory import duplicates

    try:
        return {"hashed": duplicates.hash_products(progress=_progress(self, "hashing"))}
    finally:
        jobs.finished(HASH_JOB, self.request.id)


@shared_task(bind=True, ignore_result=False)
def ml_calibrate_duplicates(self, model_id: str | None = None, copies: int = 200) -> dict:
    """Calibrate the near-duplicate cosine threshold of the served model on the catalogue."""
    from webapp.inventory import calibration

    try:
        return calibration.calibrate_model(
            model_id, backbone=indexing.load_backbone(), copies=copies
        )
    finally:
        jobs.finished(CALIBRATE_JOB, self.request.id)


@worker_ready.connect
def _resume_after_start(sender=None, **_: object) -> None:
    """A worker that starts picks up the bulk imports a killed one left behind."""
    try:
        resume_import_jobs.delay()
    except Exception as exc:  # the broker is down: the next start tries again
        logger.warning("could not queue the resume of unfinished imports: %s", exc)
