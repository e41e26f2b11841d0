"""Evaluation building blocks on small hand-made cases: rankings, the photo-search policy,
splits, scores, the colour descriptor and the tuned projection's NumPy serving."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ml import evaluation as ev
from ml.colour import ColourDescriptor, foreground_pixels, fuse, srgb_to_lab
from ml.projection import FusionWeights, Projection


def unit(rows) -> np.ndarray:
    a = np.asarray(rows, np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def labels(types, genders=None, colours=None, subs=None) -> ev.Labels:
    n = len(types)
    return ev.Labels(
        genders or ["Men"] * n, types, colours or ["Blue"] * n, subs or ["Topwear"] * n
    )


# Four products on a circle: 0 and 1 close together, 2 and 3 close together, the pairs apart.
ANGLES = np.radians([0, 10, 90, 100])
CIRCLE = unit(np.stack([np.cos(ANGLES), np.sin(ANGLES)], axis=1))


def test_leave_one_out_never_returns_the_query_itself():
    recs = ev.leave_one_out(CIRCLE, np.array([0, 2]), k=2)
    # 0's nearest other is 1 (10 deg), then 2 (90 deg); 2's is 3, then 1 (80 deg)
    assert recs.tolist() == [[1, 2], [3, 1]]


def test_leave_one_out_blocks_give_the_same_answer():
    rng = np.random.default_rng(0)
    v = unit(rng.normal(size=(50, 8)))
    rows = np.arange(50)
    assert (ev.leave_one_out(v, rows, 5, block=7) == ev.leave_one_out(v, rows, 5)).all()


def test_rank_against_an_index():
    query = unit([[np.cos(np.radians(95)), np.sin(np.radians(95))]])
    # 95 deg sits between 90 (row 2) and 100 (row 3), both 5 deg away; then row 1 (85 away)
    recs = ev.rank(CIRCLE, query, k=3)
    assert set(recs[0, :2].tolist()) == {2, 3} and recs[0, 2] == 1


def test_score_rankings_hand_case():
    # Index: Shirts, Shirts, Jeans, Jeans (Men, Blue). Query rows 0 and 2 (leave-one-out, k=2):
    # row 0 -> [1, 2]: Shirts, Jeans -> articleType accuracy 0.5
    # row 2 -> [3, 1]: Jeans, Shirts -> 0.5
    # tolerance 0.2 with k=2 means no miss at all -> 0 of 2; gender always matches -> 1.0
    index = labels(["Shirts", "Shirts", "Jeans", "Jeans"])
    recs = ev.leave_one_out(CIRCLE, np.array([0, 2]), k=2)
    s = ev.score_rankings(index.take(np.array([0, 2])), recs, index, 2, query_in_index=True)
    assert s["table"]["articleType"] == {"0.2": 0.0, "0.1": 0.0, "0": 0.0}
    assert s["table"]["gender"] == {"0.2": 1.0, "0.1": 1.0, "0": 1.0}
    assert s["precision_at_k"]["articleType"] == 0.5
    assert s["colour_match_at_k"] == 1.0
    # mAP@2: each query has 1 other relevant item, found at rank 1 -> AP = 1 for both
    assert s["map_at_k"] == 1.0


def test_common_type_rows_applies_the_minimum_count():
    rows = ev.common_type_rows(["A", "B", "A", None, "A", "B"], 3)
    assert rows.tolist() == [0, 2, 4]


def test_holdout_split_is_stratified_reproducible_and_disjoint():
    strata = ["a"] * 10 + ["b"] * 5 + ["c"]
    kept, held = ev.holdout_split(strata, 0.2, seed=1)
    assert set(kept) | set(held) == set(range(16)) and not set(kept) & set(held)
    held_strata = sorted(strata[i] for i in held)
    assert held_strata == ["a", "a", "b"]  # 20 % of 10, 20 % of 5 (rounded to 1), none of 1
    again = ev.holdout_split(strata, 0.2, seed=1)
    assert (again[1] == held).all()
    assert not (ev.holdout_split(strata, 0.2, seed=2)[1] == held).all()


class TestPipelineRank:
    """The photo-search levels: same photo, predicted type, sub-category, everything."""

    # Six products on a circle. Types: rows 0-2 Shirts, rows 3-5 Jeans (sub Bottomwear).
    ANG = np.radians([0, 20, 40, 5, 25, 45])
    INDEX = unit(np.stack([np.cos(ANG), np.sin(ANG)], axis=1))
    LABELS = ev.Labels(
        ["Men"] * 6,
        ["Shirts"] * 3 + ["Jeans"] * 3,
        ["Blue", "Red", "Blue", "Blue", "Red", "Red"],
        ["Topwear"] * 3 + ["Bottomwear"] * 3,
    )

    def query(self, degrees):
        return unit([[np.cos(np.radians(degrees)), np.sin(np.radians(degrees))]])

    def test_confident_type_narrows_the_search(self):
        # Query at 4 deg: nearest overall are 3 (Jeans, 1 deg), 0 (4 deg), 1, 4 ...
        # A confident "Men|Shirts" prediction keeps the top 2 to Shirts: 0 (4 deg), 1 (16 deg).
        recs, levels = ev.pipeline_rank(
            self.INDEX,
            self.query(4),
            [ev.Prediction(type=("Men|Shirts", 0.9))],
            self.LABELS,
            2,
            ev.PipelinePolicy(same_photo_cosine=1.01),
        )
        assert recs.tolist() == [[0, 1]] and levels == ["type"]

    def test_unsure_prediction_searches_everything(self):
        recs, levels = ev.pipeline_rank(
            self.INDEX,
            self.query(4),
            [ev.Prediction(type=("Men|Shirts", 0.3))],
            self.LABELS,
            2,
            ev.PipelinePolicy(same_photo_cosine=1.01),
        )
        assert recs.tolist() == [[3, 0]] and levels == ["all"]

    def test_a_small_group_widens_to_the_sub_category_then_everything(self):
        # Type group Shirts has 3 products; n = 5 -> 3 Shirts, then Topwear (same 3, nothing
        # new), then everything: the two nearest Jeans to 4 deg are 3 (1 deg) and 4 (21 deg).
        recs, levels = ev.pipeline_rank(
            self.INDEX,
            self.query(4),
            [ev.Prediction(type=("Men|Shirts", 0.9), sub=("Topwear", 0.9))],
            self.LABELS,
            5,
            ev.PipelinePolicy(same_photo_cosine=1.01),
        )
        assert recs.tolist() == [[0, 1, 2, 3, 4]] and levels == ["all"]

    def test_the_same_photo_comes_first_whatever_the_prediction(self):
        # Query exactly at row 3 (Jeans): cosine 1 >= 0.98 -> row 3 first, then the Shirts.
        recs, _ = ev.pipeline_rank(
            self.INDEX,
            self.query(5),
            [ev.Prediction(type=("Men|Shirts", 0.9))],
            self.LABELS,
            3,
            ev.PipelinePolicy(same_photo_cosine=0.9999),
        )
        assert recs.tolist() == [[3, 0, 1]]

    def test_colour_first_prefers_the_predicted_colour_within_the_type(self):
        # Shirts in Red: only row 1. Then the other Shirts by cosine: 0, 2.
        recs, levels = ev.pipeline_rank(
            self.INDEX,
            self.query(4),
            [ev.Prediction(type=("Men|Shirts", 0.9), colour=("Red", 0.8))],
            self.LABELS,
            3,
            ev.PipelinePolicy(same_photo_cosine=1.01, colour_first=True),
        )
        assert recs.tolist() == [[1, 0, 2]] and levels == ["type"]


def test_groups_index_rows_by_type_sub_and_colour():
    g = ev.Groups(TestPipelineRank.LABELS)
    jeans = (("gender", "Men"), ("article_type", "Jeans"))
    assert g.rows(jeans).tolist() == [3, 4, 5]
    assert g.rows((("sub_category", "Topwear"),)).tolist() == [0, 1, 2]
    assert g.rows((*jeans, ("base_colour", "Red"))).tolist() == [4, 5]
    assert g.rows((("gender", "Women"), ("article_type", "Dresses"))).tolist() == []
    assert g.rows(()).tolist() == [0, 1, 2, 3, 4, 5]


def test_a_separate_colour_threshold():
    # colour confidence 0.4: below the 0.5 of the other levels, above a colour threshold of 0.3
    pred = [ev.Prediction(type=("Men|Shirts", 0.9), colour=("Red", 0.4))]
    q = TestPipelineRank().query(4)
    args = (TestPipelineRank.INDEX, q, pred, TestPipelineRank.LABELS, 3)
    base = ev.PipelinePolicy(same_photo_cosine=1.01, colour_first=True)
    assert ev.pipeline_rank(*args, base)[0].tolist() == [[0, 1, 2]]  # colour not trusted
    lower = ev.PipelinePolicy(same_photo_cosine=1.01, colour_first=True, colour_min_confidence=0.3)
    assert ev.pipeline_rank(*args, lower)[0].tolist() == [[1, 0, 2]]  # the red shirt first


def test_ensemble_averages_heads_and_projection():
    from ml.heads import Head, HeadSet

    p = tiny_projection()  # type classes Men|A, Men|B; colours Red, Blue, X
    rng = np.random.default_rng(2)
    e, c = unit(rng.normal(size=(4, 6))), unit(rng.random((4, 4)))

    def head(name, classes):
        params = {
            "mean": np.zeros(6),
            "scale": np.ones(6),
            "w1": rng.normal(size=(6, 4)),
            "b1": np.zeros(4),
            "w2": rng.normal(size=(4, len(classes))),
            "b2": np.zeros(len(classes)),
        }
        return Head(name, classes, params)

    heads = HeadSet(
        "m",
        {
            "sub": head("sub", ["Topwear", "Bottomwear"]),
            "type": head("type", ["Men|A", "Men|B", "Men|C"]),  # C unknown to the projection
            "colour": head("colour", ["Blue", "Red"]),
        },
    )
    z = p.transform(e, c)
    out = ev.ensemble_predictions(heads, p, e, z)
    h_type = heads.heads["type"].predict(e)[:, :2]
    p_type = p.classify(z, "type")
    for i, pred in enumerate(out):
        avg = 0.5 * h_type[i] + 0.5 * p_type[i]  # over Men|A, Men|B, the shared classes
        assert pred.type == (["Men|A", "Men|B"][int(np.argmax(avg))], pytest.approx(avg.max()))
        assert pred.colour[0] in {"Blue", "Red"}  # X is the projection's alone
        assert pred.sub[0] in {"Topwear", "Bottomwear"}


def test_classifier_scores_per_head():
    truth = labels(["Shirts", "Jeans"], subs=["Topwear", "Bottomwear"])
    preds = [
        ev.Prediction(type=("Men|Shirts", 0.9), sub=("Topwear", 0.9)),
        ev.Prediction(type=("Men|Shirts", 0.9), sub=("Bottomwear", 0.9)),
    ]
    # type right once of two, sub right twice
    assert ev.classifier_scores(truth, preds) == {
        "subCategory": 1.0,
        "gender+articleType": 0.5,
        "articleType": 0.5,  # the article part of the gender + articleType answer
    }
    only_shirts = ev.classifier_scores(truth, preds, {"shirts alone": ["Shirts"]})
    assert only_shirts["articleType (shirts alone)"] == 1.0


def test_articles_among_sums_genders_and_answers_within_the_types():
    classes = ["Men|Shirts", "Women|Shirts", "Men|Kurtas", "Women|Jeans", "(other)"]
    probs = np.asarray([[0.3, 0.3, 0.35, 0.0, 0.05], [0.1, 0.0, 0.2, 0.15, 0.55]], np.float32)
    # first: Kurtas is the likeliest single class, but Shirts over both genders is likelier,
    # and Kurtas is not among the types; second: "(other)" is no answer among them
    articles = ev.articles_among(classes, probs, ["Shirts", "Jeans"])
    assert articles.tolist() == ["Shirts", "Jeans"]
    truth = labels(["Shirts", "Kurtas"], subs=["Topwear", "Topwear"])
    # the Kurtas query is not of the types: only the Shirts one counts
    assert ev.type_set_accuracy(truth, articles, ["Shirts", "Jeans"]) == 1.0
    assert ev.closed_set_name("top 2 types") == "articleType (top 2 types, answered among them)"


def test_latency_summary():
    s = ev.latency_summary([0.010, 0.020, 0.030])
    assert s["n"] == 3 and s["p50_ms"] == 20.0 and s["mean_ms"] == 20.0


# -- colour ------------------------------------------------------------------------------------


def product_photo(colour, background=(255, 255, 255)) -> Image.Image:
    arr = np.empty((80, 60, 3), np.uint8)
    arr[:] = background
    arr[15:65, 12:48] = colour
    return Image.fromarray(arr)


def test_lab_of_known_colours():
    lab = srgb_to_lab(np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0]], np.uint8))
    assert lab[0] == pytest.approx([100, 0, 0], abs=0.1)
    assert lab[1] == pytest.approx([0, 0, 0], abs=0.1)
    assert lab[2] == pytest.approx([53.24, 80.09, 67.20], abs=0.1)  # the textbook sRGB red


def test_foreground_leaves_out_the_background():
    pixels = foreground_pixels(np.asarray(product_photo((200, 20, 20))))
    assert len(pixels) == 50 * 36  # the rectangle, not the white around it
    grey = foreground_pixels(np.asarray(product_photo((200, 20, 20), background=(120, 120, 120))))
    assert len(grey) == 50 * 36  # the border colour is the background, whatever it is


def test_colour_descriptor_ranks_colours_as_people_see_them():
    d = ColourDescriptor()
    red, dark_red, blue, white_shirt = d.describe(
        [
            product_photo((200, 20, 20)),
            product_photo((170, 15, 25)),
            product_photo((20, 30, 200)),
            product_photo((240, 240, 240)),
        ]
    )
    assert np.linalg.norm(red) == pytest.approx(1.0, abs=1e-5)
    assert red @ dark_red > 0.5 > red @ blue
    assert white_shirt @ red < 0.2  # a white product is described by its own (light) pixels


def test_fuse_gives_the_weighted_sum_of_cosines():
    rng = np.random.default_rng(0)
    e, c = unit(rng.normal(size=(2, 5))), unit(rng.random((2, 4)))
    f = fuse(e, c, 0.3)
    assert np.linalg.norm(f, axis=1) == pytest.approx([1, 1], abs=1e-5)
    assert f[0] @ f[1] == pytest.approx(0.7 * (e[0] @ e[1]) + 0.3 * (c[0] @ c[1]), abs=1e-5)
    with pytest.raises(ValueError):
        fuse(e, c, 1.5)


# -- projection serving --------------------------------------------------------------------------


def tiny_projection() -> Projection:
    rng = np.random.default_rng(0)
    d_e, d_c = 6, 4
    params = {"mean": np.zeros(d_e + d_c), "scale": np.ones(d_e + d_c)}
    for branch, (hidden, dim, classes) in {"type": (8, 3, 2), "colour": (5, 2, 3)}.items():
        params[f"{branch}_w1"] = rng.normal(size=(d_e + d_c, hidden))
        params[f"{branch}_b1"] = np.zeros(hidden)
        params[f"{branch}_w2"] = rng.normal(size=(hidden, dim))
        params[f"{branch}_b2"] = np.zeros(dim)
        params[f"{branch}_centres"] = rng.normal(size=(dim, classes))
    meta = {"embedding_dim": d_e, "colour_dim": d_c, "config": {"scale": 16.0}}
    return Projection(params, {"type": ["Men|A", "Men|B"], "colour": ["Red", "Blue", "X"]}, meta)


def test_projection_transform_and_fusion(tmp_path):
    p = tiny_projection()
    rng = np.random.default_rng(1)
    e, c = unit(rng.normal(size=(3, 6))), unit(rng.random((3, 4)))
    z = p.transform(e, c)
    assert z["type"].shape == (3, 3) and z["colour"].shape == (3, 2)
    assert np.linalg.norm(z["type"], axis=1) == pytest.approx([1, 1, 1], abs=1e-5)
    w = FusionWeights(raw=0.25, type=0.25, colour=0.25, histogram=0.25)
    r = p.retrieval_vectors(e, c, w)
    expected = 0.25 * (e[0] @ e[1] + z["type"][0] @ z["type"][1])
    expected += 0.25 * (z["colour"][0] @ z["colour"][1] + c[0] @ c[1])
    assert r[0] @ r[1] == pytest.approx(expected, abs=1e-5)
    probs = p.classify(z, "colour")
    assert probs.shape == (3, 3) and probs.sum(axis=1) == pytest.approx([1, 1, 1])
    path = p.save(tmp_path / "projection.npz")
    again = Projection.load(path)
    assert again.digest == p.digest
    assert np.allclose(again.retrieval_vectors(e, c, w), r)
    with pytest.raises(ValueError):
        p.transform(e[:, :5], c)


def test_fusion_weights_must_sum_to_one():
    with pytest.raises(ValueError):
        FusionWeights(raw=0.5, type=0.5, colour=0.5, histogram=0.0)
    assert FusionWeights().tag() == "r20t50c20h10"
