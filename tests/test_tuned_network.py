"""The catalogue-tuned backbone on the tiny test backbone: maps, training, heads, storage."""

from __future__ import annotations

import numpy as np
import pytest

from ml.backbones import get_backbone
from ml.colour import ColourDescriptor
from ml.heads import Head, HeadSet
from ml.tuned.config import TuneConfig, base_model_id, cut_layer, is_tuned_id
from ml.tuned.feature_maps import FeatureMaps
from ml.tuned.network import QUERY_SHIFTS, TunedNetwork
from ml.tuned.temperature import fit_temperature
from ml.tuned.training import train_network

COLOURS = {"Red": (200, 30, 30), "Blue": (30, 30, 200), "Green": (30, 160, 40)}
SHAPES = {"Men|Shirts": "Topwear", "Women|Jeans": "Bottomwear"}


def photo(colour: str, shape: str, seed: int) -> np.ndarray:
    """A 60x80 product photo: a wide block (shirts) or a tall one (jeans) on white."""
    rng = np.random.default_rng(seed)
    arr = np.full((80, 60, 3), 255, np.uint8)
    top, left = rng.integers(3, 10), rng.integers(3, 8)
    h, w = (40, 50) if shape == "Men|Shirts" else (70, 14)
    arr[top : top + h, left : left + w] = COLOURS[colour]
    return np.clip(arr.astype(int) + rng.integers(-8, 8, arr.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def data():
    images, labels = [], {"sub": [], "type": [], "colour": []}
    for i in range(36):
        colour = list(COLOURS)[i % 3]
        shape = list(SHAPES)[(i // 3) % 2]
        images.append(photo(colour, shape, i))
        labels["sub"].append(SHAPES[shape])
        labels["type"].append(shape)
        labels["colour"].append(colour)
    return images, labels


@pytest.fixture(scope="module")
def trained(data):
    images, labels = data
    tiny = get_backbone("tiny")
    before = [w.copy() for w in tiny.model.get_weights()]
    config = TuneConfig(epochs=15, batch_size=8, min_count=2, learning_rate=1e-2)
    fm = FeatureMaps(tiny, "conv1", mirror=True)
    maps = fm.unflatten(fm.compute(images))
    colours = ColourDescriptor().describe(images)
    network, report = train_network(
        tiny, maps, colours, labels, config, validation=(maps, colours, labels)
    )
    return tiny, before, fm, maps, colours, network, report


def test_feature_maps_hold_the_photo_and_its_mirror_image(data):
    images, _ = data
    tiny = get_backbone("tiny")
    fm = FeatureMaps(tiny, "conv1", mirror=True)
    flat = fm.compute(images[:3])
    assert flat.dtype == np.float16 and flat.shape == (3, fm.row_size)
    maps = fm.unflatten(flat)
    assert maps.shape == (3, 2, 16, 16, 16)
    mirrored = fm.unflatten(fm.compute([img[:, ::-1] for img in images[:3]]))
    # the mirror view of a photo is the first view of its mirror image
    np.testing.assert_allclose(maps[:, 1], mirrored[:, 0], atol=2e-3)
    assert "maps-conv1-v2" in fm.store_id and fm.store_id.startswith(tiny.model_id)


def test_training_learns_and_leaves_the_base_backbone_alone(trained):
    tiny, before, _, _, _, network, report = trained
    for old, new in zip(before, tiny.model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    assert len(report.epochs) == 15 and report.rows == 36
    # colour decides the colour class, shape the type: both are learnable here
    assert report.validation["colour"] >= 0.9
    assert report.validation["type"] >= 0.9
    assert report.epochs[-1]["loss"] < report.epochs[0]["loss"]
    assert network.meta["base_model_id"] == tiny.model_id and network.meta["cut"] == "conv1"


def test_model_id_names_the_base_and_the_weights(trained):
    tiny, *_, network, _ = trained
    model_id = network.model_id
    assert model_id.startswith(tiny.model_id + ".ft") and len(model_id) == len(tiny.model_id) + 11
    assert is_tuned_id(model_id) and base_model_id(model_id) == tiny.model_id
    assert not is_tuned_id(tiny.model_id) and base_model_id(tiny.model_id) == tiny.model_id
    assert not is_tuned_id("efficientnet_lite0-57934424-160-avg.ftzz")


def test_photos_and_stored_maps_give_the_same_embedding(trained, data):
    images, _ = data
    tiny, _, _, maps, colours, network, _ = trained
    embedder = network.backbone(tiny)
    from_photos = embedder.embed(images[:10])
    from_maps = embedder.embed_maps(maps[:10], colours[:10])
    assert from_photos.shape == (10, embedder.dim) == from_maps.shape
    np.testing.assert_allclose(np.linalg.norm(from_photos, axis=1), 1.0, atol=1e-5)
    # maps are stored as half floats: the two agree to well within a ranking's resolution
    assert np.min(np.sum(from_photos * from_maps, axis=1)) > 0.999


def test_an_upload_is_embedded_over_the_shifted_views_of_its_maps(trained, data, monkeypatch):
    images, _ = data
    tiny, _, _, maps, colours, network, _ = trained
    embedder = network.backbone(tiny)
    seen = []
    features = embedder._features

    def recorded(part, views):
        seen.append((part, views))
        return features(part, views)

    monkeypatch.setattr(embedder, "_features", recorded)
    uploads = embedder.embed_query(images[:6])
    # the top of the network sees the maps of the photo and of its mirror image, each moved
    # by each of QUERY_SHIFTS (wrapping around, as training shifts them)
    ((part, views),) = seen
    assert part == "top" and len(views) == 2 * len(QUERY_SHIFTS) and len(QUERY_SHIFTS) > 1
    fresh = np.stack([views[0], views[len(QUERY_SHIFTS)]], axis=1)  # the unshifted views
    np.testing.assert_allclose(fresh, maps[:6].astype(np.float32), atol=2e-2)
    for i, shift in enumerate(QUERY_SHIFTS):
        for v in (0, 1):
            np.testing.assert_array_equal(
                views[v * len(QUERY_SHIFTS) + i], np.roll(fresh[:, v], shift, axis=(1, 2))
            )
    # the evaluation embeds held-out catalogue rows from their stored maps the same way
    from_maps = embedder.embed_maps(maps[:6], colours[:6], query=True)
    assert np.min(np.sum(uploads * from_maps, axis=1)) > 0.999
    assert len(seen) == 2 and len(seen[1][1]) == 2 * len(QUERY_SHIFTS)


def test_heads_are_the_trained_classifiers_folded_into_the_embedding(trained):
    tiny, _, _, maps, colours, network, _ = trained
    embedder = network.backbone(tiny)
    vectors = embedder.embed_maps(maps, colours)
    heads = network.headset({"Men|Shirts": "Topwear", "Women|Jeans": "Bottomwear"})
    features = np.sum(
        [embedder.top.predict_on_batch(maps[:, v].astype(np.float32)) for v in (0, 1)], axis=0
    )
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    scale = network.config.scale
    t = network.meta["temperatures"]  # fitted on the validation rows
    assert set(t) == {"sub", "type", "colour"} and all(v > 0 for v in t.values())

    def softmax(logits):
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    inputs = {"sub": unit, "type": unit, "colour": np.concatenate([unit, colours], axis=1)}
    raw = {}
    for name, x in inputs.items():
        w, b = network.classifiers[name]
        logits = scale * x @ w + b
        raw[name] = softmax(logits)
        # the heads: the trained classifier with its calibrated temperature
        np.testing.assert_allclose(
            heads.heads[name].predict(vectors), softmax(logits / t[name]), atol=1e-4
        )
    answer = heads.predict(vectors[0])
    assert set(answer) == {"sub", "type", "colour"}
    # the embedding carries the classifiers' own probabilities, square-rooted, in its parts
    _, type_part, _, colour_part = network.slices()
    shares = network.config.fusion
    np.testing.assert_allclose(
        (vectors[:, type_part] / np.sqrt(shares[1])) ** 2, raw["type"], atol=1e-4
    )
    np.testing.assert_allclose(
        (vectors[:, colour_part] / np.sqrt(shares[3])) ** 2, raw["colour"], atol=1e-4
    )


def test_temperature_calibrates_confidences():
    rng = np.random.default_rng(0)
    n, k = 4000, 5
    y = rng.integers(0, k, n)
    # Calibrated logits: the right class is drawn with the softmax's own probabilities.
    logits = rng.normal(0, 2, (n, k))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.asarray([rng.choice(k, p=row) for row in p])
    assert fit_temperature(logits, y) == pytest.approx(1.0, abs=0.1)
    # Too timid (logits shrunk by 3): it sharpens; too sure (grown by 3): it softens.
    assert fit_temperature(logits / 3, y) == pytest.approx(1 / 3, rel=0.1)
    assert fit_temperature(logits * 3, y) == pytest.approx(3.0, rel=0.1)
    # Unlabelled rows are left out; none labelled: no change.
    assert fit_temperature(logits, np.full(n, -1)) == 1.0
    unlabelled = y.copy()
    unlabelled[::2] = -1
    assert fit_temperature(logits / 3, unlabelled) == pytest.approx(1 / 3, rel=0.15)


def test_calibration_keeps_every_prediction(trained):
    tiny, _, _, maps, colours, network, _ = trained
    vectors = network.backbone(tiny).embed_maps(maps, colours)
    raw = TunedNetwork(
        network.top_weights,
        network.classifiers,
        network.classes,
        {k: v for k, v in network.meta.items() if k != "temperatures"},
    )
    assert raw.model_id == network.model_id  # the temperatures belong to the heads
    calibrated, plain = network.headset({}), raw.headset({})
    assert calibrated.meta["temperatures"] == network.meta["temperatures"]
    for name in ("sub", "type", "colour"):
        a, b = calibrated.heads[name].predict(vectors), plain.heads[name].predict(vectors)
        np.testing.assert_array_equal(a.argmax(axis=1), b.argmax(axis=1))
        if abs(network.meta["temperatures"][name] - 1) > 0.01:
            assert not np.allclose(a, b, atol=1e-4)  # only the confidences move


def test_network_and_heads_survive_saving(trained, tmp_path):
    tiny, _, _, maps, colours, network, _ = trained
    folder = network.save(tmp_path / network.model_id / "network")
    again = TunedNetwork.load(folder)
    assert again.model_id == network.model_id and again.classes == network.classes
    np.testing.assert_allclose(
        again.backbone(tiny).embed_maps(maps[:4], colours[:4]),
        network.backbone(tiny).embed_maps(maps[:4], colours[:4]),
        atol=1e-6,
    )
    heads = network.headset({})
    heads.save(tmp_path / "heads")
    loaded = HeadSet.load(tmp_path / "heads")
    vectors = network.backbone(tiny).embed_maps(maps[:4], colours[:4])
    np.testing.assert_allclose(
        loaded.heads["type"].predict(vectors), heads.heads["type"].predict(vectors), atol=1e-6
    )
    # a damaged weights file is refused, not served with the wrong id
    meta = (folder / "meta.json").read_text()
    (folder / "meta.json").write_text(meta.replace(network.model_id, network.model_id[:-1] + "0"))
    with pytest.raises(ValueError, match="do not give the model id"):
        TunedNetwork.load(folder)


def test_a_network_only_runs_on_its_own_base(trained):
    *_, network, _ = trained
    other = get_backbone("tiny", pooling="max")
    with pytest.raises(ValueError, match="was tuned from"):
        network.backbone(other)


def test_bad_arguments():
    tiny = get_backbone("tiny")
    with pytest.raises(ValueError, match="fusion"):
        TuneConfig(fusion=(0.5, 0.5, 0.0, 0.0))
    with pytest.raises(ValueError, match="fusion"):
        TuneConfig(fusion=(0.5, 0.2, 0.2, 0.2))
    with pytest.raises(ValueError, match="no layer"):
        cut_layer(tiny, TuneConfig(cut="block4_add"))
    maps = np.zeros((4, 2, 16, 16, 16), np.float16)
    colours = np.zeros((4, 320), np.float32)
    with pytest.raises(ValueError, match="two classes"):
        train_network(
            tiny, maps, colours, {"sub": ["a"] * 4, "type": ["b"] * 4, "colour": ["c"] * 4}
        )
    with pytest.raises(ValueError, match="one colour descriptor per row"):
        train_network(tiny, maps, colours[:3], {"sub": [], "type": [], "colour": []})


def test_linear_heads_are_accepted_and_checked():
    head = Head(
        "type",
        ["a", "b"],
        {"mean": np.zeros(3), "scale": np.ones(3), "w2": np.eye(3)[:, :2], "b2": np.zeros(2)},
    )
    assert head.dim == 3
    probs = head.predict(np.array([5.0, 0.0, 0.0]))
    assert probs.argmax() == 0 and probs.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="needs parameters"):
        Head("type", ["a", "b"], {"mean": np.zeros(3), "w2": np.eye(3)[:, :2], "b2": np.zeros(2)})
