"""The admin area: inventory pages and the services behind them."""

from __future__ import annotations

import hashlib
import io
import os
import re
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import func, select

from tests.conftest import AuthActions, add_product, make_image_bytes
from webapp.admin import services
from webapp.admin.services import ProductChange
from webapp.extensions import db
from webapp.models import Product
from webapp.uploads import validate_image

FULL_FORM = {
    "name": "  Red Check Shirt  ",
    "gender": "Men",
    "master_category": "Apparel",
    "sub_category": "Topwear",
    "article_type": "Shirts",
    "base_colour": "Red",
    "season": "Fall",
    "year": "2013",
    "usage": "Casual",
    "price": "19.99",
    "stock": "7",
    "active": "y",
}


def upload(data: bytes | None = None, name: str = "photo.jpg") -> tuple[io.BytesIO, str]:
    """A file field value for the test client."""
    return io.BytesIO(make_image_bytes() if data is None else data), name


def media_files(app) -> list[str]:
    """Every file under MEDIA_FOLDER, relative, sorted (temporary files included)."""
    root = app.config["MEDIA_FOLDER"]
    found = []
    for folder, _dirs, files in os.walk(root):
        found += [os.path.relpath(os.path.join(folder, f), root) for f in files]
    return sorted(found)


def product_count(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(Product))


@pytest.fixture
def admin(app, client, auth):
    """The test client, signed in as a store admin."""
    auth.login(role="admin")
    return client


@pytest.fixture
def db_admin(any_db_app):
    """A client signed in as admin on SQLite and on PostgreSQL."""
    client = any_db_app.test_client()
    AuthActions(any_db_app, client).login(role="admin")
    return client


@pytest.fixture
def changes(monkeypatch):
    """Record what the admin services report to the embedding-upkeep hook."""
    seen: list[tuple[int, ProductChange]] = []
    monkeypatch.setattr(
        services, "on_product_changed", lambda pid, change: seen.append((pid, change))
    )
    return seen


# --- access -----------------------------------------------------------------------------


def test_anonymous_visitors_are_sent_to_sign_in_and_come_back(client):
    response = client.get("/admin/products?q=shirt")
    assert response.status_code == 302
    location = urlsplit(response.location)
    assert location.path == "/account/login"
    assert parse_qs(location.query)["next"] == ["/admin/products?q=shirt"]
    page = client.get(response.location)
    assert b"Please sign in" in page.data


def test_shoppers_get_a_403_page(client, auth):
    auth.login(role="shopper")
    response = client.get("/admin/products")
    assert response.status_code == 403
    assert b"permission" in response.data


def test_admins_see_the_admin_link_and_the_list(admin):
    assert b'href="/admin/products"' in admin.get("/").data
    assert admin.get("/admin/").location == "/admin/products"
    assert admin.get("/admin/products").status_code == 200


# --- list -------------------------------------------------------------------------------


def listed_ids(response) -> list[int]:
    ids = [int(i) for i in re.findall(rb'href="/admin/products/(\d+)/edit">', response.data)]
    return list(dict.fromkeys(ids))  # each row links twice (name and "Edit")


def test_list_searches_names_and_exact_ids_and_filters_by_status(any_db_app, db_admin):
    with any_db_app.app_context():
        add_product(id=10, name="Blue Denim Jacket")
        add_product(id=11, name="Red Shirt", active=False)
        add_product(id=12, name="Shirt 10% off")
        add_product(id=110, name="Green Cap")

    assert listed_ids(db_admin.get("/admin/products")) == [110, 12, 11, 10]
    assert listed_ids(db_admin.get("/admin/products?q=SHIRT")) == [12, 11]
    # Digits match an exact id (not 110) or a name containing them.
    assert listed_ids(db_admin.get("/admin/products?q=10")) == [12, 10]
    # LIKE wildcards are literal characters in the search box.
    assert listed_ids(db_admin.get("/admin/products?q=%25")) == [12]
    assert listed_ids(db_admin.get("/admin/products?q=_")) == []
    assert listed_ids(db_admin.get("/admin/products?status=inactive")) == [11]
    assert listed_ids(db_admin.get("/admin/products?status=active&q=shirt")) == [12]
    # Unknown values fall back to the defaults rather than failing.
    assert listed_ids(db_admin.get("/admin/products?status=bogus&page=abc")) == [110, 12, 11, 10]
    # An id beyond the column's range is searched as a name only, without a DB error.
    response = db_admin.get("/admin/products?q=99999999999999999999")
    assert response.status_code == 200
    assert b"No products match" in response.data


def test_list_paginates_and_keeps_filters_in_page_links(app, admin, monkeypatch):
    from webapp.admin import views

    monkeypatch.setattr(views, "PAGE_SIZE", 5)
    with app.app_context():
        for i in range(1, 13):
            add_product(id=i, name=f"Shirt {i}", active=i % 4 != 0)

    first = admin.get("/admin/products?q=shirt&status=active")
    assert listed_ids(first) == [11, 10, 9, 7, 6]
    assert b"9 products, page 1 of 2" in first.data
    page_links = re.findall(rb'href="(/admin/products\?[^"]*page=2[^"]*)"', first.data)
    assert page_links, "no link to page 2"
    for link in page_links:
        assert b"q=shirt" in link and b"status=active" in link
    second = admin.get("/admin/products?page=2&q=shirt&status=active")
    assert listed_ids(second) == [5, 3, 2, 1]
    beyond = admin.get("/admin/products?page=99")
    assert beyond.status_code == 200 and listed_ids(beyond) == []


# --- create -----------------------------------------------------------------------------


def test_create_stores_every_attribute_and_the_photo(any_db_app, db_admin, changes):
    with any_db_app.app_context():
        add_product(id=15970, name="Existing")
    photo = make_image_bytes("PNG", size=(60, 80))
    response = db_admin.post(
        "/admin/products/new",
        data={**FULL_FORM, "image": upload(photo, "my holiday.jpg")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 302
    assert response.location == "/admin/products/15971/edit"
    page = db_admin.get(response.location)
    assert "Product 15971 “Red Check Shirt” was created.".encode() in page.data

    with any_db_app.app_context():
        product = db.session.get(Product, 15971)
        assert product.name == "Red Check Shirt"
        assert (product.gender, product.master_category, product.sub_category) == (
            "Men",
            "Apparel",
            "Topwear",
        )
        assert (product.article_type, product.base_colour, product.season, product.usage) == (
            "Shirts",
            "Red",
            "Fall",
            "Casual",
        )
        assert (product.year, product.price, product.stock, product.active) == (
            2013,
            Decimal("19.99"),
            7,
            True,
        )
        # Stored by content type under a generated name; the uploaded name is not used.
        assert re.fullmatch(r"products/[0-9a-f]{32}\.png", product.image_path)
        assert product.image_sha256 == hashlib.sha256(photo).hexdigest()
        stored = os.path.join(any_db_app.config["MEDIA_FOLDER"], product.image_path)
        with open(stored, "rb") as fh:
            assert fh.read() == photo
    assert media_files(any_db_app) == [product.image_path]
    assert changes == [(15971, ProductChange.CREATED)]


def test_create_leaves_price_and_stock_empty_when_not_given(app, admin):
    data = {"name": "Plain Tee", "price": "", "stock": "", "image": upload()}
    response = admin.post("/admin/products/new", data=data, content_type="multipart/form-data")
    assert response.status_code == 302
    with app.app_context():
        product = db.session.scalars(select(Product)).one()
        assert product.id == 1
        assert (product.price, product.stock, product.gender, product.active) == (
            None,
            None,
            None,
            False,  # the box was not ticked
        )
        assert product.in_stock


@pytest.mark.parametrize(
    ("changes_to_form", "message"),
    [
        ({"name": "   "}, "Please give the product a name."),
        ({"name": "x" * 301}, "Field cannot be longer than 300 characters."),
        ({"stock": "-1"}, "Stock must be 0 or more."),
        ({"stock": "lots"}, "Not a valid integer value."),
        ({"price": "-0.01"}, "Enter a price from 0 to 99,999,999.99."),
        ({"price": "NaN"}, "Enter a price from 0 to 99,999,999.99."),
        ({"price": "1e12"}, "Enter a price from 0 to 99,999,999.99."),
        ({"year": "20133"}, "Enter a year such as 2012."),
        ({"base_colour": "x" * 61}, "Field cannot be longer than 60 characters."),
        ({"image": None}, "Please choose a photo."),
        ({"image": upload(make_image_bytes("GIF"), "anim.gif")}, "Only JPEG, PNG or WebP"),
        ({"image": upload(b"", "empty.jpg")}, "The file is empty."),
        ({"image": upload(b"<?php echo 1; ?>", "shell.jpg")}, "not a JPEG, PNG or WebP image"),
    ],
    ids=[
        "blank-name",
        "long-name",
        "negative-stock",
        "text-stock",
        "negative-price",
        "nan-price",
        "huge-price",
        "bad-year",
        "long-colour",
        "no-photo",
        "gif-name",
        "empty-file",
        "script",
    ],
)
def test_create_rerenders_the_form_with_a_message_and_saves_nothing(
    app, admin, changes, changes_to_form, message
):
    data = {**FULL_FORM, "image": upload()}
    data.update(changes_to_form)
    data = {k: v for k, v in data.items() if v is not None}
    response = admin.post("/admin/products/new", data=data, content_type="multipart/form-data")
    assert response.status_code == 400
    assert message.encode() in response.data
    assert b'aria-invalid="true"' in response.data
    # What was typed is kept so the admin only fixes the mistake.
    if "name" not in changes_to_form:
        assert b'value="Red Check Shirt"' in response.data
    assert product_count(app) == 0
    assert media_files(app) == []
    assert changes == []


def test_create_form_suggests_existing_attribute_values(app, admin):
    with app.app_context():
        add_product(base_colour="Navy Blue", article_type="Kurtas")
    page = admin.get("/admin/products/new")
    assert page.status_code == 200
    assert b'enctype="multipart/form-data"' in page.data
    assert b'list="options-base_colour"' in page.data
    assert b'<datalist id="options-base_colour">' in page.data
    assert b'<option value="Navy Blue">' in page.data
    assert b'<option value="Kurtas">' in page.data


def test_create_retries_once_when_another_admin_took_the_id(app, monkeypatch, changes):
    with app.app_context():
        add_product(id=5, name="Taken")
        real_next_id = services._next_product_id
        calls = iter([5])  # first answer: an id that is already taken

        monkeypatch.setattr(
            services, "_next_product_id", lambda: next(calls, None) or real_next_id()
        )
        image = validate_image(make_image_bytes(), max_pixels=10**6)
        product = services.create_product({"name": "Second"}, image)
        assert product.id == 6
        assert db.session.get(Product, 5).name == "Taken"
    assert len(media_files(app)) == 1
    assert changes == [(6, ProductChange.CREATED)]


def test_create_gives_up_after_two_clashes_and_removes_the_photo(app, admin, monkeypatch, changes):
    with app.app_context():
        add_product(id=5, name="Taken")
    monkeypatch.setattr(services, "_next_product_id", lambda: 5)
    response = admin.post(
        "/admin/products/new",
        data={**FULL_FORM, "image": upload()},
        content_type="multipart/form-data",
    )
    assert response.status_code == 409
    assert b"Please try again" in response.data
    assert product_count(app) == 1
    assert media_files(app) == []
    assert changes == []


def test_services_refuse_unknown_fields_and_missing_names(app):
    image = validate_image(make_image_bytes(), max_pixels=10**6)
    with app.app_context():
        with pytest.raises(ValueError, match="unknown product fields: id"):
            services.create_product({"name": "X", "id": 1}, image)
        with pytest.raises(ValueError, match="name"):
            services.create_product({"name": " "}, image)
    assert media_files(app) == []


# --- edit -------------------------------------------------------------------------------


def create_via_form(client, **fields) -> int:
    data = {**FULL_FORM, "image": upload(), **fields}
    response = client.post("/admin/products/new", data=data, content_type="multipart/form-data")
    assert response.status_code == 302, response.data
    return int(response.location.split("/")[-2])


def test_edit_changes_attributes_and_keeps_the_photo(any_db_app, db_admin, changes):
    product_id = create_via_form(db_admin)
    with any_db_app.app_context():
        old = db.session.get(Product, product_id)
        old_path, old_sha = old.image_path, old.image_sha256

    page = db_admin.get(f"/admin/products/{product_id}/edit")
    assert b'value="Red Check Shirt"' in page.data and b'value="19.99"' in page.data

    data = {**FULL_FORM, "name": "Red Shirt", "price": "", "stock": "0", "active": ""}
    del data["active"]
    response = db_admin.post(
        f"/admin/products/{product_id}/edit", data=data, content_type="multipart/form-data"
    )
    assert response.status_code == 302
    assert b"was saved" in db_admin.get(response.location).data
    with any_db_app.app_context():
        product = db.session.get(Product, product_id)
        assert (product.name, product.price, product.stock, product.active) == (
            "Red Shirt",
            None,
            0,
            False,
        )
        assert (product.image_path, product.image_sha256) == (old_path, old_sha)
    assert media_files(any_db_app) == [old_path]
    assert changes[-1] == (product_id, ProductChange.UPDATED)


def test_edit_replaces_the_photo_and_removes_the_old_file(any_db_app, db_admin, changes):
    product_id = create_via_form(db_admin)
    with any_db_app.app_context():
        old_path = db.session.get(Product, product_id).image_path
    new_photo = make_image_bytes("WEBP", colour=(0, 200, 0))
    response = db_admin.post(
        f"/admin/products/{product_id}/edit",
        data={**FULL_FORM, "image": upload(new_photo, "new.webp")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 302
    with any_db_app.app_context():
        product = db.session.get(Product, product_id)
        assert product.image_path.endswith(".webp")
        assert product.image_sha256 == hashlib.sha256(new_photo).hexdigest()
    assert media_files(any_db_app) == [product.image_path]
    assert old_path not in media_files(any_db_app)
    assert changes[-1] == (product_id, ProductChange.IMAGE_CHANGED)


def test_edit_with_a_bad_photo_changes_nothing(app, admin, changes):
    product_id = create_via_form(admin)
    before = media_files(app)
    response = admin.post(
        f"/admin/products/{product_id}/edit",
        data={**FULL_FORM, "name": "Changed", "image": upload(make_image_bytes()[:200], "x.jpg")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 400
    assert b"incomplete" in response.data or b"could not be read" in response.data
    with app.app_context():
        assert db.session.get(Product, product_id).name == "Red Check Shirt"
    assert media_files(app) == before
    assert changes == [(product_id, ProductChange.CREATED)]


def test_replacing_a_catalogue_photo_read_in_place_never_deletes_it(app, admin, tmp_path):
    catalogue_photo = tmp_path / "catalogue" / "images" / "1163.jpg"
    catalogue_photo.parent.mkdir(parents=True)
    catalogue_photo.write_bytes(make_image_bytes())
    with app.app_context():
        add_product(id=1163, name="Catalogue Tee", image_path=str(catalogue_photo))
    assert admin.get("/admin/products/1163/image").data == catalogue_photo.read_bytes()
    response = admin.post(
        "/admin/products/1163/edit",
        data={**FULL_FORM, "image": upload()},
        content_type="multipart/form-data",
    )
    assert response.status_code == 302
    assert catalogue_photo.exists()
    response = admin.post("/admin/products/1163/delete")
    assert response.status_code == 302
    assert catalogue_photo.exists()
    assert media_files(app) == []  # the uploaded replacement went with the product


def test_a_photo_shared_by_two_products_stays_until_neither_uses_it(app, admin):
    (tmp_media := os.path.join(app.config["MEDIA_FOLDER"], "catalog")) and os.makedirs(tmp_media)
    with open(os.path.join(tmp_media, "shared.jpg"), "wb") as fh:
        fh.write(make_image_bytes())
    with app.app_context():
        add_product(id=1, image_path="catalog/shared.jpg")
        add_product(id=2, image_path="catalog/shared.jpg")
    assert admin.post("/admin/products/1/delete").status_code == 302
    assert media_files(app) == ["catalog/shared.jpg"]
    assert admin.post("/admin/products/2/delete").status_code == 302
    assert media_files(app) == []


# --- (de)activate -----------------------------------------------------------------------


def test_deactivate_and_reactivate(app, admin, changes):
    with app.app_context():
        add_product(id=3, name="Toggle Tee")
    response = admin.post("/admin/products/3/deactivate", data={"next": "/admin/products?q=tee"})
    assert response.status_code == 302
    assert response.location == "/admin/products?q=tee"
    assert b"Product 3 was deactivated" in admin.get(response.location).data
    with app.app_context():
        assert db.session.get(Product, 3).active is False
    # The photo stays reachable for admins while the product is hidden from the shop.
    page = admin.get("/admin/products/3/edit")
    assert b"Inactive (hidden from the shop)" in page.data
    assert b'action="/admin/products/3/reactivate"' in page.data

    # Never an open redirect: a foreign "next" falls back to the product's page.
    response = admin.post("/admin/products/3/reactivate", data={"next": "//evil.example/x"})
    assert response.location == "/admin/products/3/edit"
    with app.app_context():
        assert db.session.get(Product, 3).active is True
    # Repeating an action changes nothing and reports nothing new.
    admin.post("/admin/products/3/reactivate")
    assert changes == [(3, ProductChange.DEACTIVATED), (3, ProductChange.ACTIVATED)]


def test_actions_on_missing_products_are_404(admin):
    for url in (
        "/admin/products/404/edit",
        "/admin/products/404/delete",
        "/admin/products/404/image",
    ):
        response = admin.get(url)
        assert response.status_code == 404
        assert b"no product with id 404" in response.data
    assert admin.post("/admin/products/404/deactivate").status_code == 404
    assert admin.post("/admin/products/404/delete").status_code == 404


def test_image_of_a_product_without_a_photo_file_is_404(app, admin):
    with app.app_context():
        add_product(id=8, image_path=None)
        add_product(id=9, image_path="products/missing.jpg")
    assert admin.get("/admin/products/8/image").status_code == 404
    assert admin.get("/admin/products/9/image").status_code == 404


# --- delete -----------------------------------------------------------------------------


def test_delete_asks_first_then_removes_the_row_and_the_uploaded_photo(
    any_db_app, db_admin, changes
):
    product_id = create_via_form(db_admin, name="Doomed Dress")
    assert len(media_files(any_db_app)) == 1

    page = db_admin.get(f"/admin/products/{product_id}/delete")
    assert page.status_code == 200
    assert b"Doomed Dress" in page.data and b"cannot be undone" in page.data
    assert product_count(any_db_app) == 1  # asking deletes nothing

    response = db_admin.post(f"/admin/products/{product_id}/delete")
    assert response.status_code == 302
    assert response.location == "/admin/products"
    assert (
        f"Product {product_id} “Doomed Dress” was deleted.".encode()
        in db_admin.get(response.location).data
    )
    assert product_count(any_db_app) == 0
    assert media_files(any_db_app) == []
    assert changes[-1] == (product_id, ProductChange.DELETED)
