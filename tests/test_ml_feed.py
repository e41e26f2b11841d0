"""The feed's ranking over neighbour lists (``ml.feed``) and the offline measure's
simulated shoppers (``ml.feed_simulation``): plain functions, no app."""

from __future__ import annotations

import numpy as np
import pytest

from ml import feed
from ml import feed_simulation as sim
from ml.feed import Candidate, Example


def nlist(*pairs: tuple[int, float]):
    """A neighbour list as the cache returns it."""
    return np.array([p for p, _ in pairs], np.int64), np.array([s for _, s in pairs], np.float32)


# -- weights ---------------------------------------------------------------------------------


def test_likes_weigh_more_than_views_and_recent_more_than_old():
    now = 1_000_000_000.0
    examples = feed.taste_examples(
        likes=[(1, now - 60), (2, now - 90 * 86400)],
        views=[(3, now - 10), (4, now - 20), (5, now - 30)],
        now=now,
    )
    w = {e.product_id: e.weight for e in examples}
    assert w[1] > w[2] >= feed.LIKE_WEIGHT * feed.LIKE_FLOOR  # an old like fades, not away
    assert w[2] > w[3] > w[4] > w[5]  # even an old like counts more than the newest view
    assert all(e.because == e.product_id for e in examples)


def test_a_product_liked_and_viewed_is_one_example_with_both_weights():
    now = 1_000.0
    (example,) = feed.taste_examples(likes=[(7, now)], views=[(7, now)], now=now)
    assert example.weight == pytest.approx(feed.LIKE_WEIGHT + feed.VIEW_WEIGHT)


# -- scoring ---------------------------------------------------------------------------------


def test_a_candidate_near_several_examples_beats_one_near_a_single_one():
    lists = {
        1: nlist((10, 0.8), (11, 0.95)),
        2: nlist((10, 0.8), (12, 0.7)),
    }
    ranked = feed.score([Example(1, 1.0, 1), Example(2, 1.0, 2)], lists)
    assert [c.product_id for c in ranked] == [10, 11, 12]
    assert ranked[0].score == pytest.approx(0.8)  # (0.8 + 0.8) / total weight 2


def test_the_reason_is_the_example_that_contributed_most():
    lists = {1: nlist((10, 0.5)), 2: nlist((10, 0.9))}
    (top,) = feed.score([Example(1, 1.0, 1), Example(2, 1.0, 2)], lists)
    assert top.because == 2
    (top,) = feed.score([Example(1, 3.0, 1), Example(2, 1.0, 2)], lists)
    assert top.because == 1  # 3 x 0.5 outweighs 1 x 0.9


def test_look_alikes_of_a_negative_lose_score_and_the_negative_is_gone():
    lists = {
        1: nlist((10, 0.9), (11, 0.85), (12, 0.6)),
        99: nlist((10, 0.95), (13, 0.9)),  # the "not interested" product and its look-alikes
    }
    plain = feed.score([Example(1, 1.0, 1)], lists)
    assert [c.product_id for c in plain][:2] == [10, 11]
    ids = [
        c.product_id for c in feed.score([Example(1, 1.0, 1)], lists, negatives=[99], excluded={1})
    ]
    assert 99 not in ids and 1 not in ids
    pushed = feed.score([Example(1, 1.0, 1)], lists, negatives=[99])
    assert [c.product_id for c in pushed] == [11, 12, 10]
    assert pushed[-1].score == pytest.approx(0.9 - feed.NEGATIVE_WEIGHT * 0.95)


def test_a_ranking_splits_the_pushed_down_candidates_off():
    lists = {1: nlist((10, 0.9), (11, 0.5), (12, 0.4)), 99: nlist((11, 0.8))}
    kept, pushed = feed.score([Example(1, 1.0, 1)], lists, negatives=[99]).split()
    assert [c.product_id for c in kept] == [10, 12]
    assert [c.product_id for c in pushed] == [11] and pushed[0].score < 0


def test_excluded_products_and_missing_lists():
    lists = {1: nlist((10, 0.9), (11, 0.8)), 2: None}
    ranked = feed.score([Example(1, 1.0, 1), Example(2, 5.0, 2)], lists, excluded={10})
    assert [c.product_id for c in ranked] == [11]
    assert ranked[0].score == pytest.approx(0.8)  # an example without a list adds no weight
    assert len(feed.score([Example(2, 1.0, 2)], lists)) == 0
    assert list(feed.score([], lists)) == []


# -- choosing --------------------------------------------------------------------------------


def candidates(kinds: str) -> list[Candidate]:
    """One candidate per letter, best first; the letter is its kind."""
    return [Candidate(i, 1.0 - i / 100, 0) for i in range(len(kinds))]


def test_the_first_row_holds_at_most_a_few_of_one_kind():
    kinds = "AAAAAAABBC"
    chosen = feed.choose(
        candidates(kinds), lambda pid: kinds[pid], lambda pid: True, 10, row=6, per_kind=3
    )
    ids = [c.product_id for c in chosen]
    assert [kinds[i] for i in ids[:6]] == list("AAABBC")
    # The held-back As come right after the row, in their order.
    assert ids == [0, 1, 2, 7, 8, 9, 3, 4, 5, 6]


def test_choosing_skips_ineligible_and_stops_reading_once_n_are_chosen():
    read: list[int] = []

    def ranked():
        for c in candidates("ABCDEFGHIJ"):
            read.append(c.product_id)
            yield c

    chosen = feed.choose(ranked(), lambda pid: pid, lambda pid: pid % 2 == 0, 3)
    assert [c.product_id for c in chosen] == [0, 2, 4]
    assert read == [0, 1, 2, 3, 4]


def test_one_kind_only_still_fills_n():
    chosen = feed.choose(candidates("A" * 9), lambda pid: "A", lambda pid: True, 8)
    assert [c.product_id for c in chosen] == list(range(8))
    assert feed.choose(candidates("AB"), lambda pid: "A", lambda pid: True, 0) == []


def test_spreading_gives_up_after_holding_back_enough():
    kinds = "A" * 10 + "B"
    chosen = feed.choose(
        candidates(kinds), lambda pid: kinds[pid], lambda pid: True, 6, per_kind=2, max_held_back=3
    )
    assert [c.product_id for c in chosen] == [0, 1, 2, 3, 4, 5]


# -- the simulated shoppers ------------------------------------------------------------------


def small_catalogue() -> sim.Catalogue:
    kinds = [("Men", "Shirts"), ("Women", "Heels"), ("Men", "Watches")]
    colours = ["Red", "Blue", "Black", None]
    rows = [(k, colours[(i // 3) % 4]) for i, k in enumerate(kinds * 24)]
    return sim.Catalogue(
        ids=np.arange(100, 100 + len(rows)),
        genders=[k[0] for k, _ in rows],
        types=[k[1] for k, _ in rows],
        colours=[c for _, c in rows],
    )


def test_shoppers_like_products_of_their_target_and_half_have_a_colour():
    cat = small_catalogue()
    targets = sim.Targets(cat)
    shoppers = sim.draw_shoppers(cat, 40, seed=3)
    assert len(shoppers) == 40
    assert sum(s.colour is not None for s in shoppers) == 20
    for s in shoppers:
        assert len(s.likes) == sim.LIKES and set(s.likes) <= set(s.views)
        assert all(targets.matches(s, pid) for pid in s.views)
        assert (
            len(targets.rows(s.gender, s.article_type, s.colour)) - len(s.views) >= sim.MIN_OTHERS
        )
    assert sim.draw_shoppers(cat, 40, seed=3) == shoppers  # the seed fixes the draw


def test_most_viewed_counts_other_shoppers_only_and_leaves_likes_out():
    cat = small_catalogue()
    shoppers = [
        sim.Shopper("Men", "Shirts", None, likes=(100,), views=(100, 103)),
        sim.Shopper("Men", "Shirts", None, likes=(103,), views=(103, 106)),
    ]
    recommend = sim.most_viewed(cat, shoppers)
    assert recommend(0, 2) == [103, 106]  # its own views do not count; 100 is liked
    assert recommend(1, 1) == [100]


def test_hit_rates_and_the_colour_to_mark():
    cat = small_catalogue()
    targets = sim.Targets(cat)
    shopper = sim.Shopper("Men", "Shirts", None, likes=(100,), views=(100,))
    shirts = [int(cat.ids[r]) for r in targets.rows("Men", "Shirts", None)]
    heels = [int(cat.ids[r]) for r in targets.rows("Women", "Heels", None)]
    rates = sim.hit_rates(targets, [shopper, shopper], [shirts[1:4] + heels[:1], heels[:4]], 4)
    assert rates == {"hit_rate": 3 / 8, "any_hit": 0.5}
    feed_ids = shirts[1:7]
    colour = sim.colour_to_mark(targets, shopper, feed_ids)
    assert colour == targets.colour(feed_ids[0])
    marks = sim.products_to_mark(targets, shopper, feed_ids, colour, seed=0)
    assert len(marks) == sim.MARKS and all(targets.colour(m) == colour for m in marks)
    assert 100 not in marks
    share = sim.colour_share(targets, feed_ids, colour)
    assert 0 < share <= 1
