"""Approximate against exact nearest neighbours on synthetic clustered unit vectors.

The data: ``--n`` catalogue rows and ``--queries`` held-out rows of dimension ``--dim``, drawn
around 1,000 cluster centres that are themselves grouped around 50 families (so a query's
neighbours sit among many near-identical clusters, as similar products do); each row is its
centre plus noise of a random size and is L2-normalised.

For each index configuration the table prints: build seconds (training and adding every
row), query time batched (ms per query over one batch of all queries, as a neighbour-list
build runs) and single (p50 ms of one query at a time, as a photo search runs), recall@10
against exact search, bytes per stored vector, the estimated time to build every product's
list (build + n batched queries) and that time's ratio to exact search's. A last block
compares exact search and the chosen HNSW index at a smaller catalogue, to show where the
approximate index starts to pay.

``--vectors FILE.npy`` replaces the synthetic rows by real embeddings (the served model's
``embeddings.npy``), projected onto their top ``--dim`` singular directions and
re-normalised, shuffled, the first ``--queries`` rows held out as queries. The synthetic
clusters are tighter than real products' (IVF1024,Flat reaches recall 1.0 on them at
nprobe=8, but 0.92 on the real catalogue at nprobe=8 and 0.975 at 16), so the choice is
made on both. IVF1024,PQ32 was
dropped after one run (recall@10 0.79 after 85 s of training at n=50k).

Usage: PYTHONPATH=. .venv/bin/python bench/bench_ann.py [--n 50000] [--dim 256] [--queries 500]
       [--vectors instance/models/<model id>/base-1/embeddings.npy]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ml.provenance import git_commit, machine  # noqa: E402
from ml.vector_index import ExactIndex, HnswIndex  # noqa: E402

K = 10
SINGLE = 100  # one-at-a-time queries timed per configuration


def clustered_rows(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit rows in four levels: a shared direction, 50 families, 2,000 clusters, 10,000
    variants, then each row's own noise of a random size.

    Tuned so that the similarity profile matches the real catalogue's 1280-d embeddings
    (median over 300 sampled products of the top-1 / top-10 / median cosine: real 0.887 /
    0.826 / 0.327, these rows at n=41k, d=256: 0.884 / 0.809 / 0.335).
    """
    rng = np.random.default_rng(12345)  # the same structure for catalogue and queries
    families = _unit(rng, 1, dim) + _unit(rng, 50, dim)
    centres = families[rng.integers(0, 50, 2000)] + 0.6 * _unit(rng, 2000, dim)
    variants = centres[rng.integers(0, 2000, 10_000)] + 0.45 * _unit(rng, 10_000, dim)
    scale = float(np.linalg.norm(variants, axis=1).mean())
    rng = np.random.default_rng(seed)
    spread = rng.uniform(0.2, 0.6, (n, 1)).astype(np.float32) * scale
    rows = variants[rng.integers(0, 10_000, n)] + spread * _unit(rng, n, dim)
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def real_rows(path: Path, dim: int, n: int, queries: int) -> tuple[np.ndarray, np.ndarray]:
    """(catalogue, queries) from real embeddings reduced to ``dim`` dimensions."""
    rows = np.load(path).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    rows = rows[np.random.default_rng(0).permutation(len(rows))]
    if rows.shape[1] > dim:  # uncentred, so inner products keep their meaning
        basis = np.linalg.svd(rows[:8000], full_matrices=False)[2][:dim]
        rows = rows @ basis.T
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows[queries : queries + n], rows[:queries]


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def query_times(search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray):
    """(batched ms per query, single-query p50 ms, ids of the batched run)."""
    batch_s, found = timed(lambda: search(queries))
    singles = []
    for q in queries[:SINGLE]:
        t0 = time.perf_counter()
        search(q[None, :])
        singles.append(time.perf_counter() - t0)
    return 1000 * batch_s / len(queries), 1000 * float(np.median(singles)), found


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth, strict=True)]))


def faiss_rows(base: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> list[tuple]:
    """One row per (faiss index, search setting)."""
    d, n = base.shape[1], len(base)
    configs = [
        ("HNSW32,Flat", "efSearch", [32, 64, 128]),
        ("HNSW32,SQ8", "efSearch", [64, 128]),
        ("IVF1024,Flat", "nprobe", [8, 16, 32]),
        ("IVF1024,SQ8", "nprobe", [16, 32, 64]),
    ]
    rows = []
    for factory, knob, values in configs:
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
        build_s, _ = timed(lambda index=index: (index.train(base), index.add(base)))
        size = len(faiss.serialize_index(index)) / n
        for value in values:
            if knob == "efSearch":
                faiss.downcast_index(index).hnsw.efSearch = value
            else:
                faiss.extract_index_ivf(index).nprobe = value
            batch, single, found = query_times(
                lambda q, index=index: index.search(q, K)[1], queries
            )
            rows.append(
                (f"{factory} {knob}={value}", build_s, batch, single, recall(found, truth), size)
            )
    return rows


def index_row(label: str, make, base, queries, truth) -> tuple:
    """A row for one of the product's own index classes."""
    index = make()
    build_s, _ = timed(lambda: index.add(np.arange(len(base)), base))
    batch, single, found = query_times(lambda q: index.query(q, K)[0], queries)
    with tempfile.TemporaryDirectory() as folder:
        index.save(folder)
        size = sum(f.stat().st_size for f in Path(folder).iterdir()) / len(base)
    return (label, build_s, batch, single, recall(found, truth), size)


def print_table(rows: list[tuple], n: int) -> None:
    """The rows, each list-build and single-query time also as a ratio to exact's (row 0)."""
    exact_lists, exact_single = rows[0][1] + rows[0][2] * n / 1000, rows[0][3]
    print(
        f"{'index':32} {'build_s':>7} {'batch_ms/q':>10} {'single_ms':>9} {'recall@10':>9} "
        f"{'bytes/vec':>9} {'lists_s':>7} {'lists/ex':>8} {'single/ex':>9}"
    )
    for label, build_s, batch, single, rec, size in rows:
        lists = build_s + batch * n / 1000
        print(
            f"{label:32} {build_s:7.2f} {batch:10.3f} {single:9.3f} {rec:9.3f} "
            f"{size:9.0f} {lists:7.1f} {lists / exact_lists:8.2f} {single / exact_single:9.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--small", type=int, default=10_000, help="the smaller catalogue")
    parser.add_argument("--vectors", type=Path, help="real embeddings (.npy) instead of synthetic")
    args = parser.parse_args()
    started = time.perf_counter()
    info = machine()
    print(f"bench_ann  commit {git_commit()}  faiss {faiss.__version__}  numpy {info['numpy']}")
    print(
        f"machine {info['cpu']}  cores {info['cores']}  load {info['load_average']}  "
        f"faiss threads {faiss.omp_get_max_threads()}"
    )
    if args.vectors:
        base, queries = real_rows(args.vectors, args.dim, args.n, args.queries)
        args.n = len(base)
    else:
        base = clustered_rows(args.n, args.dim, seed=1)
        queries = clustered_rows(args.queries, args.dim, seed=2)
    source = args.vectors or "synthetic clusters"
    print(f"data: {source}  n={args.n} dim={args.dim} queries={args.queries} (held out), k={K}\n")
    truth = ExactIndex(args.dim)
    truth.add(np.arange(args.n), base)
    truth_ids = truth.query(queries, K)[0]
    rows = [
        index_row(
            "exact float32 (ExactIndex)", lambda: ExactIndex(args.dim), base, queries, truth_ids
        )
    ]
    rows.append(
        index_row(
            "exact float16 (ExactIndex)",
            lambda: ExactIndex(args.dim, "float16"),
            base,
            queries,
            truth_ids,
        )
    )
    rows += faiss_rows(base, queries, truth_ids)
    rows.append(
        index_row("ann: HnswIndex defaults", lambda: HnswIndex(args.dim), base, queries, truth_ids)
    )
    print_table(rows, args.n)

    small = base[: args.small]
    small_truth = ExactIndex(args.dim)
    small_truth.add(np.arange(args.small), small)
    small_ids = small_truth.query(queries, K)[0]
    print(f"\nn={args.small}:")
    small_rows = [
        index_row(
            "exact float32 (ExactIndex)", lambda: ExactIndex(args.dim), small, queries, small_ids
        ),
        index_row(
            "ann: HnswIndex defaults", lambda: HnswIndex(args.dim), small, queries, small_ids
        ),
    ]
    print_table(small_rows, args.small)
    print(f"\nload after {machine()['load_average']}  total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
