"""Neighbour-list builds in shards: slices of the catalogue any process on the ``index`` queue
can compute.

A full build (``worker.jobs.indexing.build_neighbours``) saves the model's vector index
beside its embeddings, records a *build* in Redis, sends one ``ml_build_shard`` task per
shard of ``NEIGHBOURS_SHARD_ROWS`` products (in id order) to the ``index`` queue, and works
on the shards itself too. Whoever starts a shard holds its *lease*, a Redis key that expires
unless renewed as the work goes on; a shard is done once its lists and K-th scores are
written. So with one worker process the build's own process computes every shard (the
queued tasks find them done and return at once); more processes on the ``index`` queue, on
this machine or on others sharing the model folder, shorten the build with no change; and
a process killed half-way leaves a lease that expires, after which the build's process
computes that shard again. Computing a shard twice writes the same lists twice.

Keys (``P`` = the neighbour cache's prefix, ``M`` = model id, ``B`` = build id, ``S`` = shard)::

    P:M:build               hash: id, rows, shard_rows, k, lease_s, started_at; finished_at
                            once its lists are complete, activations once pages serve them
    P:M:build:B:done        set of the shards whose lists are written
    P:M:build:B:kth         hash S -> float32 K-th scores of the shard's rows (for upkeep)
    P:M:build:B:attempts    hash S -> how many times a computation of the shard started
    P:M:build:B:lease:S     ``host:pid:token`` of the process computing the shard (expires)
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from celery import group
from flask import current_app
from redis.exceptions import LockError

from ml.cache import NeighbourCache
from ml.compact import load_index
from ml.neighbours import top_k_rows
from ml.vector_index import nearest_others
from webapp.registry import index_folder, neighbour_cache, store_for
from worker.jobs.upkeep import Progress, kth_scores

logger = logging.getLogger(__name__)

SHARD_TASK = "worker.tasks.ml_build_shard"
# A lease not renewed for this long is taken to belong to a dead process. It is renewed
# after every block of queries (a few seconds of work at most).
LEASE_S = 60.0
# Product rows queried at once: the lease is renewed and lists are written between blocks.
QUERY_BLOCK = 4096
# Rows scored at once by an exact build (block x catalogue floats): the block of
# ``ml.neighbours.all_neighbours``, whose lists an exact build reproduces.
EXACT_BLOCK = 1024
# The per-build keys outlive an abandoned build by this much, then Redis drops them.
BUILD_TTL_S = 2 * 24 * 3600
# How often the build's process looks again at shards other processes hold.
POLL_S = 0.25


class BuildSuperseded(RuntimeError):
    """Another build of the same model's lists started while this one was running."""


@dataclass(frozen=True)
class Build:
    """One full build of a model's lists: ``rows`` products, in shards of ``shard_rows``."""

    model_id: str
    build_id: str
    rows: int
    shard_rows: int
    k: int
    lease_s: float

    @property
    def shards(self) -> int:
        """How many shards the rows make."""
        return -(-self.rows // self.shard_rows)

    def rows_of(self, shard: int) -> slice:
        """The positions (in id order) of a shard's products."""
        return slice(shard * self.shard_rows, min((shard + 1) * self.shard_rows, self.rows))


@dataclass
class Sources:
    """What shards are computed from: the saved index, the build's rows, the stored rows."""

    index: Any
    rows: np.ndarray  # the saved index's product ids, ascending: the build's rows
    store_ids: np.ndarray  # the stored product ids now, ascending
    fetch: Callable[[np.ndarray], np.ndarray]  # float32 vectors of store positions
    matrix: np.ndarray | None = None  # every stored vector (float32), for an exact index

    @classmethod
    def of_arrays(cls, index: Any, rows: np.ndarray, ids: np.ndarray, vectors: Any) -> Sources:
        """Sources over stored rows held as one (memory-mapped) array."""
        matrix = np.asarray(vectors, np.float32) if index.kind == "exact" else None
        return cls(index, rows, ids, lambda pos: np.asarray(vectors[pos], np.float32), matrix)


def _record_key(cache: NeighbourCache, model_id: str) -> str:
    return cache.key(model_id, "build")


def _key(cache: NeighbourCache, build: Build, *parts: object) -> str:
    return cache.key(build.model_id, "build", build.build_id, *parts)


def start(cache: NeighbourCache, model_id: str, rows: int, k: int, shard_rows: int) -> Build:
    """Record a new build of a model's lists (it supersedes any build still recorded)."""
    if shard_rows < 1:
        raise ValueError(f"NEIGHBOURS_SHARD_ROWS must be at least 1, got {shard_rows}")
    build = Build(model_id, uuid.uuid4().hex[:12], int(rows), int(shard_rows), int(k), LEASE_S)
    fields = {
        "id": build.build_id,
        "rows": build.rows,
        "shard_rows": build.shard_rows,
        "k": build.k,
        "lease_s": build.lease_s,
        "started_at": f"{time.time():.3f}",
    }
    pipe = cache.r.pipeline(transaction=True)
    pipe.delete(_record_key(cache, model_id))
    pipe.hset(_record_key(cache, model_id), mapping=fields)
    pipe.execute()
    return build


def resumable(
    cache: NeighbourCache, model_id: str, rows: int, k: int, shard_rows: int, index_saved_at: float
) -> Build | None:
    """The model's recorded build when it can go on where it stopped: unfinished (the
    process that started it died, and its task was delivered again), over the same rows in
    the same shards, and started after the saved index it computes from was written. Its
    done shards keep their lists; the rest are computed."""
    raw = record(cache, model_id)
    build = _build_of(model_id, raw)
    if build is None or "finished_at" in raw:
        return None
    if (build.rows, build.k, build.shard_rows) != (int(rows), int(k), int(shard_rows)):
        return None
    if float(raw.get("started_at", 0)) < index_saved_at:
        return None
    return build


def record(cache: NeighbourCache, model_id: str) -> dict[str, str]:
    """The fields of a model's recorded build (empty when there is none)."""
    raw = cache.r.hgetall(_record_key(cache, model_id))
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in raw.items()
    }


def last_build(cache: NeighbourCache, model_id: str) -> Build | None:
    """A model's recorded build, finished or not."""
    return _build_of(model_id, record(cache, model_id))


def _build_of(model_id: str, raw: dict[str, str]) -> Build | None:
    """The build a record's fields describe (None for no record)."""
    if "id" not in raw:
        return None
    return Build(
        model_id,
        raw["id"],
        int(raw["rows"]),
        int(raw["shard_rows"]),
        int(raw["k"]),
        float(raw["lease_s"]),
    )


def current(cache: NeighbourCache, model_id: str, build_id: str) -> Build | None:
    """The build ``build_id`` of a model while it is the recorded one and unfinished."""
    raw = record(cache, model_id)
    if raw.get("id") != build_id or "finished_at" in raw:
        return None
    return _build_of(model_id, raw)


def send(build: Build) -> None:
    """Queue one shard task per shard on the ``index`` queue, for any worker to take."""
    celery_app = current_app.extensions["celery"]
    group(
        celery_app.signature(SHARD_TASK, args=(build.model_id, build.build_id, shard))
        for shard in range(build.shards)
    ).apply_async()


def done_shards(cache: NeighbourCache, build: Build) -> set[int]:
    """The shards whose lists are written."""
    return {int(s) for s in cache.r.smembers(_key(cache, build, "done"))}


def attempts(cache: NeighbourCache, build: Build) -> dict[int, int]:
    """How many times each shard's computation started."""
    raw = cache.r.hgetall(_key(cache, build, "attempts"))
    return {int(s): int(n) for s, n in raw.items()}


def open_sources(model_id: str) -> Sources:
    """The saved index (memory-mapped) and the stored rows: all of them for an exact index
    (a small catalogue), else a view that reads only the rows a shard asks for."""
    index = load_index(index_folder(model_id), mmap=True)
    store = store_for(model_id)
    if index.kind == "exact":
        ids, vectors = store.load()
        return Sources.of_arrays(index, index.ids(), ids, vectors)
    view = store.view()
    return Sources(index, index.ids(), view.ids, lambda pos: view.vectors(view.ids[pos]))


def claim(cache: NeighbourCache, build: Build, shard: int):
    """The lease on a shard that is neither done nor leased (a redis-py lock), or None."""
    if cache.r.sismember(_key(cache, build, "done"), shard):
        return None
    lease = cache.r.lock(_key(cache, build, "lease", shard), timeout=build.lease_s)
    token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    if not lease.acquire(blocking=False, token=token):
        return None
    if cache.r.sismember(_key(cache, build, "done"), shard):  # finished meanwhile
        _release(lease)
        return None
    pipe = cache.r.pipeline(transaction=False)
    pipe.hincrby(_key(cache, build, "attempts"), shard, 1)
    pipe.expire(_key(cache, build, "attempts"), BUILD_TTL_S)
    pipe.execute()
    return lease


def _release(lease) -> None:
    try:
        lease.release()
    except LockError:  # it expired (a long pause): another process may redo the shard
        logger.warning("a shard lease expired before it was released: %s", lease.name)


def _renewer(lease) -> Callable[[], None]:
    def renew() -> None:
        try:
            lease.reacquire()
        except LockError:  # lost it: the work goes on (a shard computed twice is the same)
            logger.warning("a shard lease expired while its shard was computed: %s", lease.name)

    return renew


def exact_others(vectors: np.ndarray, at: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``kk`` nearest other rows of rows ``at`` (positions, scores), every row scored.

    The arithmetic of ``ml.neighbours.all_neighbours`` (one product of the block's rows with
    all rows, the row itself masked), so an exact build's lists are the same bit for bit
    whichever process computes them: floating-point sums depend on how a product is
    blocked, and near-equal scores would otherwise swap places."""
    contiguous = at[-1] - at[0] + 1 == len(at)
    queries = vectors[at[0] : at[-1] + 1] if contiguous else vectors[at]
    sims = np.matmul(queries, vectors.T)
    sims[np.arange(len(at)), at] = -np.inf
    return top_k_rows(sims, kk)


def _blocks(stored: np.ndarray, pos: np.ndarray, size: int) -> list[np.ndarray]:
    """``stored`` split by ``pos // size``: blocks aligned on the store's rows, as a build of
    the whole catalogue in one process blocks them."""
    if not len(stored):
        return []
    return np.split(stored, np.flatnonzero(np.diff(pos[stored] // size)) + 1)


def compute_shard(
    cache: NeighbourCache,
    build: Build,
    shard: int,
    sources: Sources,
    renew: Callable[[], None] = lambda: None,
) -> None:
    """Write the lists of a shard's products and record the shard done (with its K-th
    scores). A product no longer stored gets no list (the build's catch-up removes it).
    An exact index is scanned over the stored rows themselves (the same rows it holds)."""
    rows = np.asarray(sources.rows[build.rows_of(shard)], np.int64)
    store_ids = sources.store_ids
    pos = np.minimum(np.searchsorted(store_ids, rows), max(len(store_ids) - 1, 0))
    stored = np.flatnonzero(store_ids[pos] == rows) if len(store_ids) else np.empty(0, np.int64)
    kk = min(build.k, build.rows - 1)
    exact = sources.matrix is not None
    kth = np.full(len(rows), -np.inf, np.float32)
    for at in _blocks(stored, pos, EXACT_BLOCK if exact else QUERY_BLOCK):
        if exact:
            found, scores = exact_others(sources.matrix, pos[at], kk)
            neighbours = store_ids[found]
        else:
            neighbours, scores = nearest_others(sources.index, rows[at], sources.fetch(pos[at]), kk)
        cache.write_lists(build.model_id, rows[at], neighbours, scores)
        kth[at] = kth_scores(scores, build.k)
        renew()
    pipe = cache.r.pipeline(transaction=True)
    pipe.hset(_key(cache, build, "kth"), shard, kth.astype("<f4").tobytes())
    pipe.sadd(_key(cache, build, "done"), shard)
    for part in ("kth", "done"):
        pipe.expire(_key(cache, build, part), BUILD_TTL_S)
    # A build that writes is alive: the lists' health check takes lists left incomplete
    # for long by a stopped build for lists to rebuild.
    pipe.hset(cache.key(build.model_id, "meta"), "updated_at", f"{time.time():.3f}")
    pipe.execute()


def run_shard(model_id: str, build_id: str, shard: int) -> bool:
    """A shard task's work: compute the shard unless its build is over, it is done, or
    another process holds it. True when this process computed it."""
    cache = neighbour_cache()
    build = current(cache, model_id, build_id)
    if build is None:
        return False
    lease = claim(cache, build, shard)
    if lease is None:
        return False
    try:
        sources = open_sources(model_id)
        if len(sources.rows) != build.rows:  # a newer build saved another index meanwhile
            logger.info("shard %d of build %s skipped: the saved index changed", shard, build_id)
            return False
        compute_shard(cache, build, shard, sources, _renewer(lease))
    finally:
        _release(lease)
    return True


def work(
    cache: NeighbourCache,
    build: Build,
    sources: Sources,
    progress: Progress | None = None,
) -> None:
    """Compute shards until every one is done: first those no process holds, then any whose
    lease expired (its process died); meanwhile wait for the others. Raises
    ``BuildSuperseded`` when another build of the model started."""
    reported = -1
    while True:
        if current(cache, build.model_id, build.build_id) is None:
            raise BuildSuperseded(f"build {build.build_id} of {build.model_id} was replaced")
        done = done_shards(cache, build)
        rows_done = sum(len(range(build.rows)[build.rows_of(s)]) for s in done)
        if progress and rows_done != reported:
            progress(rows_done, build.rows)
            reported = rows_done
        todo = [s for s in range(build.shards) if s not in done]
        if not todo:
            return
        for shard in todo:
            lease = claim(cache, build, shard)
            if lease is not None:
                try:
                    compute_shard(cache, build, shard, sources, _renewer(lease))
                finally:
                    _release(lease)
                break
        else:
            time.sleep(POLL_S)  # every shard left is held by a live process


def kth_of(cache: NeighbourCache, build: Build) -> np.ndarray:
    """The K-th scores of every row, in id order, from the shards' records."""
    raw = cache.r.hgetall(_key(cache, build, "kth"))
    parts = {int(s): np.frombuffer(blob, "<f4") for s, blob in raw.items()}
    return np.concatenate([parts[s] for s in range(build.shards)]).astype(np.float32)


def finish(cache: NeighbourCache, build: Build, activate: bool) -> bool:
    """Mark the build finished (its bulky records go) and, when ``activate``, switch pages to
    its complete lists. Once per build: a second call does nothing. True when it switched."""
    if not cache.r.hsetnx(_record_key(cache, build.model_id), "finished_at", f"{time.time():.3f}"):
        return False
    leases = [_key(cache, build, "lease", s) for s in range(build.shards)]
    cache.r.delete(_key(cache, build, "kth"), *leases)
    if not activate:
        return False
    cache.activate(build.model_id)
    # Counted, so the status (and a check after a build with dead workers) can tell pages
    # switched once.
    cache.r.hincrby(_record_key(cache, build.model_id), "activations", 1)
    return True
