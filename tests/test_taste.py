"""A shopper's taste: the rules of its lists, kept in the session for anonymous shoppers and in
the database for accounts, merged on sign-in, cleared from the page."""

from __future__ import annotations

import csv
import itertools
import os
import random
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from tests.conftest import AuthActions, add_product
from webapp.extensions import db
from webapp.models import Product, TasteItem, User
from webapp.preferences import SESSION_KEY as PREFERENCES_KEY
from webapp.preferences import Preferences
from webapp.taste import VIEWS_KEPT, Taste, entries, services, user_taste
from webapp.taste.services import SESSION_KEY, SESSION_LIMITS


def ids(pairs) -> list[int]:
    return [pid for pid, _ in pairs]


def session_taste(client) -> Taste | None:
    with client.session_transaction() as sess:
        data = sess.get(SESSION_KEY)
    return None if data is None else Taste.from_session(data)


def stored_taste(app, email: str) -> Taste:
    with app.app_context():
        user = db.session.scalars(select(User).filter_by(email=email)).one()
        return user_taste(user.id)


@pytest.fixture
def clock(monkeypatch):
    """The taste's clock moves ten seconds per change, so which came first is never a tie
    (the session keeps whole seconds)."""
    ticks = itertools.count(1_780_000_000, 10)
    monkeypatch.setattr(services, "time", SimpleNamespace(time=lambda: float(next(ticks))))


def add_products(app, count: int = 60) -> None:
    with app.app_context():
        for pid in range(1, count + 1):
            add_product(id=pid, name=f"Product {pid}")


# --- the rules, on values --------------------------------------------------------------------


def test_views_keep_the_last_fifty_newest_first_and_move_a_revisited_product_up():
    taste = Taste()
    for t, pid in enumerate([*range(1, 56), 30]):
        taste = entries.viewed(taste, pid, float(t))
    assert len(taste.views) == VIEWS_KEPT == 50
    assert ids(taste.views)[:3] == [30, 55, 54]
    assert ids(taste.views).count(30) == 1
    assert set(ids(taste.views)) == set(range(6, 56))  # 1..5 fell off the end
    assert taste.views[0] == (30, 55.0)


def test_a_like_keeps_its_first_time_and_clears_a_not_interested_mark():
    taste = entries.marked_not_interested(Taste(), 7, 1.0)
    taste = entries.liked(taste, 7, 2.0)
    taste = entries.liked(taste, 8, 3.0)
    taste = entries.liked(taste, 7, 4.0)
    assert taste.likes == [(8, 3.0), (7, 2.0)]
    assert taste.not_interested == []
    assert entries.unliked(taste, 8).likes == [(7, 2.0)]


def test_not_interested_leaves_likes_and_views_and_blocks_later_views():
    taste = entries.liked(entries.viewed(Taste(), 5, 1.0), 5, 2.0)
    taste = entries.marked_not_interested(taste, 5, 3.0)
    assert taste.likes == [] and taste.views == [] and taste.not_interested == [(5, 3.0)]
    assert entries.viewed(taste, 5, 4.0).views == []  # never a positive and a negative
    assert entries.unmarked_not_interested(taste, 5).is_empty


def test_merge_keeps_the_newest_of_each_and_the_later_of_a_like_and_a_mark():
    stored = Taste(likes=[(1, 10.0)], views=[(2, 5.0), (3, 1.0)], not_interested=[(4, 9.0)])
    anonymous = Taste(
        likes=[(4, 20.0), (6, 2.0)],  # 4: liked after the account marked it
        views=[(3, 8.0)],
        not_interested=[(1, 5.0)],  # 1: marked before the account liked it
    )
    merged = entries.merged(stored, anonymous)
    assert merged.likes == [(4, 20.0), (1, 10.0), (6, 2.0)]
    assert merged.views == [(3, 8.0), (2, 5.0)]
    assert merged.not_interested == []


def test_clear_rejects_an_unknown_list():
    taste = Taste(likes=[(1, 1.0)], views=[(2, 1.0)])
    assert entries.cleared(taste, "likes") == Taste(views=[(2, 1.0)])
    assert entries.cleared(taste, "all") == Taste()
    with pytest.raises(ValueError, match="kind must be one of"):
        entries.cleared(taste, "everything")


def test_a_tampered_or_old_session_value_reads_as_what_it_can():
    data = {"likes": [[1, 2.5], ["x", 1], [3], None, [1, 9]], "views": "nonsense"}
    assert Taste.from_session(data) == Taste(likes=[(1, 2.5)])
    assert Taste.from_session(None) == Taste()


def largest_preferences(app) -> Preferences:
    """Every value of the reference catalogue ticked, where it is at hand."""
    styles = os.path.join(app.config["CATALOG_PATH"], "styles.csv")
    if not os.path.exists(styles):
        return Preferences(disliked_colours={"Red", "Navy Blue", "Olive"}, genders={"Women"})
    with open(styles, newline="", encoding="utf-8", errors="replace") as f:
        rows = list(csv.DictReader(f))
    return Preferences(
        disliked_colours={r["baseColour"] for r in rows if r["baseColour"]},
        genders={r["gender"] for r in rows},
        hidden={
            "master": {r["masterCategory"] for r in rows},
            "sub": {r["subCategory"] for r in rows},
            "type": {r["articleType"] for r in rows},
        },
    )


def test_the_fullest_anonymous_taste_fits_a_cookie_beside_the_largest_preferences(app):
    rng = random.Random(7)
    now = 1_780_000_000.123456
    full = Taste(
        **{
            kind: [
                (rng.randint(1_000, 60_000), now - rng.random() * 30 * 86_400)
                for _ in range(SESSION_LIMITS[kind])
            ]
            for kind in entries.KINDS
        }
    )
    cookie = app.session_interface.get_signing_serializer(app).dumps(
        {
            SESSION_KEY: full.to_session(SESSION_LIMITS),
            PREFERENCES_KEY: largest_preferences(app).to_session(),
            "csrf_token": "x" * 40,
            "_fresh": False,
        }
    )
    assert len(cookie) < 4000  # browsers drop cookies over 4 KB


# --- anonymous shoppers: the session ---------------------------------------------------------


def test_anonymous_views_likes_and_marks_are_kept_in_the_session(app, client):
    add_products(app, 5)
    for pid in (1, 2, 3, 1):
        assert client.get(f"/products/{pid}").status_code == 200
    client.post("/api/products/2/like")
    client.post("/api/products/4/not-interested")
    taste = session_taste(client)
    assert ids(taste.views) == [1, 3, 2]
    assert ids(taste.likes) == [2]
    assert ids(taste.not_interested) == [4]
    assert all(isinstance(at, float) for _, at in taste.views)
    with app.app_context():
        assert db.session.scalar(select(db.func.count(TasteItem.id))) == 0


def test_an_anonymous_shoppers_lists_are_cut_to_the_session_limits(app, client):
    add_products(app, SESSION_LIMITS["likes"] + 3)
    for pid in range(1, SESSION_LIMITS["likes"] + 4):
        assert client.post(f"/api/products/{pid}/like").status_code == 200
    likes = session_taste(client).likes
    assert len(likes) == SESSION_LIMITS["likes"]
    assert likes[0][0] == SESSION_LIMITS["likes"] + 3  # the newest stay


def test_an_inactive_product_page_seen_by_an_admin_is_not_remembered(app, client, auth):
    with app.app_context():
        add_product(id=1, name="Hidden", active=False)
    auth.login(role="admin")
    assert client.get("/products/1").status_code == 200
    assert stored_taste(app, "admin@example.com").is_empty


# --- accounts: the database ------------------------------------------------------------------


def test_signed_in_taste_is_stored_in_the_database(any_db_app):
    app, client = any_db_app, any_db_app.test_client()
    add_products(app, VIEWS_KEPT + 5)
    AuthActions(app, client).login()
    for pid in range(1, VIEWS_KEPT + 3):
        client.get(f"/products/{pid}")
    client.get("/products/10")  # seen again: first
    client.post("/api/products/3/like")
    client.post("/api/products/4/like")
    client.post("/api/products/5/not-interested")

    taste = stored_taste(app, "shopper@example.com")
    assert ids(taste.views)[:2] == [10, VIEWS_KEPT + 2]
    assert len(taste.views) == VIEWS_KEPT - 1  # 5 was marked: out of the history too
    assert 5 not in ids(taste.views)
    assert ids(taste.likes) == [4, 3]
    assert ids(taste.not_interested) == [5]
    assert session_taste(client) is None
    with app.app_context():
        rows = db.session.scalars(select(TasteItem)).all()
        assert len(rows) == VIEWS_KEPT - 1 + 3  # older views were deleted, not kept
        assert {row.kind for row in rows} == {"likes", "views", "not_interested"}


def test_deleting_a_product_or_a_user_removes_their_taste_rows(any_db_app):
    app, client = any_db_app, any_db_app.test_client()
    add_products(app, 3)
    AuthActions(app, client).login()
    client.post("/api/products/1/like")
    client.post("/api/products/2/like")
    with app.app_context():
        db.session.delete(db.session.scalars(select(User)).one())
        db.session.commit()
        assert db.session.scalars(select(TasteItem)).all() == []
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        AuthActions(app, client).login(email="second@example.com")
        client.post("/api/products/3/like")
        with app.app_context():
            db.session.delete(db.session.get(Product, 3))
            db.session.commit()
            assert db.session.scalars(select(TasteItem)).all() == []


# --- merge on sign-in ------------------------------------------------------------------------


def test_sign_in_merges_the_session_taste_into_the_account(any_db_app, clock):
    app, client = any_db_app, any_db_app.test_client()
    add_products(app, 8)
    auth = AuthActions(app, client)
    auth.login(email="merge@example.com")
    client.post("/api/products/1/like")
    client.post("/api/products/2/not-interested")
    client.get("/products/3")
    auth.logout()

    # Anonymous again: like 2 (marked by the account earlier), view 4 and 3, mark 1 (liked by
    # the account earlier), like 6, and like a product that is deleted before signing in.
    client.post("/api/products/2/like")
    client.get("/products/4")
    client.get("/products/3")
    client.post("/api/products/1/not-interested")
    client.post("/api/products/6/like")
    client.post("/api/products/8/like")
    with app.app_context():
        db.session.delete(db.session.get(Product, 8))
        db.session.commit()

    assert auth.login(email="merge@example.com").status_code == 302
    taste = stored_taste(app, "merge@example.com")
    assert ids(taste.likes) == [6, 2]
    assert ids(taste.views) == [3, 4]
    assert ids(taste.not_interested) == [1]
    assert session_taste(client) is None
    # The account's lists now serve the signed-in shopper's pages.
    html = client.get("/account/taste").get_data(as_text=True)
    assert html.count('aria-pressed="true"') == 2


def test_register_keeps_the_anonymous_taste(app, client):
    add_products(app, 3)
    client.get("/products/1")
    client.post("/api/products/2/like")
    response = client.post(
        "/account/register",
        data={"email": "fresh@example.com", "password": "s3cret-pass", "confirm": "s3cret-pass"},
    )
    assert response.status_code == 302
    taste = stored_taste(app, "fresh@example.com")
    assert ids(taste.views) == [1] and ids(taste.likes) == [2]
    assert session_taste(client) is None
    client.post("/account/logout")
    assert session_taste(client) is None  # signed out: an anonymous shopper with nothing kept


# --- the page: see and clear -----------------------------------------------------------------


def taste_page(client) -> str:
    response = client.get("/account/taste")
    assert response.status_code == 200
    return response.get_data(as_text=True)


@pytest.mark.parametrize("signed_in", [False, True], ids=["anonymous", "signed-in"])
def test_the_page_lists_and_clears_each_list(app, client, auth, signed_in):
    add_products(app, 6)
    if signed_in:
        auth.login()
    client.get("/products/1")
    client.get("/products/2")
    client.post("/api/products/3/like")
    client.post("/api/products/4/not-interested")
    html = taste_page(client)
    assert 'id="taste-likes"' in html and "Product 3" in html
    assert "Product 1" in html and "Product 2" in html and "Product 4" in html

    response = client.post("/account/taste/clear", data={"kind": "views"})
    assert response.status_code == 303
    html = taste_page(client)
    assert "Your recently viewed products were cleared." in html
    assert "Product 1" not in html and "Product 2" not in html
    assert "You have not opened a product page yet." in html
    assert "Product 3" in html and "Product 4" in html

    client.post("/account/taste/clear", data={"kind": "all"})
    html = taste_page(client)
    assert "Product 3" not in html and "Product 4" not in html
    if signed_in:
        assert stored_taste(app, "shopper@example.com").is_empty
        with app.app_context():
            assert db.session.scalars(select(TasteItem)).all() == []
    else:
        assert session_taste(client) is None


def test_clearing_an_unknown_list_clears_nothing(app, client):
    add_products(app, 2)
    client.post("/api/products/1/like")
    response = client.post("/account/taste/clear", data={"kind": "everything"})
    assert response.status_code == 303
    assert "Nothing was cleared" in taste_page(client)
    assert ids(session_taste(client).likes) == [1]


def test_the_api_lists_the_taste_and_cleared_history_is_gone_from_it(app, client):
    add_products(app, 3)
    client.get("/products/1")
    client.post("/api/products/2/like")
    body = client.get("/api/taste").get_json()
    assert [p["id"] for p in body["views"]] == [1]
    assert [p["id"] for p in body["likes"]] == [2]
    assert body["not_interested"] == [] and body["csrf_token"]
    client.post("/account/taste/clear", data={"kind": "views"})
    body = client.get("/api/taste").get_json()
    assert body["views"] == [] and [p["id"] for p in body["likes"]] == [2]
