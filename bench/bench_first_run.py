"""A newcomer's first run, timed: a fresh clone's ``make run`` until the tuned model serves.

The script clones this repository's HEAD into a scratch folder (or reuses ``--clone DIR``, a
clone of it, after emptying its ``instance/``), then starts ``make run`` there headless, as a
newcomer would, on a free port, a scratch Redis database (``--redis-db``, flushed at start;
never DB 0) and the catalogue at ``--catalog``. The clock starts when ``make run`` does; the
script records when

* the site answers (``GET /`` returns 200),
* plain similar-products lists are served (``GET /api/products/<id>/similar`` answers with a
  plain model id; pages switch to a model only once its lists are complete), and
* the tuned model is served (the same call answers with a tuned id, ``<base>.ft<digest>``),

and prints them as a table with the machine, its load average at start, the commit and the
model ids, the index job's and the tuning's stage timings from the worker log, and (while it
waits) what ``flask catalog index-status`` says. On exit, Ctrl-C and timeout included, it
stops every process ``make run`` started (its process group) and checks that none is left.

``--reuse-venv PATH`` links an existing virtualenv as the clone's ``.venv`` and tells make not
to reinstall into it (an install needs the network and takes minutes; the table says which).

    PYTHONPATH=. .venv/bin/python bench/bench_first_run.py --reuse-venv .venv \\
        [--catalog DIR] [--redis-db 12] [--timeout 90] [--json out.json] [--env TUNE_EPOCHS=4]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._stack import free_port  # noqa: E402
from ml.provenance import cpuinfo  # noqa: E402
from webapp.config import SETTINGS  # noqa: E402

DEFAULT_CATALOG = ROOT.parent / "shared" / "data" / "fashion-small"
STOP_GRACE_S = 30
# A job that returned: its summary is read from the result backend (the log shortens it).
TASK_DONE = re.compile(r"Task worker\.tasks\.(ml_\w+)\[([^\]]+)\] succeeded in")
TASK_FAILED = re.compile(r"Task worker\.tasks\.(ml_\w+)\[[^\]]+\] raised unexpected: (.*)$")
TUNE_RECEIVED = re.compile(r"Task worker\.tasks\.ml_tune_catalog\[[^\]]+\] received")
STAGE_DONE = re.compile(r"\b(\w+): stage done in ([\d.]+) s \((\d+) of (\d+) (\w+) counted\)")


class Run:
    """``make run`` in the clone, in a process group of its own, with its output timestamped."""

    def __init__(self, clone: Path, env: dict[str, str], make_args: list[str], t0: float) -> None:
        self.clone, self.t0 = clone, t0
        self.log = clone / "make-run.log"
        self.lines: list[tuple[float, str]] = []
        self.proc = subprocess.Popen(
            ["make", *make_args, "run"],
            cwd=clone,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # its own process group: stopped as one below
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        with open(self.log, "w", encoding="utf-8") as out:
            for line in self.proc.stdout:
                self.lines.append((time.monotonic() - self.t0, line.rstrip()))
                out.write(line)
                out.flush()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> list[int]:
        """TERM the process group, KILL it after a grace period; the pids still left."""
        pgid = self.proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and group_members(pgid):
            time.sleep(0.5)
        if group_members(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            time.sleep(1)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        return group_members(pgid) + processes_in(self.clone)


def group_members(pgid: int) -> list[int]:
    """Live processes of a process group (zombies excepted)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def processes_in(folder: Path) -> list[int]:
    """Live processes whose working directory is ``folder`` (one that left its group)."""
    found = []
    for cwd in Path("/proc").glob("[0-9]*/cwd"):
        try:
            if Path(os.readlink(cwd)) == folder and int(cwd.parent.name) != os.getpid():
                found.append(int(cwd.parent.name))
        except OSError:
            continue
    return found


def prepare_clone(args) -> tuple[Path, bool]:
    """(the clone to run in, True when this script made it and may delete it)."""
    if args.clone:
        clone = Path(args.clone).resolve()
        if clone == ROOT:
            raise SystemExit("--clone must not be this checkout: its instance/ would be emptied")
        if clone.exists():
            if not (clone / ".git").exists() or not (clone / "Makefile").exists():
                raise SystemExit(f"--clone {clone} exists but is not a clone of this repository")
            empty_instance(clone)
            return clone, False
    else:
        clone = Path(tempfile.mkdtemp(prefix="first-run-")) / "shop"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    return clone, not args.clone


def empty_instance(clone: Path) -> None:
    """A fresh clone has no local settings, database, media or models: remove them."""
    instance = clone / "instance"
    for child in instance.glob("*"):
        if child.name == ".gitkeep":
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def link_venv(clone: Path, venv: str | None) -> str:
    """Link ``venv`` as the clone's .venv; what the table says about the install."""
    if not venv:
        return "installed by make run (setup)"
    source = Path(venv).resolve()
    if not (source / "bin" / "python").exists():
        raise SystemExit(f"--reuse-venv {source}: no bin/python there")
    target = clone / ".venv"
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.exists():
        shutil.rmtree(target)
    target.symlink_to(source)
    return f"reused {source} (not reinstalled)"


def scratch_redis(db: int) -> redis.Redis:
    """The scratch database, flushed; refused when it is DB 0 or a test run holds it."""
    if db == 0:
        raise SystemExit("--redis-db must not be 0")
    client = redis.Redis(host="127.0.0.1", port=6379, db=db, socket_connect_timeout=2)
    try:
        holder = redis.Redis(host="127.0.0.1", port=6379, db=0).get(f"shop-tests:db:{db}")
        client.ping()
    except redis.ConnectionError as exc:
        raise SystemExit(
            f"Redis does not answer at 127.0.0.1:6379 ({exc}): start it first"
        ) from exc
    if holder:
        raise SystemExit(f"Redis DB {db} is in use by a test run (pid {holder.decode()})")
    client.flushdb()
    return client


def run_env(args, port: int) -> tuple[dict[str, str], list[str]]:
    """The newcomer's environment: none of the app's settings, then the bench's own."""
    names = {s.env for s in SETTINGS if s.env} | {"PORT", "MAKEFLAGS", "MFLAGS", "VIRTUAL_ENV"}
    env = {k: v for k, v in os.environ.items() if k not in names}
    dropped = sorted(k for k in os.environ if k in names and k not in ("MAKEFLAGS", "MFLAGS"))
    env.update(
        PORT=str(port),
        CATALOG_PATH=str(Path(args.catalog).resolve()),
        REDIS_URL=f"redis://127.0.0.1:6379/{args.redis_db}",
    )
    for item in args.env:
        name, _, value = item.partition("=")
        env[name] = value
    return env, dropped


def catalogue_photos(catalog: Path, limit: int = 50) -> tuple[int, list[int]]:
    """(rows of styles.csv with a photo, the first ``limit`` of their ids)."""
    count, first = 0, []
    with open(catalog / "styles.csv", encoding="utf-8", errors="replace", newline="") as handle:
        for row in csv.DictReader(handle):
            pid = (row.get("id") or "").strip()
            if pid.isdigit() and (catalog / "images" / f"{pid}.jpg").exists():
                count += 1
                if len(first) < limit:
                    first.append(int(pid))
    return count, first


def min_products_to_tune(clone: Path) -> int | None:
    """The smallest catalogue the clone's tuning accepts (``MIN_PRODUCTS``), if it says."""
    text = (clone / "worker" / "jobs" / "tuning.py").read_text(encoding="utf-8")
    found = re.search(r"^MIN_PRODUCTS\s*=\s*(\d+)", text, re.MULTILINE)
    return int(found.group(1)) if found else None


def served_model(url: str, candidates: list[int]) -> str | None:
    """The model id the similar-products API answers with (None while it serves no lists)."""
    while candidates:
        try:
            answer = requests.get(f"{url}api/products/{candidates[0]}/similar", timeout=5)
        except requests.RequestException:
            return None
        if answer.status_code == 404:
            candidates.pop(0)  # a row the import skipped: ask about another product
            continue
        json_answer = answer.headers.get("content-type", "").startswith("application/json")
        body = answer.json() if json_answer else {}
        return body.get("model") if answer.status_code == 200 and body.get("items") else None
    raise RuntimeError("none of the catalogue's first products is in the shop")


def flask_cli(clone: Path, env: dict[str, str], *args: str) -> str:
    """The output of a ``flask`` command run in the clone (its own settings)."""
    done = subprocess.run(
        [str(clone / ".venv" / "bin" / "flask"), "--app", "wsgi", *args],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return (done.stdout + done.stderr).strip()


class WorkerLog:
    """New lines of the clone's worker log: stage timings, job summaries, failures."""

    def __init__(self, path: Path, results: redis.Redis) -> None:
        self.path, self.offset, self.results = path, 0, results
        self.stages: dict[str, dict[str, float]] = {"index": {}, "tuning": {}}
        self.summaries: dict[str, dict] = {}
        self.failures: list[str] = []
        self.job = "index"

    def read(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8", errors="replace") as handle:
            handle.seek(self.offset)
            chunk = handle.read()
            self.offset = handle.tell()
        for line in chunk.splitlines():
            if TUNE_RECEIVED.search(line):
                self.job = "tuning"
            elif found := STAGE_DONE.search(line):
                self.stages[self.job][found.group(1)] = float(found.group(2))
            elif found := TASK_DONE.search(line):
                stored = self.results.get(f"celery-task-meta-{found.group(2)}")
                with contextlib.suppress(TypeError, ValueError):
                    self.summaries[found.group(1)] = json.loads(stored)["result"]
            elif found := TASK_FAILED.search(line):
                self.failures.append(f"{found.group(1)}: {found.group(2)}")


def machine() -> dict[str, object]:
    """Where the run happened."""
    return {
        "platform": platform.platform(),
        "cpu": cpuinfo("model name") or platform.processor(),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def say(t0: float, text: str) -> None:
    print(f"[{time.monotonic() - t0:7.1f} s] {text}", flush=True)


def wait(
    args, run: Run, clone: Path, env: dict, url: str, ids: list[int], tune: bool, db: redis.Redis
) -> dict:
    """Poll until the tuned model serves (or the plain one, when no tuning will come)."""
    t0, deadline = run.t0, run.t0 + 60 * args.timeout
    times: dict[str, float | None] = {"site": None, "plain": None, "tuned": None}
    models: dict[str, str | None] = {"plain": None, "tuned": None}
    log, checks = WorkerLog(clone / "instance" / "logs" / "worker.log", db), {}
    last_status, next_status = "", 0.0
    while time.monotonic() < deadline:
        now = time.monotonic() - t0
        log.read()
        if log.failures:
            raise RuntimeError("a job failed in the worker: " + "; ".join(log.failures))
        if not run.alive():
            tail = "\n".join(line for _, line in run.lines[-15:])
            raise RuntimeError(f"make run exited ({run.proc.returncode}):\n{tail}")
        if times["site"] is None:
            with contextlib.suppress(requests.RequestException):
                if requests.get(url, timeout=2).status_code == 200:
                    times["site"] = now
                    say(t0, "the site answers")
        else:
            model = served_model(url, ids)
            if model and ".ft" not in model and times["plain"] is None:
                times["plain"], models["plain"] = now, model
                say(t0, f"plain lists served ({model})")
                checks["status_at_plain"] = flask_cli(clone, env, "catalog", "index-status")
                checks["stats"] = flask_cli(clone, env, "catalog", "stats")
                if not tune:
                    break
            if model and ".ft" in model:
                times["tuned"], models["tuned"] = now, model
                say(t0, f"tuned model served ({model})")
                break
            if now >= next_status:
                status = flask_cli(clone, env, "catalog", "index-status")
                if status != last_status:
                    say(t0, "index-status:\n    " + status.replace("\n", "\n    "))
                    last_status = status
                next_status = now + args.status_every
        time.sleep(args.poll)
    # The job's summary is logged just after its lists are switched to.
    settle = time.monotonic() + 20
    while times["tuned"] and "ml_tune_catalog" not in log.summaries and time.monotonic() < settle:
        time.sleep(1)
        log.read()
    startup = next((t for t, line in run.lines if "ready after" in line), None)
    return {
        "times": {"startup_steps": startup, **times},
        "models": models,
        "stages": log.stages,
        "summaries": log.summaries,
        "checks": checks,
        "timed_out": times["tuned" if tune else "plain"] is None,
    }


def minutes(seconds: float | None) -> str:
    return "not reached" if seconds is None else f"{seconds:8.1f} s  ({seconds / 60:5.1f} min)"


def report(result: dict) -> None:
    """The table."""
    m, t = result["machine"], result["times"]
    print()
    print(f"First run of a fresh clone: commit {result['commit']}")
    print(f"  machine: {m['platform']}, {m['cpu']}, {m['cpus']} cpus")
    print(f"  load average at start: {' '.join(str(x) for x in m['load_average'])}")
    print(f"  virtualenv: {result['venv']}")
    print(f"  catalogue: {result['catalog']} ({result['photos']} products with a photo)")
    if result["env"]:
        print(f"  settings given: {' '.join(result['env'])}")
    if result["dropped"]:
        print(f"  left out of the environment: {' '.join(result['dropped'])}")
    print(f"  {'start-up steps done (make run)':<34} {minutes(t['startup_steps'])}")
    print(f"  {'site answers':<34} {minutes(t['site'])}")
    print(f"  {'plain lists served':<34} {minutes(t['plain'])}  {result['models']['plain'] or ''}")
    if result["tuning_expected"]:
        print(
            f"  {'tuned model served':<34} {minutes(t['tuned'])}  {result['models']['tuned'] or ''}"
        )
    else:
        print(f"  {'tuned model served':<34} not expected: {result['no_tuning']}")
    for job, stages in result["stages"].items():
        if stages:
            figures = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in stages.items())
            print(f"  {job} stages: {figures}")
    tune = result["summaries"].get("ml_tune_catalog")
    if tune:
        keys = ("seconds_maps", "seconds_training", "seconds_neighbours", "seconds")
        print("  tuning job: " + ", ".join(f"{k} {tune[k]}" for k in keys if k in tune))
        if tune.get("validation"):
            print(f"  tuning validation accuracy (held back): {tune['validation']}")
    if result["timed_out"]:
        print(f"  TIMED OUT after {result['timeout_min']} min")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clone", help="clone here (or reuse this clone of the repository)")
    parser.add_argument("--reuse-venv", help="link this virtualenv instead of installing one")
    parser.add_argument("--catalog", default=str(DEFAULT_CATALOG))
    parser.add_argument("--redis-db", type=int, default=12, help="scratch Redis DB (not 0)")
    parser.add_argument("--timeout", type=float, default=120.0, help="minutes")
    parser.add_argument("--json", help="write the times and ids to this file")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the run")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between API checks")
    parser.add_argument(
        "--status-every", type=float, default=30.0, help="seconds between index-status prints"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch clone")
    args = parser.parse_args()
    if any("=" not in item for item in args.env):
        parser.error("--env takes NAME=VALUE")
    catalog = Path(args.catalog)
    if not (catalog / "styles.csv").is_file():
        parser.error(f"no styles.csv in {catalog}")

    photos, ids = catalogue_photos(catalog)
    if not ids:
        parser.error(f"{catalog} has no product with a photo (images/<id>.jpg)")
    db = scratch_redis(args.redis_db)
    start_machine = machine()
    clone, made = prepare_clone(args)
    venv = link_venv(clone, args.reuse_venv)
    commit = subprocess.run(
        ["git", "-C", str(clone), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    port = free_port()
    env, dropped = run_env(args, port)
    url = f"http://127.0.0.1:{port}/"
    least = min_products_to_tune(clone)
    tuned_setting = dict(item.partition("=")[::2] for item in args.env).get("EMBEDDING_TUNED")
    no_tuning = None
    if least is not None and photos < least:
        no_tuning = (
            f"tuning needs at least {least} products with a photo, the catalogue has {photos}"
        )
    elif tuned_setting not in (None, "auto"):
        no_tuning = f"EMBEDDING_TUNED={tuned_setting} (the first build tunes only with auto)"
    print(f"clone: {clone} (commit {commit}); virtualenv: {venv}")
    print(f"web: {url}; Redis DB {args.redis_db}; catalogue {catalog} ({photos} with a photo)")
    if least is not None:
        print(f"tuning needs at least {least} products with a photo (MIN_PRODUCTS)")
    if no_tuning:
        print(f"no tuned model will come: {no_tuning}; timing up to the plain lists only")

    make_args = ["-o", ".venv/.requirements.stamp"] if args.reuse_venv else []
    t0 = time.monotonic()
    # Ctrl-C and kill both end in the clean-up below (also when started in the background,
    # where SIGINT would otherwise be ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run = Run(clone, env, make_args, t0)
    result: dict = {}
    try:
        say(t0, f"make {' '.join(make_args + ['run'])}")
        result = wait(args, run, clone, env, url, ids, no_tuning is None, db)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
    finally:
        left = run.stop()
        print(
            f"stopped make run's processes{'' if not left else f'; STILL RUNNING: {left}'}",
            flush=True,
        )
    if result:
        result.update(
            commit=commit,
            machine=start_machine,
            venv=venv,
            catalog=str(catalog),
            photos=photos,
            env=args.env,
            dropped=dropped,
            tuning_expected=no_tuning is None,
            no_tuning=no_tuning,
            timeout_min=args.timeout,
        )
        report(result)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2, default=str))
            print(f"  written to {args.json}")
    worker_log = clone / "instance" / "logs" / "worker.log"
    if made and not args.keep:
        # The models and stores are large; the two logs are kept beside the clone's place.
        for log in (run.log, worker_log):
            if log.exists():
                shutil.copy2(log, clone.parent / log.name)
        shutil.rmtree(clone, ignore_errors=True)
        print(f"logs: {clone.parent} (the scratch clone is removed; --keep keeps it)")
    else:
        print(f"logs: {run.log} and {worker_log}")
    return 0 if result and not result["timed_out"] else 1


if __name__ == "__main__":
    sys.exit(main())
