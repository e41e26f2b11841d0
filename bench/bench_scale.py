"""A large catalogue end to end: the shipped build, its recall, memory, Redis bytes and pages.

One table per N (``--n``), every figure from this run:

1. Makes or reuses the synthetic catalogue of N products (``bench/make_large_catalogue.py``:
   the real catalogue's vectors grown by perturbed copies, and their database rows written
   into a PostgreSQL database of its own, ``--database-url``, created and migrated here).
2. Builds every neighbour list with the shipped build (``worker.jobs.indexing.
   build_neighbours`` through ``bench/scale_workers.build_with_workers``: index built and
   saved, shards on the ``index`` queue) in a child process, once per process count of
   ``--processes`` (1 and 2 by default: the calling process alone, then with one more
   Celery worker on the ``index`` queue). ``build_s`` is the first count's wall time.
   Redis: the scratch database ``--redis-url`` (flushed first; never database 0).
3. Recall@10 and @100 of the served lists (read back through the neighbour cache for
   ``--sample`` products) against exact search over the vectors the index serves (the
   compact vectors past 50,000 products; ties at the k-th cosine count as found), and,
   strictly, against exact search over the full vectors. Redis bytes per product: the mean
   ``MEMORY USAGE`` of 1,000 list keys plus the model's shared keys over N.
4. A serving worker in its own process (``bench/scale_serving.py``), started after a first
   process has exported the network to the inference runtime (once per model, as a shop's
   first worker does; the exporting process itself carries the exporter's memory until it
   restarts): photo-search latency in process over ``--queries`` real photos (decode, embed,
   rank and choose), its RSS after them (``worker_rss_mb``; its own and mapped-file pages
   printed apart), then an admin's new product and the update job's time
   (``upkeep_s``) with a check that its neighbours' lists took it in.
5. gunicorn (2 workers) on the same database, Redis and model folder: product page p95
   over 200 random products, and the catalogue page p95 (``bench/bench_catalogue.
   measure_catalogue``: two facet filters, sorts, deep pages).
6. ``exact_build_s``: the exact all-pairs build's compute time; measured when N <= 60,000,
   otherwise the exact scan of the sample extrapolated to N rows (marked "estimated").

Usage: PYTHONPATH=. .venv/bin/python bench/bench_scale.py --n 1000000 [--json OUT]
       [--sample 10000] [--dir /tmp/shop-scale] [--redis-url redis://127.0.0.1:6379/11]
       [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench_scale_<n>]
       [--processes 1,2] [--queries 200] [--index auto] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from _stack import Stack  # noqa: E402
from bench_catalogue import measure_catalogue  # noqa: E402
from make_large_catalogue import make_catalogue  # noqa: E402

from ml import provenance  # noqa: E402
from ml.compact import CompactIndex, load_index  # noqa: E402
from ml.neighbours import top_k_rows  # noqa: E402
from ml.registry import index_folder  # noqa: E402

EXACT_MEASURED_MAX = 60_000
MEMORY_SAMPLE = 1000
PAGE_REQUESTS = 200
PHOTOS = ROOT.parent / "shared" / "data" / "fashion-small" / "images"
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


def build_child(model_folder: str, model_id: str, redis_url: str, index: str, processes: int):
    """The build itself, in its own process so its peak RSS is its own."""
    from scale_serving import memory_mb
    from scale_workers import build_with_workers

    # The peak of the process's own memory (RssAnon), sampled every 0.2 s (so a lower bound:
    # a shorter spike can be missed): ru_maxrss also counts the pages of the files it maps
    # (the store it reads whole, the index it writes).
    own_peak, done = [0.0], threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            own_peak[0] = max(own_peak[0], memory_mb()["anon"])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    result = build_with_workers(model_folder, model_id, redis_url, processes - 1, index)
    done.set()
    sampler.join()
    result["rss_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["own_peak_mb"] = max(own_peak[0], memory_mb()["anon"])
    print(json.dumps(result))


def run_child(command: list[str], what: str) -> dict:
    """Run a bench child process; its last output line is its JSON answer."""
    child = subprocess.run(
        [sys.executable, *command],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if child.returncode:
        sys.exit(f"{what} failed:\n{child.stderr[-4000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def prepare_database(url: str) -> None:
    """Create the bench's database if it is missing and bring its schema up to date."""
    import psycopg
    from sqlalchemy.engine import make_url

    target = make_url(url)
    if target.database in (None, "test"):
        raise SystemExit("--database-url must name a database of its own (not test)")
    admin = target.set(drivername="postgresql", database="postgres")
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target.database,))
        if found.fetchone() is None:
            conn.execute(f'CREATE DATABASE "{target.database}"')
    subprocess.run(
        [str(Path(sys.executable).parent / "flask"), "--app", "wsgi", "db", "upgrade"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url, "SECRET_KEY": "bench", "LOG_LEVEL": "WARNING"},
        check=True,
        capture_output=True,
    )


def served_space(model_folder: str, model_id: str, vectors: np.ndarray) -> tuple[np.ndarray, str]:
    """The vectors as the saved index serves them (projected when it is compact)."""
    index = load_index(index_folder(model_folder, model_id))
    if isinstance(index, CompactIndex):
        return index.projection.apply(vectors), f"compact {index.projection.dims} dims"
    return vectors, f"full {vectors.shape[1]} dims"


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
        pos = np.minimum(np.searchsorted(all_ids, got), len(all_ids) - 1)
        valid = all_ids[pos] == got
        cos = vectors[pos[valid]] @ vectors[own[i]]
        tie_found += int(np.count_nonzero(cos >= exact_scores[i, k - 1] - 1e-5))
    return tie_found / total, strict_found / total  # fmt: skip


def page_p95(stack: Stack, ids: np.ndarray, rng: np.random.Generator) -> dict:
    """Product page latency over random products, one client (after 10 untimed pages)."""
    session = requests.Session()
    chosen = rng.choice(ids, PAGE_REQUESTS + 10, replace=False)
    times, errors = [], 0
    for i, pid in enumerate(chosen.tolist()):
        t0 = time.perf_counter()
        answer = session.get(stack.url(f"/products/{pid}"), timeout=30)
        if i >= 10:
            times.append(time.perf_counter() - t0)
            errors += answer.status_code != 200
    ms = np.asarray(times) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "errors": errors}  # fmt: skip


def serve_pages(args, model_folder: str, ids: np.ndarray) -> tuple[dict, dict]:
    """gunicorn on the bench's database, Redis and model folder: product and catalogue pages."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SECRET_KEY": "bench",
        "DATABASE_URL": args.database_url,
        "REDIS_URL": args.redis_url,
        "MODEL_FOLDER": model_folder,
        "NEIGHBOURS_INDEX": args.index,
        "LOG_LEVEL": "WARNING",
    }
    stack = Stack(env, Path(tempfile.mkdtemp(prefix="bench-scale-")), queues="default")
    try:
        stack.start()
        product = page_p95(stack, ids, np.random.default_rng(args.seed + 2))
        catalogue = measure_catalogue(stack.url("/"), 200, args.seed)
    finally:
        stack.stop()
    return product, catalogue


def machine() -> str:
    """One line about the computer, from the provenance every evaluation records."""
    about = provenance.machine()
    return f"{about['host']}: {about['cpu']}, {about['cores']} cores, Python {about['python']}"


def _redis_db(redis_url: str) -> int:
    import redis

    return int(redis.Redis.from_url(redis_url).connection_pool.connection_kwargs.get("db", 0))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--json")
    parser.add_argument("--sample", type=int, default=10_000)
    parser.add_argument("--dir", default="/tmp/shop-scale")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/11")
    parser.add_argument(
        "--database-url",
        help="PostgreSQL database of the bench's own (created and migrated here); default "
        "postgresql+psycopg://postgres@127.0.0.1:5432/bench_scale_<n>",
    )
    parser.add_argument("--processes", default="1,2", help="process counts of the builds")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--photos", default=str(PHOTOS))
    parser.add_argument("--index", default="auto", choices=("auto", "exact", "ann"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--build-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.database_url = args.database_url or (
        f"postgresql+psycopg://postgres@127.0.0.1:5432/bench_scale_{args.n}"
    )
    if not args.build_child and _redis_db(args.redis_url) == 0:
        parser.error("--redis-url must name a scratch database (not 0): it is flushed")
    return args


def build(args, model_folder: str, model_id: str, processes: int) -> dict:
    """One full build with ``processes`` processes, from a flushed scratch Redis."""
    import redis

    redis.Redis.from_url(args.redis_url).flushdb()
    return run_child(
        [__file__, "--n", str(args.n), "--redis-url", args.redis_url, "--index", args.index,
         "--build-child", model_folder, model_id, str(processes)],
        f"the build with {processes} process(es)",
    )  # fmt: skip


def main() -> None:
    args = parse_args()
    if args.build_child:
        model_folder, model_id, processes = args.build_child
        build_child(model_folder, model_id, args.redis_url, args.index, int(processes))
        return

    import redis

    from ml.cache import NeighbourCache
    from ml.store import EmbeddingStore

    load_start = os.getloadavg()
    print(f"machine: {machine()}")
    print(
        f"commit: {provenance.git_commit()}   load average at start: "
        + " ".join(f"{x:.2f}" for x in load_start)
    )
    prepare_database(args.database_url)
    catalogue = make_catalogue(
        args.n, args.dir, seed=args.seed, database_url=args.database_url, schema="public"
    )
    model_folder, model_id = catalogue["model_folder"], catalogue["model_id"]

    counts = [int(p) for p in args.processes.split(",")]
    builds = {}
    for processes in sorted(counts, reverse=True):  # the first count's lists stay served
        builds[processes] = built = build(args, model_folder, model_id, processes)
        print(
            f"  build with {processes} process(es): {built['build_s']:.1f}s (index "
            f"{built['index_s']:.1f}s, {built['shards']} shards {built['shards_s']:.1f}s, "
            f"Redis write {built['write_s']:.1f}s), peak RSS {built['rss_peak_mb']:.0f} MB "
            f"(its own memory, sampled every 0.2 s, peaked at {built['own_peak_mb']:.0f} MB or a "
            f"little more; the rest mapped files)"
        )
    first = builds[counts[0]]

    client = redis.Redis.from_url(args.redis_url)
    ids, full = EmbeddingStore(model_folder, model_id).load()
    full = np.asarray(full, np.float32)
    vectors, space = served_space(model_folder, model_id, full)
    n = len(ids)
    cache = NeighbourCache(client)
    if cache.active_model() != model_id:
        sys.exit(f"the build did not switch pages to {model_id}")
    k = int(cache.meta(model_id)["k"])
    rng = np.random.default_rng(args.seed + 1)
    own = np.sort(rng.choice(n, size=min(args.sample, n), replace=False))
    served = []
    for start in range(0, len(own), 1000):
        served += cache.get_lists(model_id, ids[own[start : start + 1000]].tolist())
    missing = sum(entry is None for entry in served)
    pos, exact_scores, exact_s = exact_sample(vectors, own, min(k, n - 1))
    r10, r10_strict = recall(served, ids[pos], exact_scores, own, vectors, ids, 10)
    r100, r100_strict = recall(served, ids[pos], exact_scores, own, vectors, ids, min(k, 100))
    full_pos, _, _ = exact_sample(full, own[:1000], 10)
    r10_full = float(np.mean([
        len(np.intersect1d(entry[0][:10], ids[full_pos[i]])) / 10 if entry is not None else 0
        for i, entry in enumerate(served[:1000])
    ]))  # fmt: skip

    keys = [cache.key(model_id, "list", int(i)) for i in ids[own[:MEMORY_SAMPLE]]]
    per_list = np.mean([client.memory_usage(key, samples=0) or 0 for key in keys])
    shared = sum(
        client.memory_usage(cache.key(model_id, part), samples=0) or 0
        for part in ("ids", "kth", "meta")
    )
    redis_bytes = float(per_list + shared / n)
    if n <= EXACT_MEASURED_MAX:
        from ml.neighbours import all_neighbours

        t0 = time.perf_counter()
        all_neighbours(full, k)
        exact_build, how = time.perf_counter() - t0, "measured"
    else:
        exact_build = exact_s * n / len(own)
        how = f"estimated from the exact scan of {len(own):,} rows ({exact_s:.1f}s)"
    del full, vectors

    serving_args = [
        str(ROOT / "bench" / "scale_serving.py"), "--model-folder", model_folder,
        "--model-id", model_id, "--source-model", catalogue["source_model"],
        "--redis-url", args.redis_url, "--database-url", args.database_url,
        "--photos", args.photos, "--queries", str(args.queries), "--seed", str(args.seed),
    ]  # fmt: skip
    run_child([*serving_args, "--prepare"], "the runtime export")
    serving = run_child(serving_args, "the serving worker")
    product, catalogue_pages = serve_pages(args, model_folder, ids)
    load_end = os.getloadavg()

    result = {key: None for key in JSON_KEYS}
    result.update(
        n=n,
        build_s=round(first["build_s"], 1),
        recall_at_10=round(r10, 4),
        recall_at_100=round(r100, 4),
        worker_rss_mb=round(serving["worker_rss_mb"]),
        redis_bytes_per_product=round(redis_bytes),
        search_p50_ms=round(serving["search"]["p50_ms"], 1),
        search_p95_ms=round(serving["search"]["p95_ms"], 1),
        page_p95_ms=round(product["p95_ms"], 1),
        catalogue_p95_ms=round(catalogue_pages["p95_ms"], 1),
        upkeep_s=round(serving["upkeep_s"], 2),
        exact_build_s=round(exact_build, 1),
    )
    print_table(args, result, locals())
    print("load average at end: " + " ".join(f"{x:.2f}" for x in load_end))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")


def print_table(args, result: dict, seen: dict) -> None:
    """The run's table: each figure with what it was measured on."""
    builds, counts, serving = seen["builds"], seen["counts"], seen["serving"]
    print()
    print(
        f"n = {result['n']:,}  (model {seen['model_id']}, index served over {seen['space']}, "
        f"k = {seen['k']}, sample {len(seen['own']):,}"
        + (f", {seen['missing']} lists missing" if seen["missing"] else "")
        + ")"
    )
    others = ", ".join(
        f"{p} processes {builds[p]['build_s']:.1f}s ({builds[counts[0]]['build_s'] / builds[p]['build_s']:.2f}x)"
        for p in counts[1:]
    )
    rows = [
        ("build_s", f"{result['build_s']:.1f}  ({counts[0]} process" + (f"; {others}" if others else "") + ")"),
        ("recall_at_10", f"{seen['r10']:.4f}  (strict {seen['r10_strict']:.4f}; "
         f"against exact over the full vectors {seen['r10_full']:.4f})"),
        ("recall_at_100", f"{seen['r100']:.4f}  (strict {seen['r100_strict']:.4f})"),
        ("worker_rss_mb", f"{result['worker_rss_mb']}  (serving worker after "
         f"{serving['queries']} photo searches: its own {serving['worker_anon_mb']:.0f}, mapped "
         f"files {serving['worker_file_mb']:.0f}; build peak "
         f"{builds[counts[0]]['rss_peak_mb']:.0f}, its own {builds[counts[0]]['own_peak_mb']:.0f})"),
        ("redis_bytes_per_product", f"{result['redis_bytes_per_product']}  (list key "
         f"{seen['per_list']:.0f} + shared keys {seen['shared'] / result['n']:.1f})"),
        ("search_p50_ms / p95", f"{result['search_p50_ms']} / {result['search_p95_ms']}  "
         f"(decode+embed p50 {serving['decode_embed']['p50_ms']:.1f}, rank p50 "
         f"{serving['rank']['p50_ms']:.1f} p95 {serving['rank']['p95_ms']:.1f})"),
        ("page_p95_ms", f"{result['page_p95_ms']}  (product page, p50 {seen['product']['p50_ms']:.1f}, "
         f"{seen['product']['errors']} errors)"),
        ("catalogue_p95_ms", f"{result['catalogue_p95_ms']}  (two facet filters, sorts, deep pages)"),
        ("upkeep_s", f"{result['upkeep_s']}  (new product: own list {serving['own_list']}, in "
         f"{serving['entered_of_its_top10']} of its top-10's lists, "
         f"{serving['rewritten_lists']} lists rewritten)"),
        ("exact_build_s", f"{result['exact_build_s']:.1f}  ({seen['how']})"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    print(f"| {'figure':<{width}} | value |")
    print(f"|{'-' * (width + 2)}|-------|")
    for name, value in rows:
        print(f"| {name:<{width}} | {value} |")


if __name__ == "__main__":
    main()
