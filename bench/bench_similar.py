"""Similar products on the full catalogue: embedding speed, neighbour-list build, page latency.

Needs the catalogue imported and indexed with the configured backbone (``make run`` does both;
or ``flask --app wsgi catalog import PATH`` then ``flask --app wsgi catalog embed --now``).
Prints one table with the machine, model id and commit, each figure beside its baseline:

* embedding: images/s of efficientnet_lite0 (real weights) against resnet50 (random weights);
* neighbour lists: blocked BLAS + partial sort against a per-row full sort (sampled), and the
  pipelined Redis write of all lists;
* serving: product page and API latency (p50/p95) under concurrent load from a second process
  against gunicorn, against the same page with exact search at request time (in process).

Usage: PYTHONPATH=. .venv/bin/python bench/bench_similar.py [--requests 2000] [--concurrency 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_embed import bench_one, catalogue_paths  # noqa: E402
from ml.provenance import git_commit  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of a list of numbers."""
    return float(np.percentile(np.asarray(values), q))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_embedding(
    catalog: Path, n: int, cache_dir: str, served_size: int
) -> list[tuple[str, str, float]]:
    """(model id, label, images/s): the resnet50 baseline first, then lite0 at 224 and served size."""
    paths = catalogue_paths(catalog, n)
    runs = [("resnet50", "random", 224), ("efficientnet_lite0", "imagenet", 224)]
    if served_size != 224:
        runs.append(("efficientnet_lite0", "imagenet", served_size))
    rows = []
    for name, weights, size in runs:
        row = bench_one(name, size, weights, paths, 64, cache_dir)
        rows.append((row["model_id"], f"{name} {size}px ({weights} weights)", row["end_to_end"]))
    return rows


def bench_neighbours(vectors: np.ndarray, k: int) -> dict[str, float]:
    """Full blocked build time, and a naive per-row full sort timed on a sample."""
    from ml.neighbours import all_neighbours

    t0 = time.perf_counter()
    idx, scores = all_neighbours(vectors, k)
    full = time.perf_counter() - t0
    sample = 256
    t0 = time.perf_counter()
    for row in range(sample):
        sims = vectors @ vectors[row]
        sims[row] = -np.inf
        np.argsort(-sims)[:k]
    naive = (time.perf_counter() - t0) / sample * len(vectors)
    return {"blocked_s": full, "naive_s": naive, "idx": idx, "scores": scores}


def bench_redis_write(app, ids: np.ndarray, idx: np.ndarray, scores: np.ndarray) -> float:
    """Seconds to write every list with pipelined SETs (under a scratch prefix, then removed)."""
    from ml.cache import NeighbourCache
    from webapp.extensions import get_redis

    with app.app_context():
        cache = NeighbourCache(get_redis(), prefix="bench")
        t0 = time.perf_counter()
        cache.write_lists("scratch", ids, ids[idx], scores)
        seconds = time.perf_counter() - t0
        for batch in range(0, len(ids), 5000):
            get_redis().delete(
                *[cache.key("scratch", "list", int(p)) for p in ids[batch : batch + 5000]]
            )
    return seconds


def load_test(port: int, paths: list[str], concurrency: int, cookie: str = "") -> list[float]:
    """Run the load generator in a second process (sending ``cookie`` when given); returns
    latencies in ms."""
    command = [sys.executable, str(ROOT / "bench" / "_load.py"), str(port), str(concurrency)]
    out = subprocess.run(
        command + ([cookie] if cookie else []),
        input="\n".join(paths),
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout)
    if result["errors"]:
        raise RuntimeError(f"{result['errors']} requests failed, e.g. {result['first_error']}")
    return result["latencies_ms"]


def in_process_baseline(
    app, product_ids: list[int], repeats: int
) -> tuple[list[float], list[float]]:
    """Latency (ms) of choosing similar products from the cached list vs exact search per request."""
    from webapp.extensions import db
    from webapp.models import Product
    from webapp.preferences import Preferences
    from webapp.similar import services

    cached, exact = [], []
    with app.app_context():
        model_id = services.NeighbourCache(services.get_redis()).active_model()
        for pid in product_ids[:repeats]:
            product = db.session.get(Product, pid)
            t0 = time.perf_counter()
            services.similar_products(product, Preferences(), 8)
            cached.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            found = services._filtered_search(model_id, product, Preferences(), set(), 8)
            db.session.execute(
                services.select(Product).where(Product.id.in_([p for p, _ in found]))
            ).all()
            exact.append((time.perf_counter() - t0) * 1000)
            db.session.rollback()
    return cached, exact


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="page requests in the load test")
    parser.add_argument("--concurrency", type=int, default=2, help="concurrent clients")
    parser.add_argument("--embed-n", type=int, default=256, help="photos for the embedding figures")
    parser.add_argument("--skip-embed", action="store_true")
    args = parser.parse_args(argv)

    from ml.store import EmbeddingStore
    from webapp import create_app
    from webapp.extensions import db
    from webapp.models import Product
    from webapp.registry import neighbour_cache

    app = create_app()
    cfg = app.config
    with app.app_context():
        model_id = neighbour_cache().active_model()
        products = db.session.scalar(db.select(db.func.count(Product.id)))
        active_ids = list(db.session.scalars(db.select(Product.id).where(Product.active.is_(True))))
    if not model_id:
        print(
            "No neighbour lists are served yet: run `make run` (or `flask --app wsgi catalog "
            "embed --now`) first.",
            file=sys.stderr,
        )
        return 2
    ids, vectors = EmbeddingStore(cfg["MODEL_FOLDER"], model_id).load()
    vectors = np.ascontiguousarray(vectors, np.float32)

    rows: list[tuple[str, str, str, str]] = []  # (measure, ours, baseline, ratio)
    if not args.skip_embed:
        emb = bench_embedding(
            Path(cfg["CATALOG_PATH"]),
            args.embed_n,
            cfg["MODEL_FOLDER"],
            cfg["EMBEDDING_INPUT_SIZE"] or 224,
        )
        base = emb[0][2]
        for _model_id, label, ips in emb:
            rows.append(
                (
                    f"embed {label}",
                    f"{ips:.1f} img/s",
                    f"{base:.1f} img/s (resnet50)",
                    f"{ips / base:.2f}x",
                )
            )

    nb = bench_neighbours(vectors, cfg["NEIGHBOURS_K"])
    rows.append(
        (
            f"neighbour lists, {len(ids)} products, K={cfg['NEIGHBOURS_K']}",
            f"{nb['blocked_s']:.1f} s",
            f"{nb['naive_s']:.1f} s (per-row sort, sampled)",
            f"{nb['naive_s'] / nb['blocked_s']:.1f}x faster",
        )
    )
    write_s = bench_redis_write(app, ids, nb["idx"], nb["scores"])
    rows.append(("write all lists to Redis (pipelined)", f"{write_s:.1f} s", "-", "-"))

    rng = random.Random(0)
    sample = [rng.choice(active_ids) for _ in range(args.requests)]
    cached, exact = in_process_baseline(app, sample, 200)
    rows.append(
        (
            "choose 8 similar, in process (p50)",
            f"{percentile(cached, 50):.2f} ms",
            f"{percentile(exact, 50):.2f} ms (exact search per request)",
            f"{percentile(exact, 50) / percentile(cached, 50):.1f}x faster",
        )
    )

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "webapp:create_app()",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
    )
    try:
        load_test(port, ["/"] * 20, 1)  # wait for start-up and warm both workers
        pages = load_test(port, [f"/products/{pid}" for pid in sample], args.concurrency)
        api = load_test(
            port, [f"/api/products/{pid}/similar?n=8" for pid in sample], args.concurrency
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
    for label, lat in (("product page", pages), ("similar API", api)):
        rows.append(
            (
                f"{label} under load, c={args.concurrency}, n={len(lat)}",
                f"p50 {percentile(lat, 50):.1f} / p95 {percentile(lat, 95):.1f} ms",
                "target p95 < 25 ms",
                f"{'met' if percentile(lat, 95) < 25 else 'MISSED'}",
            )
        )

    print(
        f"machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} "
        f"python={platform.python_version()} load={os.getloadavg()[0]:.1f} | model: {model_id} | "
        f"commit: {git_commit(mark_dirty=False)} | products: {products}"
    )
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}} | {'ours':<22} | {'baseline':<40} | ratio")
    for measure, ours, baseline, ratio in rows:
        print(f"{measure:<{width}} | {ours:<22} | {baseline:<40} | {ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
