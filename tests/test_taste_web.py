"""The heart and "Not interested": buttons on every card, form posts without JavaScript (CSRF
kept), the JSON API, and similar products that never show a product marked "not interested"."""

from __future__ import annotations

import re

import pytest

from tests.conftest import AuthActions, add_product, csrf_token_from
from webapp import registry
from webapp.taste import Taste
from webapp.taste.services import SESSION_KEY


def session_taste(client) -> Taste:
    with client.session_transaction() as sess:
        return Taste.from_session(sess.get(SESSION_KEY))


def similar_ids(client, product_id: int, n: int = 8) -> list[int]:
    response = client.get(f"/api/products/{product_id}/similar?n={n}")
    assert response.status_code == 200, response.get_json()
    return [item["id"] for item in response.get_json()["items"]]


def card_ids(html: str, css_class: str) -> list[int]:
    """Product ids of the cards of one kind on a page, in order."""
    return [int(pid) for pid in re.findall(rf'class="{css_class}" data-product-id="(\d+)"', html)]


# --- the buttons on the pages ----------------------------------------------------------------


def test_every_card_has_a_heart_that_posts_the_pages_taste_form(app, client):
    with app.app_context():
        for pid in (1, 2, 3):
            add_product(id=pid, name=f"Shirt {pid}")
    client.post("/api/products/2/like")
    html = client.get("/?q=Shirt").get_data(as_text=True)
    assert html.count('class="like-button"') == 3
    # Each button names the one form that carries the token, and its own action.
    assert html.count('form="taste-form"') == 3
    assert 'formaction="/products/1/like"' in html
    assert 'formaction="/products/2/unlike"' in html  # liked: pressing takes it back
    assert len(re.findall(r'aria-pressed="true"', html)) == 1
    form = re.search(r'<form id="taste-form" method="post" hidden>(.*?)</form>', html, re.S)
    assert form and 'name="csrf_token"' in form.group(1)
    assert 'name="next" value="/?q=Shirt"' in form.group(1)
    assert 'Like<span class="visually-hidden"> Shirt 1</span>' in html
    assert "/static/js/taste.js" in html


def test_the_product_page_has_a_large_heart(app, client):
    with app.app_context():
        add_product(id=1, name="Kurta")
    html = client.get("/products/1").get_data(as_text=True)
    assert 'class="like-button like-button-large"' in html
    assert 'formaction="/products/1/like"' in html


def test_similar_cards_have_the_heart_and_not_interested(catalogue):
    app, _, _ = catalogue
    html = app.test_client().get("/products/1000").get_data(as_text=True)
    similar = html.split("Similar products", 1)[1]
    assert similar.count('class="link-button not-interested-button"') == 8
    assert similar.count('class="like-button"') == 8
    assert 'formaction="/products/' in similar and '/not-interested"' in similar


# --- form posts: no JavaScript ---------------------------------------------------------------


def test_form_posts_go_back_to_the_page_they_came_from(app, client):
    with app.app_context():
        add_product(id=1, name="Kurta")
    response = client.post("/products/1/like", data={"next": "/?page=2"})
    assert response.status_code == 303 and response.headers["Location"] == "/?page=2"
    assert [pid for pid, _ in session_taste(client).likes] == [1]

    # Somewhere off the site is never a way back: the product's page instead.
    response = client.post("/products/1/unlike", data={"next": "https://evil.example/"})
    assert response.headers["Location"] == "/products/1"
    assert session_taste(client).likes == []

    client.post("/products/1/not-interested", data={"next": "/"})
    assert "We will not recommend “Kurta” again." in client.get("/").get_data(as_text=True)
    assert [pid for pid, _ in session_taste(client).not_interested] == [1]
    client.post("/products/1/not-interested/undo")
    assert session_taste(client).not_interested == []


def test_unknown_and_inactive_products_are_404(app, client):
    with app.app_context():
        add_product(id=1, active=False)
    assert client.post("/products/1/like").status_code == 404
    assert client.post("/products/99/not-interested").status_code == 404
    response = client.post("/api/products/99/like")
    assert response.status_code == 404 and response.get_json()["status"] == 404
    assert client.get("/products/1/like").status_code == 405


def test_no_javascript_not_interested_posts_the_form_and_the_card_is_gone(catalogue):
    """What a browser without JavaScript sends when "Not interested" is pressed on a card:
    the page's taste form (token + next) to the button's formaction."""
    app, _, _ = catalogue
    app.config["WTF_CSRF_ENABLED"] = True
    client = app.test_client()
    page = client.get("/products/1000")
    html = page.get_data(as_text=True)
    first = card_ids(html, "product-card similar-card")[0]
    action = f"/products/{first}/not-interested"
    assert f'formaction="{action}"' in html
    form = {"csrf_token": csrf_token_from(page), "next": "/products/1000"}

    response = client.post(action, data=form)
    assert response.status_code == 303 and response.headers["Location"] == "/products/1000"
    html = client.get("/products/1000").get_data(as_text=True)
    cards = card_ids(html, "product-card similar-card")
    assert first not in cards and len(cards) == 8
    assert "will not recommend" in html


# --- CSRF ------------------------------------------------------------------------------------


def test_form_posts_and_api_calls_need_the_csrf_token(csrf_app):
    with csrf_app.app_context():
        add_product(id=1, name="Kurta")
    client = csrf_app.test_client()
    assert client.post("/products/1/like").status_code == 400
    assert client.post("/products/1/not-interested").status_code == 400
    response = client.post("/api/products/1/like")
    assert response.status_code == 400 and "form expired" in response.get_json()["error"]
    assert client.post("/account/taste/clear", data={"kind": "all"}).status_code == 400
    assert session_taste(client).is_empty

    token = csrf_token_from(client.get("/"))
    assert client.post("/products/1/like", data={"csrf_token": token}).status_code == 303
    response = client.post("/api/products/1/not-interested", headers={"X-CSRFToken": token})
    assert response.status_code == 200 and response.get_json()["not_interested"] is True
    # An API client without a page takes the token from GET /api/taste.
    token = client.get("/api/taste").get_json()["csrf_token"]
    response = client.delete("/api/products/1/not-interested", headers={"X-CSRFToken": token})
    assert response.status_code == 200 and response.get_json()["not_interested"] is False


def test_signed_in_form_posts_need_the_csrf_token(csrf_app):
    with csrf_app.app_context():
        add_product(id=1, name="Kurta")
    client = csrf_app.test_client()
    AuthActions(csrf_app, client).login()
    assert client.post("/products/1/like").status_code == 400
    html = client.get("/account/taste").get_data(as_text=True)
    assert "Nothing yet: press the heart" in html


# --- the API ---------------------------------------------------------------------------------


def test_like_and_not_interested_api_answer_like_the_similar_products_api(app, client, auth):
    with app.app_context():
        for pid in (1, 2):
            add_product(id=pid, name=f"Shirt {pid}", price=12.5)
    auth.login()
    body = client.post("/api/products/1/like").get_json()
    body = client.post("/api/products/2/like").get_json()
    assert body["status"] == "ok" and body["product_id"] == 2
    assert body["liked"] is True and body["not_interested"] is False
    assert [item["id"] for item in body["items"]] == [2, 1]
    item = body["items"][0]
    assert {"id", "name", "score", "url", "image_url", "reasons", "price"} <= item.keys()
    assert item["url"] == "/products/2" and item["price"] == "12.50"

    body = client.post("/api/products/2/not-interested").get_json()
    assert body["liked"] is False and body["not_interested"] is True
    assert [item["id"] for item in body["items"]] == [2]
    body = client.delete("/api/products/1/like").get_json()
    assert body["liked"] is False and body["items"] == []
    body = client.delete("/api/products/2/not-interested").get_json()
    assert body["not_interested"] is False and body["items"] == []


# --- similar products ------------------------------------------------------------------------


def test_similar_products_never_show_a_not_interested_product_and_still_fill_n(catalogue):
    app, model_id, _ = catalogue  # K=5 cached lists: the rest come from the filtered search
    client = app.test_client()
    first = similar_ids(client, 1000)
    assert len(first) == 8
    with app.app_context():
        cached = registry.neighbour_cache().get_list(model_id, 1000)[0].tolist()
    marked = [*cached[:3], *first[5:7]]
    for pid in marked:
        assert client.post(f"/api/products/{pid}/not-interested").status_code == 200

    again = similar_ids(client, 1000)
    assert len(again) == 8
    assert not set(again) & set(marked)
    html = client.get("/products/1000").get_data(as_text=True)
    cards = card_ids(html, "product-card similar-card")
    assert len(cards) == 8 and not set(cards) & set(marked)

    # Undo one: it may come back.
    client.delete(f"/api/products/{cached[0]}/not-interested")
    assert cached[0] in similar_ids(client, 1000)


@pytest.mark.parametrize("signed_in", [False, True], ids=["anonymous", "signed-in"])
def test_n_is_the_number_of_products_left_when_most_are_marked(catalogue, signed_in):
    app, _, _ = catalogue
    client = app.test_client()
    if signed_in:
        AuthActions(app, client).login()
    others = [pid for pid in range(1000, 1030) if pid != 1000]
    for pid in others[:24]:  # 5 left
        client.post(f"/api/products/{pid}/not-interested")
    got = similar_ids(client, 1000)
    assert sorted(got) == others[24:]
