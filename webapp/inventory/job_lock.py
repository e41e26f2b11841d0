"""One runner per import job stage: a Redis key holding ``host:pid:nonce`` of its process.

The worker takes the lock while it runs a stage; the web side only asks whether a live
process holds it (a job nobody holds can be resumed). A lock left by a killed worker on this
machine is taken over at once, one from elsewhere after its TTL.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid

from webapp.extensions import get_redis

logger = logging.getLogger(__name__)

LOCK_KEY = "inventory:import-lock:{job_id}:{stage}"
# Refreshed after every batch; a lock outlives a worker that vanished by at most this long.
LOCK_TTL_S = 300

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
