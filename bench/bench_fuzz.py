"""Hostile uploads against a running shop: no answer may be a 5xx, and search still works.

Builds a small temporary shop (``--products`` generated photos in a scratch SQLite file and
media folder, embedded with the tiny test backbone, neighbour lists in a scratch Redis
database: ``--redis-url``, never DB 0), starts gunicorn (``webapp:create_app()``, 2 workers,
loopback only) and a Celery worker on it, signs in as an admin, then sends ``--count``
hostile requests (stopping early after ``--max-seconds``) over the upload endpoints:

    photo search page and API, compare page and API, admin product create, bulk import

cycling through truncated files, wrong magic bytes, huge declared dimensions (square, and
1 x 40,000,000 strips), decompression bombs, ZIP traversal / symlinks / bombs / overlapping
entries, wrong content types, bodies over the size limit (with and without a length),
10,000 form parts, NUL in names and file names, and missing or wrong CSRF tokens; a few
valid uploads are mixed in. Upload rate limits are raised for the run (the fuzz is about
what the validators do), sign-in limits are not: a short password-guessing burst at the
end must meet 429s. Finally one real photo search must return its own product first.

Prints counts by endpoint and status, with machine, load average and commit; exits 1 on
any 5xx or connection failure, or when the last search does not work.

Usage: PYTHONPATH=. .venv/bin/python bench/bench_fuzz.py [--count 1200] [--max-seconds 300]
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._fuzz_cases import (  # noqa: E402
    MAX_BODY,
    MAX_IMPORT,
    build_payloads,
    build_zips,
    chunked,
    image_cases,
    import_cases,
    model_cases,
    photo,
)
from bench._stack import Stack  # noqa: E402
from ml.provenance import git_commit  # noqa: E402

ADMIN = ("fuzz-admin@example.com", "fuzz admin password")


# -- the shop ---------------------------------------------------------------------------


def build_shop(work: Path, env: dict[str, str], products: int) -> int:
    """Products with photos, an admin, embeddings and lists; returns a product id to search."""
    os.environ.update(env)
    from webapp import create_app
    from webapp.extensions import db
    from webapp.models import Product, Role, User
    from worker.jobs import indexing

    app = create_app()
    media = Path(env["MEDIA_FOLDER"])
    media.mkdir(parents=True, exist_ok=True)
    with app.app_context():
        db.create_all()
        for i in range(products):
            (media / f"p{i}.jpg").write_bytes(photo(i))
            db.session.add(
                Product(
                    id=1000 + i,
                    name=f"Fuzz product {i}",
                    gender="Men",
                    master_category="Apparel",
                    sub_category="Topwear",
                    article_type="Shirts",
                    base_colour="Red",
                    image_path=f"p{i}.jpg",
                    active=True,
                )
            )
        admin = User(email=ADMIN[0], role=Role.ADMIN)
        admin.set_password(ADMIN[1])
        db.session.add(admin)
        db.session.commit()
        report = indexing.embed_catalog()
        indexing.build_neighbours(report.model_id)
    return 1000 + products // 2


def csrf_token(session, url: str) -> str:
    match = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', session.get(url, timeout=10).text)
    if not match:
        raise RuntimeError(f"no CSRF token on {url}")
    return match.group(1)


def sign_in(session, stack: Stack) -> str:
    """Sign the session in as the admin; returns its CSRF token."""
    token = csrf_token(session, stack.url("/account/login"))
    answer = session.post(
        stack.url("/account/login"),
        data={"email": ADMIN[0], "password": ADMIN[1], "csrf_token": token},
        allow_redirects=False,
        timeout=10,
    )
    if answer.status_code != 302:
        raise RuntimeError(f"admin sign-in failed: {answer.status_code}")
    return csrf_token(session, stack.url("/admin/products/new"))


def fire(session, stack: Stack, cases, count: int, max_s: float, seen: Callable) -> None:
    """Send up to ``count`` requests from the cycled cases within ``max_s`` seconds."""
    deadline = time.monotonic() + max_s
    for n, (endpoint, case, path, kwargs) in enumerate(itertools.cycle(cases)):
        if n >= count or time.monotonic() > deadline:
            return
        if isinstance(kwargs.get("data"), Iterator):  # a generator is spent after one use
            kwargs = {**kwargs, "data": chunked(os.urandom(MAX_BODY + 200 * 1024))}
        try:
            answer = session.post(stack.url(path), timeout=60, allow_redirects=False, **kwargs)
            status = str(answer.status_code)
            body = answer.text[:4000]
        except OSError as exc:  # requests' errors are OSErrors
            status, body = "conn-error", f"{type(exc).__name__}: {exc}"[:300]
        seen(endpoint, case, status, body)


def last_search(session, stack: Stack, product_id: int, media: Path) -> tuple[bool, str]:
    """One real photo search: its own product must come first."""
    data = (media / f"p{product_id - 1000}.jpg").read_bytes()
    answer = session.post(
        stack.url("/api/search"),
        files={"image": ("photo.jpg", data, "image/jpeg")},
        data={"wait": "1", "timeout": "10"},
        timeout=60,
    )
    deadline = time.monotonic() + 120  # the worker may still be loading its model
    body = answer.json()
    while body.get("status") == "pending" and time.monotonic() < deadline:
        body = session.get(stack.url(body["status_url"]), params={"wait": 1}, timeout=60).json()
    items = body.get("items") or []
    ok = body.get("status") == "ok" and bool(items) and items[0]["id"] == product_id
    return ok, f"status={body.get('status')} first={items[0]['id'] if items else None}"


def guess_passwords(session, stack: Stack, tries: int = 14) -> list[int]:
    """Wrong passwords for one account at production limits: the last ones must be 429."""
    token = csrf_token(session, stack.url("/account/login"))
    codes = []
    for i in range(tries):
        answer = session.post(
            stack.url("/account/login"),
            data={"email": "victim@example.com", "password": f"guess {i}", "csrf_token": token},
            allow_redirects=False,
            timeout=10,
        )
        codes.append(answer.status_code)
    return codes


def report(results, args, elapsed: float, extra: list[str]) -> None:
    by_endpoint: dict[str, Counter] = defaultdict(Counter)
    for endpoint, _, status, _ in results:
        by_endpoint[endpoint][status] += 1
    statuses = sorted({s for c in by_endpoint.values() for s in c})
    load = os.getloadavg()
    print(
        f"machine: {platform.machine()} cpus={os.cpu_count()} load={load[0]:.1f}/{load[1]:.1f} "
        f"| commit: {git_commit()} | {len(results)} hostile requests in {elapsed:.0f} s "
        f"({len({(e, c) for e, c, _, _ in results})} endpoint x input kinds)"
    )
    width = max(len(e) for e in by_endpoint)
    print(f"{'endpoint':<{width}} | " + " | ".join(f"{s:>5}" for s in statuses) + " | total")
    for endpoint, counts in sorted(by_endpoint.items()):
        cells = " | ".join(f"{counts.get(s, 0):>5}" for s in statuses)
        print(f"{endpoint:<{width}} | {cells} | {sum(counts.values()):>5}")
    totals = Counter(status for _, _, status, _ in results)
    print(f"{'all':<{width}} | " + " | ".join(f"{totals.get(s, 0):>5}" for s in statuses))
    for line in extra:
        print(line)


def show_cases(results) -> None:
    """One line per endpoint x input: the statuses seen and the first answer's message."""
    seen: dict[tuple[str, str], tuple[Counter, str]] = {}
    for endpoint, case, status, body in results:
        counts, first = seen.setdefault((endpoint, case), (Counter(), message_of(body)))
        counts[status] += 1
    for (endpoint, case), (counts, first) in sorted(seen.items()):
        statuses = " ".join(f"{s}x{n}" for s, n in sorted(counts.items()))
        print(f"  {endpoint:<13} {case:<22} {statuses:<12} {first[:90]}")


def message_of(body: str) -> str:
    """The message of an answer: JSON ``error``/``message``, a page's lead or first error."""
    match = re.search(r'"(?:error|message)":\s*"([^"]*)"', body) or re.search(
        r'class="(?:lead|errors|flash flash-danger)"[^>]*>\s*(?:<li>|<p>)?([^<]*)', body
    )
    return match.group(1).strip() if match else body[:60].replace("\n", " ")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1200, help="hostile requests to send")
    parser.add_argument("--max-seconds", type=float, default=300, help="stop sending after this")
    parser.add_argument("--products", type=int, default=40, help="size of the scratch catalogue")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder and logs")
    parser.add_argument("--show-cases", action="store_true", help="one line per kind of input")
    args = parser.parse_args()
    import redis
    import requests

    scratch = redis.Redis.from_url(args.redis_url)
    if scratch.connection_pool.connection_kwargs.get("db", 0) == 0:
        raise SystemExit("--redis-url must name a scratch database, not DB 0")
    scratch.flushdb()
    work = Path(tempfile.mkdtemp(prefix="bench-fuzz-"))
    env = {
        "PYTHONPATH": str(ROOT),
        "SECRET_KEY": "bench-fuzz",
        "DATABASE_URL": f"sqlite:///{work / 'shop.sqlite3'}",
        "REDIS_URL": args.redis_url,
        "MEDIA_FOLDER": str(work / "media"),
        "MODEL_FOLDER": str(work / "models"),
        "IMPORT_FOLDER": str(work / "imports"),
        "EMBEDDING_BACKBONE": "tiny",
        "EMBEDDING_TUNED": "off",
        "NEIGHBOURS_K": "5",
        "LOG_LEVEL": "WARNING",
        "MAX_CONTENT_LENGTH": str(MAX_BODY),
        "IMPORT_MAX_UPLOAD": str(MAX_IMPORT),
        # The fuzz is about what the validators answer, not the upload limits.
        "RATELIMIT_UPLOADS": "100000 per minute",
        "RATELIMIT_ADMIN_UPLOADS": "100000 per minute",
    }
    print(f"==> building a {args.products}-product shop in {work}", flush=True)
    product_id = build_shop(work, env, args.products)
    payloads, zips = build_payloads(), build_zips()
    stack = Stack(
        {**os.environ, **env}, work, queues="default,ml,index", gunicorn_args=("--timeout", "60")
    )
    session = requests.Session()
    results: list[tuple[str, str, str, str]] = []
    try:
        stack.start(session)
        token = sign_in(session, stack)
        cases = [
            *image_cases(payloads, token),
            *model_cases(payloads),
            *import_cases(zips, token),
        ]
        print(f"==> {len(cases)} kinds of hostile request, sending {args.count}", flush=True)
        started = time.monotonic()
        fire(session, stack, cases, args.count, args.max_seconds, lambda *r: results.append(r))
        elapsed = time.monotonic() - started
        guesses = guess_passwords(requests.Session(), stack)
        searched, how = last_search(session, stack, product_id, Path(env["MEDIA_FOLDER"]))
    finally:
        stack.stop()
        scratch.flushdb()
        log = "".join(
            (work / name).read_text(errors="replace")
            for name in ("web.log", "worker.log")
            if (work / name).exists()
        )
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    failures = [r for r in results if r[2].startswith("5") or r[2] == "conn-error"]
    limited = guesses[-1] == 429 and 429 in guesses
    extra = [
        f"password guessing (production limits): {' '.join(map(str, guesses))}"
        + ("" if limited else "  <- NOT LIMITED"),
        f"tracebacks in the server logs: {log.count('Traceback')}",
        f"a real photo search afterwards: {'ok' if searched else 'FAILED'} ({how})",
    ]
    report(results, args, elapsed, extra)
    if args.show_cases:
        show_cases(results)
    for endpoint, case, status, body in failures[:10]:
        print(f"  {status} {endpoint} / {case}: {body}")
    return 1 if failures or not searched or not limited else 0


if __name__ == "__main__":
    raise SystemExit(main())
