"""Acceptance of the EfficientNet-Lite0 port: exact against a NumPy forward pass, and right on
real catalogue photos, while the same network with shuffled weights is not.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml.backbones import get_backbone
from ml.efficientnet_lite import checkpoint_path
from ml.imagenet import Classifier, class_names
from ml.preprocess import batch_to_square
from ml.torch_checkpoint import load_legacy_checkpoint
from tests.conftest import REFERENCE_CATALOG

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]

CATALOG = REFERENCE_CATALOG

# ImageNet-1k labels that really name each catalogue kind. ImageNet has no "wristwatch"
# class: analog wristwatches are labelled with the clock classes, so the timepieces count
# for watches. Look-alikes that are other things are left out on purpose: "magnetic compass"
# and "barometer" (round dials), "loupe" (for sunglasses), "clog" (for sandals),
# "miniskirt" (for jeans).
MATCHING_LABELS: dict[str, set[str]] = {
    "Watches": {"analog clock", "digital watch", "digital clock", "wall clock", "stopwatch"},
    "Sunglasses": {"sunglass", "sunglasses"},
    "Backpacks": {"backpack"},
    "Sandals": {"sandal"},
    "Jeans": {"jean"},
}
PER_KIND = 20


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("converted-weights")


@pytest.fixture(scope="module")
def catalogue_photos() -> dict[str, list[Path]]:
    """The first 20 photos of each kind, in styles.csv file order."""
    styles = CATALOG / "styles.csv"
    if not styles.is_file():
        pytest.skip(
            f"catalogue not found at {CATALOG} (set SHOP_TEST_CATALOG_PATH to the fashion-small folder)"
        )
    picked: dict[str, list[Path]] = {kind: [] for kind in MATCHING_LABELS}
    with styles.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            kind = row["articleType"]
            path = CATALOG / "images" / f"{row['id']}.jpg"
            if kind in picked and len(picked[kind]) < PER_KIND and path.is_file():
                picked[kind].append(path)
    for kind, paths in picked.items():
        assert len(paths) == PER_KIND, f"only {len(paths)} photos of {kind} in the catalogue"
    return picked


def hit_rates(classifier: Classifier, photos: dict[str, list[Path]]) -> dict[str, float]:
    """Share of photos per kind with a matching label among the top 5."""
    rates = {}
    for kind, paths in photos.items():
        top5 = classifier.top_k(paths, k=5)
        hits = [bool({name for name, _ in labels} & MATCHING_LABELS[kind]) for labels in top5]
        rates[kind] = sum(hits) / len(hits)
    return rates


def test_matching_labels_exist_in_the_class_list():
    names = set(class_names())
    for labels in MATCHING_LABELS.values():
        assert labels <= names


def test_converted_model_labels_catalogue_photos(catalogue_photos, cache_dir):
    rates = hit_rates(Classifier(cache_dir=cache_dir), catalogue_photos)
    overall = float(np.mean(list(rates.values())))
    report = ", ".join(f"{kind} {rate:.0%}" for kind, rate in rates.items())
    print(f"\nreal weights: top-5 hit rate {overall:.0%} ({report})")
    assert overall >= 0.70, report
    assert min(rates.values()) >= 0.50, report


def test_shuffled_weights_do_not_label_catalogue_photos(catalogue_photos, cache_dir):
    rates = hit_rates(Classifier(weights="shuffled", cache_dir=cache_dir), catalogue_photos)
    overall = float(np.mean(list(rates.values())))
    report = ", ".join(f"{kind} {rate:.0%}" for kind, rate in rates.items())
    print(f"\nshuffled weights: top-5 hit rate {overall:.0%} ({report})")
    assert overall < 0.10, report


# --- an independent NumPy forward pass, written from the torch layout -----------------------

# Stride-2 blocks of EfficientNet-Lite0 (the stem is stride 2 as well); see the models README.
STRIDE_2_BLOCKS = {1, 3, 5, 11}


def _same_pad(x: np.ndarray, k: int, s: int) -> tuple[np.ndarray, int, int]:
    """TF "SAME" padding of an HWC array: extra row/column goes after."""
    h, w = x.shape[:2]
    out_h, out_w = -(-h // s), -(-w // s)
    ph = max((out_h - 1) * s + k - h, 0)
    pw = max((out_w - 1) * s + k - w, 0)
    padded = np.pad(x, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    return padded, out_h, out_w


def _conv(x: np.ndarray, w: np.ndarray, s: int) -> np.ndarray:
    """Dense conv with a torch (out, in, kh, kw) kernel."""
    k = w.shape[2]
    xp, oh, ow = _same_pad(x, k, s)
    out = np.zeros((oh, ow, w.shape[0]))
    for i in range(k):
        for j in range(k):
            out += xp[i : i + s * oh : s, j : j + s * ow : s, :] @ w[:, :, i, j].T
    return out


def _depthwise(x: np.ndarray, w: np.ndarray, s: int) -> np.ndarray:
    """Depthwise conv with a torch (channels, 1, kh, kw) kernel."""
    k = w.shape[2]
    xp, oh, ow = _same_pad(x, k, s)
    out = np.zeros((oh, ow, w.shape[0]))
    for i in range(k):
        for j in range(k):
            out += xp[i : i + s * oh : s, j : j + s * ow : s, :] * w[:, 0, i, j]
    return out


def _bn(x: np.ndarray, sd: dict, prefix: str) -> np.ndarray:
    g, b = sd[f"{prefix}.weight"], sd[f"{prefix}.bias"]
    m, v = sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"]
    return (x - m) / np.sqrt(v + 1e-3) * g + b


def _relu6(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 6.0)


def numpy_forward(image: np.ndarray, sd: dict) -> tuple[np.ndarray, np.ndarray]:
    """(feature map after head conv+BN+ReLU6, logits) for one uint8 HWC image."""
    x = (image.astype(np.float64) - 127.0) / 128.0
    x = _relu6(_bn(_conv(x, sd["_conv_stem.weight"], 2), sd, "_bn0"))
    for i in range(16):
        p = f"_blocks.{i}"
        inputs = x
        if f"{p}._expand_conv.weight" in sd:
            x = _relu6(_bn(_conv(x, sd[f"{p}._expand_conv.weight"], 1), sd, f"{p}._bn0"))
        stride = 2 if i in STRIDE_2_BLOCKS else 1
        x = _relu6(_bn(_depthwise(x, sd[f"{p}._depthwise_conv.weight"], stride), sd, f"{p}._bn1"))
        x = _bn(_conv(x, sd[f"{p}._project_conv.weight"], 1), sd, f"{p}._bn2")
        if x.shape == inputs.shape:
            x = x + inputs
    features = _relu6(_bn(_conv(x, sd["_conv_head.weight"], 1), sd, "_bn1"))
    logits = features.mean(axis=(0, 1)) @ sd["_fc.weight"].T + sd["_fc.bias"]
    return features, logits


def _test_images(size: int) -> np.ndarray:
    """A real photo when the catalogue is there, plus a synthetic one, as square uint8 inputs."""
    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[0:90, 0:70]
    synthetic = np.stack([xx * 3, yy * 2, (xx + yy) % 256], axis=-1).astype(np.uint8)
    synthetic[20:60, 15:50] = rng.integers(0, 256, size=3)
    images = [Image.fromarray(synthetic)]
    photo = CATALOG / "images" / "15970.jpg"
    if photo.is_file():
        images.append(photo)
    return batch_to_square(images, size)


@pytest.mark.parametrize("size", [224, 75])
def test_keras_port_matches_numpy_forward_pass(size, cache_dir):
    sd = {k: v.astype(np.float64) for k, v in load_legacy_checkpoint(checkpoint_path()).items()}
    batch = _test_images(size)
    classifier = Classifier(input_size=size, cache_dir=cache_dir)
    keras_logits = np.asarray(classifier.model.predict_on_batch(batch.astype(np.float32)))
    avg = get_backbone("efficientnet_lite0", input_size=size, cache_dir=cache_dir).embed(batch)
    mx = get_backbone("efficientnet_lite0", input_size=size, pooling="max", cache_dir=cache_dir)
    max_emb = mx.embed(batch)
    for n, image in enumerate(batch):
        features, logits = numpy_forward(image, sd)
        scale = np.abs(logits).max()
        assert np.abs(keras_logits[n] - logits).max() <= 1e-4 * scale
        assert keras_logits[n].argmax() == logits.argmax()
        ref_avg = features.mean(axis=(0, 1))
        ref_max = features.max(axis=(0, 1))
        np.testing.assert_allclose(avg[n], ref_avg / np.linalg.norm(ref_avg), atol=1e-5)
        np.testing.assert_allclose(max_emb[n], ref_max / np.linalg.norm(ref_max), atol=1e-5)
