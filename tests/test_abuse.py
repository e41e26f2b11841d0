"""Abuse: model ids from outside, server internals in answers, strip-shaped image bombs,
control characters in text, form-part floods, upload and registration limits, and
``Cache-Control: private`` on signed-in pages.

The worker side of the compare guard is tested by calling the task body (as the worker
would) with the model's loader replaced by one that fails the test if it is ever called.
"""

from __future__ import annotations

import io
import re
import struct
import zlib

import pytest
from PIL import ImageFile
from sqlalchemy import func, select

from ml.cache import NeighbourCache
from tests.conftest import AuthActions, add_product, make_image_bytes
from webapp import registry
from webapp.api import views as api_views
from webapp.catalog.parsing import parse_styles
from webapp.extensions import db, get_redis
from webapp.models import Product, User
from webapp.search import services
from webapp.uploads import InvalidImage, validate_image

SERVED = "tiny-seed0-8-avg"
ENABLED = "tiny-seed1-8-avg"
# What must never reach a client: a path with two or more parts, an address, a traceback.
INTERNALS = re.compile(r"(?:/[\w.-]+){2,}|https?:|Traceback|\.py\b|\.h5\b|Errno")


def serve(app, model_id: str = SERVED) -> None:
    """Make ``model_id`` the served model, as a finished list build does."""
    with app.app_context():
        cache = NeighbourCache(get_redis())
        cache.r.hset(cache.key(model_id, "meta"), "complete", 1)
        cache.activate(model_id)


@pytest.fixture
def sent(app, monkeypatch):
    """Every task the web side sends, recorded instead of queued."""
    calls = []
    celery_app = app.extensions["celery"]
    monkeypatch.setattr(celery_app, "send_task", lambda name, **kw: calls.append((name, kw)))
    return calls


def compare(client, **fields):
    photo = make_image_bytes("PNG", size=(40, 40))
    data = {"image_1": (io.BytesIO(photo), "a.png"), "image_2": (io.BytesIO(photo), "b.png")}
    return client.post("/api/compare", data={**data, **fields}, content_type="multipart/form-data")


# -- model ids from outside ---------------------------------------------------------------


@pytest.mark.parametrize(
    "model",
    [
        "efficientnet_lite0-57934424-1024-avg",  # a real backbone at a size nobody serves
        "tiny-seed0-8-max",  # an untrained test model
        "resnet50-00000000-224-avg",  # weights that do not exist
        "No Such Model!",
        "x" * 5000,
    ],
)
def test_compare_naming_an_unserved_model_is_refused_and_nothing_is_queued(
    app, client, redis_db, sent, model
):
    app.config["COMPARE_MODELS"] = [ENABLED]
    serve(app)
    response = compare(client, model=model)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert SERVED in error and ENABLED in error
    assert model not in error  # the answer names the allowed ids, it does not echo input
    assert sent == []  # no search request, so no worker ever hears of that model


def test_compare_naming_the_served_or_an_enabled_model_is_queued(app, client, redis_db, sent):
    app.config.update(COMPARE_MODELS=[ENABLED], SEARCH_WAIT_TIMEOUT=0.0)
    serve(app)
    for model in (SERVED, ENABLED):
        compare(client, model=model)
    assert [kw["args"] for _, kw in sent] and len(sent) == 2
    with app.app_context():
        records = [services.get_request(kw["args"][0]) for _, kw in sent]
    assert [r["model"] for r in records] == [SERVED, ENABLED]


def test_compare_before_any_model_is_served_says_to_leave_model_out(app, client, redis_db, sent):
    response = compare(client, model=SERVED)
    assert response.status_code == 400 and "Leave it out" in response.get_json()["error"]
    assert sent == []


def never(*args):
    raise AssertionError(f"a model was built for a request: {args}")


def queued_compare(app, model: str | None) -> dict:
    """A compare request's record, as the web side writes it into Redis (nothing queued)."""
    photo = validate_image(make_image_bytes("PNG", size=(40, 40)), max_pixels=10_000)
    with app.test_request_context():
        app.extensions["celery"].send_task = lambda *a, **kw: None
        request_id = services.create_request("compare", [photo, photo], model=model)
        return services.get_request(request_id)


def test_the_worker_refuses_an_unserved_model_without_building_it(app, redis_db, monkeypatch):
    from worker.jobs import photo_search, search_requests

    monkeypatch.setattr(registry, "backbone_for", never)
    monkeypatch.setattr(registry, "load_backbone", never)
    app.config["COMPARE_MODELS"] = [ENABLED]
    serve(app)
    # As if the web side's check were bypassed (an old record, a hand-made message).
    record = queued_compare(app, "efficientnet_lite0-57934424-4096-avg")
    with app.app_context():
        state, ended = search_requests.answer(record)
        assert state == "failed" and ended["code"] == 400
        assert SERVED in ended["error"] and ENABLED in ended["error"]
        with pytest.raises(photo_search.SearchError) as refused:
            photo_search.compare_photos(record["images"], "tiny-seed9-8-avg")
    assert refused.value.code == 400


# -- no server internals in answers -------------------------------------------------------


def test_a_model_that_cannot_load_is_a_plain_503_its_reason_goes_to_the_log(
    app, redis_db, monkeypatch, caplog
):
    from worker.jobs import search_requests

    secret = (
        "no weights at /root/.keras/models/resnet50_weights.h5 and the download from "
        "https://storage.googleapis.com/tensorflow/resnet50.h5 failed: [Errno -3]"
    )

    def unavailable(model_id):
        raise registry.ModelUnavailable(secret)

    monkeypatch.setattr(registry, "backbone_for", unavailable)
    serve(app)
    record = queued_compare(app, SERVED)
    with app.app_context():
        state, ended = search_requests.answer(record)
    record = {**record, "state": state, **ended}
    with app.test_request_context():
        body, code = api_views.request_json(record)
    assert code == 503 and body["status"] == "failed"
    assert "could not be loaded" in body["message"]
    assert not INTERNALS.search(body["message"]), body
    assert secret in caplog.text  # the operator still learns why


def error_text(response) -> str:
    """The message part of an error answer (JSON ``error``/``message``, or the page's lead)."""
    if response.is_json:
        body = response.get_json()
        return f"{body.get('error')} {body.get('message')}"
    # A page: its visible text (the markup's own links are not the message).
    return re.sub(r"<[^>]*>", " ", response.get_data(as_text=True))


def test_error_answers_never_show_paths_addresses_or_exception_text(app, client, redis_db):
    auth = AuthActions(app, client)
    serve(app)
    bad_zip = {
        "styles": (io.BytesIO(b"id,productDisplayName\n1,A\n"), "styles.csv"),
        "photos": (io.BytesIO(b"PK\x03\x04 not really a zip"), "photos.zip"),
    }
    anonymous = [
        compare(client, model="resnet50-00000000-224-avg"),
        client.post("/api/compare", data={}, content_type="multipart/form-data"),
        client.post(
            "/api/search",
            data={"image": (io.BytesIO(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40), "x.png")},
            content_type="multipart/form-data",
        ),
        client.post("/api/search", data="garbage", content_type="multipart/form-data"),
        client.get("/api/jobs/../../etc/passwd"),
        client.get("/api/jobs/" + "a" * 32),
        client.get("/api/products/999999/similar"),
        client.get("/api/products/1/similar?n=abc"),
        client.get("/search/jobs/" + "0" * 32),
        client.get("/no/such/page.py"),
        client.delete("/api/search"),
    ]
    auth.login(role="admin")
    admin = [
        client.post(
            "/admin/inventory/imports/new", data=bad_zip, content_type="multipart/form-data"
        ),
        client.get("/admin/inventory/imports/999"),
    ]
    for response in anonymous + admin:
        assert response.status_code >= 400, response.request.path
        text = error_text(response)
        assert not INTERNALS.search(text), (response.request.path, text)


# -- images: a strip is refused from its header -------------------------------------------


def strip_png(width: int) -> bytes:
    """A real, complete ``width`` x 1 grey PNG: tens of KB for tens of millions of pixels."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" + bytes(width)  # filter byte, then the pixels
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, 1, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(row, 9))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def strip_40m() -> bytes:
    return strip_png(40_000_000)


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail any test that gets as far as decoding pixels."""

    def refuse(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


def test_a_1_by_40_million_png_is_refused_before_any_pixel_is_decoded(strip_40m, no_decoding):
    assert len(strip_40m) < 100_000  # small on the wire, within the 40-megapixel budget
    with pytest.raises(InvalidImage, match=r"40000000 x 1 pixels.*each side may be at most"):
        validate_image(strip_40m, max_pixels=40_000_000)


def test_the_api_refuses_the_strip_with_the_side_limit(app, client, strip_40m, no_decoding):
    app.config["MAX_IMAGE_SIDE"] = 8000
    response = client.post(
        "/api/search",
        data={"image": (io.BytesIO(strip_40m), "strip.png")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 400
    assert "each side may be at most 8,000 pixels" in response.get_json()["error"]


# -- control characters in text -----------------------------------------------------------


def product_count(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(Product))


@pytest.mark.parametrize(
    "fields",
    [{"name": "Blue\x00Shirt"}, {"name": "Blue Shirt", "base_colour": "Bl\x1bue"}],
)
def test_admin_product_text_with_control_characters_is_refused_on_the_form(app, client, fields):
    AuthActions(app, client).login(role="admin")
    body = {"name": "x", "image": (io.BytesIO(make_image_bytes()), "p.jpg"), **fields}
    response = client.post("/admin/products/new", data=body, content_type="multipart/form-data")
    assert response.status_code == 400
    assert "Remove the control characters (such as NUL)" in response.get_data(as_text=True)
    assert product_count(app) == 0


def test_admin_product_search_with_nul_is_refused_not_a_500(app, client):
    AuthActions(app, client).login(role="admin")
    with app.app_context():
        add_product(name="Blue Shirt")
    response = client.get("/admin/products", query_string={"q": "Blue\x00"})
    assert response.status_code == 200


def test_registration_with_a_nul_email_is_refused_on_the_form(app, client):
    data = {"email": "a\x00b@example.com", "password": "long enough", "confirm": "long enough"}
    response = client.post("/account/register", data=data)
    assert response.status_code == 400
    assert "Remove the control characters" in response.get_data(as_text=True)
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(User)) == 0


def test_catalogue_rows_with_control_characters_are_skipped_with_the_reason():
    header = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,"
    rows = [
        "1,Men,Apparel,Topwear,Shirts,Red,Summer,2012,Casual,Plain Shirt",
        "2,Men,Apparel,Topwear,Shirts,Red,Summer,2012,Casual,Bad\x00Shirt",
    ]
    parsed = parse_styles(io.StringIO(header + "productDisplayName\n" + "\n".join(rows)))
    assert [row.id for row in parsed.rows] == [1]
    assert "control character" in parsed.skips[0].reason


@pytest.mark.parametrize("param", ["gender", "exclude_colours"])
def test_api_text_parameters_with_nul_are_a_400(app, client, param):
    with app.app_context():
        add_product(id=1)
    response = client.get("/api/products/1/similar", query_string={param: "Men\x00"})
    assert response.status_code == 400 and "control characters" in response.get_json()["error"]


# -- body limits name themselves ----------------------------------------------------------


def test_ten_thousand_form_fields_get_a_413_naming_the_part_limit(app, client):
    fields = {f"f{i}": "x" for i in range(10_000)}
    response = client.post("/api/search", data=fields, content_type="multipart/form-data")
    assert response.status_code == 413
    error = response.get_json()["error"]
    limit = app.config["MAX_FORM_PARTS"]
    assert "too many fields" in error and f"at most {limit:,}" in error
    assert "MB" not in error
    page = client.post("/search/", data=fields, content_type="multipart/form-data")
    assert page.status_code == 413 and b"too many fields" in page.data


def test_an_oversized_text_field_gets_a_413_naming_the_field_limit(app, client):
    app.config["MAX_FORM_MEMORY_SIZE"] = 10_000
    response = client.post(
        "/api/search", data={"gender": "x" * 20_000}, content_type="multipart/form-data"
    )
    assert response.status_code == 413
    assert "at most 10,000 bytes" in response.get_json()["error"]


def test_a_body_over_the_size_limit_still_names_the_size(app, client):
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    response = client.post(
        "/api/search",
        data={"image": (io.BytesIO(bytes(100 * 1024)), "big.png")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 413
    assert "too large: the limit is 64 KB" in response.get_json()["error"]


def test_a_sign_in_over_the_part_limit_is_a_413_and_the_limits_keep_their_store(
    app, client, caplog
):
    fields = {f"f{i}": "x" for i in range(2_000)}
    response = client.post("/account/login", data=fields, content_type="multipart/form-data")
    assert response.status_code == 413 and b"too many fields" in response.data
    assert "falling back" not in caplog.text and "Swallowing" not in caplog.text


def test_a_body_that_is_not_a_form_is_a_400_not_a_field_limit(app, client):
    # Sent without a length (chunked), 600 KB with no part boundary in it.
    response = client.post(
        "/api/search",
        input_stream=io.BytesIO(b"x" * 600_000),
        content_type="multipart/form-data; boundary=xyz",
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.status_code == 400
    assert "not a multipart/form-data form" in response.get_json()["error"]


def test_a_bulk_import_with_too_many_parts_names_the_part_limit(app, client):
    AuthActions(app, client).login(role="admin")
    fields = {f"f{i}": "x" for i in range(2_000)}
    response = client.post(
        "/admin/inventory/imports/new", data=fields, content_type="multipart/form-data"
    )
    assert response.status_code == 413 and b"too many fields" in response.data


# -- upload and registration limits -------------------------------------------------------


def test_uploads_share_one_budget_per_address_with_a_json_or_page_429(app, client):
    app.config["RATELIMIT_UPLOADS"] = "3 per minute"
    post = lambda url: client.post(url, data={}, content_type="multipart/form-data")  # noqa: E731
    assert [post(u).status_code for u in ("/api/search", "/api/compare", "/search/")] == [
        400,
        400,
        400,
    ]
    api = post("/api/compare")
    assert api.status_code == 429 and api.is_json
    assert api.get_json()["retry_after"] == int(api.headers["Retry-After"]) > 0
    assert "Too many photo uploads" in api.get_json()["error"]
    page = post("/search/compare")
    assert page.status_code == 429 and "Please wait" in page.get_data(as_text=True)
    assert int(page.headers["Retry-After"]) > 0
    # Another address has its own budget; pages that upload nothing are not limited.
    other = client.post("/api/search", data={}, environ_base={"REMOTE_ADDR": "192.0.2.9"})
    assert other.status_code == 400
    assert client.get("/search/").status_code == 200


def test_registration_is_limited_per_address_and_per_email(app, client):
    app.config["RATELIMIT_REGISTER"] = "2 per minute"

    def register(email, address="198.51.100.1"):
        data = {"email": email, "password": "long enough", "confirm": "different"}
        return client.post(
            "/account/register", data=data, environ_base={"REMOTE_ADDR": address}
        ).status_code

    assert [register(f"u{i}@example.com") for i in range(3)] == [400, 400, 429]
    assert [register("same@example.com", f"203.0.113.{i}") for i in range(3)] == [400, 400, 429]
    assert register("new@example.com", "192.0.2.1") == 400


# -- caching of signed-in pages -----------------------------------------------------------


def test_signed_in_pages_are_private_anonymous_ones_and_static_files_are_not(app, client):
    with app.app_context():
        add_product(id=1)
    anonymous = client.get("/")
    assert "private" not in anonymous.headers.get("Cache-Control", "")
    AuthActions(app, client).login(role="admin")
    for url in ("/", "/products/1", "/account/preferences", "/admin/products"):
        response = client.get(url)
        assert response.status_code == 200, url
        assert "private" in response.headers["Cache-Control"], url
    static = client.get("/static/css/site.css")
    assert static.status_code == 200 and "public" in static.headers["Cache-Control"]
