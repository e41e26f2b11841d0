"""Similar products on product pages and in the API: personalised, N filled, robust to outages."""

from __future__ import annotations

import logging

from tests.conftest import add_product
from webapp import registry
from webapp.extensions import db
from webapp.models import Product
from webapp.preferences import SESSION_KEY, Preferences


def similar_ids(client, product_id: int, query: str = "") -> list[int]:
    response = client.get(f"/api/products/{product_id}/similar{query}")
    assert response.status_code == 200, response.get_json()
    return [item["id"] for item in response.get_json()["items"]]


def test_product_page_shows_eight_similar_products(catalogue):
    app, model_id, _ = catalogue  # K=5 cached: the other 3 come from the filtered search
    client = app.test_client()
    page = client.get("/products/1000")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Similar products" in html
    assert html.count('class="product-card similar-card"') == 8
    assert "% alike" in html and "same type: Shirts" in html
    assert 'href="/products/1000"' not in html.split("Similar products", 1)[1]


def test_api_shape_and_plain_list(catalogue):
    app, model_id, _ = catalogue
    body = app.test_client().get("/api/products/1006/similar?n=4").get_json()
    assert body["status"] == "ok" and body["model"] == model_id and body["product_id"] == 1006
    assert len(body["items"]) == 4
    item = body["items"][0]
    assert {"id", "name", "score", "url", "image_url", "reasons"} <= item.keys()
    assert item["image_url"] == f"/products/{item['id']}/image"
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)
    with app.app_context():
        cached_ids, _ = registry.neighbour_cache().get_list(model_id, 1006)
    cached = cached_ids[:4].tolist()
    assert [i["id"] for i in body["items"]] == cached


def test_disliked_colour_and_gender_apply_while_choosing(catalogue):
    app, _, _ = catalogue
    client = app.test_client()
    with app.app_context():
        for pid in range(1001, 1030, 2):
            db.session.get(Product, pid).gender = "Women"
        db.session.commit()
    with client.session_transaction() as session:
        session[SESSION_KEY] = Preferences(disliked_colours={"Red", "Blue"}).to_session()
    ids = similar_ids(client, 1000, "?n=8")
    assert len(ids) == 8
    with app.app_context():
        colours = {db.session.get(Product, pid).base_colour for pid in ids}
    assert not colours & {"Red", "Blue"}

    ids = similar_ids(client, 1000, "?n=8&gender=Women&exclude_colours=Green")
    with app.app_context():
        rows = [db.session.get(Product, pid) for pid in ids]
    assert len(rows) == 8
    assert all(p.gender == "Women" and p.base_colour not in {"Red", "Blue", "Green"} for p in rows)


def test_rows_are_read_a_window_at_a_time(catalogue):
    """A page reads n + SPARE_ROWS rows of its cached list, more only as they run out."""
    app, model_id, _ = catalogue
    from sqlalchemy import event

    from webapp.similar.services import SPARE_ROWS, _row_loader

    with app.app_context():
        ids = [int(pid) for pid in registry.neighbour_cache().get_list(model_id, 1000)[0]]
        assert len(ids) == 5
        batches: list[str] = []

        def record(conn, cursor, statement, parameters, context, executemany):
            if "FROM product" in statement:
                batches.append(statement)

        rows: dict[int, Product] = {}
        load_through = _row_loader(ids, rows, n=1)  # windows of 3, then 3 (all read so far)
        event.listen(db.engine, "before_cursor_execute", record)
        try:
            load_through(ids[0])
            assert set(rows) == set(ids[: 1 + SPARE_ROWS])  # the first window: n + spare
            load_through(ids[2])
            load_through(99999)  # not in the list: nothing to read
            assert len(batches) == 1
            load_through(ids[3])  # the next window: as many as read so far (the list's end)
            assert set(rows) == set(ids) and len(batches) == 2
            load_through(ids[4])
            assert len(batches) == 2
        finally:
            event.remove(db.engine, "before_cursor_execute", record)


def test_inactive_out_of_stock_and_self_never_shown(catalogue):
    app, _, _ = catalogue
    client = app.test_client()
    first = similar_ids(client, 1000, "?n=3")
    with app.app_context():
        db.session.get(Product, first[0]).active = False
        db.session.get(Product, first[1]).stock = 0
        db.session.commit()
    again = similar_ids(client, 1000, "?n=3")
    assert first[0] not in again and first[1] not in again and 1000 not in again
    assert len(again) == 3


def test_n_is_all_eligible_when_fewer_exist(catalogue):
    app, _, _ = catalogue
    client = app.test_client()
    with client.session_transaction() as session:
        session[SESSION_KEY] = Preferences(
            disliked_colours={"Red", "Blue", "Green", "Black", "White"}
        ).to_session()
    ids = similar_ids(client, 1000, "?n=20")
    assert len(ids) == 5  # the five yellow products are all that is eligible


def test_bad_parameters_get_400(catalogue):
    app, _, _ = catalogue
    client = app.test_client()
    for query in ("?n=0", "?n=abc", "?n=51", "?gender=Men&gender=Women"):
        response = client.get(f"/api/products/1000/similar{query}")
        assert response.status_code == 400
        assert "error" in response.get_json()
    assert client.get("/api/products/999999/similar").status_code == 404


def test_product_not_yet_embedded(catalogue):
    app, _, _ = catalogue
    with app.app_context():
        add_product(id=3000, name="Brand new")
    client = app.test_client()
    assert "being prepared" in client.get("/products/3000").get_data(as_text=True)
    response = client.get("/api/products/3000/similar")
    assert response.status_code == 503 and response.get_json()["status"] == "pending"


def test_redis_down_pages_still_render(app, caplog):
    app.config["REDIS_URL"] = "redis://127.0.0.1:1/0"  # nothing listens there
    with app.app_context():
        add_product(id=7, name="Lonely shirt")
    client = app.test_client()
    with caplog.at_level(logging.WARNING):
        page = client.get("/products/7")
    assert page.status_code == 200
    assert "Lonely shirt" in page.get_data(as_text=True)
    assert "Recommendations are unavailable right now." in page.get_data(as_text=True)
    assert any("similar products unavailable" in r.message for r in caplog.records)
    api = client.get("/api/products/7/similar")
    assert api.status_code == 503 and api.get_json()["status"] == "unavailable"


def test_admin_create_reaches_similar_lists(catalogue, monkeypatch):
    """An admin's new product is embedded and enters its neighbours' lists (task body run inline)."""
    app, model_id, media = catalogue
    from webapp.admin import services as admin_services
    from worker import tasks

    ran = []

    def run_inline(name, args=(), kwargs=None, **options):
        assert name == "worker.tasks.ml_update_product"
        ran.append(tasks.ml_update_product(*args))

    monkeypatch.setattr(admin_services, "send_task", run_inline)
    photo = (media / "p0.jpg").read_bytes()
    with app.app_context():
        from webapp.uploads import validate_image

        product = admin_services.create_product(
            {"name": "Admin red", "base_colour": "Red", "gender": "Men", "article_type": "Shirts"},
            validate_image(photo, max_pixels=app.config["MAX_IMAGE_PIXELS"]),
        )
        assert ran and ran[0]["action"] == "embedded"
        assert product.id in registry.neighbour_cache().get_list(model_id, 1000)[0].tolist()
        admin_services.delete_product(product.id)
        assert ran[-1]["action"] == "removed"
        assert registry.neighbour_cache().get_list(model_id, product.id) is None
