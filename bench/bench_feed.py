"""The "For you" feed on the served catalogue: time to build it for a shopper with 20 likes
and 50 recently viewed products, in process and under load.

Needs the catalogue imported and indexed (as bench_similar.py). The shopper is anonymous:
their likes and views are made through ``webapp.taste`` in a request context and sent as the
signed session cookie on every request, so pages read them as for any shopper. Prints one
table with the machine, model id and commit:

* in process: ``feed_for`` (lists from Redis, rows from the database), p50/p95;
* under load: ``GET /api/for-you?n=12``, the ``/for-you`` page and the catalogue's first
  page (with its "For you" row) from a second process against gunicorn with 2 workers and
  2 concurrent clients, the product-page bench's load; target p95 at most 30 ms. The
  product page and the catalogue page of a shopper without signals (no row) under the
  same load are printed beside them for scale.

Usage: PYTHONPATH=. .venv/bin/python bench/bench_feed.py [--requests 1000] [--concurrency 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_similar import free_port, load_test, percentile  # noqa: E402
from ml.provenance import git_commit  # noqa: E402

TARGET_P95_MS = 30.0
ROUNDS = 5


def shopper_cookie(app, product_ids: list[int], likes: int, views: int, seed: int) -> str:
    """A ``Cookie`` header for an anonymous shopper who liked ``likes`` products and viewed
    ``views`` others, made through the taste functions pages use."""
    from flask import session

    from webapp.taste import like, record_view

    rng = random.Random(seed)
    picks = rng.sample(product_ids, likes + views)
    with app.test_request_context("/"):
        for pid in picks[likes:]:
            record_view(pid)
        for pid in picks[:likes]:
            like(pid)
        value = app.session_interface.get_signing_serializer(app).dumps(dict(session))
    return f"{app.config['SESSION_COOKIE_NAME']}={value}"


def in_process(app, cookie: str, repeats: int) -> list[float]:
    """Milliseconds of ``feed_for`` for the cookie's shopper (12 products), ``repeats`` times."""
    from webapp.extensions import db
    from webapp.feed import current_feed

    times = []
    with app.test_request_context("/", headers={"Cookie": cookie}):
        for _ in range(repeats):
            t0 = time.perf_counter()
            result = current_feed(12)
            times.append((time.perf_counter() - t0) * 1000)
            db.session.rollback()
    if result.source != "taste":
        raise RuntimeError(f"the shopper's feed fell back to {result.source}: {result.message}")
    return times


# One measured page: its label, how to make ``count`` request paths, the Cookie header sent,
# and whether the target holds it.
Case = tuple[str, Callable[[int], list[str]], str, bool]


def under_load(cases: list[Case], requests: int, concurrency: int) -> dict[str, list[float]]:
    """Latencies (ms) per case against gunicorn with 2 workers, the cases taken in turns
    over ROUNDS rounds so that the shared machine's load falls on all of them alike."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "webapp:create_app()", "--bind", f"127.0.0.1:{port}"]
        + ["--workers", "2", "--log-level", "warning"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    out: dict[str, list[float]] = {label: [] for label, *_ in cases}
    try:
        load_test(port, ["/"] * 20, 1)  # wait for start-up and warm both workers
        for _ in range(ROUNDS):
            for label, make_paths, cookie, _held in cases:
                out[label] += load_test(port, make_paths(requests // ROUNDS), concurrency, cookie)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests per page under load")
    parser.add_argument("--concurrency", type=int, default=2, help="concurrent clients")
    parser.add_argument("--likes", type=int, default=20)
    parser.add_argument("--views", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from webapp import create_app
    from webapp.extensions import db
    from webapp.models import Product
    from webapp.registry import neighbour_cache

    app = create_app()
    with app.app_context():
        model_id = neighbour_cache().active_model()
        active = list(db.session.scalars(db.select(Product.id).where(Product.active.is_(True))))
    if not model_id:
        print("No neighbour lists are served yet: index the catalogue first.", file=sys.stderr)
        return 2
    cookie = shopper_cookie(app, active, args.likes, args.views, args.seed)
    inproc = in_process(app, cookie, 200)
    rows = [
        (
            f"feed_for, in process ({args.likes} likes, {args.views} views)",
            f"p50 {percentile(inproc, 50):.1f} / p95 {percentile(inproc, 95):.1f} ms",
        )
    ]
    rng = random.Random(args.seed)

    def product_pages(count: int) -> list[str]:
        return [f"/products/{rng.choice(active)}" for _ in range(count)]

    def page(path: str) -> Callable[[int], list[str]]:
        return lambda count: [path] * count

    cases: list[Case] = [
        # The product page and the catalogue of a shopper without signals (no row) under the
        # same load, for scale.
        ("GET /products/<id> (for scale)", product_pages, cookie, False),
        ("GET / without signals, no row (for scale)", page("/"), "", False),
        ("GET /api/for-you?n=12", page("/api/for-you?n=12"), cookie, True),
        ("GET /for-you (24 cards)", page("/for-you"), cookie, True),
        ("GET / (catalogue with the row)", page("/"), cookie, True),
    ]
    latencies = under_load(cases, args.requests, args.concurrency)
    for label, _paths, _cookie, held in cases:
        lat = latencies[label]
        figure = f"p50 {percentile(lat, 50):.1f} / p95 {percentile(lat, 95):.1f} ms"
        if held:
            met = "met" if percentile(lat, 95) <= TARGET_P95_MS else "MISSED"
            figure += f" ({met} p95 <= {TARGET_P95_MS:g} ms)"
        rows.append((f"{label} under load, c={args.concurrency}, n={len(lat)}", figure))
    print(
        f"machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} "
        f"python={platform.python_version()} load={os.getloadavg()[0]:.1f} | model: {model_id} | "
        f"commit: {git_commit(mark_dirty=False)} | products: {len(active)} | numpy {np.__version__}"
    )
    width = max(len(r[0]) for r in rows)
    for measure, figure in rows:
        print(f"{measure:<{width}} | {figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
