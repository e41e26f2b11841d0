"""A scratch shop for the benches: gunicorn serving ``webapp:create_app()`` plus one Celery
worker process, on a free loopback port, with the environment a bench gives it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port nothing listens on right now (loopback)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Stack:
    """gunicorn (2 workers) + one Celery worker process consuming ``queues``."""

    def __init__(
        self,
        env: dict[str, str],
        log_dir: Path,
        queues: str = "default,ml",
        gunicorn_args: tuple[str, ...] = (),
    ) -> None:
        self.env = env
        self.port = free_port()
        self.log_dir = log_dir
        self.queues = queues
        self.gunicorn_args = gunicorn_args
        self.procs: list[subprocess.Popen] = []

    def _spawn(self, command: list[str], log_name: str) -> None:
        log = open(self.log_dir / log_name, "ab")  # noqa: SIM115 - the process owns it
        self.procs.append(
            subprocess.Popen(
                command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )  # fmt: skip

    def start(self, session: requests.Session | None = None) -> None:
        """Start both processes and wait (up to 2 minutes) until the web server answers."""
        self._spawn(
            [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
             "-Q", self.queues, "--concurrency", "1", "--loglevel", "WARNING",
             "--without-gossip", "--without-mingle"],
            "worker.log",
        )  # fmt: skip
        self._spawn(
            [sys.executable, "-m", "gunicorn", "webapp:create_app()", "--bind",
             f"127.0.0.1:{self.port}", "--workers", "2", "--log-level", "warning",
             *self.gunicorn_args],
            "web.log",
        )  # fmt: skip
        get = (session or requests).get
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if get(self.url("/search/"), timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                time.sleep(0.5)
        raise RuntimeError(f"web server did not start; see {self.log_dir}/web.log")

    def url(self, path: str) -> str:
        """An absolute URL on this shop."""
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        """TERM both process groups; KILL what has not stopped 30 s later."""
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
