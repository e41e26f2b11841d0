"""Does a larger EfficientNet-Lite pay once tuned? Tuned Lite0 against tuned Lite1 / Lite2,
and what each training precision costs and gives.

On a stratified sample of the catalogue (default 12,000 photos, the same share of every
gender + article type, seed 0), each backbone at the same input size is tuned exactly as
``flask model tune`` tunes (``ml.tuned``, cut at the end of its stride-8 stage) on
five sixths of the sample and scored on the sixth it never saw: the accuracy of its three
classifiers, the time to compute the feature maps, the time per training epoch, and the
embedding speed of one photo as photo search embeds it, once per training precision
(``TUNE_PRECISION``). The first row is the baseline of the ratios. Figures on a sample are
below the full catalogue's (less to learn from) but compare the backbones fairly.

    PYTHONPATH=. .venv/bin/python bench/bench_tune_backbones.py --n 12000 --epochs 4 \\
        --backbones efficientnet_lite0 efficientnet_lite2
    PYTHONPATH=. .venv/bin/python bench/bench_tune_backbones.py --n 6000 --epochs 2 \\
        --backbones efficientnet_lite0 --precisions float32 bfloat16

(EfficientNet-Lite1 and -Lite2 need their PyPI packages.)
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.bench_quality_sizes import DEFAULT_CATALOG, stratified_sample  # noqa: E402
from ml import evaluation as ev  # noqa: E402
from ml.provenance import git_commit  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Tune each backbone on the same sample and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG)
    parser.add_argument("--n", type=int, default=12000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--backbones", nargs="+", default=["efficientnet_lite0", "efficientnet_lite2"]
    )
    parser.add_argument(
        "--precisions", nargs="+", default=["float32"], choices=["float32", "bfloat16"]
    )
    args = parser.parse_args(argv)

    from ml.backbones import get_backbone
    from ml.colour import ColourDescriptor
    from ml.preprocess import load_image
    from ml.tuned.config import TuneConfig, bfloat16_tiles, cut_layer
    from ml.tuned.feature_maps import FeatureMaps
    from ml.tuned.scoring import score_network
    from ml.tuned.training import train_network

    paths, labels = stratified_sample(args.catalog, args.n, args.seed)
    train, test = ev.holdout_split(list(labels.derived_type), 1 / 6, args.seed)
    images = [load_image(p) for p in paths]
    colours = ColourDescriptor().describe(images)
    names = {
        "sub": list(labels.sub_category),
        "type": list(labels.derived_type),
        "colour": list(labels.base_colour),
    }

    def take(rows):
        return {k: [v[i] for i in rows.tolist()] for k, v in names.items()}

    print(f"{len(paths)} photos ({len(train)} to tune on, {len(test)} held out), seed {args.seed}")
    load_before = os.getloadavg()[0]
    rows = []
    for name in args.backbones:
        base = get_backbone(name, input_size=args.size, cache_dir=REPO_ROOT / "instance" / "models")
        fm = FeatureMaps(base, cut_layer(base, TuneConfig()), TuneConfig().mirror)
        started = time.perf_counter()
        maps = fm.unflatten(fm.compute(images))
        maps_s = time.perf_counter() - started
        for precision in args.precisions:
            config = TuneConfig(epochs=args.epochs, seed=args.seed, precision=precision)
            started = time.perf_counter()
            network, _ = train_network(base, maps[train], colours[train], take(train), config)
            epoch_s = (time.perf_counter() - started) / args.epochs
            scores = score_network(network, base, maps[test], colours[test], take(test))
            tuned = network.backbone(base)
            tuned.embed(images[:1])
            started = time.perf_counter()
            for image in images[:50]:
                tuned.embed([image])
            photo_ms = (time.perf_counter() - started) / 50 * 1000
            label = f"{name} ({fm.cut}, {precision})"
            rows.append((label, scores, maps_s, epoch_s, photo_ms))
            print(f"  {label}: done", flush=True)

    print(
        f"machine: {platform.node()} | {os.cpu_count()} CPUs | "
        f"commit {git_commit(mark_dirty=False)} | "
        f"load {load_before:.1f} -> {os.getloadavg()[0]:.1f} | input {args.size} px, "
        f"{args.epochs} epochs | bfloat16 tiles (AMX): {'yes' if bfloat16_tiles() else 'no'}"
    )
    header = (
        f"{'backbone (cut, precision)':<44} {'sub':>6} {'type':>6} {'colour':>6} {'maps s':>7} "
        f"{'epoch s':>8} {'photo ms':>9} {'epoch vs first':>15}"
    )
    print(header)
    print("-" * len(header))
    base_epoch = rows[0][3]
    for label, s, maps_s, epoch_s, photo_ms in rows:
        print(
            f"{label:<44} {100 * s['sub']:6.2f} {100 * s['type']:6.2f} "
            f"{100 * s['colour']:6.2f} {maps_s:7.0f} {epoch_s:8.0f} {photo_ms:9.1f} "
            f"{epoch_s / base_epoch:14.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
