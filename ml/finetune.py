"""A catalogue-tuned backbone: the upper layers of an ImageNet backbone fine-tuned on the
catalogue's own labels, on a CPU, in minutes.

ImageNet features group photos by what ImageNet cares about. Heads trained on frozen features
plateau (gender + article type about 78 % on held-out photos): Flats and Heels, Tshirts and
Tops, Men's and Women's watches stay close together. Fine-tuning the layers that see the
whole product moves them apart, and what it learns is what shoppers mean by "similar".

How, without a GPU:

1. the backbone's lower layers stay frozen. Their output at a cut layer (the *feature maps*:
   20x20x40 for EfficientNet-Lite0 at 160 px) is computed once per catalogue photo and once
   for its mirror image, kept as half floats, and redone only for photos that change;
2. the layers above the cut are trained on those maps (BatchNorm statistics frozen, maps
   shifted at random by a cell, photo or mirror image at random) with three classifiers on
   the unit-normalised pooled features: sub-category, gender + article type, and base colour
   (which also sees the colour descriptor of ``ml.colour``);
3. the served embedding concatenates four unit-length parts, each scaled by the square root
   of its share of the cosine (``fusion``): the tuned backbone's pooled features (averaged
   over the photo and its mirror image), the square roots of the type classifier's
   probabilities (their cosine is the Bhattacharyya coefficient of two predictions: same
   kind of product), the colour descriptor, and the square roots of the colour
   classifier's probabilities;
4. the three classifiers are linear in the features and colour descriptor parts, so they
   are saved as photo-search heads (``ml.heads.HeadSet``) over the embedding: a photo
   search needs one forward pass.

The tuned network is stored as the weights of the layers above the cut plus the classifiers;
its model id is ``<base model id>.ft<digest of the weights>``. Training needs Keras; the
heads it writes are NumPy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .colour import ColourDescriptor
from .preprocess import ImageSource, iter_square_batches, load_image

logger = logging.getLogger(__name__)

NETWORK_VERSION = 1
OTHER = "(other)"
CLASSIFIERS = ("sub", "type", "colour")
# Where each backbone is cut: the layers above are trained, the ones below stay ImageNet's.
CUT_LAYERS = {
    # the end of the stride-8 stage: 20x20 maps at 160 px
    "efficientnet_lite0": "block4_add",
    "efficientnet_lite1": "block6_add",
    "efficientnet_lite2": "block6_add",
    "resnet50": "conv4_block6_out",
    "tiny": "conv1",
}
TUNED_MARK = ".ft"

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class TuneConfig:
    """Hyper-parameters of the fine-tuning (part of what the model id digests)."""

    epochs: int = 8
    batch_size: int = 128
    learning_rate: float = 5e-4
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    dropout: float = 0.3
    shift: int = 1  # maps are shifted at random by up to this many cells
    scale: float = 16.0  # logit scale on the unit-normalised features
    # Shares of the served embedding's cosine: features, type probabilities, colour
    # descriptor, colour probabilities (see the module docstring).
    fusion: tuple[float, float, float, float] = (0.3, 0.35, 0.15, 0.2)
    mirror: bool = True  # train on mirror images too; embed as the mean of both
    min_count: int = 10  # classes with fewer examples are merged into "(other)"
    cut: str | None = None  # None: the backbone's CUT_LAYERS entry
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")
        object.__setattr__(self, "fusion", tuple(float(w) for w in self.fusion))
        if (
            len(self.fusion) != 4
            or min(self.fusion) < 0
            or abs(sum(self.fusion) - 1.0) > 1e-6
            or self.fusion[0] == 0
            or self.fusion[2] == 0
        ):
            raise ValueError(
                "fusion needs four non-negative shares summing to 1, the features' and the "
                "colour descriptor's above 0"
            )
        if self.shift < 0 or self.min_count < 1:
            raise ValueError("shift must be >= 0 and min_count >= 1")

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return asdict(self)


def is_tuned_id(model_id: str) -> bool:
    """True for the id of a tuned network (``<base>.ft<digest>``)."""
    base, mark, digest = model_id.rpartition(TUNED_MARK)
    return (
        bool(base)
        and bool(mark)
        and len(digest) == 8
        and all(c in "0123456789abcdef" for c in digest)
    )


def base_model_id(model_id: str) -> str:
    """The backbone model id a tuned network was built on (the id itself when not tuned)."""
    return model_id.rpartition(TUNED_MARK)[0] if is_tuned_id(model_id) else model_id


def cut_layer(backbone: Any, config: TuneConfig = TuneConfig()) -> str:
    """The layer the backbone is cut at (a clear error for a backbone that has no such layer)."""
    name = config.cut or CUT_LAYERS.get(backbone.name)
    if name is None:
        raise ValueError(f"no cut layer known for backbone {backbone.name!r}")
    try:
        backbone.model.get_layer(name)
    except ValueError as exc:
        raise ValueError(f"backbone {backbone.model_id} has no layer {name!r}") from exc
    return name


# -- feature maps ----------------------------------------------------------------------------


class FeatureMaps:
    """The frozen lower part of a backbone: photos -> half-float feature maps at the cut."""

    def __init__(self, backbone: Any, cut: str, mirror: bool = True) -> None:
        import keras

        self.backbone = backbone
        self.cut = cut
        self.mirror = mirror
        self.views = 2 if mirror else 1
        # Shares the backbone's layers: inference only, nothing here is trained.
        self._model = keras.Model(backbone.model.input, backbone.model.get_layer(cut).output)
        self.shape = tuple(int(d) for d in self._model.output.shape[1:])
        self._lock = threading.Lock()

    @property
    def store_id(self) -> str:
        """Name of the store that keeps these maps for a catalogue."""
        return f"{self.backbone.model_id}.maps-{self.cut.replace('_', '-')}-v{self.views}"

    @property
    def row_size(self) -> int:
        """Numbers per photo: views x height x width x channels."""
        return int(self.views * np.prod(self.shape))

    def compute(self, images: Sequence[ImageSource], batch_size: int = 64) -> np.ndarray:
        """float16 [n, views * h * w * c]: the maps of each photo (and of its mirror image)."""
        parts = []
        for batch in iter_square_batches(images, self.backbone.input_size, batch_size):
            x = self.backbone.prepare(batch)
            views = [x, x[:, :, ::-1]] if self.mirror else [x]
            with self._lock:
                out = [np.asarray(self._model.predict_on_batch(v)) for v in views]
            parts.append(np.stack(out, axis=1).reshape(len(batch), -1).astype(np.float16))
        return np.concatenate(parts, axis=0)

    def unflatten(self, rows: np.ndarray) -> np.ndarray:
        """[n, views, h, w, c] view of flat map rows."""
        return np.asarray(rows).reshape(len(rows), self.views, *self.shape)


# -- the tuned network -----------------------------------------------------------------------


def _top_model(backbone: Any, cut: str) -> tuple[Any, Any]:
    """A trainable copy of the backbone (ImageNet weights) and its part above the cut."""
    import keras

    copy = keras.models.clone_model(backbone.model)
    copy.set_weights(backbone.model.get_weights())
    top = keras.Model(copy.get_layer(cut).output, copy.output)
    return copy, top


def _weighted_layers(model: Any) -> list[Any]:
    return [layer for layer in model.layers if layer.weights and layer.name != "maps"]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class TunedNetwork:
    """Fine-tuned weights above the cut, plus the three classifiers on the pooled features."""

    def __init__(
        self,
        top_weights: Mapping[str, Sequence[np.ndarray]],
        classifiers: Mapping[str, tuple[np.ndarray, np.ndarray]],
        classes: Mapping[str, Sequence[str]],
        meta: Mapping[str, Any],
    ) -> None:
        self.top_weights = {
            k: [np.asarray(a, np.float32) for a in v] for k, v in top_weights.items()
        }
        self.classifiers = {
            k: (np.asarray(w, np.float32), np.asarray(b, np.float32))
            for k, (w, b) in classifiers.items()
        }
        self.classes = {k: list(v) for k, v in classes.items()}
        self.meta = dict(meta)
        for name in CLASSIFIERS:
            if self.classifiers[name][0].shape[1] != len(self.classes[name]):
                raise ValueError(f"classifier {name!r}: weights and class names disagree")

    @property
    def config(self) -> TuneConfig:
        """The settings it was trained with."""
        return TuneConfig(**self.meta["config"])

    @property
    def digest(self) -> str:
        """Eight hex digits over every weight and class name: the model id's last part."""
        h = hashlib.sha256(self.meta["base_model_id"].encode())
        h.update(json.dumps(self.meta["config"], sort_keys=True).encode())
        for name in sorted(self.top_weights):
            h.update(name.encode())
            for array in self.top_weights[name]:
                h.update(np.ascontiguousarray(array).tobytes())
        for name in sorted(self.classifiers):
            h.update(json.dumps(self.classes[name]).encode())
            for array in self.classifiers[name]:
                h.update(np.ascontiguousarray(array).tobytes())
        return h.hexdigest()[:8]

    @property
    def model_id(self) -> str:
        """``<base model id>.ft<digest>``."""
        return f"{self.meta['base_model_id']}{TUNED_MARK}{self.digest}"

    # -- as photo-search heads ---------------------------------------------------------------

    def headset(self, type_to_sub: Mapping[str, str]) -> Any:
        """The classifiers as linear heads over the served embedding (``HeadSet``)."""
        from .heads import Head, HeadSet

        config = self.config
        features, _, colour, _ = self.slices()
        dim = self.dim
        # The embedding holds sqrt(share) * each part; the classifiers were trained on
        # scale * features (and scale * colour descriptor): fold both factors in.
        f_factor = config.scale / np.sqrt(config.fusion[0])
        c_factor = config.scale / np.sqrt(config.fusion[2])
        feature_dim = features.stop - features.start
        # Each classifier's calibrated temperature (fitted on rows it did not learn from, see
        # ``fit_temperature``) divides its logits, so a confidence reads as a probability of
        # being right; 1 where none was fitted.
        temperatures = self.meta.get("temperatures", {})
        heads = {}
        for name in CLASSIFIERS:
            w, b = self.classifiers[name]
            t = float(temperatures.get(name, 1.0))
            full = np.zeros((dim, w.shape[1]), np.float32)
            full[features] = f_factor * w[:feature_dim] / t
            if name == "colour":
                full[colour] = c_factor * w[feature_dim:] / t
            heads[name] = Head(
                name,
                self.classes[name],
                {
                    "mean": np.zeros(dim, np.float32),
                    "scale": np.ones(dim, np.float32),
                    "w2": full,
                    "b2": (b / t).astype(np.float32),
                },
            )
        return HeadSet(
            model_id=self.model_id,
            heads=heads,
            decoding="joint",
            type_to_sub=dict(type_to_sub),
            meta={
                "network": self.model_id,
                "validation": self.meta.get("validation", {}),
                "temperatures": temperatures,
            },
        )

    def slices(self) -> tuple[slice, slice, slice, slice]:
        """Where the four parts sit in the embedding: features, type probabilities, colour
        descriptor, colour probabilities."""
        sizes = [
            int(self.meta["feature_dim"]),
            len(self.classes["type"]),
            int(self.meta["colour_dim"]),
            len(self.classes["colour"]),
        ]
        ends = np.cumsum(sizes).tolist()
        starts = [0, *ends[:-1]]
        return tuple(slice(a, b) for a, b in zip(starts, ends, strict=True))  # type: ignore[return-value]

    @property
    def dim(self) -> int:
        """Length of the served embedding."""
        return self.slices()[-1].stop

    def fuse(self, features: np.ndarray, colours: np.ndarray) -> np.ndarray:
        """The served embedding from unit pooled features [n, f] and colour descriptors."""
        config = self.config
        features = np.asarray(features, np.float32)
        colours = np.asarray(colours, np.float32)
        scaled = config.scale * features
        probabilities = {}
        for name, x in (
            ("type", scaled),
            ("colour", np.concatenate([scaled, config.scale * colours], axis=1)),
        ):
            w, b = self.classifiers[name]
            logits = x @ w + b
            logits -= logits.max(axis=1, keepdims=True)
            e = np.exp(logits)
            probabilities[name] = e / e.sum(axis=1, keepdims=True)
        parts = (
            features,
            np.sqrt(probabilities["type"]),
            colours,
            np.sqrt(probabilities["colour"]),
        )
        return np.concatenate(
            [np.sqrt(w) * p for w, p in zip(config.fusion, parts, strict=True)], axis=1
        ).astype(np.float32)

    # -- storage -----------------------------------------------------------------------------

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``weights.npz`` and ``meta.json`` into ``folder`` (renamed into place)."""
        from .folders import replace_folder

        def fill(tmp: Path) -> None:
            arrays = {}
            for name, values in self.top_weights.items():
                for i, a in enumerate(values):
                    arrays[f"top/{name}/{i}"] = a
            for name, (w, b) in self.classifiers.items():
                arrays[f"classifier/{name}/w"] = w
                arrays[f"classifier/{name}/b"] = b
            np.savez(tmp / "weights.npz", **arrays)
            meta = {
                **self.meta,
                "classes": self.classes,
                "model_id": self.model_id,
                "saved_at": time.time(),
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))

        return replace_folder(folder, fill)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> TunedNetwork:
        """Read a network written by ``save`` (FileNotFoundError when there is none)."""
        folder = Path(folder)
        meta = json.loads((folder / "meta.json").read_text())
        top: dict[str, list[tuple[int, np.ndarray]]] = {}
        classifiers: dict[str, dict[str, np.ndarray]] = {}
        with np.load(folder / "weights.npz") as data:
            for key in data.files:
                kind, name, part = key.split("/")
                if kind == "top":
                    top.setdefault(name, []).append((int(part), data[key]))
                else:
                    classifiers.setdefault(name, {})[part] = data[key]
        classes = meta.pop("classes")
        saved_id = meta.pop("model_id", None)
        meta.pop("saved_at", None)
        network = cls(
            {k: [a for _, a in sorted(v, key=lambda t: t[0])] for k, v in top.items()},
            {k: (v["w"], v["b"]) for k, v in classifiers.items()},
            classes,
            meta,
        )
        if saved_id is not None and saved_id != network.model_id:
            raise ValueError(f"{folder}: the weights do not give the model id {saved_id}")
        return network

    def backbone(self, base: Any) -> TunedBackbone:
        """The served embedder: ``base`` (which must be the backbone it was trained on) with
        the tuned weights above the cut."""
        if base.model_id != self.meta["base_model_id"]:
            raise ValueError(
                f"{self.model_id} was tuned from {self.meta['base_model_id']}, not {base.model_id}"
            )
        return TunedBackbone(self, base)


class TunedBackbone:
    """Photos -> the tuned embedding: ``embed(images) -> float32 [n, dim]``, unit rows."""

    def __init__(self, network: TunedNetwork, base: Any) -> None:
        self.network = network
        self.base = base
        self.name = base.name
        self.input_size = base.input_size
        self.model_id = network.model_id
        self.config = network.config
        self.cut = network.meta["cut"]
        self.dim = network.dim
        self._colour = ColourDescriptor()
        if self._colour.model_id != network.meta["colour_model_id"]:
            raise ValueError(
                f"{self.model_id} was trained with colour descriptor "
                f"{network.meta['colour_model_id']}, this code has {self._colour.model_id}"
            )
        self.model, self.top = _top_model(base, self.cut)
        layers = {layer.name: layer for layer in _weighted_layers(self.top)}
        missing = set(network.top_weights) ^ set(layers)
        if missing:
            raise ValueError(f"tuned weights do not fit the backbone: {sorted(missing)[:5]}")
        for name, arrays in network.top_weights.items():
            layers[name].set_weights(arrays)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TunedBackbone({self.model_id!r}, dim={self.dim})"

    def _features(self, model: Any, views: list[np.ndarray]) -> np.ndarray:
        # One call for both views: a photo search embeds one photo, and a batch of two costs
        # far less than two calls.
        n = len(views[0])
        with self._lock:
            pooled = np.asarray(model.predict_on_batch(np.concatenate(views)), np.float32)
        return _unit(pooled.reshape(len(views), n, -1).sum(axis=0))

    def embed(self, images: Sequence[ImageSource] | np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Embed photos (paths, bytes, PIL images or uint8 [n,h,w,3]) as unit rows."""
        if isinstance(images, np.ndarray):
            pictures: list[Any] = list(images) if images.ndim == 4 else [images]
        else:
            if isinstance(images, str | bytes | os.PathLike):
                raise ValueError("expected a sequence of images; wrap a single image in a list")
            pictures = [load_image(img) for img in images]
        if not pictures:
            raise ValueError("no images given: the sequence is empty")
        parts = []
        for start in range(0, len(pictures), batch_size):
            chunk = pictures[start : start + batch_size]
            batch = next(iter_square_batches(chunk, self.input_size, len(chunk)))
            x = self.base.prepare(batch)
            views = [x, x[:, :, ::-1]] if self.config.mirror else [x]
            features = self._features(self.model, views)
            parts.append(self.network.fuse(features, self._colour.describe(chunk)))
        return np.concatenate(parts, axis=0)

    def embed_maps(
        self, maps: np.ndarray, colours: np.ndarray, batch_size: int = 256
    ) -> np.ndarray:
        """The same embedding from stored feature maps [n, views, h, w, c] and colour
        descriptors [n, d] (no photo decoding, no frozen layers: fast for a whole catalogue)."""
        out = []
        for start in range(0, len(maps), batch_size):
            m = np.asarray(maps[start : start + batch_size], np.float32)
            features = self._features(self.top, [m[:, v] for v in range(m.shape[1])])
            out.append(self.network.fuse(features, colours[start : start + batch_size]))
        return np.concatenate(out, axis=0) if out else np.empty((0, self.dim), np.float32)


# -- training --------------------------------------------------------------------------------


@dataclass
class TuneReport:
    """What ``train_network`` did."""

    seconds: float
    rows: int
    classes: dict[str, int] = field(default_factory=dict)
    epochs: list[dict[str, float]] = field(default_factory=list)
    validation: dict[str, float] = field(default_factory=dict)


def _class_indices(classes: Sequence[str], labels: Sequence[str | None]) -> np.ndarray:
    """Each label's class index: a rare label goes to ``(other)`` when there is one; -1 for
    no label, or for one the classifier cannot name."""
    index = {c: i for i, c in enumerate(classes)}
    other = index.get(OTHER, -1)
    return np.asarray([index.get(lab, other) if lab else -1 for lab in labels], np.int64)


def _encode(labels: Sequence[str | None], min_count: int) -> tuple[list[str], np.ndarray]:
    counts = Counter(lab for lab in labels if lab)
    common = sorted(lab for lab, n in counts.items() if n >= min_count)
    classes = common + ([OTHER] if len(common) < len(counts) else [])
    return classes, _class_indices(classes, labels)


def train_network(
    backbone: Any,
    maps: np.ndarray,
    colours: np.ndarray,
    labels: Mapping[str, Sequence[str | None]],
    config: TuneConfig = TuneConfig(),
    *,
    validation: tuple[np.ndarray, np.ndarray, Mapping[str, Sequence[str | None]]] | None = None,
    progress: Progress | None = None,
    say: Callable[[str], None] | None = None,
) -> tuple[TunedNetwork, TuneReport]:
    """Fine-tune the layers above the cut on feature maps [n, views, h, w, c] of the
    training photos, their colour descriptors [n, d] and their labels (``sub``, ``type``,
    ``colour``; None where unknown). ``validation`` (maps, colours, labels) is scored after
    every epoch. Photos not given here are never seen."""
    import keras
    from keras import layers, ops

    started = time.perf_counter()
    cut = cut_layer(backbone, config)
    maps = np.asarray(maps)
    colours = np.asarray(colours, np.float32)
    if maps.ndim != 5 or len(maps) != len(colours):
        raise ValueError("maps must be [n, views, h, w, c] with one colour descriptor per row")
    if len(maps) < 2:
        raise ValueError("need at least two photos to train on")
    encoded = {name: _encode(labels[name], config.min_count) for name in CLASSIFIERS}
    for name, (classes, _) in encoded.items():
        if len(classes) < 2:
            raise ValueError(f"{name}: need at least two classes to learn")

    keras.utils.set_random_seed(config.seed)
    copy, top = _top_model(backbone, cut)
    for layer in top.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False  # a few thousand photos must not move ImageNet's statistics
    maps_in = keras.Input(shape=maps.shape[2:], name="maps")
    colour_in = keras.Input(shape=(colours.shape[1],), name="colour_descriptor")
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
    model = keras.Model([maps_in, colour_in], outputs)
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

    steps_per_epoch = max(1, len(maps) // config.batch_size)
    steps = config.epochs * steps_per_epoch
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, steps, warmup_target=config.learning_rate, warmup_steps=max(1, steps // 20)
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay),
        loss={name: loss for name in CLASSIFIERS},
    )
    targets = {name: y for name, (_, y) in encoded.items()}
    rng = np.random.default_rng(config.seed)
    batch = min(config.batch_size, len(maps))

    def batches():
        while True:
            order = rng.permutation(len(maps))
            for start in range(0, len(order) - batch + 1, batch):
                rows = np.sort(order[start : start + batch])
                view = rng.integers(0, maps.shape[1], len(rows))
                x = maps[rows, view].astype(np.float32)
                if config.shift:
                    dy, dx = rng.integers(-config.shift, config.shift + 1, 2)
                    x = np.roll(x, (int(dy), int(dx)), axis=(1, 2))
                yield (x, colours[rows]), {name: targets[name][rows] for name in CLASSIFIERS}

    report = TuneReport(
        seconds=0.0, rows=len(maps), classes={k: len(v[0]) for k, v in encoded.items()}
    )
    network_meta = {
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

    def snapshot() -> TunedNetwork:
        return TunedNetwork(
            {layer.name: layer.get_weights() for layer in _weighted_layers(top)},
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
                figures = ", ".join(
                    f"{k} {100 * v:.2f} %" for k, v in row.items() if k not in ("epoch", "loss")
                )
                say(
                    f"  epoch {epoch + 1}/{config.epochs}: loss {row['loss']:.3f}"
                    + (f"; {figures}" if figures else "")
                )
            if progress:
                progress(epoch + 1, config.epochs)

    model.fit(
        batches(),
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
        network.meta["temperatures"] = calibrate(network, backbone, *validation)
    report.seconds = time.perf_counter() - started
    network.meta["training"] = {
        "seconds": round(report.seconds, 1),
        "classes": report.classes,
        "validation": report.validation,
    }
    del copy
    return network, report


def _probabilities(
    network: TunedNetwork, base: Any, maps: np.ndarray, colours: np.ndarray
) -> dict[str, np.ndarray]:
    """Each classifier's own probabilities (as served: mirror-averaged, no temperature) for
    stored maps [n, views, h, w, c]."""
    vectors = TunedBackbone(network, base).embed_maps(maps, colours)
    raw = TunedNetwork(
        network.top_weights,
        network.classifiers,
        network.classes,
        {k: v for k, v in network.meta.items() if k != "temperatures"},
    ).headset({})
    return {name: raw.heads[name].predict(vectors) for name in CLASSIFIERS}


def score_network(
    network: TunedNetwork,
    base: Any,
    maps: np.ndarray,
    colours: np.ndarray,
    labels: Mapping[str, Sequence[str | None]],
) -> dict[str, float]:
    """Accuracy of each classifier (as served: mirror-averaged, as heads) on labelled maps."""
    out = {}
    for name, probs in _probabilities(network, base, maps, colours).items():
        predicted = np.asarray(network.classes[name], dtype=object)[probs.argmax(axis=1)]
        truth = np.asarray([lab if lab else None for lab in labels[name]], dtype=object)
        known = np.asarray([t is not None for t in truth])
        out[name] = (
            float(np.mean(predicted[known] == truth[known])) if known.any() else float("nan")
        )
    return out


def fit_temperature(log_probs: np.ndarray, y: np.ndarray) -> float:
    """The temperature T minimising the negative log-likelihood of softmax(log_probs / T)
    on labelled rows (``y`` class indices; -1 rows are left out); 1 when none is labelled.

    Label smoothing trains a classifier towards 0.9 rather than 1 for the right class, so
    its raw confidences run low; photo search narrows only when a confidence reaches a
    threshold, which then means something only once the confidences are calibrated."""
    log_probs = np.asarray(log_probs, np.float64)
    y = np.asarray(y, np.int64)
    known = y >= 0
    if not known.any():
        return 1.0
    z, y = log_probs[known], y[known]
    z = z - z.max(axis=1, keepdims=True)  # each row's largest is 0, so is it in z / t

    def nll(t: float) -> float:
        s = z / t
        return float(np.mean(np.log(np.exp(s).sum(axis=1)) - s[np.arange(len(y)), y]))

    # A coarse grid in log T, then golden-section search around its best point.
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 61))
    best = int(np.argmin([nll(t) for t in grid]))
    lo, hi = np.log(grid[max(best - 1, 0)]), np.log(grid[min(best + 1, len(grid) - 1)])
    ratio = (np.sqrt(5.0) - 1) / 2
    for _ in range(40):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if nll(float(np.exp(a))) < nll(float(np.exp(b))):
            hi = b
        else:
            lo = a
    return round(float(np.exp((lo + hi) / 2)), 4)


def calibrate(
    network: TunedNetwork,
    base: Any,
    maps: np.ndarray,
    colours: np.ndarray,
    labels: Mapping[str, Sequence[str | None]],
) -> dict[str, float]:
    """Each classifier's temperature, fitted on labelled maps it was not trained on."""
    return {
        name: fit_temperature(
            np.log(np.maximum(probs, 1e-30)), _class_indices(network.classes[name], labels[name])
        )
        for name, probs in _probabilities(network, base, maps, colours).items()
    }
