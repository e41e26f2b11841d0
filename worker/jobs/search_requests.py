"""A search request's life in the worker: claim it, keep its lease while it runs, record its
end once; and the ``ml`` worker's beat that says it is alive and sweeps stale requests.

A worker runs a request only while it holds the request's lease (``webapp.search.liveness``),
renewed every few seconds by a small thread, so a killed worker's requests are noticed
within the lease's 15 s and sent again (``webapp.search.watchdog``). Any message for a
request that has ended, or that another worker holds, is a no-op: a request redelivered by
the broker, or sent again while its first message was still queued, is answered once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from typing import Any

from flask import current_app
from redis.exceptions import LockError, RedisError
from redis.lock import Lock

from ml.blas import blas_threads
from webapp.extensions import db, get_redis
from webapp.preferences import Preferences
from webapp.search import liveness, services, watchdog
from worker.jobs import photo_search

logger = logging.getLogger(__name__)

# How long a message waits for a lease another process holds (a sweep holds it for
# milliseconds; a worker running the request holds it until the request ends).
CLAIM_WAIT_S = 2.0
FAILED = "The search could not be completed. Please try again."


class LeaseKeeper:
    """Renews a lease from a thread every third of its life until stopped (a context manager)."""

    def __init__(self, lease: Lock, every_s: float = liveness.LEASE_S / 3) -> None:
        self.lease = lease
        self.every_s = every_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="search-lease", daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.every_s):
            try:
                self.lease.reacquire()
            except LockError:
                logger.warning("lost the lease of %s", self.lease.name)
                return
            except RedisError as exc:  # Redis away for a moment: try again next time
                logger.warning("could not renew the lease of %s: %s", self.lease.name, exc)

    def __enter__(self) -> LeaseKeeper:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def run_search_request(request_id: str) -> str:
    """Run one search or compare request and record its end; returns what this run did
    (``done`` / ``failed`` when it recorded the end, else why it did nothing).

    The waiting page is woken (``notify_done``) as soon as the end is recorded; releasing
    the lease and deleting compare photos come after it. The uploads' cleanup (when due,
    rarely) runs first, so the run ends right after its answer is recorded."""
    try:
        services.cleanup_if_due()
    except Exception:  # noqa: BLE001 - housekeeping must never cost a shopper their search
        logger.warning("search upload cleanup failed", exc_info=True)
    return _claim_and_answer(request_id)


def _claim_and_answer(request_id: str) -> str:
    """``run_search_request`` without the housekeeping."""
    record = services.get_request(request_id)
    if record is None:
        logger.info("search request %s expired before it ran", request_id)
        return "expired"
    if record["state"] not in services.PENDING:
        return f"already {record['state']}"  # a redelivered or resent message
    lease = liveness.lease(get_redis(), request_id)
    if not lease.acquire(blocking=True, blocking_timeout=CLAIM_WAIT_S):
        return "held elsewhere"  # another worker runs it; its lease says so
    ended = False
    try:
        record = services.get_request(request_id)  # again, now that it is ours
        if record is None or record["state"] not in services.PENDING:
            return "expired" if record is None else f"already {record['state']}"
        record = services.update_request(
            request_id,
            state="running",
            attempts=int(record.get("attempts") or 0) + 1,
            started_at=time.time(),
            worker=f"{socket.gethostname()}:{os.getpid()}",
        )
        if record is None:
            return "expired"
        with LeaseKeeper(lease):
            state, changes = answer(record)
        if not lease.owned():
            # It outlived its lease (a stalled process) and was sent again: that run answers.
            logger.warning("search request %s: lease lost, answer dropped", request_id)
            return "superseded"
        services.update_request(request_id, state=state, **changes)
        ended = True
        services.notify_done(request_id)
        return state
    finally:
        db.session.rollback()
        with contextlib.suppress(LockError):
            lease.release()
        if ended and record["kind"] == "compare":
            # Compare photos are not shown again: they go as soon as they are scored.
            for path in record["images"]:
                services.remove_upload(path)


def answer(record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The request's end: ``("done", {"result"})`` or ``("failed", {"error", "code"})``."""
    try:
        # One vector against a few matrices: BLAS threads only wait on each other here.
        with blas_threads(1):
            if record["kind"] == "search":
                n = int(record.get("n") or current_app.config["SEARCH_RESULTS_N"])
                result = photo_search.search_photo(
                    record["images"][0],
                    Preferences.from_session(record.get("prefs")),
                    n,
                    bool(record.get("all_categories")),
                    exclude=record.get("exclude") or (),
                    crop=record.get("crop"),
                )
            else:
                result = photo_search.compare_photos(record["images"], record.get("model"))
        return "done", {"result": result, "ended_at": time.time()}
    except photo_search.SearchError as exc:
        return "failed", {"error": exc.message, "code": exc.code, "ended_at": time.time()}
    except Exception:
        logger.exception("%s request %s failed", record["kind"], record["id"])
        return "failed", {"error": FAILED, "code": 503, "ended_at": time.time()}


def beat(node: str, startup: bool = False) -> int:
    """An ``ml`` worker's beat: say it is alive, then settle stale requests (all of them
    when it has just started); returns how many pending requests the sweep looked at."""
    liveness.mark_worker_alive(get_redis(), node)
    return watchdog.sweep(startup=startup)
