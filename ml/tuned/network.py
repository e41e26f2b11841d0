"""The tuned network (weights above the cut plus three classifiers) and the embedder built
from it: photos, or stored feature maps, to the served embedding."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ml import runtime
from ml.colour import ColourDescriptor
from ml.folders import replace_folder
from ml.heads import Head, HeadSet
from ml.preprocess import ImageSource, iter_square_batches, load_image
from ml.tuned.config import CLASSIFIERS, TUNED_MARK, TuneConfig
from ml.tuned.feature_maps import FeatureMaps, top_model, weighted_layers

# An uploaded photo is embedded over more views than a catalogue photo's two: the feature
# maps at the cut of the photo and of its mirror image, each also moved by one cell down and
# right (a shift that training draws too). Averaged over these four views the classifiers
# answer better (README, "The published protocol"), for a few milliseconds more a search;
# more views measured no better on the held-back products. Catalogue photos keep two views:
# re-embedding a whole catalogue over four would take twice as long.
QUERY_SHIFTS = ((0, 0), (1, 1))


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

    def __init__(self, network: TunedNetwork, base: Any, keep_exports: bool = True) -> None:
        self.network = network
        self.base = base
        # Whether the runtime's exports of this network are cached in the model folder: not
        # for the networks a training run scores after each epoch and then drops.
        self._export_dir = base.cache_dir if keep_exports else None
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
        self.model, self.top = top_model(base, self.cut)
        layers = {layer.name: layer for layer in weighted_layers(self.top)}
        missing = set(network.top_weights) ^ set(layers)
        if missing:
            raise ValueError(f"tuned weights do not fit the backbone: {sorted(missing)[:5]}")
        for name, arrays in network.top_weights.items():
            layers[name].set_weights(arrays)
        self._to_cut: FeatureMaps | None = None  # built on the first uploaded photo

    def __repr__(self) -> str:
        return f"TunedBackbone({self.model_id!r}, dim={self.dim})"

    def _shifted_features(self, maps: np.ndarray, shifts: Sequence[tuple[int, int]]) -> np.ndarray:
        """Unit features of maps [n, views, h, w, c], averaged over every view moved by each
        of ``shifts`` (rows, columns; the maps wrap around, as in training)."""
        views = [
            np.roll(maps[:, v], shift, axis=(1, 2)) if any(shift) else maps[:, v]
            for v in range(maps.shape[1])
            for shift in shifts
        ]
        return self._features("top", views)

    def _features(self, part: str, views: list[np.ndarray]) -> np.ndarray:
        # One call for both views: a photo search embeds one photo, and a batch of two costs
        # far less than two calls. ``part``: "embed" (photos) or "top" (feature maps).
        model = self.model if part == "embed" else self.top
        run = runtime.runner(model, f"{self.model_id}-{part}", self._export_dir)
        n = len(views[0])
        pooled = np.asarray(run(np.concatenate(views)), np.float32)
        return _unit(pooled.reshape(len(views), n, -1).sum(axis=0))

    def embed(self, images: Sequence[ImageSource] | np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Embed photos (paths, bytes, PIL images or uint8 [n,h,w,3]) as unit rows, as the
        catalogue's photos are embedded (the photo and its mirror image)."""
        return self._embed(images, batch_size, query=False)

    def embed_query(
        self, images: Sequence[ImageSource] | np.ndarray, batch_size: int = 64
    ) -> np.ndarray:
        """Embed uploaded photos as photo search does: over ``QUERY_SHIFTS`` of the maps of
        the photo and of its mirror image."""
        return self._embed(images, batch_size, query=True)

    def _embed(
        self, images: Sequence[ImageSource] | np.ndarray, batch_size: int, query: bool
    ) -> np.ndarray:
        if isinstance(images, np.ndarray):
            pictures: list[Any] = list(images) if images.ndim == 4 else [images]
            coloured = pictures
        else:
            if isinstance(images, str | bytes | os.PathLike):
                raise ValueError("expected a sequence of images; wrap a single image in a list")
            sources = list(images)
            pictures = [load_image(img) for img in sources]
            # The network sees a transparent background laid on white, as catalogue photos
            # are; the colour descriptor reads the transparency as the product's mask (a
            # shopper's photo after ``ml.foreground.prepare_query``) instead of guessing the
            # background from the border of the photo laid on white.
            coloured = [
                src if _has_alpha(src) else pic for src, pic in zip(sources, pictures, strict=True)
            ]
        if not pictures:
            raise ValueError("no images given: the sequence is empty")
        parts = []
        for start in range(0, len(pictures), batch_size):
            chunk = pictures[start : start + batch_size]
            batch = next(iter_square_batches(chunk, self.input_size, len(chunk)))
            x = self.base.prepare(batch)
            if query:
                maps = self._maps_below_cut().of_prepared(x)
                features = self._shifted_features(maps, QUERY_SHIFTS)
            else:
                views = [x, x[:, :, ::-1]] if self.config.mirror else [x]
                features = self._features("embed", views)
            colours = self._colour.describe(coloured[start : start + batch_size])
            parts.append(self.network.fuse(features, colours))
        return np.concatenate(parts, axis=0)

    def _maps_below_cut(self) -> FeatureMaps:
        if self._to_cut is None:
            self._to_cut = FeatureMaps(self.base, self.cut, self.config.mirror)
        return self._to_cut

    def embed_maps(
        self, maps: np.ndarray, colours: np.ndarray, batch_size: int = 256, query: bool = False
    ) -> np.ndarray:
        """The same embedding from stored feature maps [n, views, h, w, c] and colour
        descriptors [n, d] (no photo decoding, no frozen layers: fast for a whole catalogue);
        ``query``: as ``embed_query`` embeds those photos."""
        shifts = QUERY_SHIFTS if query else ((0, 0),)
        out = []
        for start in range(0, len(maps), batch_size):
            m = np.asarray(maps[start : start + batch_size], np.float32)
            features = self._shifted_features(m, shifts)
            out.append(self.network.fuse(features, colours[start : start + batch_size]))
        return np.concatenate(out, axis=0) if out else np.empty((0, self.dim), np.float32)


def _has_alpha(image: Any) -> bool:
    """Whether a photo given to ``embed`` is a PIL image with a transparency channel."""
    return isinstance(image, Image.Image) and image.mode in ("RGBA", "LA", "PA")
