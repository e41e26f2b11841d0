"""What the catalogue-tuned backbone costs next to the plain one it was tuned from.

On real catalogue photos, with the newest tuned network in the model folder (``flask model
tune`` makes one): one photo at a time as photo search embeds it (decode, the tuned
network's upload views, colour descriptor) and, for the tuned network, as a catalogue photo
is embedded (its two views), a batch as a catalogue build embeds it, the same batch
from stored feature maps (what ``model tune`` does for the whole catalogue), and one training
epoch over a sample of stored maps. The plain backbone is the baseline of every ratio.

    PYTHONPATH=. .venv/bin/python bench/bench_tune.py --n 512
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from ml.provenance import git_commit  # noqa: E402


def per_second(fn, count: int) -> float:
    """Items per second of one call of ``fn`` handling ``count`` items."""
    started = time.perf_counter()
    fn()
    return count / (time.perf_counter() - started)


def single_ms(embed, photos: list[Path]) -> tuple[float, float]:
    """p50 / p95 milliseconds to embed one photo (decode included) with ``embed``, after a
    warm-up."""
    embed([photos[0]])
    times = []
    for path in photos:
        t0 = time.perf_counter()
        embed([path])
        times.append(1000 * (time.perf_counter() - t0))
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark inside the app (its configuration and model folder) and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512, help="catalogue photos per measurement")
    parser.add_argument("--single", type=int, default=50, help="photos embedded one at a time")
    parser.add_argument("--train-n", type=int, default=2048, help="photos in the timed epoch")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        print(f"ignoring arguments meant for other benchmarks: {' '.join(unknown)}")

    from wsgi import app

    with app.app_context():
        from ml.tuned.feature_maps import FeatureMaps
        from ml.tuned.network import QUERY_SHIFTS, TunedNetwork
        from ml.tuned.training import train_network
        from webapp import registry
        from worker.jobs import tuning

        base = registry.load_backbone(tuned=False)
        folder = registry.newest_network(base.model_id)
        if folder is None:
            print(f"no tuned network for {base.model_id}: run `flask --app wsgi model tune` first")
            return 2
        network = TunedNetwork.load(folder)
        tuned = network.backbone(base)
        rows = tuning.catalogue_rows()
        rng = np.random.default_rng(0)
        pick = np.sort(rng.choice(len(rows.ids), min(args.n, len(rows.ids)), replace=False))
        photos = [rows.photos[i] for i in pick]
        sample = tuning.CatalogueRows(rows.ids[pick], [rows.keys[i] for i in pick], photos)
        fm = FeatureMaps(base, network.meta["cut"], network.config.mirror)
        have, maps = tuning.feature_maps(fm, sample)
        colours = tuning.colour_descriptors(sample)

        import tensorflow as tf

        load_before = os.getloadavg()[0]
        batch = app.config["EMBEDDING_BATCH_SIZE"]
        results = {
            "single": {
                m.model_id: single_ms(m.embed_query, photos[: args.single]) for m in (base, tuned)
            },
            # the tuned network's two catalogue views, against the upload's QUERY_SHIFTS views
            "single_catalogue": single_ms(tuned.embed, photos[: args.single]),
            "batch": {
                m.model_id: per_second(lambda m=m: m.embed(photos, batch_size=batch), len(photos))
                for m in (base, tuned)
            },
            "maps": per_second(lambda: tuned.embed_maps(maps, colours[have]), len(have)),
        }
        train_rows = np.sort(
            rng.choice(len(rows.ids), min(args.train_n, len(rows.ids)), replace=False)
        )
        train_sample = tuning.CatalogueRows(
            rows.ids[train_rows],
            [rows.keys[i] for i in train_rows],
            [rows.photos[i] for i in train_rows],
        )
        t_have, t_maps = tuning.feature_maps(fm, train_sample)
        labels = tuning.catalogue_labels(train_sample.ids[t_have])
        t_colours = tuning.colour_descriptors(train_sample)[t_have]
        config = network.config.__class__(
            **{**network.config.as_dict(), "epochs": 1, "min_count": 2}
        )
        started = time.perf_counter()
        train_network(base, t_maps, t_colours, labels, config)
        epoch_s = time.perf_counter() - started
        load_after = os.getloadavg()[0]

    print(
        f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
        f"{os.cpu_count()} CPUs | TensorFlow {tf.__version__} | "
        f"commit {git_commit(mark_dirty=False)}"
    )
    print(f"tuned {tuned.model_id} (cut at {network.meta['cut']}), base {base.model_id}")
    print(f"load average before/after: {load_before:.1f} / {load_after:.1f}")
    header = f"{'measure':<52} {'plain':>10} {'tuned':>10} {'tuned/plain':>12}"
    print(header)
    print("-" * len(header))
    p50 = [results["single"][m.model_id][0] for m in (base, tuned)]
    p95 = [results["single"][m.model_id][1] for m in (base, tuned)]
    thr = [results["batch"][m.model_id] for m in (base, tuned)]
    print(
        f"{'one photo, p50 ms (' + str(args.single) + ' photos)':<52} {p50[0]:>10.1f} {p50[1]:>10.1f} {p50[1] / p50[0]:>11.2f}x"
    )
    print(f"{'one photo, p95 ms':<52} {p95[0]:>10.1f} {p95[1]:>10.1f} {p95[1] / p95[0]:>11.2f}x")
    cat_p50, cat_p95 = results["single_catalogue"]
    print(
        f"{'  tuned: as a catalogue photo (2 views), p50 / p95 ms':<52} {'':>10} "
        f"{cat_p50:>5.1f} /{cat_p95:>4.1f}  (upload: {2 * len(QUERY_SHIFTS)} views)"
    )
    print(
        f"{'catalogue photos/s, batch ' + str(batch) + ' (' + str(len(photos)) + ')':<52} {thr[0]:>10.1f} {thr[1]:>10.1f} {thr[1] / thr[0]:>11.2f}x"
    )
    print(
        f"{'tuned embeddings/s from stored maps':<52} {thr[0]:>10.1f} {results['maps']:>10.1f} {results['maps'] / thr[0]:>11.2f}x"
    )
    per_k = epoch_s / max(len(t_have), 1) * 1000
    print(f"{'training: seconds per epoch per 1,000 photos':<52} {'':>10} {per_k:>10.1f}")
    print(
        f"  (a {len(rows.ids):,}-photo catalogue: about {per_k * len(rows.ids) / 1000 / 60:.1f} min per epoch)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
