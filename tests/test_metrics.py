"""Retrieval metrics on small hand-made cases; every expected value is worked out in a comment."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ml import metrics

# Three queries, k = 10, labelled on one feature.
#   q0 "Shirts": 10 of 10 recommendations are Shirts   -> accuracy 1.0, error 0.0
#   q1 "Shirts":  9 of 10                              -> accuracy 0.9, error 0.1
#   q2 "Jeans":   7 of 10                              -> accuracy 0.7, error 0.3
Q = np.array(["Shirts", "Shirts", "Jeans"], dtype=object)
R = np.array(
    [
        ["Shirts"] * 10,
        ["Shirts"] * 9 + ["Tshirts"],
        ["Jeans"] * 7 + ["Shirts", "Tshirts", "Shorts"],
    ],
    dtype=object,
)


def test_accuracy_per_query_is_the_share_of_matches():
    assert metrics.accuracy_per_query(Q, R).tolist() == pytest.approx([1.0, 0.9, 0.7])


def test_report_table_counts_true_positives_by_tolerance():
    # tolerance 0.2: errors 0, 0.1 pass, 0.3 fails -> 2/3
    # tolerance 0.1: errors 0 and 0.1 pass (0.1 <= 0.1, despite 1 - 0.9 = 0.0999...) -> 2/3
    # tolerance 0:   only error 0 passes -> 1/3
    table = metrics.report_table({"articleType": (Q, R)}, k=10)
    assert table == {"articleType": pytest.approx({"0.2": 2 / 3, "0.1": 2 / 3, "0": 1 / 3})}
    assert list(table["articleType"]) == ["0.2", "0.1", "0"]  # the report's column order


def test_tolerance_0_2_admits_exactly_two_misses():
    # 8 of 10 -> error 0.2 (float: 0.19999...) passes at 0.2 but not at 0.1.
    q = np.array(["A"])
    r = np.array([["A"] * 8 + ["B", "B"]], dtype=object)
    acc = metrics.accuracy_per_query(q, r)
    assert metrics.performance(acc, 0.2) == 1.0
    assert metrics.performance(acc, 0.1) == 0.0


def test_only_the_first_k_count_and_short_lists_count_missing_slots_as_misses():
    q = np.array(["A", "A"])
    r = np.array([["A", "A", "B", "A"], ["A", "B", "A", "A"]], dtype=object)
    # k = 2: q0 has A, A -> 1.0; q1 has A, B -> 0.5
    assert metrics.accuracy_per_query(q, r, k=2).tolist() == [1.0, 0.5]
    # k = 4 over rows of 4 with a missing label (None) -> it is a miss: q0 = A A None A -> 3/4
    r2 = np.array([["A", "A", None, "A"]], dtype=object)
    assert metrics.accuracy_per_query(np.array(["A"]), r2).tolist() == [0.75]


def test_queries_without_a_label_are_left_out():
    q = np.array(["A", None], dtype=object)
    r = np.array([["A", "B"], [None, None]], dtype=object)
    # only q0 counts: accuracy 0.5 -> error 0.5 -> fails every tolerance; precision 0.5
    assert metrics.report_table({"f": (q, r)}, k=2)["f"] == {"0.2": 0.0, "0.1": 0.0, "0": 0.0}
    assert metrics.mean_precision_at_k(q, r, 2) == 0.5


def test_integer_codes_with_minus_one_as_missing():
    q = np.array([3, -1, 2])
    r = np.array([[3, 3], [-1, -1], [2, 1]])
    # q1 missing -> left out; q0: 1.0, q2: 0.5 -> mean 0.75
    assert metrics.mean_precision_at_k(q, r, 2) == 0.75
    assert metrics.match_matrix(q, r)[1].tolist() == [False, False]  # -1 never matches -1


def test_mean_precision_at_k():
    # (1.0 + 0.9 + 0.7) / 3 = 0.8666...
    assert metrics.mean_precision_at_k(Q, R, 10) == pytest.approx(2.6 / 3)


def test_average_precision_hand_computed():
    # hits at ranks 1 and 3 of k = 3, 2 relevant in the index:
    #   P@1 = 1/1, P@3 = 2/3 -> (1 + 2/3) / min(3, 2) = 5/6
    # hits at rank 2 only, 4 relevant: P@2 = 1/2 -> 0.5 / min(3, 4) = 1/6
    # nothing relevant in the index -> NaN
    matches = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 0]], bool)
    ap = metrics.average_precision_at_k(matches, np.array([2, 4, 0]), 3)
    assert ap[:2] == pytest.approx([5 / 6, 1 / 6])
    assert math.isnan(ap[2])


def test_map_at_k_counts_relevant_items_in_the_index():
    # Index labels: A x3, B x1. Query "A" (not in the index) got [A, B, A]:
    #   hits at 1 and 3: (1 + 2/3) / min(3, 3 relevant) = 5/9
    # Query "B" got [B, A, A]: hit at 1: 1 / min(3, 1) = 1
    # mAP = (5/9 + 1) / 2 = 7/9
    index = np.array(["A", "A", "A", "B"], dtype=object)
    q = np.array(["A", "B"], dtype=object)
    r = np.array([["A", "B", "A"], ["B", "A", "A"]], dtype=object)
    assert metrics.map_at_k(q, r, index, 3) == pytest.approx(7 / 9)


def test_map_at_k_leave_one_out_does_not_count_the_query_as_relevant():
    # Leave-one-out: the index holds the query itself. Labels A x3, B x1; query is one of the
    # A rows and got [A, B, A]: relevant = 3 - 1 = 2 -> (1 + 2/3) / 2 = 5/6.
    # The B query has no other B in the index -> left out of the mean.
    index = np.array(["A", "A", "A", "B"], dtype=object)
    q = np.array(["A", "B"], dtype=object)
    r = np.array([["A", "B", "A"], ["A", "A", "A"]], dtype=object)
    assert metrics.map_at_k(q, r, index, 3, query_in_index=True) == pytest.approx(5 / 6)


def test_combine_joins_labels_and_keeps_missing():
    out = metrics.combine(np.array(["Men", "Women", None], dtype=object), ["Shirts", "Tops", "X"])
    assert out.tolist() == ["Men|Shirts", "Women|Tops", None]


def test_combined_feature_is_stricter_than_either_part():
    # gender matches in both slots, articleType in both, but gender+articleType in one only
    gender_q = np.array(["Men"], dtype=object)
    type_q = np.array(["Shirts"], dtype=object)
    gender_r = np.array([["Men", "Men"]], dtype=object)
    type_r = np.array([["Shirts", "Shirts"]], dtype=object)
    both = metrics.accuracy_per_query(
        metrics.combine(gender_q, type_q), metrics.combine(gender_r, type_r)
    )
    assert both.tolist() == [1.0]
    gender_r2 = np.array([["Men", "Women"]], dtype=object)
    type_r2 = np.array([["Tops", "Shirts"]], dtype=object)
    assert metrics.accuracy_per_query(gender_q, gender_r2).tolist() == [0.5]
    assert metrics.accuracy_per_query(type_q, type_r2).tolist() == [0.5]
    both2 = metrics.accuracy_per_query(
        metrics.combine(gender_q, type_q), metrics.combine(gender_r2, type_r2)
    )
    assert both2.tolist() == [0.0]  # "Men|Tops" and "Women|Shirts": neither is "Men|Shirts"


def test_classifier_accuracy_skips_missing_truth():
    # 2 of the 3 labelled rows right -> 2/3
    assert metrics.classifier_accuracy(
        np.array(["a", "b", "c", None], dtype=object), np.array(["a", "b", "x", "a"], dtype=object)
    ) == pytest.approx(2 / 3)


def test_encode_gives_codes_and_missing_as_minus_one():
    codes, values = metrics.encode(np.array(["b", None, "a", "b"], dtype=object))
    assert values == ["a", "b"]
    assert codes.tolist() == [1, -1, 0, 1]


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError):
        metrics.match_matrix(np.array(["a", "b"]), np.array([["a"]]))
    with pytest.raises(ValueError):
        metrics.accuracy_per_query(Q, R, k=0)


def test_empty_query_set_gives_nan():
    assert math.isnan(metrics.performance(np.array([]), 0.1))
