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
    """Embed what the store lacks, rebuild every neighbour list, then switch pages to them."""
    try:
        return indexing.index_catalog(lambda stage: _progress(self, stage))
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
