"""Run a real Celery worker process against the real Redis for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The settings a worker process needs to see the same DB, media and Redis as the test app.
SHARED_KEYS = {
    "SQLALCHEMY_DATABASE_URI": "DATABASE_URL",
    "REDIS_URL": "REDIS_URL",
    "MEDIA_FOLDER": "MEDIA_FOLDER",
    "MODEL_FOLDER": "MODEL_FOLDER",
    "EMBEDDING_BACKBONE": "EMBEDDING_BACKBONE",
    "EMBEDDING_INPUT_SIZE": "EMBEDDING_INPUT_SIZE",
    "EMBEDDING_POOLING": "EMBEDDING_POOLING",
    "NEIGHBOURS_K": "NEIGHBOURS_K",
    "NEIGHBOURS_INDEX": "NEIGHBOURS_INDEX",
    "EMBEDDING_TUNED": "EMBEDDING_TUNED",
    "TUNE_EPOCHS": "TUNE_EPOCHS",
    "TUNE_PRECISION": "TUNE_PRECISION",
    "INDEX_HEAL_INTERVAL": "INDEX_HEAL_INTERVAL",
}


class WorkerProcess:
    """``celery -A worker.celery_app worker`` in a subprocess, with the app's settings."""

    def __init__(
        self,
        config: dict,
        log_path: Path,
        queues: str = "default,ml,index",
        concurrency: int = 1,
    ) -> None:
        self.env = {**os.environ, "SECRET_KEY": "test-secret"}
        self.concurrency = concurrency
        for key, env in SHARED_KEYS.items():
            self.env[env] = str(config[key])
        self.log_path = log_path
        self.queues = queues
        self.proc: subprocess.Popen | None = None

    def start(self, celery_app, timeout: float = 90) -> WorkerProcess:
        """Start the worker and wait until it answers a ping task."""
        self.log = open(self.log_path, "ab")  # noqa: SIM115 (kept open for the process' life)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker.celery_app",
                "worker",
                "-Q",
                self.queues,
                "--concurrency",
                str(self.concurrency),
                "--pool",
                "prefork",
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        from worker.tasks import ping

        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log_path.read_text()[-3000:]}")
            try:
                ping.apply_async(queue="default").get(timeout=5)
                return self
            except Exception:  # not up yet
                continue
        raise RuntimeError(
            f"worker did not answer within {timeout}s:\n{self.log_path.read_text()[-3000:]}"
        )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop the worker and its children (SIGKILL by default: nothing gets to clean up)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)
        if getattr(self, "log", None):
            self.log.close()
