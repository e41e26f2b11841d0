"""``flask model train`` and ``flask model calibrate``: photo search heads and the compare
threshold, trained on the cached embeddings of a model id and the catalogue's own labels."""

from __future__ import annotations

import tempfile
import time

import click
import numpy as np
from flask import Flask
from flask.cli import AppGroup


def register(model_cli: AppGroup, app: Flask) -> None:
    """Add the training commands to the ``model`` group."""

    @model_cli.command("train")
    @click.option("--model", "model_id", help="Model id (default: the served one).")
    @click.option("--epochs", default=40, show_default=True, type=click.IntRange(1, 500))
    @click.option(
        "--min-count",
        default=10,
        show_default=True,
        type=click.IntRange(2, 10_000),
        help="Classes with fewer examples are merged into '(other)'.",
    )
    @click.option(
        "--val-fraction", default=0.2, show_default=True, type=click.FloatRange(0.05, 0.5)
    )
    @click.option(
        "--target-precision",
        default=0.9,
        show_default=True,
        type=click.FloatRange(0.5, 0.999),
        help="Precision the compare threshold is calibrated to.",
    )
    @click.option("--seed", default=0, show_default=True, type=int)
    def train_command(
        model_id: str | None,
        epochs: int,
        min_count: int,
        val_fraction: float,
        target_precision: float,
        seed: int,
    ) -> None:
        """Train the photo search heads (sub-category, gender + type, colour) and calibrate
        the compare threshold on a model's embeddings; print validation accuracy and F1."""
        from ml.heads import TrainConfig, train_heads

        model_id, ids, vectors = _embeddings(model_id)
        labels = _labels(ids)
        click.echo(
            f"Training heads for {model_id} on {len(ids)} embedded products "
            f"({vectors.shape[1]}-d)..."
        )
        config = TrainConfig(epochs=epochs, seed=seed)
        with tempfile.TemporaryDirectory() as keras_dir:
            headset, report = train_heads(
                model_id,
                vectors,
                labels,
                min_count=min_count,
                val_fraction=val_fraction,
                config=config,
                keras_dir=keras_dir,
                progress=lambda name: click.echo(f"  training head '{name}'...", err=True),
            )
            folder = headset.save(_model_path(model_id) / "heads", keras_dir=keras_dir)
        click.echo(
            f"Validation ({report.train_rows} training / {report.val_rows} validation rows, "
            f"stratified; classes under {min_count} examples merged into '(other)'):"
        )
        click.echo(f"  {'head':<30} {'classes':>7} {'accuracy':>9} {'macro F1':>9} {'macro P':>8}")
        names = {
            "sub": "subCategory",
            "type": f"gender+articleType ({report.decoding})",
            "colour": "baseColour",
        }
        for name in ("sub", "type", "colour"):
            s = report.scores[name]
            click.echo(
                f"  {names[name]:<30} {s.classes:>7} {s.accuracy:>9.2%} {s.macro_f1:>9.2%} "
                f"{s.macro_precision:>8.2%}"
            )
        other = {d: s.accuracy for d, s in report.decoding_scores.items() if d != report.decoding}
        for decoding, accuracy in other.items():
            click.echo(f"  (gender+articleType decoded {decoding}: accuracy {accuracy:.2%})")
        click.echo(f"Heads saved to {folder} ({headset.version}) in {report.seconds:.0f} s.")
        _calibrate(model_id, ids, vectors, labels, target_precision, seed)

    @model_cli.command("calibrate")
    @click.option("--model", "model_id", help="Model id (default: the served one).")
    @click.option(
        "--target-precision", default=0.9, show_default=True, type=click.FloatRange(0.5, 0.999)
    )
    @click.option("--seed", default=0, show_default=True, type=int)
    def calibrate_command(model_id: str | None, target_precision: float, seed: int) -> None:
        """Calibrate the two-image compare threshold on catalogue pairs."""
        model_id, ids, vectors = _embeddings(model_id)
        _calibrate(model_id, ids, vectors, _labels(ids), target_precision, seed)


def _model_path(model_id: str):
    from webapp.similar.indexing import store_for

    return store_for(model_id).path


def _embeddings(model_id: str | None) -> tuple[str, np.ndarray, np.ndarray]:
    """The model id to train for and its stored (ids, vectors)."""
    from webapp.similar import indexing

    if model_id is None:
        try:
            model_id = indexing.neighbour_cache().active_model()
        except Exception as exc:  # noqa: BLE001 - Redis down: fall back to the configuration
            click.echo(f"Redis unavailable ({exc}); using the configured backbone.", err=True)
        if model_id is None:
            model_id = indexing.load_backbone().model_id
    try:
        ids, vectors = indexing.store_for(model_id).load()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    if len(ids) < 20:
        raise click.ClickException(
            f"Model {model_id} has {len(ids)} embedded products: embed the catalogue first "
            "(flask --app wsgi catalog embed --now)."
        )
    return model_id, ids, np.asarray(vectors, np.float32)


def _labels(ids: np.ndarray) -> dict[str, list[str | None]]:
    """Each head's label per embedded product, from the database (None where unknown)."""
    from webapp.similar.tuning import catalogue_labels

    return catalogue_labels(ids)


def _calibrate(model_id, ids, vectors, labels, target_precision: float, seed: int) -> None:
    """Calibrate and store the compare threshold; print how it was derived."""
    from ml.calibration import calibrate, save_calibration
    from webapp.similar.indexing import store_for

    started = time.perf_counter()
    keys = [
        f"{t}|{c}" if t and c else None
        for t, c in zip(labels["type"], labels["colour"], strict=True)
    ]
    rows = np.asarray([k is not None for k in keys])
    try:
        calibration = calibrate(
            model_id,
            vectors[rows],
            [k for k in keys if k is not None],
            target_precision=target_precision,
            seed=seed,
        )
    except ValueError as exc:
        raise click.ClickException(f"cannot calibrate the compare threshold: {exc}") from exc
    path = save_calibration(store_for(model_id).path.parent, calibration)
    click.echo(
        f"Compare threshold: score >= {calibration.threshold:.4f} (cosine >= "
        f"{2 * calibration.threshold - 1:.4f}), chosen for {target_precision:.0%} precision on "
        f"{calibration.pairs} catalogue pairs (half same articleType + gender + colour); on "
        f"{calibration.pairs} fresh pairs: precision {calibration.precision:.1%}, recall "
        f"{calibration.recall:.1%}. Saved to {path} ({time.perf_counter() - started:.1f} s)."
    )
