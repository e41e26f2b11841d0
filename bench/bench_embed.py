"""Embedding throughput and latency on real catalogue photos: Keras against the inference
runtime (``ml.runtime``, ONNX Runtime), for EfficientNet-Lite0 (real weights) at 160 and 224 px.

For each input size and runtime: photos per second end to end (JPEG decoding, resize/pad and
the network, through ``Backbone.embed`` at the served batch size, as indexing runs it), the
network alone on ready arrays, and batch-1 latency (one photo at a time, end to end, as a
photo search embeds one upload). The Keras path is the baseline of the ratio column; the
runtime's vectors are compared with Keras' on every photo (lowest cosine).

    PYTHONPATH=. .venv/bin/python bench/bench_embed.py --n 2000
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from ml import runtime  # noqa: E402
from ml.backbones import get_backbone  # noqa: E402
from ml.preprocess import batch_to_square  # noqa: E402
from ml.provenance import git_commit  # noqa: E402

DEFAULT_CATALOG = REPO_ROOT.parent / "shared" / "data" / "fashion-small"
SIZES = (160, 224)
RUNTIMES = ("keras", "onnxruntime")  # the first is the baseline of the ratio column
TARGET_RATIO_160 = 1.8
TARGET_THROUGHPUT = 300.0
TARGET_LATENCY_MS = 8.0


def catalogue_paths(catalog: Path, n: int) -> list[Path]:
    """The first n catalogue photos in styles.csv order."""
    paths = []
    with (catalog / "styles.csv").open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            path = catalog / "images" / f"{row['id']}.jpg"
            if path.is_file():
                paths.append(path)
                if len(paths) == n:
                    break
    return paths


def bench_one(
    name: str,
    size: int,
    weights: str,
    paths: list[Path],
    batch: int,
    cache: str,
    runtime_name: str | None = None,
    latency_n: int = 0,
) -> dict:
    """Build one backbone and time it on ``runtime_name`` (default: the process's runtime);
    returns a row for the table, with the embeddings."""
    if runtime_name is not None:
        runtime.select(runtime_name)
    started = time.perf_counter()
    backbone = get_backbone(name, input_size=size, weights=weights, cache_dir=cache)
    backbone.embed(paths[:batch], batch_size=batch)  # warm-up: traces the graph / exports
    build_s = time.perf_counter() - started

    started = time.perf_counter()
    emb = backbone.embed(paths, batch_size=batch)
    end_to_end = len(paths) / (time.perf_counter() - started)

    arrays = batch_to_square(paths, size)
    started = time.perf_counter()
    backbone.embed(arrays, batch_size=batch)
    model_only = len(paths) / (time.perf_counter() - started)

    latencies = []
    for path in paths[:latency_n]:
        started = time.perf_counter()
        backbone.embed([path], batch_size=1)
        latencies.append(1000 * (time.perf_counter() - started))
    assert emb.shape == (len(paths), backbone.dim)
    return {
        "model_id": backbone.model_id,
        "runtime": runtime.current(),
        "size": size,
        "build_s": build_s,
        "end_to_end": end_to_end,
        "model_only": model_only,
        "latency_p50": float(np.percentile(latencies, 50)) if latencies else float("nan"),
        "latency_p95": float(np.percentile(latencies, 95)) if latencies else float("nan"),
        "embeddings": emb,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="number of catalogue photos")
    parser.add_argument("--batch-size", type=int, default=64, help="EMBEDDING_BATCH_SIZE")
    parser.add_argument("--latency-n", type=int, default=200, help="photos timed one at a time")
    parser.add_argument(
        "--catalog", type=Path, default=DEFAULT_CATALOG, help="fashion-small folder"
    )
    parser.add_argument("--cache-dir", help="folder for converted weights (default: a temp folder)")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        print(f"ignoring arguments meant for other benchmarks: {' '.join(unknown)}")
    if not (args.catalog / "styles.csv").is_file():
        print(f"catalogue not found at {args.catalog}; pass --catalog", file=sys.stderr)
        return 2
    paths = catalogue_paths(args.catalog, args.n)
    logging.basicConfig(level=logging.WARNING)

    import onnxruntime
    import tensorflow as tf

    print(
        f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
        f"{os.cpu_count()} CPUs | TensorFlow {tf.__version__} | ONNX Runtime "
        f"{onnxruntime.__version__} | commit {git_commit(mark_dirty=False)}"
    )
    print(f"{len(paths)} catalogue photos from {args.catalog}, batch size {args.batch_size}")
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache_dir or tmp
        for size in SIZES:
            for name in RUNTIMES:
                rows.append(
                    bench_one(
                        "efficientnet_lite0",
                        size,
                        "imagenet",
                        paths,
                        args.batch_size,
                        cache,
                        runtime_name=name,
                        latency_n=args.latency_n,
                    )
                )
    # Other jobs on the machine skew throughput; the load average shows when that happened.
    print(f"load average before/after: {load_before:.1f} / {os.getloadavg()[0]:.1f}")
    header = (
        f"{'model id':<36} {'runtime':<12} {'photos/s':>9} {'vs keras':>9} {'model/s':>8} "
        f"{'b1 p50 ms':>10} {'b1 p95 ms':>10} {'min cos':>8}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        base = next(r for r in rows if r["size"] == row["size"] and r["runtime"] == RUNTIMES[0])
        a, b = base["embeddings"], row["embeddings"]
        cos = float(np.min(np.sum(a * b, axis=1)))
        print(
            f"{row['model_id']:<36} {row['runtime']:<12} {row['end_to_end']:>9.1f} "
            f"{row['end_to_end'] / base['end_to_end']:>8.2f}x {row['model_only']:>8.1f} "
            f"{row['latency_p50']:>10.2f} {row['latency_p95']:>10.2f} {cos:>8.5f}"
        )
    fast = next(r for r in rows if r["size"] == 160 and r["runtime"] == RUNTIMES[1])
    slow = next(r for r in rows if r["size"] == 160 and r["runtime"] == RUNTIMES[0])
    ratio = fast["end_to_end"] / slow["end_to_end"]
    print(
        f"targets at 160 px: runtime/keras {ratio:.2f}x (>= {TARGET_RATIO_160}x), "
        f"{fast['end_to_end']:.0f} photos/s (>= {TARGET_THROUGHPUT:.0f}), batch-1 p50 "
        f"{fast['latency_p50']:.2f} ms (<= {TARGET_LATENCY_MS:.0f} ms)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
