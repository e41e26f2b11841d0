"""Site-wide security acceptance tests: CSRF on every form, admin-only pages, hostile
uploads, security headers, cookies and error pages.

Routes are discovered from ``app.url_map`` so forms and admin pages added later are
covered without touching this file.
"""

from __future__ import annotations

import io
import os
import re
import struct
import zlib
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask
from PIL import Image
from sqlalchemy import func, select
from werkzeug.routing import Rule

from tests.conftest import AuthActions, add_product, csrf_token_from, make_image_bytes
from webapp import models
from webapp.errors import MESSAGES
from webapp.extensions import db
from webapp.models import Product
from webapp.uploads import store_image, validate_image

PRODUCT_ID = 42
SKIPPED_METHODS = {"HEAD", "OPTIONS"}


# --- helpers ----------------------------------------------------------------------------


def is_api(rule: Rule) -> bool:
    """JSON API routes authenticate differently and are tested with the API."""
    return rule.rule == "/api" or rule.rule.startswith("/api/")


def rule_url(rule: Rule, product_id: int = PRODUCT_ID) -> str:
    """A concrete URL for a rule, with the existing product's id for every parameter."""
    built = rule.build({arg: product_id for arg in rule.arguments}, append_unknown=False)
    assert built is not None, f"cannot build a URL for {rule.rule}"
    return built[1]


def form_routes(app: Flask) -> list[Rule]:
    """Every non-API route that accepts POST."""
    return sorted(
        (
            r
            for r in app.url_map.iter_rules()
            if "POST" in r.methods and r.endpoint != "static" and not is_api(r)
        ),
        key=lambda r: r.rule,
    )


def admin_requests(app: Flask) -> list[tuple[str, str, str]]:
    """(method, url, endpoint) for every method of every admin route."""
    found = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("admin."):
            for method in sorted(rule.methods - SKIPPED_METHODS):
                found.append((method, rule_url(rule), rule.endpoint))
    return sorted(found)


def media_files(app: Flask) -> list[str]:
    """Every file under MEDIA_FOLDER (temporary ones included), relative and sorted."""
    root = app.config["MEDIA_FOLDER"]
    found = []
    for folder, _dirs, files in os.walk(root):
        found += [os.path.relpath(os.path.join(folder, f), root) for f in files]
    return sorted(found)


def snapshot(app: Flask) -> tuple[dict[str, list[str]], list[str]]:
    """Every row of every table, plus the media folder: "nothing changed" means equal."""
    with app.app_context():
        tables = {
            table.name: sorted(repr(tuple(row)) for row in db.session.execute(table.select()))
            for table in db.metadata.sorted_tables
        }
        db.session.remove()
    return tables, media_files(app)


def product_count(app: Flask) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(Product))


def seed_product(app: Flask) -> None:
    """A product with a stored uploaded photo, so deleting or editing it would show."""
    with app.app_context():
        image = validate_image(make_image_bytes(), max_pixels=10**6)
        path = store_image(image, app.config["MEDIA_FOLDER"])
        add_product(id=PRODUCT_ID, name="Guarded Shirt", image_path=path, image_sha256=image.sha256)


def probe_body() -> dict:
    """A body that a form would accept if the token were not checked (so a change would show)."""
    return {
        "name": "Forged product",
        "email": "forged@example.com",
        "password": "forged password 123",
        "confirm": "forged password 123",
        "password_confirm": "forged password 123",
        "base_colour": "Red",
        "active": "y",
        "colour": "Red",
        "image": (io.BytesIO(make_image_bytes()), "forged.jpg"),
    }


def assert_no_stack_trace(response) -> None:
    body = response.get_data(as_text=True)
    for leak in ("Traceback", 'File "', "werkzeug", "sqlalchemy", "jinja2", "Error:"):
        assert leak not in body, f"{leak!r} leaked into a {response.status_code} page"


# --- a. CSRF on every POST form ----------------------------------------------------------


@pytest.fixture
def csrf_admin(csrf_app):
    """A csrf_app client signed in (through the real form, with a token) as an admin."""
    client = csrf_app.test_client()
    response = AuthActions(csrf_app, client).login(role="admin")
    assert response.status_code == 302, "admin sign-in failed"
    seed_product(csrf_app)
    return client


def test_route_discovery_finds_the_forms(csrf_app):
    endpoints = {r.endpoint for r in form_routes(csrf_app)}
    assert {
        "admin.product_create",
        "admin.product_edit",
        "admin.product_delete",
        "admin.product_deactivate",
        "admin.product_reactivate",
        "account.login",
        "account.logout",
    } <= endpoints
    assert not any(r.rule.startswith("/api/") for r in form_routes(csrf_app))


@pytest.mark.parametrize("token", [None, "forged-token"], ids=["missing", "forged"])
def test_every_post_form_rejects_a_missing_or_forged_csrf_token(csrf_app, csrf_admin, token):
    before = snapshot(csrf_app)
    for rule in form_routes(csrf_app):
        body = probe_body()
        if token is not None:
            body["csrf_token"] = token
        url = rule_url(rule)
        response = csrf_admin.post(url, data=body, content_type="multipart/form-data")
        assert response.status_code == 400, f"POST {url} without a valid token: {response.status}"
        assert b"The form expired or was tampered with" in response.data, url
        assert_no_stack_trace(response)
        assert snapshot(csrf_app) == before, f"POST {url} without a valid token changed data"
    # Signing out is a form too: the admin is still signed in.
    assert csrf_admin.get("/admin/products").status_code == 200


def test_the_same_forms_work_with_a_valid_token(csrf_app, csrf_admin):
    """Control for the test above: with the page's token, the change does happen."""
    token = csrf_token_from(csrf_admin.get("/admin/products/new"))
    body = {**probe_body(), "csrf_token": token}
    response = csrf_admin.post("/admin/products/new", data=body, content_type="multipart/form-data")
    assert response.status_code == 302
    assert product_count(csrf_app) == 2

    page = csrf_admin.get(f"/admin/products/{PRODUCT_ID}/delete")
    response = csrf_admin.post(
        f"/admin/products/{PRODUCT_ID}/delete", data={"csrf_token": csrf_token_from(page)}
    )
    assert response.status_code == 302
    assert product_count(csrf_app) == 1


# --- b. admin pages are for admins only --------------------------------------------------


def test_admin_route_discovery_covers_the_area(app):
    endpoints = {endpoint for _m, _u, endpoint in admin_requests(app)}
    assert {
        "admin.index",
        "admin.product_list",
        "admin.product_create",
        "admin.product_edit",
        "admin.product_delete",
        "admin.product_deactivate",
        "admin.product_reactivate",
        "admin.product_image",
    } <= endpoints
    methods = {m for m, _u, _e in admin_requests(app)}
    assert methods == {"GET", "POST"}


def test_shoppers_get_403_on_every_admin_route(app, client, auth):
    seed_product(app)
    auth.login(role="shopper")
    before = snapshot(app)
    for method, url, _endpoint in admin_requests(app):
        data = probe_body() if method == "POST" else None
        response = client.open(url, method=method, data=data)
        assert response.status_code == 403, f"{method} {url} as a shopper: {response.status}"
        assert MESSAGES[403].encode() in response.data
        assert b"Guarded Shirt" not in response.data
        assert_no_stack_trace(response)
    assert snapshot(app) == before


def test_anonymous_visitors_are_redirected_to_sign_in_on_every_admin_route(app, client):
    seed_product(app)
    before = snapshot(app)
    for method, url, _endpoint in admin_requests(app):
        data = probe_body() if method == "POST" else None
        response = client.open(url, method=method, data=data)
        assert response.status_code == 302, f"{method} {url} anonymously: {response.status}"
        location = urlsplit(response.location)
        assert location.path == "/account/login", response.location
        # They come back to the page they asked for once signed in (a page, not a POST URL).
        expected = url if method == "GET" else "/admin/products"
        assert parse_qs(location.query)["next"] == [expected]
    assert snapshot(app) == before
    # The sign-in page explains why the visitor is there.
    assert b"Please sign in" in client.get(response.location).data


def test_signing_in_from_the_redirect_leads_back_to_the_admin_page(app, client, auth):
    auth.create_user("boss@example.com", role=models.Role.ADMIN)
    response = client.get("/admin/products/new")
    response = client.post(
        response.location, data={"email": "boss@example.com", "password": "correct horse"}
    )
    assert response.status_code == 302
    assert response.location == "/admin/products/new"


# --- c. hostile uploads to the admin create form ------------------------------------------


def png_declaring(width: int, height: int) -> bytes:
    """A ~70-byte PNG whose header claims ``width`` x ``height`` pixels."""
    data = bytearray(make_image_bytes("PNG", size=(1, 1)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def truncated_jpeg() -> bytes:
    """The first half of a JPEG with enough detail that half the pixels are missing."""
    noisy = io.BytesIO()
    Image.frombytes("RGB", (120, 120), os.urandom(120 * 120 * 3)).save(noisy, "JPEG")
    data = noisy.getvalue()
    return data[: len(data) // 2]


def animated_webp() -> bytes:
    frames = [Image.new("RGB", (20, 20), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:])
    return buf.getvalue()


HOSTILE_UPLOADS = {
    "text-named-jpg": (b"not an image at all, just text", "photo.jpg", "not a JPEG, PNG or WebP"),
    "html-named-png": (b"<html><script>alert(1)</script></html>", "x.png", "not a JPEG, PNG or"),
    "truncated-jpeg": (truncated_jpeg(), "cut.jpg", "incomplete"),
    "decompression-bomb": (png_declaring(30_000, 30_000), "bomb.png", "too large"),
    "zero-bytes": (b"", "empty.jpg", "The file is empty."),
    "gif-named-jpg": (make_image_bytes("GIF"), "really-a-gif.jpg", "not a JPEG, PNG or WebP"),
    "animated-webp": (animated_webp(), "moving.webp", "Animated images are not accepted"),
    "wrong-extension": (make_image_bytes("JPEG"), "photo.exe", "Only JPEG, PNG or WebP"),
}


@pytest.fixture
def admin_client(app, client, auth):
    auth.login(role="admin")
    return client


@pytest.mark.parametrize("case", list(HOSTILE_UPLOADS))
def test_hostile_uploads_get_a_clear_message_and_leave_nothing_behind(app, admin_client, case):
    data, filename, message = HOSTILE_UPLOADS[case]
    response = admin_client.post(
        "/admin/products/new",
        data={"name": "Probe", "image": (io.BytesIO(data), filename)},
        content_type="multipart/form-data",
    )
    assert response.status_code == 400
    text = response.get_data(as_text=True)
    # The message sits with the photo field, where the admin looks.
    assert re.search(
        r'<ul class="errors" id="image-errors">\s*<li>[^<]*' + re.escape(message), text
    )
    assert_no_stack_trace(response)
    assert product_count(app) == 0
    assert media_files(app) == []


def test_images_over_the_pixel_limit_are_refused(app, admin_client):
    app.config["MAX_IMAGE_PIXELS"] = 100 * 100
    photo = make_image_bytes("JPEG", size=(101, 100))
    response = admin_client.post(
        "/admin/products/new",
        data={"name": "Probe", "image": (io.BytesIO(photo), "big.jpg")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 400
    assert b"The image is too large (101 x 100 pixels)" in response.data
    assert product_count(app) == 0 and media_files(app) == []


def test_a_png_named_jpg_is_stored_by_its_content(app, admin_client):
    """The name is only metadata: a real PNG called .jpg is accepted and stored as .png."""
    photo = make_image_bytes("PNG")
    response = admin_client.post(
        "/admin/products/new",
        data={"name": "Misnamed", "image": (io.BytesIO(photo), "photo.jpg")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 302
    [stored] = media_files(app)
    assert stored.endswith(".png") and "photo" not in stored
    image = admin_client.get(response.location.replace("/edit", "/image"))
    assert image.mimetype == "image/png"
    assert image.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("with_csrf", [False, True], ids=["form", "form-with-csrf"])
def test_uploads_over_max_content_length_get_the_413_page(request, with_csrf):
    the_app = request.getfixturevalue("csrf_app" if with_csrf else "app")
    the_app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024
    client = the_app.test_client()
    AuthActions(the_app, client).login(role="admin")
    body = {"name": "Too big", "image": (io.BytesIO(os.urandom(1536 * 1024)), "big.jpg")}
    if with_csrf:
        body["csrf_token"] = csrf_token_from(client.get("/admin/products/new"))
    response = client.post("/admin/products/new", data=body, content_type="multipart/form-data")
    assert response.status_code == 413
    assert b"That upload is too large: the limit is 1 MB." in response.data
    assert_no_stack_trace(response)
    assert product_count(the_app) == 0
    assert media_files(the_app) == []


# --- d. headers, cookies, error pages ----------------------------------------------------


def assert_security_headers(response) -> None:
    csp = response.headers.get("Content-Security-Policy", "")
    assert "default-src 'self'" in csp
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert response.headers.get("X-Content-Type-Options") == "nosniff"
    assert response.headers.get("X-Frame-Options") == "DENY"
    assert response.headers.get("Referrer-Policy")


def html_pages(app: Flask) -> list[str]:
    """A URL for every non-API page that answers GET."""
    return sorted(
        {
            rule_url(r)
            for r in app.url_map.iter_rules()
            if "GET" in r.methods and r.endpoint != "static" and not is_api(r)
        }
    )


def test_security_headers_on_every_page_and_error(app, client, auth):
    seed_product(app)
    auth.login(role="admin")
    pages = html_pages(app)
    assert "/admin/products" in pages
    for url in pages:
        response = client.get(url)
        assert response.status_code < 500, f"GET {url}: {response.status}"
        assert_security_headers(response)
    for url in ("/no-such-page", "/static/css/site.css", f"/admin/products/{PRODUCT_ID}/image"):
        assert_security_headers(client.get(url))


def test_pages_have_no_inline_script_or_style_that_the_csp_would_block(app, client, auth):
    seed_product(app)
    auth.login(role="admin")
    inline_script = re.compile(rb"<script(?![^>]*\bsrc=)[^>]*>", re.I)
    inline_style = re.compile(rb"<style[\s>]|\sstyle=|\son[a-z]+=", re.I)
    for url in html_pages(app):
        response = client.get(url, follow_redirects=True)
        if response.mimetype != "text/html":
            continue
        assert not inline_script.search(response.data), f"inline <script> on {url}"
        assert not inline_style.search(response.data), f"inline style or handler on {url}"


def test_session_cookie_is_httponly_and_samesite_lax(app, client, auth):
    response = auth.login(role="shopper")
    cookies = response.headers.getlist("Set-Cookie")
    session = [c for c in cookies if c.startswith(app.config.get("SESSION_COOKIE_NAME", "session"))]
    assert session, f"sign-in set no session cookie: {cookies}"
    for cookie in session:
        assert "HttpOnly" in cookie
        assert "SameSite=Lax" in cookie
    for cookie in cookies:  # remember-me and any other cookie: never readable by scripts
        assert "HttpOnly" in cookie


def test_404_page_is_friendly_and_shows_no_internals(client):
    response = client.get("/definitely/not/here")
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert MESSAGES[404].encode() in response.data
    assert_no_stack_trace(response)


@pytest.mark.parametrize("propagate", [True, False], ids=["testing", "production"])
def test_500_page_shows_no_stack_trace(tmp_path, propagate):
    from tests.conftest import _make_app

    app = _make_app(
        tmp_path,
        f"sqlite:///{tmp_path / 'boom.sqlite3'}",
        {"PROPAGATE_EXCEPTIONS": propagate, "TESTING": propagate},
    )

    def boom() -> str:
        raise RuntimeError("secret internal detail: /etc/shop/passwords")

    app.add_url_rule("/__test_boom", "test_boom", boom)
    response = app.test_client().get("/__test_boom")
    assert response.status_code == 500
    assert MESSAGES[500].encode() in response.data
    assert b"secret internal detail" not in response.data
    assert b"RuntimeError" not in response.data
    assert_no_stack_trace(response)
    assert_security_headers(response)


def test_a_failing_admin_view_gives_the_500_page(app, client, auth, monkeypatch):
    auth.login(role="admin")

    def broken_list():
        raise ValueError("column foo does not exist")

    monkeypatch.setitem(app.view_functions, "admin.product_list", broken_list)
    response = client.get("/admin/products")
    assert response.status_code == 500
    assert b"column foo" not in response.data
    assert_no_stack_trace(response)
    # The next request is served normally (the broken transaction was rolled back).
    assert client.get("/admin/products/new").status_code == 200
