"""A watchdog over pending search requests: every read by a page or the API settles the
request it reads, every ``ml`` worker sweeps them all when it starts and every few seconds.

Settling applies ``liveness.verdict``: a request whose worker died is sent again by task
name (once; a second death fails it), one queued past ``SEARCH_QUEUE_TIMEOUT`` is failed
with a message saying why, and one that no worker can take right now is shown as
unavailable while it stays queued (a worker that comes back still answers it). Every change
happens under the request's lease, the lock a worker holds while it runs the request, so a
settle and a worker never write the same record at once; the worker sees a resent request's
second message find it ended, so no request is answered twice.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import redis as redis_lib
from flask import current_app
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import LockError, RedisError

from webapp.extensions import get_redis
from webapp.search import liveness, services
from webapp.search.liveness import UNAVAILABLE
from webapp.search.services import DONE_KEY, SearchRequestError

logger = logging.getLogger(__name__)

# Pending requests one sweep looks at (oldest first); the rest wait for the next sweep.
SWEEP_BATCH = 1000


def read_request(request_id: str) -> dict[str, Any] | None:
    """The request's record for a page or the API, settled first (see ``settle``)."""
    try:
        return settle(services.get_request(request_id))
    except RedisError as exc:
        raise SearchRequestError(UNAVAILABLE) from exc


def _ended(record: dict[str, Any] | None) -> bool:
    """Whether a waiter has its answer: the request ended, expired, or cannot run now."""
    if record is None or record["state"] not in services.PENDING:
        return True
    return bool(record.get("unavailable"))


def wait_for_request(request_id: str, timeout: float) -> dict[str, Any] | None:
    """The request's record once it has ended (or is known to be unavailable), or as it
    stands when ``timeout`` seconds pass."""
    record = read_request(request_id)
    deadline = time.monotonic() + timeout
    if _ended(record) or timeout <= 0:
        return record
    # A client of its own: the shared one times out after REDIS_TIMEOUT, shorter than a wait.
    client = current_app.extensions.get("search_redis")
    if client is None:
        client = redis_lib.Redis.from_url(
            current_app.config["REDIS_URL"],
            socket_timeout=current_app.config["SEARCH_WAIT_TIMEOUT"] + 5,
            socket_connect_timeout=current_app.config["REDIS_TIMEOUT"],
        )
        current_app.extensions["search_redis"] = client
    done_key = DONE_KEY.format(id=request_id)
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return record
            # Wake at least every second to check that somebody still works on it.
            popped = client.blpop([done_key], timeout=min(1.0, max(0.01, left)))
            if popped is not None:
                client.rpush(done_key, 1)  # put it back for any other waiter
            record = read_request(request_id)
            if _ended(record):
                return record
    except redis_lib.RedisError as exc:
        raise SearchRequestError(UNAVAILABLE) from exc


# -- requests whose worker died, or that nobody takes -------------------------------------


def settle(
    record: dict[str, Any] | None, *, startup: bool = False, alive: bool | None = None
) -> dict[str, Any] | None:
    """A pending request whose worker died is sent again (or failed), one queued too long is
    failed; one nobody can take now comes back marked ``"unavailable": True`` (not stored).

    ``startup``: an ``ml`` worker has just started (a queued request's message may be with
    one that died); ``alive``: whether an ``ml`` worker is alive, if the caller knows.
    """
    if record is None or record["state"] not in services.PENDING:
        return record
    client = get_redis()
    alive = liveness.worker_alive(client) if alive is None else alive
    request_id = record["id"]
    running = record["state"] == "running"
    options = {
        "now": time.time(),
        "worker_alive": alive,
        "queue_timeout": float(current_app.config["SEARCH_QUEUE_TIMEOUT"]),
        "startup": startup,
        "unavailable_after": min(
            liveness.UNAVAILABLE_AFTER_S, float(current_app.config["SEARCH_WAIT_TIMEOUT"]) / 2
        ),
    }
    found = liveness.verdict(
        record, leased=running and liveness.leased(client, request_id), **options
    )
    if found.action == "wait":
        return record
    if found.action == "unavailable":
        return {**record, "unavailable": True}
    # Changes happen under the request's lease, so a worker cannot claim it meanwhile.
    lock = liveness.lease(client, request_id, timeout=5)
    if not lock.acquire(blocking=False):
        return record  # a worker has just claimed it
    try:
        record = services.get_request(request_id)
        if record is None or record["state"] not in services.PENDING:
            return record
        found = liveness.verdict(record, leased=False, **options)
        return _apply(record, found, options["now"])
    finally:
        with contextlib.suppress(LockError):  # held past its 5 s: nothing left to release
            lock.release()


def _apply(record: dict[str, Any], found: liveness.Verdict, now: float) -> dict[str, Any]:
    """Carry out a verdict on a request whose lease the caller holds."""
    request_id, kind = record["id"], record["kind"]
    if found.action == "wait":
        return record
    if found.action == "unavailable":
        return {**record, "unavailable": True}
    if found.action == "fail":
        logger.warning("%s request %s failed: %s", kind, request_id, found.message)
        record = services.update_request(
            request_id, state="failed", error=found.message, code=found.code, ended_at=now
        )
        if kind == "compare":
            for path in record["images"] if record else []:
                services.remove_upload(path)
        services.notify_done(request_id)
        return record
    changes: dict[str, Any] = {"resent_at": now}
    if found.action == "retry":
        # Its worker died while running it: back to the queue, as a new queued period.
        changes.update(state="queued", queued_at=now)
        logger.warning("%s request %s lost its worker: sent again", kind, request_id)
    else:
        logger.info("%s request %s still queued: sent again", kind, request_id)
    record = services.update_request(request_id, **changes)
    try:
        services.enqueue(kind, request_id)
    except (OSError, KombuOperationalError) as exc:
        logger.warning("could not send %s request %s again: %s", kind, request_id, exc)
    return record


def sweep(*, startup: bool = False) -> int:
    """Settle every pending request (one sweep per beat across workers, unless ``startup``);
    returns how many were looked at."""
    client = get_redis()
    if not startup and not client.set(liveness.SWEEP_KEY, 1, nx=True, ex=int(liveness.BEAT_S) - 1):
        return 0
    client.zremrangebyscore(liveness.PENDING_KEY, "-inf", time.time() - services.retention_s())
    alive = liveness.worker_alive(client)
    ids = [raw.decode() for raw in client.zrange(liveness.PENDING_KEY, 0, SWEEP_BATCH - 1)]
    for request_id in ids:
        record = services.get_request(request_id)
        if record is None or record["state"] not in services.PENDING:
            client.zrem(liveness.PENDING_KEY, request_id)
            continue
        settle(record, startup=startup, alive=alive)
    return len(ids)
