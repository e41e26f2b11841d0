"""The inference runtime: ONNX Runtime computes what Keras computes, for the plain backbone,
the frozen feature maps and the tuned network; exports are cached per model id and checked."""

from __future__ import annotations

import numpy as np
import pytest

from ml import runtime
from ml.backbones import get_backbone
from ml.colour import ColourDescriptor
from ml.registry import BackboneSettings, load_backbone
from ml.tuned.config import TuneConfig
from ml.tuned.feature_maps import FeatureMaps
from ml.tuned.training import train_network

MIN_COSINE = 0.999


def photos(n: int, seed: int = 0) -> np.ndarray:
    """n 80x60 photos: a coloured block on white with noise, so no two are alike."""
    rng = np.random.default_rng(seed)
    out = np.full((n, 80, 60, 3), 255, np.uint8)
    for i in range(n):
        top, left = rng.integers(2, 30), rng.integers(2, 25)
        out[i, top : top + rng.integers(20, 48), left : left + rng.integers(10, 32)] = rng.integers(
            0, 255, 3
        )
    return np.clip(out.astype(int) + rng.integers(-10, 10, out.shape), 0, 255).astype(np.uint8)


@pytest.fixture(autouse=True)
def keep_runtime():
    """Each test chooses its runtime; the process's choice is put back afterwards."""
    before = runtime.current()
    yield
    runtime.select(before)


def both(fn):
    """``fn()`` on Keras and on ONNX Runtime."""
    runtime.select("keras")
    keras_out = fn()
    runtime.select("onnxruntime")
    return keras_out, fn()


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def test_the_backbone_embeds_the_same_on_both_runtimes(tmp_path):
    tiny = get_backbone("tiny", cache_dir=tmp_path)
    images = photos(40)  # more than one slice of the runtime, and a batch that is not full
    keras_out, onnx_out = both(lambda: tiny.embed(images, batch_size=16))
    assert onnx_out.shape == keras_out.shape == (40, tiny.dim)
    assert row_cosines(keras_out, onnx_out).min() >= MIN_COSINE
    # One photo at a time gives the same rows.
    single = tiny.embed(images[:1])
    assert row_cosines(single, keras_out[:1]).min() >= MIN_COSINE


def test_the_export_is_cached_under_the_model_id_and_reused(tmp_path):
    tiny = get_backbone("tiny", cache_dir=tmp_path)
    runtime.select("onnxruntime")
    runtime.forget(tiny.model_id)
    tiny.embed(photos(2))
    exports = list((tmp_path / runtime.EXPORT_FOLDER).glob("*.onnx"))
    assert [p.name.split(".")[0] for p in exports] == [f"{tiny.model_id}-embed"]
    assert exports[0] == runtime.export_path(tmp_path, f"{tiny.model_id}-embed")
    written = exports[0].stat().st_mtime_ns
    runtime.forget(tiny.model_id)  # as a new worker process would
    tiny.embed(photos(2))
    assert exports[0].stat().st_mtime_ns == written  # read, not exported again


def test_an_export_that_disagrees_with_keras_is_refused(tmp_path):
    tiny = get_backbone("tiny", cache_dir=tmp_path)
    other = get_backbone("tiny", pooling="max", cache_dir=tmp_path)
    runtime.select("onnxruntime")
    runtime.forget(other.model_id)
    other.embed(photos(1))
    # A cached file that is not this network's (another network's export under its name)
    # must never serve vectors.
    wrong = runtime.export_path(tmp_path, f"{other.model_id}-embed")
    runtime.export_path(tmp_path, f"{tiny.model_id}-embed").write_bytes(wrong.read_bytes())
    runtime.forget(tiny.model_id)
    with pytest.raises(runtime.RuntimeMismatch, match="disagrees with Keras"):
        tiny.embed(photos(1))
    runtime.forget(tiny.model_id)
    runtime.export_path(tmp_path, f"{tiny.model_id}-embed").unlink()


def test_feature_maps_and_the_tuned_network_agree_on_both_runtimes(tmp_path):
    tiny = get_backbone("tiny", cache_dir=tmp_path)
    images = photos(24, seed=1)
    labels = {
        "sub": ["Topwear" if i % 2 else "Bottomwear" for i in range(24)],
        "type": ["Shirts" if i % 2 else "Jeans" for i in range(24)],
        "colour": ["Red" if i % 3 else "Blue" for i in range(24)],
    }
    fm = FeatureMaps(tiny, "conv1", mirror=True)
    keras_maps, onnx_maps = both(lambda: fm.compute(images))
    assert row_cosines(keras_maps, onnx_maps).min() >= MIN_COSINE

    maps = fm.unflatten(keras_maps)
    colours = ColourDescriptor().describe(list(images))
    runtime.select("keras")
    network, _ = train_network(
        tiny, maps, colours, labels, TuneConfig(epochs=2, batch_size=8, min_count=2)
    )
    tuned = network.backbone(tiny)
    keras_photos, onnx_photos = both(lambda: tuned.embed(images))
    assert row_cosines(keras_photos, onnx_photos).min() >= MIN_COSINE
    keras_stored, onnx_stored = both(lambda: tuned.embed_maps(maps, colours))
    assert row_cosines(keras_stored, onnx_stored).min() >= MIN_COSINE
    # The exports carry the tuned model id: another tuning gets its own files.
    names = {p.name.split(".ft")[-1] for p in (tmp_path / runtime.EXPORT_FOLDER).glob("*.ft*")}
    assert {n.split(".")[0] for n in names} == {f"{network.digest}-embed", f"{network.digest}-top"}


def test_the_runtime_setting_is_checked(tmp_path):
    with pytest.raises(ValueError, match="INFERENCE_RUNTIME must be one of"):
        runtime.select("tensorrt")
    with pytest.raises(ValueError, match="INFERENCE_THREADS"):
        runtime.select(threads=-1)
    settings = BackboneSettings(
        name="tiny",
        input_size=None,
        pooling="avg",
        resnet_weights="random",
        model_folder=tmp_path,
        runtime="keras",
    )
    load_backbone(settings)
    assert runtime.current() == "keras"
    bad = BackboneSettings(**{**settings.__dict__, "runtime": "nope"})
    with pytest.raises(ValueError, match="INFERENCE_RUNTIME"):
        load_backbone(bad)
