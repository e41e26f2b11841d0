"""The classifier heads and the compare threshold: plain arrays in, arrays out, no Flask."""

from __future__ import annotations

import numpy as np
import pytest

from ml import compare_threshold
from ml.head_training import TrainConfig, train_heads
from ml.heads import Head, HeadSet, Prediction, decode_type
from ml.labels import OTHER, derived_type, majority_sub, merge_rare, score, stratified_split
from ml.thresholds import load_compare_threshold

FAST = TrainConfig(hidden=32, epochs=30, batch_size=32, learning_rate=5e-3)


def clustered(n_per_class: int, centres: int, dim: int = 16, seed: int = 0, noise: float = 0.15):
    """Unit vectors around ``centres`` random directions: (vectors, class index per row)."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, dim))
    y = np.repeat(np.arange(centres), n_per_class)
    x = c[y] + noise * rng.normal(size=(len(y), dim)) * np.linalg.norm(c, axis=1).mean()
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


def test_merge_rare_keeps_common_classes_and_missing_labels():
    labels = ["a"] * 5 + ["b"] * 2 + [None, ""] + ["c"]
    merged = merge_rare(labels, min_count=3)
    assert merged.tolist() == ["a"] * 5 + [OTHER] * 2 + [None, None] + [OTHER]
    with pytest.raises(ValueError):
        merge_rare(labels, 0)


def test_stratified_split_keeps_each_class_in_proportion():
    y = np.asarray(["a"] * 50 + ["b"] * 10 + ["c"] * 1)
    train, val = stratified_split(y, 0.2, seed=3)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == len(y)
    assert (y[val] == "a").sum() == 10 and (y[val] == "b").sum() == 2
    assert "c" not in y[val], "a class seen once cannot be measured: training only"
    again = stratified_split(y, 0.2, seed=3)
    assert np.array_equal(again[1], val), "the split is reproducible"


def test_score_accuracy_and_macro_f1():
    s = score(np.asarray([0, 0, 1, 1]), np.asarray([0, 0, 1, 0]))
    assert s.accuracy == 0.75
    # class 0: P 2/3 R 1 F1 0.8; class 1: P 1 R 0.5 F1 2/3
    assert s.macro_f1 == pytest.approx((0.8 + 2 / 3) / 2)
    assert s.macro_precision == pytest.approx((2 / 3 + 1) / 2)
    assert s.classes == 2 and s.n == 4


def test_head_predict_matches_a_hand_computed_forward_pass():
    rng = np.random.default_rng(0)
    params = {
        "mean": rng.normal(size=4),
        "scale": rng.uniform(0.5, 2, size=4),
        "w1": rng.normal(size=(4, 3)),
        "b1": rng.normal(size=3),
        "w2": rng.normal(size=(3, 2)),
        "b2": rng.normal(size=2),
    }
    head = Head("sub", ["x", "y"], params)
    x = rng.normal(size=(5, 4)).astype(np.float32)
    h = np.maximum((x - params["mean"]) / params["scale"] @ params["w1"] + params["b1"], 0)
    logits = h @ params["w2"] + params["b2"]
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(head.predict(x), expected, rtol=1e-5)
    assert head.predict(x[0]).shape == (1, 2)
    with pytest.raises(ValueError, match="expects 4-d"):
        head.predict(np.zeros((1, 5)))


def test_decode_type_within_the_predicted_sub_category():
    classes = ["Men|Shirts", "Men|Jeans", "Women|Tops"]
    to_sub = {"Men|Shirts": "Topwear", "Men|Jeans": "Bottomwear", "Women|Tops": "Topwear"}
    probs = np.asarray([0.2, 0.5, 0.3])
    assert decode_type(probs, classes, "joint", to_sub, None) == ("Men|Jeans", 0.5)
    label, conf = decode_type(probs, classes, "within_sub", to_sub, Prediction("Topwear", 0.8))
    assert label == "Women|Tops"
    assert conf == pytest.approx(0.8 * 0.3 / 0.5)
    # An "(other)" sub-category gives no mask: joint decoding.
    assert decode_type(probs, classes, "within_sub", to_sub, Prediction(OTHER, 0.9))[0] == (
        "Men|Jeans"
    )


def test_train_heads_learns_separable_labels_and_round_trips(tmp_path):
    x, y = clustered(30, 6, seed=1)
    subs = np.asarray(["Topwear", "Topwear", "Bottomwear", "Bottomwear", "Shoes", "Shoes"])[y]
    types = [
        derived_type(g, a)
        for g, a in zip(
            ["Men", "Women"] * 90,
            np.asarray(["Shirts", "Tops", "Jeans", "Skirts", "Sneakers", "Heels"])[y],
            strict=True,
        )
    ]
    colours = np.asarray(["Red", "Blue", "Red", "Blue", "Black", "Black"])[y].tolist()
    headset, report = train_heads(
        "tiny-seed0-32-avg",
        x,
        {"sub": subs.tolist(), "type": types, "colour": colours},
        min_count=3,
        config=FAST,
        keras_dir=tmp_path,
    )
    assert report.scores["sub"].accuracy >= 0.9
    assert report.scores["colour"].accuracy >= 0.9
    assert set(report.decoding_scores) == {"joint", "within_sub"}
    assert report.decoding in {"joint", "within_sub"}
    assert report.train_rows + report.val_rows == len(x)
    assert (tmp_path / "sub.keras").exists()

    folder = headset.save(tmp_path / "heads", keras_dir=tmp_path)
    loaded = HeadSet.load(folder)
    assert loaded.version == headset.version and loaded.version.startswith("heads1-")
    assert (folder / "sub.keras").exists()
    meta = loaded.meta
    assert meta["model_id"] == "tiny-seed0-32-avg" and meta["head_version"] == 1
    assert meta["validation"]["sub"]["accuracy"] == round(report.scores["sub"].accuracy, 4)
    p1, p2 = headset.predict(x[0]), loaded.predict(x[0])
    assert {k: v.label for k, v in p1.items()} == {k: v.label for k, v in p2.items()}
    assert p1["sub"].label == subs[0] and 0 < p1["sub"].confidence <= 1
    # Saving again replaces the folder atomically; nothing is left beside it.
    headset.save(tmp_path / "heads")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_train_heads_refuses_bad_labels():
    x, _ = clustered(5, 2)
    with pytest.raises(ValueError, match="missing"):
        train_heads("m", x, {"sub": ["a"] * 10})
    labels = {"sub": ["a"] * 10, "type": ["a|b"] * 10, "colour": ["Red"] * 10}
    with pytest.raises(ValueError, match="two classes"):
        train_heads("m", x, labels, min_count=2, config=FAST)
    with pytest.raises(ValueError, match="labels for"):
        train_heads("m", x, {**labels, "sub": ["a"] * 3})


def test_majority_sub_ignores_stray_rows():
    assert majority_sub(["t", "t", "t", None], ["A", "A", "B", "A"]) == {"t": "A"}


# -- compare threshold ------------------------------------------------------------------------


def test_cosine_to_score_maps_minus_one_to_one_onto_zero_to_one():
    assert compare_threshold.cosine_to_score(-1.0) == 0.0
    assert compare_threshold.cosine_to_score(0.0) == 0.5
    assert compare_threshold.cosine_to_score(1.0) == 1.0
    assert compare_threshold.cosine_to_score(1.0000001) == 1.0
    np.testing.assert_allclose(
        compare_threshold.cosine_to_score(np.asarray([-1.0, 0.5])), [0.0, 0.75]
    )


def test_sample_pairs_is_balanced_and_never_pairs_a_row_with_itself():
    keys = ["a"] * 5 + ["b"] * 3 + ["c"]
    a, b, same = compare_threshold.sample_pairs(keys, 400, seed=2)
    assert same.sum() == 200 and (~same).sum() == 200
    assert np.all(a != b)
    k = np.asarray(keys)
    assert np.all((k[a] == k[b]) == same)
    with pytest.raises(ValueError, match="two products"):
        compare_threshold.sample_pairs(["a", "b"], 10)


def test_threshold_reaches_the_target_precision_with_the_most_recall():
    scores = np.asarray([0.99, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6])
    same = np.asarray([True, True, False, True, True, False, False])
    # Cuts: 0.99 P1, 0.95 P1, 0.9 P.67, 0.85 P.75, 0.8 P.8, 0.7 P.67
    assert compare_threshold.threshold_for_precision(scores, same, 0.8) == 0.8
    assert compare_threshold.threshold_for_precision(scores, same, 1.0) == 0.95
    p, r = compare_threshold.precision_recall_at(scores, same, 0.8)
    assert p == 0.8 and r == 1.0


def test_compare_threshold_stores_and_loads_with_the_model(tmp_path):
    x, y = clustered(20, 5, seed=4, noise=0.3)
    keys = [f"k{i}" for i in y]
    result = compare_threshold.fit_compare_threshold(
        "tiny-seed0-32-avg", x, keys, target_precision=0.9, n_pairs=2000
    )
    assert 0 < result.threshold <= 1
    assert result.precision >= 0.8  # measured on fresh pairs: close to the target
    path = compare_threshold.save_compare_threshold(tmp_path, result)
    assert path == tmp_path / "tiny-seed0-32-avg" / "compare.json"
    stored = load_compare_threshold(tmp_path, "tiny-seed0-32-avg")
    assert stored["threshold"] == round(result.threshold, 6)
    assert stored["threshold_cosine"] == pytest.approx(2 * stored["threshold"] - 1, abs=1e-5)
    assert stored["target_precision"] == 0.9
    assert load_compare_threshold(tmp_path, "other-model") is None


def test_blas_threads_are_limited_inside_the_block_and_restored_after():
    from ml.blas import blas_threads, current_threads

    before = current_threads()
    with blas_threads(1):
        inside = current_threads()
        # Results are the same whatever the thread count.
        a = np.arange(12, dtype=np.float32).reshape(3, 4)
        np.testing.assert_allclose(a @ a.T, np.asarray(a, np.float64) @ a.T)
    assert current_threads() == before
    if before is not None:
        assert inside == 1
    with pytest.raises(ValueError), blas_threads(0):
        pass
