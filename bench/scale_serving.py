"""What a worker does while a large catalogue is served: photo searches and an admin's save.

Run by ``bench/bench_scale.py`` in a process of its own (so its RSS is a serving worker's),
inside an app from ``webapp.create_app`` pointed at the synthetic catalogue (MODEL_FOLDER),
its lists (REDIS_URL) and its rows (DATABASE_URL). Prints one JSON line.

* Photo search in process: real catalogue photos decoded at reduced size and embedded by the
  catalogue's source backbone (the synthetic vectors are derived from its embeddings, same
  dimensions), then ranked and chosen by ``worker.jobs.photo_search.rank_photo``, the code
  a shopper's search runs after the model, on the synthetic model's index, eligibility asked
  of the database. The first searches (mapping the index, loading the model) are not timed.
* Upkeep: an admin saves a new product (a row committed with a photo of the catalogue);
  the time is ``worker.jobs.indexing.update_products`` for it, the job the save enqueues:
  embed, add to the store, give it a list and enter it in the lists it now belongs in. The
  synthetic model has no embedder of its own, so the source backbone embeds for it.

Usage (normally through bench_scale.py): PYTHONPATH=. .venv/bin/python bench/scale_serving.py
    --model-folder DIR --model-id ID --source-model ID --redis-url URL --database-url URL
    --photos DIR [--queries 200]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ml.preprocess import load_image_reduced  # noqa: E402

WARM_UP = 5


def memory_mb() -> dict[str, float]:
    """This process's resident memory now, in MB: all of it (VmRSS), its own (RssAnon) and
    the pages of mapped files (RssFile: the saved index and the model, which the page cache
    shares with every process mapping them)."""
    fields = {"VmRSS:": "rss", "RssAnon:": "anon", "RssFile:": "file"}
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":", 1)[0] + ":"
        if key in fields:
            out[fields[key]] = int(line.split()[1]) / 1024
    return out


class AsModel:
    """The source backbone embedding for the synthetic model id (same dimensions)."""

    def __init__(self, inner: Any, model_id: str) -> None:
        self.inner, self.model_id = inner, model_id
        self.input_size = inner.input_size

    def embed(self, images: list, **options: Any) -> np.ndarray:
        """The source backbone's vectors."""
        return self.inner.embed(images, **options)

    def embed_query(self, images: list, **options: Any) -> np.ndarray:
        """The source backbone's vectors of uploaded photos."""
        return self.inner.embed_query(images, **options)


def percentiles(values: list[float]) -> dict[str, float]:
    """p50 and p95 in ms of seconds."""
    arr = np.asarray(values) * 1000
    return {"p50_ms": float(np.percentile(arr, 50)), "p95_ms": float(np.percentile(arr, 95))}


def search_latency(model_id: str, backbone: Any, photos: list[Path]) -> dict[str, Any]:
    """Decode + embed + rank of each photo, and the parts."""
    from webapp.preferences import Preferences
    from worker.jobs.photo_search import rank_photo

    total, ranks, embeds, found = [], [], [], []
    for i, photo in enumerate(photos):
        t0 = time.perf_counter()
        image = load_image_reduced(photo, backbone.input_size)
        query = backbone.embed_query([image])[0]
        t1 = time.perf_counter()
        answer = rank_photo(model_id, query, Preferences(), 12)
        t2 = time.perf_counter()
        if i >= WARM_UP:
            total.append(t2 - t0)
            embeds.append(t1 - t0)
            ranks.append(t2 - t1)
            found.append(len(answer["items"]))
    return {
        "search": percentiles(total),
        "decode_embed": percentiles(embeds),
        "rank": percentiles(ranks),
        "queries": len(total),
        "min_items": int(min(found)),
    }


def upkeep(model_id: str, backbone: Any, photo: Path) -> dict[str, Any]:
    """An admin's new product: the update job's time and whether the lists took it in."""
    from sqlalchemy import func, select

    from webapp.extensions import db
    from webapp.models import Product
    from webapp.registry import neighbour_cache
    from worker.jobs.indexing import update_products

    template = db.session.get(Product, db.session.scalar(select(func.min(Product.id))))
    new_id = int(db.session.scalar(select(func.max(Product.id)))) + 1
    columns = {c.key: getattr(template, c.key) for c in Product.__table__.columns}
    columns.update(id=new_id, image_path=str(photo), image_sha256=None)
    columns["name"] = f"Bench upkeep product {new_id}"
    db.session.add(Product(**columns))
    db.session.commit()
    t0 = time.perf_counter()
    report = update_products([new_id], backbone=AsModel(backbone, model_id))
    seconds = time.perf_counter() - t0
    cache = neighbour_cache()
    own = cache.get_lists(model_id, [new_id])[0]
    entered = [
        int(pid)
        for pid in (own[0][:10] if own is not None else [])
        if (lst := cache.get_lists(model_id, [int(pid)])[0]) is not None and new_id in lst[0]
    ]
    # The bench leaves the catalogue as it found it: the product goes, through the same job.
    db.session.delete(db.session.get(Product, new_id))
    db.session.commit()
    removed = update_products([new_id], backbone=AsModel(backbone, model_id))
    if new_id not in removed.removed:
        raise RuntimeError(f"the bench's product {new_id} was not removed again")
    return {
        "upkeep_s": seconds,
        "product": new_id,
        "own_list": own is not None,
        "rewritten_lists": len(report.rewritten),
        "entered_of_its_top10": len(entered),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name in ("model-folder", "model-id", "source-model", "redis-url", "database-url"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--photos", required=True)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--prepare",
        action="store_true",
        help="only build the source backbone's runtime export (once per model, as a shop's "
        "first worker does) and stop, so the measured worker starts as every later one does",
    )
    args = parser.parse_args()

    from webapp import create_app
    from webapp.registry import backbone_for

    app = create_app(
        {
            "MODEL_FOLDER": args.model_folder,
            "REDIS_URL": args.redis_url,
            "SQLALCHEMY_DATABASE_URI": args.database_url,
        }
    )
    photos = sorted(Path(args.photos).glob("*.jpg"))
    rng = np.random.default_rng(args.seed)
    chosen = [photos[i] for i in rng.choice(len(photos), args.queries + WARM_UP + 1, replace=False)]
    with app.app_context():
        backbone = backbone_for(args.source_model)
        if args.prepare:
            backbone.embed_query([load_image_reduced(chosen[0], backbone.input_size)])
            print(json.dumps({"prepared": args.source_model}))
            return
        result = search_latency(args.model_id, backbone, chosen[:-1])
        memory = memory_mb()
        result["worker_rss_mb"] = memory["rss"]
        result["worker_anon_mb"] = memory["anon"]
        result["worker_file_mb"] = memory["file"]
        result.update(upkeep(args.model_id, backbone, chosen[-1]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
