"""Training a tuned network with Keras on stored feature maps (CPU, minutes)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ml.colour import ColourDescriptor
from ml.labels import OTHER
from ml.tuned.config import (
    CLASSIFIERS,
    NETWORK_VERSION,
    Progress,
    TuneConfig,
    class_indices,
    cut_layer,
)
from ml.tuned.feature_maps import top_model, weighted_layers
from ml.tuned.network import TunedNetwork
from ml.tuned.scoring import score_network
from ml.tuned.temperature import fit_temperatures


@dataclass
class TuneReport:
    """What ``train_network`` did."""

    seconds: float
    rows: int
    classes: dict[str, int] = field(default_factory=dict)
    epochs: list[dict[str, float]] = field(default_factory=list)
    validation: dict[str, float] = field(default_factory=dict)


def _encode(labels: Sequence[str | None], min_count: int) -> tuple[list[str], np.ndarray]:
    """The classes a classifier learns (rare labels merged into ``(other)``) and each row's class."""
    counts = Counter(lab for lab in labels if lab)
    common = sorted(lab for lab, n in counts.items() if n >= min_count)
    classes = common + ([OTHER] if len(common) < len(counts) else [])
    return classes, class_indices(classes, labels)


def train_network(
    backbone: Any,
    maps: np.ndarray,
    colours: np.ndarray,
    labels: Mapping[str, Sequence[str | None]],
    config: TuneConfig = TuneConfig(),  # noqa: B008 - a frozen dataclass, never mutated
    *,
    validation: tuple[np.ndarray, np.ndarray, Mapping[str, Sequence[str | None]]] | None = None,
    shoppers: tuple[np.ndarray, np.ndarray] | None = None,
    progress: Progress | None = None,
    say: Callable[[str], None] | None = None,
) -> tuple[TunedNetwork, TuneReport]:
    """Fine-tune the layers above the cut on feature maps [n, views, h, w, c] of the
    training photos, their colour descriptors [n, d] and their labels (``sub``, ``type``,
    ``colour``; None where unknown). ``validation`` (maps, colours, labels) is scored after
    every epoch. ``shoppers`` (maps [n, views, h, w, c], colour descriptors [n, views, d]):
    shopper-like views of the same photos, which ``config.shopper_share`` of the training
    rows take instead. Photos not given here are never seen."""
    # Longer than most functions here: the Keras model, the per-epoch snapshot and the epoch
    # callback share the model's state; the steps that do not are helpers below.
    import keras

    started = time.perf_counter()
    cut = cut_layer(backbone, config)
    maps = np.asarray(maps)
    colours = np.asarray(colours, np.float32)
    if maps.ndim != 5 or len(maps) != len(colours):
        raise ValueError("maps must be [n, views, h, w, c] with one colour descriptor per row")
    if len(maps) < 2:
        raise ValueError("need at least two photos to train on")
    if shoppers is not None and (
        len(shoppers[0]) != len(maps) or shoppers[0].shape[2:] != maps.shape[2:]
    ):
        raise ValueError("shopper views must be [n, views, h, w, c] like the maps, one per row")
    encoded = {name: _encode(labels[name], config.min_count) for name in CLASSIFIERS}
    for name, (classes, _) in encoded.items():
        if len(classes) < 2:
            raise ValueError(f"{name}: need at least two classes to learn")

    keras.utils.set_random_seed(config.seed)
    copy, top = top_model(backbone, cut)
    model = _classifier_model(top, maps.shape[2:], colours.shape[1], encoded, config)
    steps_per_epoch = max(1, len(maps) // config.batch_size)
    _compile(model, config, config.epochs * steps_per_epoch)
    report = TuneReport(
        seconds=0.0, rows=len(maps), classes={k: len(v[0]) for k, v in encoded.items()}
    )
    network_meta = _network_meta(backbone, cut, top, maps, colours, config)

    def snapshot() -> TunedNetwork:
        return TunedNetwork(
            {layer.name: layer.get_weights() for layer in weighted_layers(top)},
            {name: tuple(model.get_layer(name).get_weights()) for name in CLASSIFIERS},
            {name: encoded[name][0] for name in CLASSIFIERS},
            network_meta,
        )

    class Epochs(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            row = {"epoch": epoch + 1, "loss": round(float((logs or {}).get("loss", np.nan)), 4)}
            if validation is not None:
                row.update(score_network(snapshot(), backbone, *validation))
            report.epochs.append(row)
            if say:
                say(_epoch_line(row, config.epochs))
            if progress:
                progress(epoch + 1, config.epochs)

    targets = {name: y for name, (_, y) in encoded.items()}
    model.fit(
        _random_batches(maps, colours, targets, config, shoppers),
        steps_per_epoch=steps_per_epoch,
        epochs=config.epochs,
        shuffle=False,  # the batches are drawn at random already
        verbose=0,
        callbacks=[Epochs()],
    )
    network = snapshot()
    if report.epochs and validation is not None:
        report.validation = {
            k: v for k, v in report.epochs[-1].items() if k not in ("epoch", "loss")
        }
        network.meta["temperatures"] = fit_temperatures(network, backbone, *validation)
    report.seconds = time.perf_counter() - started
    network.meta["training"] = {
        "seconds": round(report.seconds, 1),
        "classes": report.classes,
        "validation": report.validation,
    }
    del copy
    return network, report


def _classifier_model(
    top: Any,
    map_shape: Sequence[int],
    colour_dim: int,
    encoded: Mapping[str, tuple[list[str], np.ndarray]],
    config: TuneConfig,
) -> Any:
    """The layers above the cut with the three classifiers on their unit-normalised pooled
    features (the colour classifier also sees the colour descriptor)."""
    import keras
    from keras import layers

    for layer in top.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False  # a few thousand photos must not move ImageNet's statistics
        elif config.precision == "bfloat16" and isinstance(layer, layers.DepthwiseConv2D):
            layer.trainable = False
        elif config.precision == "bfloat16" and isinstance(layer, layers.Conv2D):
            # float32 weights, bfloat16 arithmetic; the rest of the layers stay float32 (their
            # bfloat16 kernels are slower on a CPU than the casts around the convolutions)
            layer.dtype_policy = keras.DTypePolicy("mixed_bfloat16")
    maps_in = keras.Input(shape=tuple(map_shape), name="maps")
    colour_in = keras.Input(shape=(colour_dim,), name="colour_descriptor")
    features = layers.UnitNormalization(name="unit")(top(maps_in))
    scaled = layers.Dropout(config.dropout, name="dropout")(
        layers.Rescaling(config.scale, name="scale")(features)
    )
    colour_scaled = layers.Rescaling(config.scale, name="colour_scale")(colour_in)
    outputs = {
        "sub": layers.Dense(len(encoded["sub"][0]), name="sub")(scaled),
        "type": layers.Dense(len(encoded["type"][0]), name="type")(scaled),
        "colour": layers.Dense(len(encoded["colour"][0]), name="colour")(
            layers.Concatenate(name="with_colour")([scaled, colour_scaled])
        ),
    }
    return keras.Model([maps_in, colour_in], outputs)


def _compile(model: Any, config: TuneConfig, steps: int) -> None:
    """AdamW on a warm-up then cosine schedule, a smoothed loss that skips unlabelled rows."""
    import keras
    from keras import ops

    smoothing = config.label_smoothing

    def loss(y_true, logits):
        # Rows without a label (-1) contribute nothing; labels are smoothed.
        y = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        valid = ops.cast(y >= 0, "float32")
        n = ops.shape(logits)[1]
        target = ops.one_hot(ops.maximum(y, 0), n) * (1.0 - smoothing) + smoothing / ops.cast(
            n, "float32"
        )
        ce = -ops.sum(target * ops.log_softmax(logits, axis=1), axis=1)
        return ops.sum(ce * valid) / ops.maximum(ops.sum(valid), 1.0)

    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, steps, warmup_target=config.learning_rate, warmup_steps=max(1, steps // 20)
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay),
        loss={name: loss for name in CLASSIFIERS},
    )


def _random_batches(
    maps: np.ndarray,
    colours: np.ndarray,
    targets: Mapping[str, np.ndarray],
    config: TuneConfig,
    shoppers: tuple[np.ndarray, np.ndarray] | None = None,
) -> Iterator[tuple[tuple[np.ndarray, np.ndarray], dict[str, np.ndarray]]]:
    """Endless training batches: rows in random order, the photo or its mirror image at
    random (or, for ``config.shopper_share`` of the rows when ``shoppers`` are given, one of
    its shopper-like views with that view's colour descriptor), the maps shifted at random
    by up to ``config.shift`` cells."""
    rng = np.random.default_rng(config.seed)
    batch = min(config.batch_size, len(maps))
    while True:
        order = rng.permutation(len(maps))
        for start in range(0, len(order) - batch + 1, batch):
            rows = np.sort(order[start : start + batch])
            view = rng.integers(0, maps.shape[1], len(rows))
            x = maps[rows, view].astype(np.float32)
            c = colours[rows]
            if shoppers is not None:
                x, c = _with_shoppers(x, c, rows, shoppers, config.shopper_share, rng)
            if config.shift:
                dy, dx = rng.integers(-config.shift, config.shift + 1, 2)
                x = np.roll(x, (int(dy), int(dx)), axis=(1, 2))
            yield (x, c), {name: targets[name][rows] for name in CLASSIFIERS}


def _with_shoppers(
    x: np.ndarray,
    c: np.ndarray,
    rows: np.ndarray,
    shoppers: tuple[np.ndarray, np.ndarray],
    share: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """A batch's maps and colour descriptors (copies, changed in place) with ``share`` of
    its rows swapped for one of their shopper-like views."""
    maps, colours = shoppers
    pick = np.flatnonzero(rng.random(len(rows)) < share)
    if not len(pick):
        return x, c
    view = rng.integers(0, maps.shape[1], len(pick))
    x[pick] = maps[rows[pick], view].astype(np.float32)
    c[pick] = colours[rows[pick], view]
    return x, c


def _network_meta(
    backbone: Any, cut: str, top: Any, maps: np.ndarray, colours: np.ndarray, config: TuneConfig
) -> dict[str, Any]:
    """What a saved network records about how it was built."""
    return {
        "version": NETWORK_VERSION,
        "base_model_id": backbone.model_id,
        "backbone": backbone.name,
        "input_size": backbone.input_size,
        "cut": cut,
        "map_shape": list(maps.shape[2:]),
        "feature_dim": int(top.output.shape[-1]),
        "colour_dim": int(colours.shape[1]),
        "colour_model_id": ColourDescriptor().model_id,
        "config": config.as_dict(),
        "rows": int(len(maps)),
    }


def _epoch_line(row: Mapping[str, float], epochs: int) -> str:
    """One epoch's loss and validation accuracies, as the command line prints them."""
    figures = ", ".join(
        f"{k} {100 * v:.2f} %" for k, v in row.items() if k not in ("epoch", "loss")
    )
    return f"  epoch {int(row['epoch'])}/{epochs}: loss {row['loss']:.3f}" + (
        f"; {figures}" if figures else ""
    )
