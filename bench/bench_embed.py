"""Embedding throughput of the backbones on real catalogue photos.

Measures images per second for EfficientNet-Lite0 (real weights, input 224 and 160) and
ResNet50 (random weights: same compute as the ImageNet ones, which are often not
downloadable here) at batch size 64, after one warm-up batch. "end-to-end" includes JPEG
decoding and the resize/pad step; "model" times the network alone on ready uint8 arrays.

    python bench/bench_embed.py --n 512
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

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from ml.backbones import get_backbone  # noqa: E402
from ml.preprocess import batch_to_square  # noqa: E402
from ml.provenance import git_commit  # noqa: E402

DEFAULT_CATALOG = REPO_ROOT.parent / "shared" / "data" / "fashion-small"
# (backbone, input size, weights); the last one is the baseline for the ratio column.
CONFIGS = (
    ("efficientnet_lite0", 224, "imagenet"),
    ("efficientnet_lite0", 160, "imagenet"),
    ("resnet50", 224, "random"),
)


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
    name: str, size: int, weights: str, paths: list[Path], batch: int, cache: str
) -> dict:
    """Build one backbone and time it; returns a row for the table."""
    started = time.perf_counter()
    backbone = get_backbone(name, input_size=size, weights=weights, cache_dir=cache)
    build_s = time.perf_counter() - started
    backbone.embed(paths[:batch], batch_size=batch)  # warm-up: traces the graph

    started = time.perf_counter()
    emb = backbone.embed(paths, batch_size=batch)
    end_to_end = len(paths) / (time.perf_counter() - started)

    arrays = batch_to_square(paths, size)
    started = time.perf_counter()
    backbone.embed(arrays, batch_size=batch)
    model_only = len(paths) / (time.perf_counter() - started)
    assert emb.shape == (len(paths), backbone.dim)
    return {
        "model_id": backbone.model_id,
        "build_s": build_s,
        "end_to_end": end_to_end,
        "model_only": model_only,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512, help="number of catalogue photos")
    parser.add_argument("--batch-size", type=int, default=64)
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

    import tensorflow as tf

    print(
        f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
        f"{os.cpu_count()} CPUs | TensorFlow {tf.__version__} | "
        f"commit {git_commit(mark_dirty=False)}"
    )
    print(f"{len(paths)} catalogue photos from {args.catalog}, batch size {args.batch_size}")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache_dir or tmp
        rows = [bench_one(n, s, w, paths, args.batch_size, cache) for n, s, w in CONFIGS]
    # Other jobs on the machine skew throughput; the load average shows when that happened.
    print(f"load average before/after: {load_before:.1f} / {os.getloadavg()[0]:.1f}")
    baseline = rows[-1]["end_to_end"]
    header = f"{'model id':<38} {'build s':>8} {'img/s':>8} {'model img/s':>12} {'vs resnet50':>12}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['model_id']:<38} {row['build_s']:>8.1f} {row['end_to_end']:>8.1f} "
            f"{row['model_only']:>12.1f} {row['end_to_end'] / baseline:>11.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
