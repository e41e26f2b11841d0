"""Tuning's training precision: bfloat16 convolutions on CPUs with matrix tiles, float32
elsewhere, and what each trains."""

from __future__ import annotations

import numpy as np
import pytest

from ml.backbones import get_backbone
from ml.colour import ColourDescriptor
from ml.tuned import config as tuned_config
from ml.tuned.config import TuneConfig, training_precision
from ml.tuned.feature_maps import FeatureMaps
from ml.tuned.training import train_network

CUT = "block14_add"  # the last blocks of EfficientNet-Lite0: 1x1 and depthwise convolutions


def test_auto_follows_the_cpu(monkeypatch):
    monkeypatch.setattr(tuned_config, "bfloat16_tiles", lambda: True)
    assert training_precision("auto") == "bfloat16"
    assert training_precision(None) == "bfloat16"
    assert training_precision(" Float32 ") == "float32"
    monkeypatch.setattr(tuned_config, "bfloat16_tiles", lambda: False)
    assert training_precision("auto") == "float32"
    assert training_precision("bfloat16") == "bfloat16"
    with pytest.raises(ValueError, match="precision must be auto or one of"):
        training_precision("float16")


def test_precision_is_checked_and_recorded_only_when_not_float32():
    with pytest.raises(ValueError, match="precision must be one of"):
        TuneConfig(precision="int8")
    assert "precision" not in TuneConfig().as_dict()
    assert TuneConfig(precision="bfloat16").as_dict()["precision"] == "bfloat16"
    assert TuneConfig(**TuneConfig(precision="bfloat16").as_dict()).precision == "bfloat16"


def test_cpu_flags_are_read_without_failing():
    assert isinstance(tuned_config.bfloat16_tiles(), bool)


@pytest.fixture(scope="module")
def lite():
    """EfficientNet-Lite0 with random weights at 64 px, its top blocks' maps of 24 photos."""
    backbone = get_backbone("efficientnet_lite0", input_size=64, weights="random")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (80, 60, 3), np.uint8) for _ in range(24)]
    labels = {
        "sub": ["Topwear", "Bottomwear"] * 12,
        "type": ["Men|Shirts", "Women|Jeans", "Men|Tshirts"] * 8,
        "colour": ["Red", "Blue", "Green", "Black"] * 6,
    }
    fm = FeatureMaps(backbone, CUT, mirror=True)
    maps = fm.unflatten(fm.compute(images))
    return backbone, maps, ColourDescriptor().describe(images), labels


def _trained(lite, precision):
    backbone, maps, colours, labels = lite
    config = TuneConfig(
        epochs=2, batch_size=8, min_count=2, learning_rate=1e-2, cut=CUT, precision=precision
    )
    network, _ = train_network(backbone, maps, colours, labels, config)
    original = {layer.name: layer for layer in backbone.model.layers}
    changed = {}
    for name, weights in network.top_weights.items():
        kind = type(original[name]).__name__
        moved = any(
            not np.array_equal(a, b)
            for a, b in zip(weights, original[name].get_weights(), strict=True)
        )
        changed.setdefault(kind, set()).add(moved)
    return network, changed


@pytest.mark.parametrize("precision", ["bfloat16", "float32"])
def test_bfloat16_keeps_depthwise_kernels_and_trains_the_rest(lite, precision):
    network, changed = _trained(lite, precision)
    assert changed["Conv2D"] == {True}  # every 1x1 convolution learned
    assert changed["BatchNormalization"] == {False}  # ImageNet's statistics stay
    assert changed["DepthwiseConv2D"] == ({False} if precision == "bfloat16" else {True})
    assert network.config.precision == precision
    # the served network computes in float32 whichever precision trained it
    backbone, maps, colours, _ = lite
    served = network.backbone(backbone)
    assert {layer.dtype_policy.name for layer in served.top.layers} == {"float32"}
    vectors = served.embed_maps(maps[:4], colours[:4])
    assert vectors.dtype == np.float32 and np.all(np.isfinite(vectors))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
