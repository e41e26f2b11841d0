"""Celery tasks: thin wrappers that take ids, call the indexing services, record progress."""

from __future__ import annotations

import logging
import os
import socket

from celery import shared_task
from celery.signals import worker_ready

from webapp import exclusive, registry
from webapp.inventory import stage_clock
from webapp.inventory.stage_clock import StageClock
from webapp.search.services import cleanup_uploads
from worker import signals  # noqa: F401  (connects the handlers that move index states)
from worker.jobs import (
    bulk_import,
    hashing,
    healing,
    indexing,
    search_requests,
    shards,
    similar,
    thresholds,
    tuning,
)

logger = logging.getLogger(__name__)


@shared_task(ignore_result=False)
def ping() -> dict[str, object]:
    """Health check: proves a worker is consuming the default queue."""
    return {"pong": True, "host": socket.gethostname(), "pid": os.getpid()}


def _stage_clock(task, job: str, plan: tuple[str, ...]) -> StageClock:
    """Progress callbacks of a catalogue-wide job: each records PROGRESS state (about once a
    second) with the stage timings the index status turns into a time left."""

    def record(meta: dict) -> None:
        if task.request.id:
            task.update_state(state="PROGRESS", meta=meta)

    try:
        history = stage_clock.load_history(job, plan)
    except Exception as exc:  # the estimates are worse without it, the job no different
        logger.warning("no stage history for the time-left estimates: %s", exc)
        history = {}
    return StageClock(
        job,
        plan,
        record,
        history=history,
        remember=lambda stage, entry: stage_clock.save_history(job, stage, entry),
    )


@shared_task(bind=True, ignore_result=False)
def ml_index_catalog(self) -> dict[str, object]:
    """Embed what the store lacks, rebuild every neighbour list, then switch pages to them;
    with ``EMBEDDING_TUNED=auto`` and no tuned backbone yet, then tune one and switch again."""
    clock = _stage_clock(self, "index", indexing.STAGES)
    try:
        summary = indexing.index_catalog(clock.progress_for)
        clock.finish()
    finally:
        exclusive.finished(exclusive.INDEX, self.request.id)
    if tuning.should_tune():
        # A job of its own (under the same one-at-a-time marker): the plain lists are served
        # meanwhile, and neither job runs past the broker's visibility timeout.
        task_id, new = exclusive.enqueue_once(exclusive.INDEX, ml_tune_catalog.name)
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
    clock = _stage_clock(self, "tuning", tuning.planned_stages())
    try:
        summary = tuning.tune_catalog(
            epochs=epochs,
            val_fraction=val_fraction,
            activate=activate,
            progress_for=clock.progress_for,
        )
        return {**summary, "stage_seconds": clock.finish()}
    finally:
        exclusive.finished(exclusive.INDEX, self.request.id)


@shared_task(bind=True, ignore_result=False)
def ml_build_neighbours(self, model_id: str | None = None) -> dict[str, object]:
    """Rebuild every neighbour list of a model (default: the configured backbone's)."""
    clock = _stage_clock(self, "neighbours", ("neighbours",))
    try:
        model_id = model_id or registry.load_backbone().model_id
        report = indexing.build_neighbours(model_id, progress=clock.progress_for("neighbours"))
        clock.finish()
        return {"model": report.model_id, "products": report.products}
    finally:
        exclusive.finished(exclusive.INDEX, self.request.id)


@shared_task(ignore_result=True)
def ml_build_shard(model_id: str, build_id: str, shard: int) -> bool:
    """One shard of a neighbour-list build (sent by the build, which computes any shard no
    worker took): nothing when the build is over, the shard done or held by another process."""
    return shards.run_shard(model_id, build_id, shard)


@shared_task(bind=True, ignore_result=False)
def ml_heal_index(self) -> dict[str, object]:
    """Rebuild the served neighbour lists from the embeddings on disk when Redis lost them
    (nothing when they are whole); sent by pages and by the worker's own check."""
    clock = _stage_clock(self, "index", indexing.STAGES)
    try:
        summary = healing.heal_index(clock.progress_for)
        clock.finish()
        return summary
    finally:
        exclusive.finished(exclusive.INDEX, self.request.id)


@shared_task(ignore_result=True)
def check_index_lists() -> float:
    """Send ``ml_heal_index`` when the served lists are missing or incomplete; the seconds
    until the next check (called in the worker's main process by ``worker.signals``)."""
    return healing.check_lists()


@shared_task(ignore_result=False)
def ml_update_product(product_id: int) -> dict[str, object]:
    """After a product is created, edited or deleted: its embedding and the lists it touches."""
    report = indexing.update_product(product_id)
    return {"product_id": product_id, "action": report.action, "rewritten": len(report.rewritten)}


@shared_task(ignore_result=False, soft_time_limit=30, time_limit=40)
def ml_similar_more(
    model_id: str,
    product_id: int,
    prefs: dict | None,
    exclude: list[int],
    chosen: list[int],
    missing: int,
) -> list[list[float]]:
    """Similar products past a product's cached list, for a large catalogue's product page."""
    return similar.more_similar(model_id, product_id, prefs, exclude, chosen, missing)


# A search takes well under a second once the model is loaded: past these limits (seconds)
# something is stuck, and the request fails (soft) or its worker process is replaced (hard).
SEARCH_TIME_LIMITS = {"soft_time_limit": 120, "time_limit": 150}


@shared_task(ignore_result=True, **SEARCH_TIME_LIMITS)
def ml_search_photo(request_id: str) -> str:
    """Photo search: embed the uploaded photo, classify it, rank the catalogue, record the top N."""
    return search_requests.run_search_request(request_id)


@shared_task(ignore_result=True, **SEARCH_TIME_LIMITS)
def ml_compare_photos(request_id: str) -> str:
    """Two-image compare: embed both photos and record their score against the threshold."""
    return search_requests.run_search_request(request_id)


@shared_task(ignore_result=True)
def search_heartbeat(node: str, startup: bool = False) -> int:
    """An ``ml`` worker's beat: it is alive, and stale search requests are sent again or
    failed (called, not sent, every few seconds in the worker's main process by
    ``worker.signals``)."""
    return search_requests.beat(node, startup)


@shared_task(ignore_result=True)
def cleanup_search_uploads() -> int:
    """Delete uploaded query photos older than the retention period (for a periodic schedule)."""
    return cleanup_uploads()


# -- inventory: bulk imports, duplicate checks -------------------------------------------


@shared_task(ignore_result=False)
def import_products(job_id: int) -> dict[str, object]:
    """Bulk import, stage 1: rows into the DB, report, exact and perceptual duplicates."""
    return bulk_import.run_import(job_id)


@shared_task(ignore_result=False)
def ml_index_import(job_id: int) -> dict[str, object]:
    """Bulk import, stage 2: embed the new and changed photos, update the lists they touch."""
    return bulk_import.run_index(job_id)


@shared_task(ignore_result=False)
def resume_import_jobs() -> list[int]:
    """Queue again the bulk imports a stopped worker left unfinished."""
    return bulk_import.resume_unfinished()


@shared_task(bind=True, ignore_result=False)
def hash_product_images(self) -> dict[str, object]:
    """Compute the perceptual hash of every product photo that has none yet."""
    clock = _stage_clock(self, "hashing", ("hashing",))
    try:
        hashed = hashing.hash_products(progress=clock.progress_for("hashing"))
        clock.finish()
        return {"hashed": hashed}
    finally:
        exclusive.finished(exclusive.HASHING, self.request.id)


@shared_task(bind=True, ignore_result=False)
def ml_calibrate_duplicates(self, model_id: str | None = None, copies: int = 200) -> dict:
    """Calibrate the duplicate threshold (near-duplicate cosine) of the served model."""
    try:
        return thresholds.calibrate_duplicate_threshold(
            model_id, backbone=registry.load_backbone(), copies=copies
        )
    finally:
        exclusive.finished(exclusive.DUPLICATE_THRESHOLD, self.request.id)


@worker_ready.connect
def _resume_after_start(sender=None, **_: object) -> None:
    """A worker that starts picks up the bulk imports a killed one left behind."""
    try:
        resume_import_jobs.delay()
    except Exception as exc:  # the broker is down: the next start tries again
        logger.warning("could not queue the resume of unfinished imports: %s", exc)
