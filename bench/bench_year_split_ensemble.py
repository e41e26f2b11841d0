"""Would an ensemble of tuned networks lift the published protocol's figure?

``flask --app wsgi model evaluate --protocol year-split --head tuned`` trains a network on the
products of even years and keeps it in the evaluation's cache. Run it once per cut you want
to compare (``TUNE_CUT=block2_add flask ...`` for another cut), then:

    PYTHONPATH=. .venv/bin/python bench/bench_year_split_ensemble.py --cuts default block2_add

Each cached network embeds the odd-year products as uploads (from their stored feature maps,
as the evaluation does), its gender + articleType classifier is read as the protocol reads it
(``ml.evaluation.articles_among``: the types' probabilities summed over genders, the likeliest
of the set taken), and so is the average of all the networks' probabilities. The table gives
top-1 articleType on the training years' and the catalogue's 20 most common types, and each
row against the first network's.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

from ml import evaluation as ev  # noqa: E402
from ml.provenance import git_commit, machine  # noqa: E402
from ml.tuned.config import cut_layer  # noqa: E402
from ml.tuned.network import TunedNetwork  # noqa: E402

DEFAULT = "default"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cuts",
        nargs="+",
        default=[DEFAULT],
        help=f"cut of each cached network (`{DEFAULT}`: the configured one); the first is "
        "the baseline",
    )
    args = parser.parse_args()

    from webapp import create_app
    from worker.jobs import tuning
    from worker.jobs.evaluation.artefacts import type_to_sub
    from worker.jobs.evaluation.catalogue import (
        backbone_for,
        colour_descriptors,
        load_catalogue,
        resolve_model,
    )
    from worker.jobs.evaluation.runs import most_common_types, year_split
    from worker.jobs.evaluation.tuned import catalogue_feature_maps, network_folder

    app = create_app()
    with app.app_context():
        started = time.perf_counter()
        cat = load_catalogue(resolve_model(None))
        kept, held = year_split(cat.years)
        type_sets = {
            "training years' top 20": most_common_types(cat.labels.article_type[kept]),
            "catalogue's top 20": most_common_types(cat.labels.article_type),
        }
        truth = cat.labels.take(held)
        base = backbone_for(cat.model_id)
        colours = colour_descriptors(cat)
        type_to_sub_map = type_to_sub(cat.labels.take(kept))
        rows: list[tuple[str, list[str], np.ndarray]] = []
        for cut in args.cuts:
            config = tuning.tune_config()
            if cut != DEFAULT:
                config = dataclasses.replace(config, cut=cut)
            folder = network_folder(cat, config, kept)
            if not (folder / "meta.json").exists():
                setting = "" if cut == DEFAULT else f"TUNE_CUT={cut} "
                print(
                    f"No cached year-split network for cut {cut}: run `{setting}flask --app "
                    "wsgi model evaluate --protocol year-split --head tuned` first.",
                    file=sys.stderr,
                )
                return 2
            network = TunedNetwork.load(folder)
            maps = catalogue_feature_maps(base, config, cat, None)
            vectors = network.backbone(base).embed_maps(maps[held], colours[held], query=True)
            head = network.headset(type_to_sub_map).heads["type"]
            name = f"{network.model_id} (cut {cut_layer(base, config)})"
            rows.append((name, list(head.classes), head.predict(vectors)))
            del maps
        if len(rows) > 1:
            classes = rows[0][1]
            if any(r[1] != classes for r in rows):
                print("The networks name different classes: no average.", file=sys.stderr)
                return 2
            mean = np.mean([r[2] for r in rows], axis=0)
            rows.append((f"average of the {len(rows)} networks' probabilities", classes, mean))

        m = machine()
        print(
            f"Year-split ensembles | {m['cpu']}, {m['cores']} cores, load {m['load_average']} | "
            f"base {cat.model_id} | commit {git_commit()} | {len(held)} odd-year queries, "
            f"{len(kept)} even-year products | {time.perf_counter() - started:.0f} s"
        )
        header = " | ".join(f"{n}: % | vs first" for n in type_sets)
        print(f"| classifier | {header} |")
        print("|---|" + "---:|---:|" * len(type_sets))
        first = None
        for name, classes, probs in rows:
            scores = [
                100 * ev.type_set_accuracy(truth, ev.articles_among(classes, probs, t), t)
                for t in type_sets.values()
            ]
            first = first or scores
            cells = " | ".join(
                f"{s:.2f} | {s - f:+.2f}" for s, f in zip(scores, first, strict=True)
            )
            print(f"| {name} | {cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
