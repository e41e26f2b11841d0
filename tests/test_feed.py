"""The "For you" feed: what it never shows, why each card is there, the labelled fallback,
N under preferences (a property), the catalogue row, the page and the API; real Redis
lists and a real database, lists written straight from synthetic vectors."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ml.cache import NeighbourCache
from ml.neighbours import all_neighbours
from tests.conftest import add_product
from webapp.eligibility import Eligibility
from webapp.extensions import db, get_redis
from webapp.feed import NEW_IN, RECENT_VIEW_S, feed_for
from webapp.models import Product
from webapp.preferences import Preferences
from webapp.taste import Taste

MODEL = "synthetic-feed-model"
KINDS = [
    ("Men", "Tshirts", "Topwear"),
    ("Women", "Heels", "Shoes"),
    ("Men", "Watches", "Watches"),
    ("Women", "Tops", "Topwear"),
]
COLOURS = ["Red", "Blue", "Black"]


def build_shop(app, *, per: int = 5, k: int = 8, seed: int = 0, first_id: int = 5000) -> dict:
    """Products of every kind x colour (``per`` of each) with lists from vectors that put a
    kind first and a colour second, served under MODEL; returns {id: (kind, colour)}."""
    rng = np.random.default_rng(seed)
    labels, vectors = {}, []
    with app.app_context():
        pid = first_id
        for ki, (gender, article_type, sub) in enumerate(KINDS):
            for ci, colour in enumerate(COLOURS):
                for j in range(per):
                    add_product(
                        id=pid,
                        name=f"{gender} {colour} {article_type} {j}",
                        gender=gender,
                        article_type=article_type,
                        sub_category=sub,
                        base_colour=colour,
                        year=2010 + (pid % 7),
                    )
                    v = np.zeros(len(KINDS) + len(COLOURS))
                    v[ki], v[len(KINDS) + ci] = 1.0, 0.6
                    vectors.append(v + rng.normal(0, 0.15, v.shape))
                    labels[pid] = ((gender, article_type), colour)
                    pid += 1
        write_lists(np.asarray(list(labels), np.int64), np.asarray(vectors, np.float32), k)
    return labels


def write_lists(ids: np.ndarray, vectors: np.ndarray, k: int) -> None:
    """Every product's K nearest, written and served as the indexing job does."""
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    idx, scores = all_neighbours(vectors, k)
    cache = NeighbourCache(get_redis())
    cache.write_lists(MODEL, ids, ids[idx], scores)
    cache.write_index(MODEL, ids, scores[:, -1], k, complete=True, full_build=True)
    cache.activate(MODEL)


@pytest.fixture
def shop(app, redis_db):
    return app, build_shop(app)


def ids_of(result) -> list[int]:
    return [item.product.id for item in result.items]


def liked(*pids: int, now: float) -> Taste:
    return Taste(likes=[(pid, now - 60 * (i + 1)) for i, pid in enumerate(pids)])


# -- what the feed never shows, and why each card is there ----------------------------------


def test_liked_products_never_appear_and_their_look_alikes_do(shop):
    app, labels = shop
    now = time.time()
    likes = [5000, 5001, 5002]  # three red Men's Tshirts
    with app.app_context():
        result = feed_for(liked(*likes, now=now), Preferences(), 12, now=now)
    ids = ids_of(result)
    assert result.title == "For you" and result.source == "taste"
    assert len(ids) == 12 and len(set(ids)) == 12
    assert not set(ids) & set(likes)
    assert labels[ids[0]] == (("Men", "Tshirts"), "Red")  # the closest look-alike first
    # At most three of one kind in the first row.
    first_row = [labels[pid][0] for pid in ids[:6]]
    assert max(first_row.count(kind) for kind in set(first_row)) <= 3


def test_each_card_says_which_liked_or_viewed_product_brought_it(shop):
    app, labels = shop
    now = time.time()
    taste = Taste(likes=[(5000, now - 60)], views=[(5015, now - 2 * RECENT_VIEW_S)])
    with app.app_context():
        result = feed_for(taste, Preferences(), 10, now=now)
        names = {p.id: p.name for p in db.session.scalars(db.select(Product))}
    assert result.source == "taste"
    for item in result.items:
        assert item.because is not None and item.because.id in (5000, 5015)
        how = "liked" if item.because.id == 5000 else "viewed"
        assert item.how == how
        assert item.reasons == [f"Because you {how} {names[item.because.id]}"]
    assert {item.because.id for item in result.items} == {5000, 5015}


def test_not_interested_products_never_appear_and_their_look_alikes_sink(shop):
    app, labels = shop
    now = time.time()
    likes = [5000, 5005, 5010]  # a red, a blue and a black Men's Tshirt
    with app.app_context():
        before = ids_of(feed_for(liked(*likes, now=now), Preferences(), 12, now=now))
        black = [pid for pid in before if labels[pid][1] == "Black"]
        marks = [pid for pid in before if labels[pid] == (("Men", "Tshirts"), "Black")][:2]
        assert marks, before
        taste = liked(*likes, now=now)
        taste.not_interested = [(pid, now) for pid in marks]
        after = ids_of(feed_for(taste, Preferences(), 12, now=now))
    assert len(after) == 12 and not set(after) & set(marks)
    assert len([pid for pid in after if labels[pid][1] == "Black"]) < len(black)


def test_products_viewed_in_the_last_hour_wait_older_ones_may_come_back(shop):
    app, _ = shop
    now = time.time()
    recent, older = 5001, 5002
    taste = Taste(
        likes=[(5000, now - 60)],
        views=[(recent, now - 60), (older, now - RECENT_VIEW_S - 60)],
    )
    with app.app_context():
        ids = ids_of(feed_for(taste, Preferences(), 40, now=now))
    assert recent not in ids and 5000 not in ids
    assert older in ids


def test_preferences_apply_while_choosing(shop):
    app, labels = shop
    now = time.time()
    prefs = Preferences(disliked_colours={"Red"}, genders={"Men"})
    with app.app_context():
        result = feed_for(liked(5000, 5001, now=now), prefs, 12, now=now)
    ids = ids_of(result)
    assert len(ids) == 12
    assert all(labels[pid][1] != "Red" and labels[pid][0][0] == "Men" for pid in ids)


# -- the labelled fallback -------------------------------------------------------------------


def test_a_shopper_without_signals_gets_the_newest_products_labelled(shop):
    app, _ = shop
    with app.app_context():
        result = feed_for(Taste(), Preferences(), 8)
        newest = list(
            db.session.scalars(
                db.select(Product.id).order_by(Product.year.desc(), Product.id).limit(8)
            )
        )
    assert result.title == NEW_IN and result.source == "new-in"
    assert ids_of(result) == newest
    assert all(item.reasons == [NEW_IN] and item.because is None for item in result.items)


def test_without_served_lists_the_feed_falls_back_and_says_why(app, redis_db):
    now = time.time()
    with app.app_context():
        for i in range(5):
            add_product(id=100 + i, name=f"Shirt {i}")
        result = feed_for(liked(100, now=now), Preferences(), 3, now=now)
    assert result.source == "new-in" and len(result.items) == 3
    assert 100 not in ids_of(result)
    assert "being prepared" in result.message


def test_a_short_feed_widens_to_a_second_hop_then_to_new_products(app, redis_db):
    labels = build_shop(app, per=3, k=2)
    now = time.time()
    with app.app_context():
        result = feed_for(liked(5000, now=now), Preferences(), len(labels) - 1, now=now)
    ids = ids_of(result)
    assert len(ids) == len(labels) - 1 and 5000 not in ids
    hows = [item.how for item in result.items]
    assert hows[0] == "liked" and "new" in hows
    # Second-hop products keep the liked product as their reason.
    assert sum(h == "liked" for h in hows) > 2


# -- N under preferences: a property ---------------------------------------------------------

GENDERS = ["Men", "Women"]
TYPES = ["Tshirts", "Heels", "Watches"]


@pytest.fixture
def random_shop(app, redis_db):
    """40 products of random kinds, colours, stock and active flags; lists with K=3 for 30."""
    rng = np.random.default_rng(7)
    with app.app_context():
        for i in range(40):
            add_product(
                id=700 + i,
                name=f"Product {i}",
                gender=GENDERS[i % 2],
                article_type=TYPES[(i // 2) % 3],
                base_colour=COLOURS[(i // 6) % 3],
                stock=[None, 0, 3][(i // 3) % 3],
                active=i % 7 != 0,
                year=2000 + i % 5,
            )
        ids = np.arange(700, 730, dtype=np.int64)
        write_lists(ids, rng.standard_normal((30, 6)).astype(np.float32), 3)
        products = list(db.session.scalars(db.select(Product)))
        db.session.expunge_all()
    return app, products


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    likes=st.lists(st.integers(700, 739), max_size=4, unique=True),
    views=st.lists(st.tuples(st.integers(700, 739), st.booleans()), max_size=6),
    marks=st.lists(st.integers(700, 739), max_size=4, unique=True),
    colours=st.sets(st.sampled_from(COLOURS), max_size=2),
    genders=st.sets(st.sampled_from(GENDERS), max_size=1),
    hidden_types=st.sets(st.sampled_from(TYPES), max_size=2),
    n=st.integers(1, 30),
)
def test_n_come_back_whenever_n_eligible_exist(
    random_shop, likes, views, marks, colours, genders, hidden_types, n
):
    app, products = random_shop
    now = time.time()
    marks = [pid for pid in marks if pid not in likes]
    taste = Taste(
        likes=[(pid, now - 100 * i) for i, pid in enumerate(likes)],
        views=[(pid, now - (60 if recent else 2 * RECENT_VIEW_S)) for pid, recent in views],
        not_interested=[(pid, now) for pid in marks],
    )
    prefs = Preferences(disliked_colours=set(colours), genders=set(genders))
    prefs.hidden["type"] = set(hidden_types)
    eligibility = Eligibility.of(prefs)
    never = {pid for pid, _ in taste.likes} | set(marks)
    never |= {pid for pid, at in taste.views if at >= now - RECENT_VIEW_S}
    allowed = {p.id for p in products if eligibility.allows(p) and p.id not in never}
    with app.app_context():
        ids = ids_of(feed_for(taste, prefs, n, now=now))
    assert len(ids) == min(n, len(allowed))
    assert len(set(ids)) == len(ids)
    assert set(ids) <= allowed


# -- pages and API ---------------------------------------------------------------------------


def test_the_catalogue_shows_the_row_once_the_shopper_likes_something(shop, client):
    app, labels = shop
    html = client.get("/").get_data(as_text=True)
    assert "feed-card" not in html  # no signals yet: the catalogue alone
    for pid in (5000, 5001, 5002):
        assert client.post(f"/api/products/{pid}/like").status_code == 200
    html = client.get("/").get_data(as_text=True)
    assert 'id="feed-title">For you<' in html
    assert html.count('class="product-card feed-card"') == 6
    assert "Because you liked" in html and "See more for you" in html
    # Not on later pages, nor on a filtered catalogue.
    assert "feed-card" not in client.get("/?type=Heels").get_data(as_text=True)


def test_the_for_you_page_labels_its_fallback_then_fills_with_picks(shop, client):
    html = client.get("/for-you").get_data(as_text=True)
    assert 'id="feed-title">New in<' in html and "not picked for you" in html
    assert html.count('class="product-card feed-card"') == 24
    client.post("/api/products/5000/like")
    html = client.get("/for-you").get_data(as_text=True)
    assert 'id="feed-title">For you<' in html and "Because you liked" in html


def test_the_api_answers_in_the_shape_of_similar_products(shop, client):
    app, labels = shop
    body = client.get("/api/for-you?n=5").get_json()
    assert body["status"] == "ok" and body["source"] == "new-in" and body["title"] == NEW_IN
    assert len(body["items"]) == 5 and body["items"][0]["because"] is None
    client.post("/api/products/5000/like")
    client.post("/api/products/5001/not-interested")
    body = client.get("/api/for-you?n=7").get_json()
    assert body["source"] == "taste" and body["model"] == MODEL
    ids = [item["id"] for item in body["items"]]
    assert len(ids) == 7 and 5000 not in ids and 5001 not in ids
    item = body["items"][0]
    assert {"id", "name", "score", "url", "image_url", "reasons", "because"} <= item.keys()
    assert item["because"] == {
        "id": 5000,
        "name": labels and item["because"]["name"],
        "how": "liked",
    }
    assert client.get("/api/for-you?n=0").status_code == 400
    assert client.get("/api/for-you?n=51").status_code == 400
