"""Neighbour lists at N products: the shipped build's time, recall, memory and Redis bytes.

1. Makes or reuses the synthetic catalogue of N products (``bench/make_large_catalogue.py``:
   the real catalogue's vectors, grown by perturbed copies; at N = 41,071 the real vectors).
2. Runs the shipped build, ``worker.jobs.indexing.build_neighbours``, in a child process
   inside an app from ``webapp.create_app`` with MODEL_FOLDER at the synthetic catalogue,
   REDIS_URL at a scratch Redis database (``--redis-url``, flushed first; never database 0)
   and NEIGHBOURS_INDEX ``--index`` (auto by default). ``build_s`` is that call's wall time
   (reading the store, computing, writing Redis, switching); peak RSS is the child's.
3. Reads the served lists back from Redis through the neighbour cache for ``--sample``
   products and compares them with exact search (every row scored, as
   ``ml.neighbours.all_neighbours`` does): recall@k is the share of a served list's first k
   ids that are among the exact first k (ties at the k-th cosine count as found, so
   duplicate photos do not lower it). Redis bytes per product: the mean ``MEMORY USAGE`` of
   1,000 list keys plus the model's ids/kth/meta keys shared out over N.
4. ``exact_build_s``: the exact all-pairs build's compute time; measured when N <= 60,000
   (the shipped build's own compute time when it ran exact), otherwise the exact scan of
   the sample extrapolated to N rows (marked "estimated").

Photo-search latency, the product and catalogue pages and upkeep are not measured yet:
printed as such and null in the JSON.

Usage: PYTHONPATH=. .venv/bin/python bench/bench_scale.py --n 200000 [--json OUT]
       [--sample 10000] [--dir /tmp/shop-scale] [--redis-url redis://127.0.0.1:6379/11]
       [--index auto] [--seed 0] [--database-url URL]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from make_large_catalogue import make_catalogue  # noqa: E402

from ml import provenance  # noqa: E402
from ml.neighbours import top_k_rows  # noqa: E402

EXACT_MEASURED_MAX = 60_000
MEMORY_SAMPLE = 1000
JSON_KEYS = (
    "n",
    "build_s",
    "recall_at_10",
    "recall_at_100",
    "worker_rss_mb",
    "redis_bytes_per_product",
    "search_p50_ms",
    "search_p95_ms",
    "page_p95_ms",
    "catalogue_p95_ms",
    "upkeep_s",
    "exact_build_s",
)
NOT_MEASURED = ("search_p50_ms", "search_p95_ms", "page_p95_ms", "catalogue_p95_ms", "upkeep_s")


def _app(model_folder: str, redis_url: str, index: str):
    from webapp import create_app

    return create_app(
        {
            "MODEL_FOLDER": model_folder,
            "REDIS_URL": redis_url,
            "NEIGHBOURS_INDEX": index,
            "SQLALCHEMY_DATABASE_URI": "sqlite://",  # the build reads no rows
        }
    )


def build_child(model_folder: str, model_id: str, redis_url: str, index: str) -> None:
    """The build itself, in its own process so its peak RSS is its own."""
    from worker.jobs.indexing import build_neighbours

    app = _app(model_folder, redis_url, index)
    with app.app_context():
        t0 = time.perf_counter()
        report = build_neighbours(model_id, activate=True)
        wall = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "build_s": wall,
                "compute_s": report.seconds_compute,
                "write_s": report.seconds_write,
                "k": report.k,
                "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def _redis_db(redis_url: str) -> int:
    import redis

    return int(redis.Redis.from_url(redis_url).connection_pool.connection_kwargs.get("db", 0))


def exact_sample(
    vectors: np.ndarray, rows: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Exact top-k (positions, scores) of the sampled rows over all rows, self excluded, as
    all_neighbours computes them; and the seconds it took."""
    n = len(vectors)
    block = max(64, min(1024, (1 << 28) // max(n, 1)))  # at most ~1 GB of scores at once
    buffer = np.empty((block, n), np.float32)
    pos = np.empty((len(rows), k), np.int64)
    scores = np.empty((len(rows), k), np.float32)
    t0 = time.perf_counter()
    for start in range(0, len(rows), block):
        sel = rows[start : start + block]
        sims = np.matmul(vectors[sel], vectors.T, out=buffer[: len(sel)])
        sims[np.arange(len(sel)), sel] = -np.inf
        idx, best = top_k_rows(sims, k)
        pos[start : start + len(sel)] = idx
        scores[start : start + len(sel)] = best
    return pos, scores, time.perf_counter() - t0


def recall(
    served: list,
    exact_ids: np.ndarray,
    exact_scores: np.ndarray,
    own: np.ndarray,
    vectors: np.ndarray,
    all_ids: np.ndarray,
    k: int,
) -> tuple[float, float]:
    """(tie-aware recall@k, strict recall@k) of the served lists against the exact ones."""
    tie_found = strict_found = total = 0
    for i, entry in enumerate(served):
        total += k
        if entry is None:
            continue
        got = entry[0][:k]
        strict_found += len(np.intersect1d(got, exact_ids[i, :k]))
        pos = np.searchsorted(all_ids, got)
        pos = np.minimum(pos, len(all_ids) - 1)
        valid = all_ids[pos] == got
        cos = vectors[pos[valid]] @ vectors[own[i]]
        tie_found += int(np.count_nonzero(cos >= exact_scores[i, k - 1] - 1e-5))
    return tie_found / total, strict_found / total


def machine() -> str:
    """One line about the computer, from the provenance every evaluation records."""
    about = provenance.machine()
    return f"{about['host']}: {about['cpu']}, {about['cores']} cores, Python {about['python']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--json")
    parser.add_argument("--sample", type=int, default=10_000)
    parser.add_argument("--dir", default="/tmp/shop-scale")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/11")
    parser.add_argument("--index", default="auto", choices=("auto", "exact", "ann"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--database-url")
    parser.add_argument(
        "--build-child", nargs=2, metavar=("MODEL_FOLDER", "MODEL_ID"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.build_child:
        build_child(*args.build_child, args.redis_url, args.index)
        return
    if _redis_db(args.redis_url) == 0:
        parser.error("--redis-url must name a scratch database (not 0): it is flushed")

    import redis

    from ml.cache import NeighbourCache
    from ml.store import EmbeddingStore

    load_start = os.getloadavg()
    print(f"machine: {machine()}")
    print(
        f"commit: {provenance.git_commit()}   load average at start: "
        + " ".join(f"{x:.2f}" for x in load_start)
    )

    catalogue = make_catalogue(args.n, args.dir, seed=args.seed, database_url=args.database_url)
    model_folder, model_id = catalogue["model_folder"], catalogue["model_id"]

    client = redis.Redis.from_url(args.redis_url)
    client.flushdb()
    print(
        f"build: worker.jobs.indexing.build_neighbours({model_id!r}), NEIGHBOURS_INDEX="
        f"{args.index}, Redis {args.redis_url} (flushed)"
    )
    child = subprocess.run(
        [
            sys.executable,
            __file__,
            "--n",
            str(args.n),
            "--build-child",
            model_folder,
            model_id,
            "--redis-url",
            args.redis_url,
            "--index",
            args.index,
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if child.returncode:
        sys.exit(f"the build failed:\n{child.stderr[-4000:]}")
    built = json.loads(child.stdout.strip().splitlines()[-1])
    rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        f"  build {built['build_s']:.1f}s (compute {built['compute_s']:.1f}s, "
        f"Redis write {built['write_s']:.1f}s), peak RSS {rss_mb:.0f} MB"
    )

    ids, vectors = EmbeddingStore(model_folder, model_id).load()
    vectors = np.ascontiguousarray(vectors, np.float32)
    n, k = len(ids), int(built["k"])
    rng = np.random.default_rng(args.seed + 1)
    own = np.sort(rng.choice(n, size=min(args.sample, n), replace=False))
    pos, exact_scores, exact_s = exact_sample(vectors, own, min(k, n - 1))
    exact_ids = ids[pos]
    cache = NeighbourCache(client)
    if cache.active_model() != model_id:
        sys.exit(f"the build did not switch pages to {model_id}")
    served = []
    for start in range(0, len(own), 1000):
        served += cache.get_lists(model_id, ids[own[start : start + 1000]].tolist())
    missing = sum(entry is None for entry in served)
    r10, r10_strict = recall(served, exact_ids, exact_scores, own, vectors, ids, 10)
    r100, r100_strict = recall(served, exact_ids, exact_scores, own, vectors, ids, min(k, 100))

    keys = [cache.key(model_id, "list", int(i)) for i in ids[own[:MEMORY_SAMPLE]]]
    per_list = np.mean([client.memory_usage(key, samples=0) or 0 for key in keys])
    shared = sum(
        client.memory_usage(cache.key(model_id, part), samples=0) or 0
        for part in ("ids", "kth", "meta")
    )
    redis_bytes = float(per_list + shared / n)

    resolved = args.index if args.index != "auto" else ("exact" if n < 50_000 else "ann")
    if n <= EXACT_MEASURED_MAX:
        if resolved == "exact":
            exact_build, how = built["compute_s"], "measured (the shipped build ran exact)"
        else:
            from ml.neighbours import all_neighbours

            t0 = time.perf_counter()
            all_neighbours(vectors, k)
            exact_build, how = time.perf_counter() - t0, "measured"
    else:
        exact_build = exact_s * n / len(own)
        how = f"estimated from the exact scan of {len(own):,} rows ({exact_s:.1f}s)"

    load_end = os.getloadavg()
    result = {key: None for key in JSON_KEYS}
    result.update(
        n=n,
        build_s=round(built["build_s"], 1),
        recall_at_10=round(r10, 4),
        recall_at_100=round(r100, 4),
        worker_rss_mb=round(rss_mb),
        redis_bytes_per_product=round(redis_bytes),
        exact_build_s=round(exact_build, 1),
    )
    print()
    print(
        f"n = {n:,}  (model {model_id}, {vectors.shape[1]} dims, index {resolved}, "
        f"k = {k}, sample {len(own):,}{f', {missing} lists missing' if missing else ''})"
    )
    rows = [
        ("build_s", f"{result['build_s']:.1f}"),
        ("recall_at_10", f"{r10:.4f}  (strict, ties not credited: {r10_strict:.4f})"),
        ("recall_at_100", f"{r100:.4f}  (strict: {r100_strict:.4f})"),
        ("worker_rss_mb", f"{result['worker_rss_mb']}  (peak RSS of the build process)"),
        (
            "redis_bytes_per_product",
            f"{result['redis_bytes_per_product']}  "
            f"(list key {per_list:.0f} + shared keys {shared / n:.1f})",
        ),
        ("exact_build_s", f"{exact_build:.1f}  ({how})"),
    ] + [(key, "not measured yet") for key in NOT_MEASURED]
    width = max(len(name) for name, _ in rows)
    print(f"| {'figure':<{width}} | value |")
    print(f"|{'-' * (width + 2)}|-------|")
    for name, value in rows:
        print(f"| {name:<{width}} | {value} |")
    print("load average at end: " + " ".join(f"{x:.2f}" for x in load_end))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
