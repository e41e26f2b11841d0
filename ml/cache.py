"""Neighbour lists in Redis: compact encoding, pipelined writes, one atomic switch per model.

Keys (``P`` = prefix, ``M`` = model id)::

    P:active             the model id whose lists pages serve
    P:M:list:<id>        K neighbours of product <id>: int32 ids then float16 scores, little-endian
    P:M:kth              float32 per product in ``P:M:ids`` order: the K-th score of its list
    P:M:ids              int64 ids of the products with lists (the order of ``kth``)
    P:M:meta             hash: k, count, built_at (full builds), updated_at (any write), complete
    P:M:lock             held by the one process writing the model's lists (see ``writing``)

Plain Python and a Redis client; no Flask here, so the web tier and the workers share it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
from redis.exceptions import LockError

logger = logging.getLogger(__name__)

PREFIX = "nbrs"
ID_DTYPE = np.dtype("<i4")
SCORE_DTYPE = np.dtype("<f2")
# The lists lock expires this long after its holder last renewed it (a killed holder's lock
# frees itself); a writer waits for it longer than that before giving up.
LOCK_TTL_S = 120
LOCK_WAIT_S = 300


class ListsBusy(TimeoutError):
    """Another process held a model's lists lock for longer than a writer waits."""


def encode(ids: np.ndarray, scores: np.ndarray) -> bytes:
    """Pack one list: 6 bytes per neighbour."""
    return np.asarray(ids, ID_DTYPE).tobytes() + np.asarray(scores, SCORE_DTYPE).tobytes()


def decode(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of encode()."""
    n = len(blob) // (ID_DTYPE.itemsize + SCORE_DTYPE.itemsize)
    ids = np.frombuffer(blob, ID_DTYPE, n)
    scores = np.frombuffer(blob, SCORE_DTYPE, n, offset=n * ID_DTYPE.itemsize)
    return ids.astype(np.int64), scores.astype(np.float32)


class NeighbourCache:
    """Read and write the neighbour lists of one Redis database."""

    def __init__(self, redis_client, prefix: str = PREFIX) -> None:
        self.r = redis_client
        self.prefix = prefix

    def key(self, model_id: str, *parts: object) -> str:
        """Key for a model's item."""
        return ":".join([self.prefix, model_id, *map(str, parts)])

    # -- the switch ----------------------------------------------------------------------

    def active_model(self) -> str | None:
        """The model id pages serve, if any lists are complete."""
        value = self.r.get(f"{self.prefix}:active")
        return value.decode() if isinstance(value, bytes) else value

    def activate(self, model_id: str) -> None:
        """Make a model's complete lists the served ones, in one SET."""
        if self.r.hget(self.key(model_id, "meta"), "complete") not in (b"1", "1"):
            raise ValueError(f"neighbour lists of {model_id} are not complete")
        self.r.set(f"{self.prefix}:active", model_id)

    def meta(self, model_id: str) -> dict[str, str]:
        """The build metadata of a model's lists."""
        raw = self.r.hgetall(self.key(model_id, "meta"))
        return {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()
        }

    # -- writing -------------------------------------------------------------------------

    @contextmanager
    def writing(
        self, model_id: str, *, wait: float | None = None, ttl: float | None = None
    ) -> Iterator[Callable[[], object]]:
        """Hold the lock that makes one process at a time read, compute and write a model's
        lists and index (a full build, an incremental update), so none undoes another's
        writes. Yields a function that renews the lock for ``ttl`` more seconds: call it
        between the steps of a long pass. Raises ListsBusy after ``wait`` seconds."""
        wait = LOCK_WAIT_S if wait is None else wait
        lock = self.r.lock(
            self.key(model_id, "lock"), timeout=ttl or LOCK_TTL_S, blocking_timeout=wait
        )
        if not lock.acquire():
            raise ListsBusy(f"the neighbour lists of {model_id} stayed locked for {wait:.0f}s")
        try:
            yield lock.reacquire
        finally:
            try:
                lock.release()
            except LockError:  # held past its ttl without renewal: it expired on its own
                logger.warning("the lists lock of %s expired before it was released", model_id)

    def write_lists(
        self,
        model_id: str,
        product_ids: Sequence[int],
        neighbour_ids: np.ndarray,
        scores: np.ndarray,
        *,
        chunk: int = 2000,
    ) -> None:
        """Write many lists with pipelined SETs (no transaction needed: each SET is atomic)."""
        for start in range(0, len(product_ids), chunk):
            pipe = self.r.pipeline(transaction=False)
            for i in range(start, min(start + chunk, len(product_ids))):
                pipe.set(
                    self.key(model_id, "list", int(product_ids[i])),
                    encode(neighbour_ids[i], scores[i]),
                )
            pipe.execute()

    def delete_lists(self, model_id: str, product_ids: Iterable[int]) -> None:
        """Remove the lists of deleted products."""
        keys = [self.key(model_id, "list", int(p)) for p in product_ids]
        if keys:
            self.r.delete(*keys)

    def write_index(
        self,
        model_id: str,
        ids: np.ndarray,
        kth: np.ndarray,
        k: int,
        complete: bool,
        full_build: bool = False,
    ) -> None:
        """Store which products have lists and each list's K-th score (for incremental upkeep)."""
        now = f"{time.time():.3f}"
        meta = {"k": k, "count": len(ids), "updated_at": now, "complete": int(complete)}
        if full_build:
            meta["built_at"] = now
        pipe = self.r.pipeline(transaction=True)
        pipe.set(self.key(model_id, "ids"), np.asarray(ids, "<i8").tobytes())
        pipe.set(self.key(model_id, "kth"), np.asarray(kth, "<f4").tobytes())
        pipe.hset(
            self.key(model_id, "meta"),
            mapping=meta,
        )
        pipe.execute()

    def read_index(self, model_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids, kth scores) as written by write_index()."""
        ids, kth = self.r.mget(self.key(model_id, "ids"), self.key(model_id, "kth"))
        if ids is None or kth is None:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        return np.frombuffer(ids, "<i8").copy(), np.frombuffer(kth, "<f4").copy()

    # -- reading -------------------------------------------------------------------------

    def get_list(self, model_id: str, product_id: int) -> tuple[np.ndarray, np.ndarray] | None:
        """One product's neighbours (ids, scores) best first, or None when it has no list."""
        blob = self.r.get(self.key(model_id, "list", int(product_id)))
        return None if blob is None else decode(blob)

    def get_lists(
        self, model_id: str, product_ids: Sequence[int]
    ) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """Several lists in one round trip."""
        blobs = (
            self.r.mget([self.key(model_id, "list", int(p)) for p in product_ids])
            if product_ids
            else []
        )
        return [None if b is None else decode(b) for b in blobs]

    def drop_model(self, model_id: str) -> int:
        """Delete every key of a model that is no longer served; returns how many went."""
        if self.active_model() == model_id:
            raise ValueError("refusing to drop the active model's lists")
        removed = 0
        for batch in _chunks(self.r.scan_iter(match=self.key(model_id, "*"), count=5000), 5000):
            removed += self.r.delete(*batch)
        return removed


def _chunks(iterable: Iterable, size: int):
    batch: list = []
    for item in iterable:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
