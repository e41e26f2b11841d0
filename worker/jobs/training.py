"""Training the photo-search heads (``flask model train``): a model's stored embeddings, the
catalogue's own labels, three small classifiers (sub-category, gender + article type,
colour) trained and saved beside the embeddings, where photo search loads them; then the
model's compare threshold calibrated on the same embeddings and labels."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flask import current_app

from ml.compare_threshold import CompareThreshold
from ml.head_training import TrainConfig, TrainReport, train_heads
from ml.heads import HeadSet
from ml.thresholds import compare_threshold_file
from webapp import registry
from worker.jobs.thresholds import calibrate_compare_threshold
from worker.jobs.tuning import catalogue_labels

Say = Callable[[str], None]
# Fewer embedded products than this cannot teach three classifiers anything.
MIN_PRODUCTS = 20
# How the report names each head.
HEAD_NAMES = {"sub": "subCategory", "type": "gender+articleType", "colour": "baseColour"}


class TrainingError(Exception):
    """Heads that cannot be trained (no such model, too few embedded products)."""


@dataclass
class TrainOptions:
    """What one ``model train`` run does."""

    model_id: str | None = None  # None: the served model, else the configured backbone's
    epochs: int = 40
    min_count: int = 10  # classes with fewer examples are merged into "(other)"
    val_fraction: float = 0.2
    target_precision: float = 0.9  # what the compare threshold is calibrated to
    seed: int = 0


@dataclass
class Embedded:
    """A model's stored embeddings with each product's labels, row-aligned."""

    model_id: str
    ids: np.ndarray
    vectors: np.ndarray
    labels: dict[str, list[str | None]]


@dataclass
class TrainedHeads:
    """What a training run produced and where it went."""

    embedded: Embedded
    headset: HeadSet
    report: TrainReport
    folder: Path


def served_model_id(say: Say | None = None) -> str:
    """The model pages serve, else the configured backbone's (when Redis cannot say)."""
    try:
        served = registry.neighbour_cache().active_model()
    except Exception as exc:  # noqa: BLE001 - Redis down: fall back to the configuration
        if say:
            say(f"Redis unavailable ({exc}); using the configured backbone.")
        served = None
    return served or registry.load_backbone().model_id


def load_embedded(model_id: str | None, say: Say | None = None) -> Embedded:
    """A model's stored (ids, vectors) and labels; the served model when ``model_id`` is None."""
    model_id = model_id or served_model_id(say)
    try:
        ids, vectors = registry.store_for(model_id).load()
    except ValueError as exc:
        raise TrainingError(str(exc)) from exc
    if len(ids) < MIN_PRODUCTS:
        raise TrainingError(
            f"Model {model_id} has {len(ids)} embedded products: embed the catalogue first "
            "(flask --app wsgi catalog embed --now)."
        )
    return Embedded(model_id, ids, np.asarray(vectors, np.float32), catalogue_labels(ids))


def train(embedded: Embedded, opts: TrainOptions, say: Say | None = None) -> TrainedHeads:
    """Train the three heads on a model's embeddings and save them beside the embeddings."""
    with tempfile.TemporaryDirectory() as keras_dir:
        headset, report = train_heads(
            embedded.model_id,
            embedded.vectors,
            embedded.labels,
            min_count=opts.min_count,
            val_fraction=opts.val_fraction,
            config=TrainConfig(epochs=opts.epochs, seed=opts.seed),
            keras_dir=keras_dir,
            progress=(lambda name: say(f"  training head '{name}'...")) if say else None,
        )
        folder = registry.store_for(embedded.model_id).path / "heads"
        folder = headset.save(folder, keras_dir=keras_dir)
    return TrainedHeads(embedded, headset, report, Path(folder))


def report_lines(trained: TrainedHeads, min_count: int) -> list[str]:
    """Validation accuracy and F1 per head, as the command prints them."""
    report = trained.report
    lines = [
        f"Validation ({report.train_rows} training / {report.val_rows} validation rows, "
        f"stratified; classes under {min_count} examples merged into '(other)'):",
        f"  {'head':<30} {'classes':>7} {'accuracy':>9} {'macro F1':>9} {'macro P':>8}",
    ]
    names = {**HEAD_NAMES, "type": f"{HEAD_NAMES['type']} ({report.decoding})"}
    for name in ("sub", "type", "colour"):
        s = report.scores[name]
        lines.append(
            f"  {names[name]:<30} {s.classes:>7} {s.accuracy:>9.2%} {s.macro_f1:>9.2%} "
            f"{s.macro_precision:>8.2%}"
        )
    for decoding, s in report.decoding_scores.items():
        if decoding != report.decoding:
            lines.append(f"  (gender+articleType decoded {decoding}: accuracy {s.accuracy:.2%})")
    lines.append(
        f"Heads saved to {trained.folder} ({trained.headset.version}) in {report.seconds:.0f} s."
    )
    return lines


def compare_threshold(
    embedded: Embedded, target_precision: float, seed: int, say: Say
) -> CompareThreshold:
    """Calibrate and store the model's compare threshold; say how it was derived."""
    started = time.perf_counter()
    try:
        fitted = calibrate_compare_threshold(
            embedded.model_id,
            embedded.vectors,
            embedded.labels,
            target_precision=target_precision,
            seed=seed,
        )
    except ValueError as exc:
        raise TrainingError(f"cannot calibrate the compare threshold: {exc}") from exc
    path = compare_threshold_file(current_app.config["MODEL_FOLDER"], embedded.model_id)
    say(
        f"Compare threshold: score >= {fitted.threshold:.4f} (cosine >= "
        f"{2 * fitted.threshold - 1:.4f}), chosen for {target_precision:.0%} precision on "
        f"{fitted.pairs} catalogue pairs (half same articleType + gender + colour); on "
        f"{fitted.pairs} fresh pairs: precision {fitted.precision:.1%}, recall "
        f"{fitted.recall:.1%}. Saved to {path} ({time.perf_counter() - started:.1f} s)."
    )
    return fitted


def run(opts: TrainOptions, say: Say, note: Say | None = None) -> TrainedHeads:
    """``model train``: load a model's embeddings and labels, train and save its heads, say
    how they score, then calibrate its compare threshold (``note``: progress and warnings,
    ``say`` by default)."""
    note = note or say
    embedded = load_embedded(opts.model_id, note)
    say(
        f"Training heads for {embedded.model_id} on {len(embedded.ids)} embedded products "
        f"({embedded.vectors.shape[1]}-d)..."
    )
    trained = train(embedded, opts, note)
    for line in report_lines(trained, opts.min_count):
        say(line)
    compare_threshold(embedded, opts.target_precision, opts.seed, say)
    return trained


def calibrate_compare(
    model_id: str | None, target_precision: float, seed: int, say: Say, note: Say | None = None
) -> CompareThreshold:
    """``model calibrate``: the compare threshold alone, on a model's stored embeddings."""
    embedded = load_embedded(model_id, note or say)
    return compare_threshold(embedded, target_precision, seed, say)
