"""A neighbour-list build with extra worker processes on the ``index`` queue, timed.

``build_with_workers`` starts ``workers`` Celery worker processes consuming only the ``index``
queue (as the compose file's ``worker-index`` service does), runs the shipped build,
``worker.jobs.indexing.build_neighbours``, in the calling process (which computes shards
too), stops the workers and returns the build's wall time. ``workers=0`` is the build alone
in one process; ``workers=1`` is two processes. Run as a script it prints both::

    python bench/scale_workers.py --model-folder F --model-id M --redis-url redis://.../13

Every process uses all the cores it is given (BLAS and faiss threads); on a machine with
fewer cores than processes the figure shows what sharing costs, on several machines (or
many cores) what adding workers gains.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from webapp import create_app  # noqa: E402
from webapp.registry import neighbour_cache  # noqa: E402
from worker.jobs import shards  # noqa: E402
from worker.jobs.indexing import build_neighbours  # noqa: E402

READY_TIMEOUT_S = 120


def _settings(model_folder: str, redis_url: str, index_kind: str, shard_rows: int | None):
    """The app settings (and, for the workers, their environment variables)."""
    config = {
        "MODEL_FOLDER": model_folder,
        "REDIS_URL": redis_url,
        "NEIGHBOURS_INDEX": index_kind,
        "SQLALCHEMY_DATABASE_URI": "sqlite://",  # the build reads no rows
        "INDEX_HEAL_INTERVAL": 0,  # no heal checks from the workers meanwhile
    }
    env = {
        **os.environ,
        "SECRET_KEY": os.environ.get("SECRET_KEY", "bench-scale-workers"),
        "MODEL_FOLDER": model_folder,
        "REDIS_URL": redis_url,
        "NEIGHBOURS_INDEX": index_kind,
        "DATABASE_URL": "sqlite://",
        "INDEX_HEAL_INTERVAL": "0",
    }
    if shard_rows:
        config["NEIGHBOURS_SHARD_ROWS"] = shard_rows
        env["NEIGHBOURS_SHARD_ROWS"] = str(shard_rows)
    return config, env


def _start_workers(count: int, env: dict, log_folder: Path) -> list[tuple[str, subprocess.Popen]]:
    started = []
    for i in range(count):
        name = f"index{i}-{os.getpid()}@bench"
        log = open(log_folder / f"worker{i}.log", "ab")  # noqa: SIM115 (the process's life)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker.celery_app",
                "worker",
                "-Q",
                "index",
                "--concurrency",
                "1",
                "-n",
                name,
                "--without-gossip",
                "--without-mingle",
                "--loglevel",
                "INFO",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        started.append((name, proc))
    return started


def _wait_ready(celery_app, workers: list[tuple[str, subprocess.Popen]]) -> None:
    """Until every worker answers a control ping."""
    names = {name for name, _ in workers}
    deadline = time.monotonic() + READY_TIMEOUT_S
    while names and time.monotonic() < deadline:
        for name, proc in workers:
            if proc.poll() is not None:
                raise RuntimeError(f"worker {name} exited with {proc.returncode}")
        replies = celery_app.control.ping(destination=sorted(names), timeout=1.0) or []
        names -= {node for reply in replies for node in reply}
    if names:
        raise RuntimeError(f"workers not ready after {READY_TIMEOUT_S}s: {sorted(names)}")


def _stop(workers: list[tuple[str, subprocess.Popen]]) -> None:
    for _, proc in workers:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for _, proc in workers:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def build_with_workers(
    model_folder: str,
    model_id: str,
    redis_url: str,
    workers: int,
    index_kind: str,
    *,
    shard_rows: int | None = None,
) -> dict:
    """Build ``model_id``'s lists with ``workers`` extra index-queue processes; the timings.

    ``redis_url`` should name a scratch database: the model's lists there are rewritten.
    ``shard_rows`` overrides ``NEIGHBOURS_SHARD_ROWS`` (small shards share out evenly)."""
    config, env = _settings(model_folder, redis_url, index_kind, shard_rows)
    app = create_app(config)
    started: list[tuple[str, subprocess.Popen]] = []
    with tempfile.TemporaryDirectory(prefix="scale-workers-") as logs:
        try:
            started = _start_workers(workers, env, Path(logs))
            _wait_ready(app.extensions["celery"], started)
            with app.app_context():
                began, t0 = time.time(), time.perf_counter()
                report = build_neighbours(model_id, activate=True, reuse_index=False)
                wall = time.perf_counter() - t0
                cache = neighbour_cache()
                build = shards.last_build(cache, model_id)
                attempts = shards.attempts(cache, build)
                record = shards.record(cache, model_id)
        finally:
            _stop(started)
    return {
        "build_s": round(wall, 2),
        "processes": workers + 1,
        "products": report.products,
        "shards": build.shards,
        "shard_rows": build.shard_rows,
        # Building and saving the index (one process), then the shards (shared out).
        "index_s": round(float(record["started_at"]) - began, 2),
        "shards_s": round(float(record["finished_at"]) - float(record["started_at"]), 2),
        "write_s": round(report.seconds_write, 2),
        "shards_recomputed": sum(n - 1 for n in attempts.values()),
        "index": index_kind,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-folder", required=True)
    parser.add_argument("--model-id", required=True)
    parser.add_argument("--redis-url", required=True, help="a scratch database (not /0)")
    parser.add_argument("--index", default="ann", choices=("auto", "exact", "ann"))
    parser.add_argument("--workers", default="0,1", help="extra processes to try, e.g. 0,1,3")
    parser.add_argument("--shard-rows", type=int, default=None)
    args = parser.parse_args()
    if args.redis_url.rstrip("/").endswith("/0"):
        parser.error("use a scratch Redis database, not database 0")
    for count in (int(w) for w in args.workers.split(",")):
        result = build_with_workers(
            args.model_folder,
            args.model_id,
            args.redis_url,
            count,
            args.index,
            shard_rows=args.shard_rows,
        )
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
