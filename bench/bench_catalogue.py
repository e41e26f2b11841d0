"""Catalogue pages at scale: p50/p95 of the shop's catalogue page through gunicorn.

``measure_catalogue(base_url, n_requests, seed)`` plays a seeded mix of catalogue requests
against a running shop and times each one (wall time of the whole HTTP request):

- ``filtered`` (70 %): two facet filters (gender + type, category + colour, ...), values
  drawn in proportion to their counts on the unfiltered page, a random sort, page 1;
- ``deep`` (20 %): a page far from the start of an earlier filtered or unfiltered listing,
  reached through the links the page offers: its last page, or the page before that;
- ``browse`` (10 %): the unfiltered catalogue in a random sort, or the next page of one.

A filter set seen for the first time in the run is a ``first`` visit (its facet counts are
computed), a repeat is served from what the shop cached; both are reported.

``--search WORD,WORD`` also times each search text (``measure_search``) on a first visit,
with nothing cached, and on a repeat.

Run as a script it starts gunicorn itself (2 workers, as the shop's stack does) on
``--database-url`` with a scratch Redis database (``--redis-url``, flushed first; never
database 0), or measures ``--base-url`` as it is. ``--baseline-tree`` names a second source
tree (e.g. ``git archive`` of an older commit) served the same way for a before/after ratio.

Usage: PYTHONPATH=. .venv/bin/python bench/bench_catalogue.py
       --database-url postgresql+psycopg://postgres@127.0.0.1:5432/shop_scale
       [--redis-url redis://127.0.0.1:6379/12] [--n-requests 200] [--seed 0]
       [--base-url http://127.0.0.1:8000] [--baseline-tree /tmp/shop-before] [--json OUT]
       [--search kurta,Puma,shirt]
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ml import provenance  # noqa: E402

FACET_ROW = re.compile(
    r'name="(\w+)" value="([^"]+)"[^>]*>\s*<a[^>]*>[^<]*</a>\s*<span[^>]*>\((\d+)'
)
PAGINATION = re.compile(r'<nav class="pagination".*?</nav>', re.S)
HREF = re.compile(r'href="([^"]+)"([^>]*)>(.*?)</a>', re.S)
FACET_PAIRS = (
    ("gender", "type"),
    ("master", "colour"),
    ("gender", "colour"),
    ("type", "season"),
    ("master", "usage"),
    ("sub", "colour"),
)
SORTS = ("relevance", "name", "newest", "price_asc", "price_desc")


def _facet_values(page: str) -> dict[str, tuple[list[str], np.ndarray]]:
    """{facet: (values, weights)} from the facet lists of a catalogue page."""
    found: dict[str, dict[str, int]] = {}
    for key, value, n in FACET_ROW.findall(page):
        found.setdefault(key, {})[html.unescape(value)] = int(n)
    return {
        key: (list(counts), np.array(list(counts.values()), float) / sum(counts.values()))
        for key, counts in found.items()
        if sum(counts.values())
    }


def _page_links(page: str) -> dict[str, str]:
    """The pagination's links by role: ``next``, ``prev`` and ``last`` (the rightmost page)."""
    nav = PAGINATION.search(page)
    links: dict[str, str] = {}
    if not nav:
        return links
    numbered: list[str] = []
    for href, attrs, text in HREF.findall(nav.group(0)):
        href = html.unescape(href)
        if 'rel="next"' in attrs:
            links["next"] = href
        elif 'rel="prev"' in attrs:
            links["prev"] = href
        elif "aria-current" not in attrs and re.search(r"\d", text):
            numbered.append(href)
    if numbered:
        links["last"] = numbered[-1]
    return links


def _percentiles(times: list[float]) -> dict[str, float | None]:
    if not times:
        return {"n": 0, "p50_ms": None, "p95_ms": None}
    values = np.array(times)
    return {
        "n": len(times),
        "p50_ms": round(float(np.percentile(values, 50)), 1),
        "p95_ms": round(float(np.percentile(values, 95)), 1),
    }


def _filtered_params(rng: np.random.Generator, pool: dict) -> list[tuple[str, str]]:
    pairs = [p for p in FACET_PAIRS if p[0] in pool and p[1] in pool]
    if not pairs:
        return []  # a catalogue without facet values: the unfiltered page
    first, second = pairs[rng.integers(len(pairs))]
    params = []
    for key in (first, second):
        values, weights = pool[key]
        params.append((key, values[rng.choice(len(values), p=weights)]))
    return params


def measure_catalogue(base_url: str, n_requests: int = 200, seed: int = 0) -> dict[str, Any]:
    """Time ``n_requests`` catalogue requests (the seeded mix above) against ``base_url``.

    Returns p50/p95/max over all requests, the same per kind and for first and repeat
    visits of a filter set, the errors (non-200 answers), the request count, the five
    slowest requests and the time of the untimed first request (the unfiltered page, which
    computes the facet counts when nothing is cached yet).
    """
    rng = np.random.default_rng(seed)
    session = requests.Session()
    base_url = base_url.rstrip("/")
    start = time.perf_counter()
    front = session.get(base_url + "/", timeout=60)
    front.raise_for_status()
    front_ms = (time.perf_counter() - start) * 1000  # counts computed, if nothing is cached
    pool = _facet_values(front.text)
    seen_filters: set[tuple] = set()
    listings: list[dict[str, str]] = [_page_links(front.text)]  # link sets of earlier pages
    by_kind: dict[str, list[float]] = {"filtered": [], "deep": [], "browse": []}
    first_visit: list[float] = []
    repeat_visit: list[float] = []
    errors = 0
    slowest: list[tuple[float, str]] = []
    for _ in range(n_requests):
        draw = rng.random()
        candidates = [links for links in listings if "last" in links or "prev" in links]
        if draw < 0.2 and candidates:
            kind = "deep"
            links = candidates[rng.integers(len(candidates))]
            url, params = base_url + links.get("last", links.get("prev", "")), None
        elif draw < 0.3:
            kind = "browse"
            next_links = [links["next"] for links in listings if "next" in links]
            if next_links and rng.random() < 0.5:
                url, params = base_url + next_links[rng.integers(len(next_links))], None
            else:
                url, params = base_url + "/", [("sort", SORTS[rng.integers(len(SORTS))])]
        else:
            kind = "filtered"
            params = _filtered_params(rng, pool)
            params.append(("sort", SORTS[rng.integers(len(SORTS))]))
            url = base_url + "/"
        start = time.perf_counter()
        response = session.get(url, params=params, timeout=60)
        elapsed = (time.perf_counter() - start) * 1000
        if response.status_code != 200:
            errors += 1
            continue
        by_kind[kind].append(elapsed)
        slowest = sorted([*slowest, (round(elapsed, 1), response.url[len(base_url) :])])[-5:]
        filters = tuple(sorted((k, v) for k, v in (params or []) if k != "sort"))
        if kind == "filtered":
            (repeat_visit if filters in seen_filters else first_visit).append(elapsed)
            seen_filters.add(filters)
        links = _page_links(response.text)
        if kind == "deep" and "prev" in links:
            links = {"prev": links["prev"]}  # from a last page, the next deep step is back
        listings.append(links)
    every = [t for times in by_kind.values() for t in times]
    overall = _percentiles(every)
    return {
        "p50_ms": overall["p50_ms"],
        "p95_ms": overall["p95_ms"],
        "max_ms": round(max(every), 1) if every else None,
        "requests": len(every),
        "errors": errors,
        "kinds": {kind: _percentiles(times) for kind, times in by_kind.items()},
        "first_visit": _percentiles(first_visit),
        "repeat_visit": _percentiles(repeat_visit),
        "slowest": slowest[::-1],
        "first_request_ms": round(front_ms, 1),
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """gunicorn serving ``webapp:create_app()`` from a source tree, on a free loopback port."""

    def __init__(self, tree: Path, env: dict[str, str], log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "webapp:create_app()", "--bind",
                 f"127.0.0.1:{self.port}", "--workers", "2", "--log-level", "warning"],
                cwd=tree, env={**env, "PYTHONPATH": str(tree)}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/", timeout=30).status_code == 200:
                    return
            except requests.RequestException:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"gunicorn did not answer; see {log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def _count_rows(database_url: str) -> tuple[int, int]:
    from sqlalchemy import create_engine, text  # the bench's own connection, not the app's

    engine = create_engine(database_url)
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT count(*), count(*) FILTER (WHERE active) FROM product")
            if engine.dialect.name == "postgresql"
            else text("SELECT count(*), sum(active) FROM product")
        ).one()
    engine.dispose()
    return int(row[0]), int(row[1] or 0)


def _flush_scratch_redis(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    if client.connection_pool.connection_kwargs.get("db", 0) == 0:
        raise SystemExit("--redis-url must name a scratch database other than 0")
    client.flushdb()


def measure_search(base_url: str, words: list[str]) -> dict[str, Any]:
    """Each search text of ``words`` (once each, duplicates dropped) on the catalogue page
    twice: the first visit computes its facet counts, the repeat finds them cached (both
    look up their page of products). Times in ms per word, with the median and the largest
    of each."""
    rows = []
    with requests.Session() as session:
        for word in dict.fromkeys(words):
            times = []
            for _ in range(2):
                start = time.perf_counter()
                url = base_url.rstrip("/") + "/"
                response = session.get(url, params={"q": word}, timeout=120)
                times.append(round((time.perf_counter() - start) * 1000, 1))
                response.raise_for_status()
            rows.append({"q": word, "first_ms": times[0], "repeat_ms": times[1]})
    summary = {
        f"{kind}_{stat}": round(float(fn([r[f"{kind}_ms"] for r in rows])), 1)
        for kind in ("first", "repeat")
        for stat, fn in (("p50_ms", np.median), ("max_ms", np.max))
    }
    return {"words": rows, **summary}


def _serve_and_measure(tree: Path, env: dict, args: argparse.Namespace, log: Path) -> dict:
    server = Server(tree, env, log)
    try:
        _flush_scratch_redis(args.redis_url)  # after the start-up requests: nothing cached
        result = measure_catalogue(server.url, args.n_requests, args.seed)
        if args.search:
            _flush_scratch_redis(args.redis_url)
            result["search"] = measure_search(server.url, args.search.split(","))
        return result
    finally:
        server.stop()


def _row(label: str, result: dict) -> str:
    kinds = result["kinds"]
    cells = [
        result["p50_ms"],
        result["p95_ms"],
        kinds["filtered"]["p95_ms"],
        kinds["deep"]["p95_ms"],
        result["first_visit"]["p95_ms"],
        result["repeat_visit"]["p95_ms"],
        result["errors"],
    ]
    return f"{label:<10}" + "".join(f"{'-' if c is None else c:>10}" for c in cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--base-url", help="measure this running shop instead of starting one")
    parser.add_argument("--baseline-tree", help="a second source tree to serve for a ratio")
    parser.add_argument("--n-requests", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--search",
        help="comma-separated search texts, each timed on a first and a repeat visit",
    )
    parser.add_argument("--json")
    args = parser.parse_args()

    env = {
        **os.environ,
        "DATABASE_URL": args.database_url,
        "REDIS_URL": args.redis_url,
        "SECRET_KEY": os.environ.get("SECRET_KEY", "bench-catalogue"),
    }
    about = provenance.machine()
    rows, active = _count_rows(args.database_url)
    print(f"machine: {about['host']}: {about['cpu']}, {about['cores']} cores")
    print(f"commit: {provenance.git_commit()}   load average at start: {about['load_average']}")
    print(f"rows: {rows:,} products ({active:,} active)   requests: {args.n_requests}")
    log = Path(os.environ.get("TMPDIR", "/tmp")) / "bench_catalogue_gunicorn.log"
    results: dict[str, Any] = {"rows": rows, "machine": about, "commit": provenance.git_commit()}
    if args.baseline_tree:
        results["baseline"] = _serve_and_measure(Path(args.baseline_tree), env, args, log)
    if args.base_url:
        results["current"] = measure_catalogue(args.base_url, args.n_requests, args.seed)
        if args.search:  # a running shop's caches are its own: its first visits may be repeats
            results["current"]["search"] = measure_search(args.base_url, args.search.split(","))
    else:
        results["current"] = _serve_and_measure(ROOT, env, args, log)
    print(
        f"{'':<10}{'p50':>10}{'p95':>10}{'filt p95':>10}{'deep p95':>10}"
        f"{'1st p95':>10}{'rep p95':>10}{'errors':>10}   (ms)"
    )
    for label in ("baseline", "current"):
        if label in results:
            print(_row(label, results[label]))
    for label in ("baseline", "current"):
        if label in results:
            print(
                f"{label}: first request (nothing cached) {results[label]['first_request_ms']} ms"
            )
    for label in ("baseline", "current"):
        found = results.get(label, {}).get("search")
        if found:
            print(
                f"{label} search, first visit: p50 {found['first_p50_ms']} / max "
                f"{found['first_max_ms']} ms; repeat: p50 {found['repeat_p50_ms']} / max "
                f"{found['repeat_max_ms']} ms  ("
                + ", ".join(
                    f"{w['q']} {w['first_ms']:.0f}/{w['repeat_ms']:.0f}" for w in found["words"]
                )
                + ")"
            )
    for ms, url in results["current"]["slowest"]:
        print(f"  slow: {ms:8.1f} ms  {url[:110]}")
    if "baseline" in results:
        ratio = results["baseline"]["p95_ms"] / results["current"]["p95_ms"]
        results["p95_ratio"] = round(ratio, 1)
        print(f"p95 baseline / current: {ratio:.1f}x")
    results["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"load average at end: {results['load_average_end']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
