"""Write a Kaggle-style folder of shopper-like photos of the held-out products.

The products are those ``flask --app wsgi model evaluate --split F --seed S`` holds out
(``worker.jobs.evaluation.runs.held_out``: the same share of each gender + articleType, the
same seed); each photo is ``ml.wild.make_wild`` of the product's catalogue photo, seeded by
``(seed, product id)``, so the folder is the same on every run and every machine. The folder
holds ``styles.csv`` (the products' labels), ``images/<id>.jpg`` and ``boxes.csv`` (where
each product was pasted, relative x, y, w, h, and what was drawn), and can be read back by
``model evaluate --split F --seed S --wild DIR`` or ``--queries`` elsewhere.

    python bench/make_wild_queries.py --split 0.2 --seed 0 --out /tmp/wild
    python bench/make_wild_queries.py --split 0.2 --seed 0 --out /tmp/other --maker other
    python bench/make_wild_queries.py --split 0.2 --seed 0 --out /tmp/wild \\
        --catalogue ../shared/data/fashion-small     # no shop needed: a Kaggle folder

By default the products are the shop's embedded catalogue (the app's database and model
store, as the evaluation reads them). With ``--catalogue`` they are a Kaggle folder's
products that have a photo, in id order: the same split as the evaluation's when the shop's
catalogue is that folder, imported whole and embedded.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

from bench._other_wild import make_other  # noqa: E402
from ml import evaluation as ev  # noqa: E402
from ml.provenance import git_commit  # noqa: E402
from ml.wild import make_wild  # noqa: E402
from worker.jobs.evaluation.runs import held_out  # noqa: E402

FIELDS = ("id", "gender", "subCategory", "articleType", "baseColour")


def shop_products(model: str | None) -> tuple[list[int], list[Path | None], ev.Labels]:
    """The shop's embedded products (ids, photos, labels), row for row as the evaluation
    loads them."""
    from webapp import create_app
    from worker.jobs.evaluation.catalogue import load_catalogue, resolve_model

    app = create_app()
    with app.app_context():
        cat = load_catalogue(resolve_model(model))
    return [int(i) for i in cat.ids], cat.photos, cat.labels


def folder_products(folder: Path) -> tuple[list[int], list[Path | None], ev.Labels]:
    """A Kaggle folder's products that have a photo, in id order."""
    rows = {}
    with (folder / "styles.csv").open(newline="", encoding="utf-8", errors="replace") as fh:
        for row in csv.DictReader(fh):
            try:
                pid = int(row["id"])
            except (KeyError, TypeError, ValueError):
                continue
            if (folder / "images" / f"{pid}.jpg").is_file():
                rows[pid] = row
    ids = sorted(rows)
    records = [
        {
            "gender": rows[i].get("gender"),
            "article_type": rows[i].get("articleType"),
            "base_colour": rows[i].get("baseColour"),
            "sub_category": rows[i].get("subCategory"),
        }
        for i in ids
    ]
    photos = [folder / "images" / f"{i}.jpg" for i in ids]
    return ids, photos, ev.Labels.from_records(records)


def write_folder(
    out: Path,
    ids: list[int],
    photos: list[Path | None],
    labels: ev.Labels,
    rows: np.ndarray,
    seed: int,
    maker: str = "shop",
) -> int:
    """Write the wild photos of ``rows`` with their labels and boxes; returns how many.
    ``maker``: ``shop`` (``ml.wild``, what tuning's shopper views are made with) or ``other``
    (``bench/_other_wild.py``, a maker the shop never trains on)."""
    # The other maker's shelves show other catalogue products: the photos that can be read.
    neighbours = (
        [p for p in photos if p is not None and Path(p).is_file()] if maker == "other" else []
    )
    (out / "images").mkdir(parents=True, exist_ok=True)
    written = 0
    started = time.perf_counter()
    with (
        (out / "styles.csv").open("w", newline="", encoding="utf-8") as styles,
        (out / "boxes.csv").open("w", newline="", encoding="utf-8") as boxes,
    ):
        style_writer = csv.writer(styles)
        style_writer.writerow(FIELDS)
        box_writer = csv.writer(boxes)
        box_writer.writerow(["id", "x", "y", "w", "h", "recipe"])
        for n, row in enumerate(rows.tolist(), 1):
            photo = photos[row]
            if photo is None or not Path(photo).is_file():
                continue
            pid = ids[row]
            if maker == "other":
                wild = make_other(photo, (seed, pid), neighbours)
            else:
                wild = make_wild(photo, (seed, pid))
            (out / "images" / f"{pid}.jpg").write_bytes(wild.jpeg)
            style_writer.writerow(
                [
                    pid,
                    labels.gender[row] or "",
                    labels.sub_category[row] or "",
                    labels.article_type[row] or "",
                    labels.base_colour[row] or "",
                ]
            )
            box_writer.writerow([pid, *wild.box, json.dumps(wild.recipe, sort_keys=True)])
            written += 1
            if n % 500 == 0:
                rate = n / (time.perf_counter() - started)
                print(f"  {n}/{len(rows)} ({rate:.0f} photos/s)", file=sys.stderr)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", type=float, default=0.2, help="share held out per stratum")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the photos")
    parser.add_argument("--out", type=Path, required=True, help="folder to write")
    parser.add_argument("--model", help="model id or backbone name (default: the served one)")
    parser.add_argument("--catalogue", type=Path, help="a Kaggle folder instead of the shop")
    parser.add_argument("--limit", type=int, help="only the first N held-out products")
    parser.add_argument(
        "--maker",
        choices=("shop", "other"),
        default="shop",
        help="shop: ml.wild (tuning's shopper views come from it); other: bench/_other_wild.py, "
        "a maker written apart from it",
    )
    args = parser.parse_args()
    if args.catalogue:
        ids, photos, labels = folder_products(args.catalogue)
    else:
        ids, photos, labels = shop_products(args.model)
    kept, held = held_out(labels, args.split, args.seed)
    rows = held[: args.limit] if args.limit else held
    print(
        f"{len(ids)} products: {len(kept)} kept, {len(held)} held out "
        f"(split {args.split:g}, seed {args.seed}); commit {git_commit()}",
        file=sys.stderr,
    )
    started = time.perf_counter()
    written = write_folder(args.out, ids, photos, labels, rows, args.seed, args.maker)
    print(f"Wrote {written} wild photos to {args.out} in {time.perf_counter() - started:.0f} s.")


if __name__ == "__main__":
    main()
