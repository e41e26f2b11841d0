"""Wild photos in the held-out evaluation: the held-out products photographed as a shopper
would (made here by ``ml.wild``, or taken from a folder of such photos made elsewhere),
read and prepared as photo search reads and prepares an upload (``photo_search.read_query``:
the foreground step of ``ml.foreground``) and scored beside their studio photos, product for
product."""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flask import current_app

from ml import evaluation as ev
from ml.colour import ColourDescriptor
from ml.wild import make_wild
from worker.jobs import photo_search
from worker.jobs.evaluation.catalogue import Catalogue, backbone_for
from worker.jobs.evaluation.options import WILD_GENERATED, EvaluationError, Options, Say
from worker.jobs.evaluation.searches import (
    CLASSIFIER_CHOICES,
    HEADS_NAME,
    TUNED_NAME,
    PhotoQueries,
    photo_models,
)
from worker.jobs.evaluation.vectors import Queries


@dataclass
class WildPhotos:
    """The held-out rows that have a wild photo, the photo of each (encoded image bytes),
    and where they came from."""

    rows: np.ndarray
    photos: list[bytes]
    source: str


def wild_photos(cat: Catalogue, held: np.ndarray, opts: Options, say: Say | None) -> WildPhotos:
    """A wild photo of each held-out product: made from its catalogue photo (seed: the
    run's seed and the product's id), or read from ``opts.wild``'s ``images/<id>.jpg``."""
    rows, photos = [], []
    if opts.wild == WILD_GENERATED:
        if say:
            say(f"Making wild photos of {len(held)} held-out products (seed {opts.seed})...")
        for row in held.tolist():
            if cat.photos[row] is not None and cat.photos[row].is_file():
                rows.append(row)
                photos.append(make_wild(cat.photos[row], (opts.seed, int(cat.ids[row]))).jpeg)
        source = f"made by ml.wild, seed {opts.seed}"
    else:
        folder = Path(opts.wild) / "images"
        if not folder.is_dir():
            raise EvaluationError(f"{folder} not found: a wild folder holds images/<id>.jpg")
        for row in held.tolist():
            path = folder / f"{int(cat.ids[row])}.jpg"
            if path.is_file():
                rows.append(row)
                photos.append(path.read_bytes())
        source = f"from {opts.wild}"
    if not rows:
        raise EvaluationError(
            f"No wild photo of any held-out product ({source}): a wild folder holds "
            "images/<id>.jpg of the products `--split` holds out with this seed."
        )
    return WildPhotos(np.asarray(rows, np.int64), photos, source)


def as_uploaded(photos: list[bytes], size: int, foreground: bool) -> tuple[list, dict[str, Any]]:
    """Each photo as photo search embeds an upload: stored in the media folder, then read
    back by ``photo_search.read_query`` (the foreground step included) or, without
    ``foreground``, by ``photo_search.read_photo`` alone; with how often the step cut the
    photo to a product and what it cost."""
    media = Path(current_app.config["MEDIA_FOLDER"])
    media.mkdir(parents=True, exist_ok=True)
    images, costs, cut = [], [], 0
    with tempfile.TemporaryDirectory(prefix=".evaluation-wild-", dir=media) as folder:
        path = Path(folder) / "photo.jpg"
        relative = str(path.relative_to(media))
        for data in photos:
            path.write_bytes(data)
            if not foreground:
                images.append(photo_search.read_photo(relative, size))
                continue
            query = photo_search.read_query(relative, size)
            images.append(query.image)
            costs.append(query.foreground_ms / 1000)
            cut += query.product_box is not None
    step = {"applied": foreground}
    if foreground:
        step |= {"cut": round(cut / max(len(photos), 1), 4), **ev.latency_summary(costs)}
    return images, step


def run_wild(
    cat: Catalogue,
    colours: np.ndarray | None,
    studio: PhotoQueries,
    wild: WildPhotos,
    opts: Options,
    say: Say | None,
) -> dict[str, Any]:
    """The held-out run again with the same products' wild photos as the queries."""
    backbone = backbone_for(cat.model_id)
    if backbone is None:
        raise EvaluationError(f"The backbone of {cat.model_id} cannot be built here.")
    if say:
        say(f"Reading {len(wild.photos)} wild photos as uploads and embedding them...")
    images, step = as_uploaded(wild.photos, backbone.input_size, opts.foreground)
    vectors = backbone.embed_query(images, batch_size=current_app.config["EMBEDDING_BATCH_SIZE"])
    described = ColourDescriptor().describe(images) if colours is not None else None
    queries = Queries(vectors, described, images=images)
    run = dataclasses.replace(studio, queries=queries, photos=[])
    return {
        "queries_from": f"wild photos of the same {len(wild.rows)} held-out products "
        f"({wild.source}), read as uploads"
        + ("; foreground step applied" if opts.foreground else "; no foreground step"),
        "foreground": step,
        "models": photo_models(cat, colours, run, opts, say),
    }


def format_wild_result(result: dict[str, Any]) -> list[str]:
    """Studio against wild, model by model: the classifiers' accuracy and the ranking's
    figures the wild photos move most."""
    wild = result.get("wild")
    if not wild:
        return []
    step = wild["foreground"]
    lines = ["", f"Wild photos: {wild['queries_from']}"]
    if step.get("applied"):
        lines.append(
            f"  foreground step: cut to the product in {100 * step['cut']:.1f} % of photos; "
            f"p50 {step.get('p50_ms')} ms, p95 {step.get('p95_ms')} ms per photo"
        )
    lines.append(f"  {'model / measure':<40}{'studio':>10}{'wild':>10}{'change':>10}")
    choice = result["options"]["classifier"]
    studio_models = {m["name"]: m for m in result["models"]}
    for model in wild["models"]:
        lines.append(f"  [{model['name']}] {model['ranking']}")
        studio = _figures(studio_models[model["name"]], choice)
        for label, value in _figures(model, choice).items():
            before = studio[label]
            if before is None and value is None:
                continue
            percent = not label.startswith("colour-match")
            lines.append(
                f"    {label:<38}{_cell(before, percent):>10}{_cell(value, percent):>10}"
                f"{_change(before, value, percent):>10}"
            )
    return lines


def _figures(model: dict[str, Any], choice: str) -> dict[str, float | None]:
    """The summary's figures of one model's result (None where it has none)."""
    answers = model.get("classifier") or {}
    # The classifier that narrowed the searches, chosen as ``searches._classifiers`` does.
    names = (TUNED_NAME, CLASSIFIER_CHOICES.get(choice), HEADS_NAME)
    classifier = next((answers[n] for n in names if n in answers), {})
    table = model["table"]
    return {
        "classifier subCategory": classifier.get("subCategory"),
        "classifier gender+articleType": classifier.get("gender+articleType"),
        "classifier baseColour": classifier.get("baseColour"),
        "articleType tol 0.2": table["articleType"]["0.2"],
        "gender+articleType tol 0": table["gender+articleType"]["0"],
        "colour-match@k": model["colour_match_at_k"],
    }


def _cell(value: float | None, percent: bool) -> str:
    """A figure as printed: a percentage or a fraction, n/a when missing."""
    if value is None:
        return "n/a"
    return f"{100 * value:.1f}" if percent else f"{value:.3f}"


def _change(before: float | None, after: float | None, percent: bool) -> str:
    """Wild minus studio, in points (or as a fraction)."""
    if before is None or after is None:
        return ""
    return f"{100 * (after - before):+.1f}" if percent else f"{after - before:+.3f}"
