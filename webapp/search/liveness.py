"""Every search request ends: leases on running requests, the ``ml`` workers' heartbeat, and
the rule that says what a stale request becomes.

Three Redis keys carry the evidence, each with a short time-to-live, so a killed process
simply stops renewing them:

- ``search:lease:<id>``: held by the worker process that runs the request (a Redis lock with
  a token) and renewed every few seconds while it runs. A ``running`` request without it has
  lost its worker.
- ``search:ml-worker``: refreshed every few seconds by each worker that consumes the ``ml``
  queue. Without it nobody answers photo searches, and pages say so (one GET).
- ``search:pending``: the ids of requests not yet ended (a sorted set by creation time), so
  a sweep finds the stale ones without scanning Redis.

``verdict`` is the rule, a pure function: ``webapp.search.services.settle`` applies it to a
request a page or the API reads, and each ``ml`` worker applies it to every pending request
when it starts and every few seconds after (``services.sweep``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.lock import Lock

LEASE_KEY = "search:lease:{id}"
WORKER_KEY = "search:ml-worker"
PENDING_KEY = "search:pending"
SWEEP_KEY = "search:sweep"

# A running request's lease lives this long unless its worker renews it (every third of it).
LEASE_S = 15.0
# How often an ml worker says it is alive (and sweeps), and how long that lasts.
BEAT_S = 5.0
WORKER_TTL_S = 15
# Queued this long with no ml worker alive (or half the wait timeout, if shorter): pages and
# the API say search is unavailable. Not at once: a worker may be restarting.
UNAVAILABLE_AFTER_S = 5.0
# Queued this long with a worker alive: its message may have been held by a worker that
# died (the broker gives those back only after its visibility timeout), so it is sent again.
RESEND_AFTER_S = 30.0
# Runs begun before a request whose worker keeps dying is failed instead of retried.
MAX_ATTEMPTS = 2

UNAVAILABLE = "Photo search is unavailable right now; please try again in a minute."
BUSY = "Photo search is busy right now; please try again in a minute."
INTERRUPTED = "The search was interrupted twice. Please try again with another photo."


@dataclass(frozen=True)
class Verdict:
    """What a pending request needs: ``wait``, ``unavailable`` (shown, nothing written),
    ``resend`` (another message), ``retry`` (back to the queue) or ``fail``."""

    action: str
    message: str = ""
    code: int = 503


WAIT = Verdict("wait")


def verdict(
    record: dict[str, Any],
    *,
    now: float,
    worker_alive: bool,
    leased: bool,
    queue_timeout: float,
    startup: bool = False,
    unavailable_after: float = UNAVAILABLE_AFTER_S,
) -> Verdict:
    """What a queued or running request needs now (``startup``: a worker has just started,
    so a queued request's message may be with one that died; ``unavailable_after``: seconds
    queued with no worker alive before it is shown as unavailable)."""
    if record["state"] == "running":
        if leased:
            return WAIT
        if int(record.get("attempts") or 1) >= MAX_ATTEMPTS:
            return Verdict("fail", INTERRUPTED)
        return Verdict("retry")
    if record["state"] != "queued":
        return WAIT
    queued_at = float(record.get("queued_at") or record["created_at"])
    age = now - queued_at
    if age >= queue_timeout:
        return Verdict("fail", BUSY if worker_alive else UNAVAILABLE)
    resent = float(record.get("resent_at") or 0) >= queued_at
    if worker_alive and not resent and (startup or age >= RESEND_AFTER_S):
        return Verdict("resend")
    if not worker_alive and age >= unavailable_after:
        return Verdict("unavailable", UNAVAILABLE)
    return WAIT


def lease(client: Redis, request_id: str, timeout: float = LEASE_S) -> Lock:
    """The request's lease: a Redis lock whose token any thread of its holder may renew."""
    return client.lock(LEASE_KEY.format(id=request_id), timeout=timeout, thread_local=False)


def leased(client: Redis, request_id: str) -> bool:
    """Whether some process holds the request's lease."""
    return bool(client.exists(LEASE_KEY.format(id=request_id)))


def worker_alive(client: Redis) -> bool:
    """Whether a worker that consumes the ``ml`` queue has said so in the last few seconds."""
    return bool(client.exists(WORKER_KEY))


def mark_worker_alive(client: Redis, node: str) -> None:
    """Say that an ``ml`` worker (``node``) is alive, for ``WORKER_TTL_S`` seconds."""
    client.set(WORKER_KEY, node, ex=WORKER_TTL_S)
