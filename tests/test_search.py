"""Photo search: upload page, results page, JSON API, classifier levels, preferences, retention.

The task runs eagerly here (inside the request, tiny backbone); ``test_search_worker.py``
runs the same flow through a real Celery worker.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from PIL import Image, ImageDraw
from sqlalchemy import select

from ml import evaluation as ev
from ml import search_levels
from ml.heads import Prediction
from tests.conftest import TEST_REDIS_URL, _make_app, add_product
from webapp import exclusive, healing, registry
from webapp.extensions import db
from webapp.models import Product
from webapp.preferences import Preferences
from webapp.search import services
from webapp.uploads import validate_image
from worker import tasks
from worker.jobs import indexing, photo_search

ROOT = Path(__file__).resolve().parent.parent
RGB = {"Red": (200, 30, 30), "Blue": (30, 30, 200), "Black": (20, 20, 20)}
# article type -> (sub-category, shape drawn)
TYPES = {
    "Shirts": ("Topwear", "wide"),
    "Jeans": ("Bottomwear", "legs"),
    "Watches": ("Watches", "circle"),
    "Caps": ("Headwear", "triangle"),
}
GENDERS = ("Men", "Women")


def draw_photo(article_type: str, colour: str, gender: str, seed: int) -> Image.Image:
    """A 60x80 product-like photo: a shape per article type, in the colour, on white."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (60, 80), "white")
    d = ImageDraw.Draw(img)
    c = RGB[colour]
    dx, dy = (int(v) for v in rng.integers(-3, 4, 2))
    big = 4 if gender == "Men" else 0
    shape = TYPES[article_type][1]
    if shape == "wide":
        d.rectangle([5 + dx, 15 + dy, 55 + dx, 50 + dy + big], fill=c)
    elif shape == "legs":
        d.rectangle([15 + dx, 5 + dy, 27 + dx, 75 + dy], fill=c)
        d.rectangle([33 + dx, 5 + dy, 45 + dx - big, 75 + dy], fill=c)
    elif shape == "circle":
        d.ellipse([12 + dx, 22 + dy, 48 + dx + big, 58 + dy], outline=c, width=6)
    else:
        d.polygon([(30 + dx, 20 + dy), (8 + dx, 60 + dy), (52 + dx + big, 60 + dy)], fill=c)
    arr = np.asarray(img).astype(int) + rng.integers(-6, 7, (80, 60, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def encode(img: Image.Image, fmt: str = "JPEG", **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def build_search_catalogue(app, media: Path, copies: int = 2) -> dict[int, tuple]:
    """Products of 4 types x 2 genders x 3 colours (``copies`` each), embedded with the tiny
    backbone, lists built and served, heads trained and compare calibrated via the CLI."""
    products = {}
    with app.app_context():
        pid = 2000
        for article_type, (sub, _) in TYPES.items():
            for gender in GENDERS:
                for colour in RGB:
                    for _copy in range(copies):
                        pid += 1
                        name = f"{gender} {colour} {article_type} {pid}"
                        path = media / f"p{pid}.jpg"
                        path.parent.mkdir(parents=True, exist_ok=True)
                        draw_photo(article_type, colour, gender, pid).save(path, "JPEG")
                        add_product(
                            id=pid,
                            name=name,
                            gender=gender,
                            master_category="Apparel",
                            sub_category=sub,
                            article_type=article_type,
                            base_colour=colour,
                            image_path=path.name,
                        )
                        products[pid] = (gender, article_type, sub, colour)
        report = indexing.embed_catalog()
        assert report.embedded == len(products)
        indexing.build_neighbours(report.model_id)
    result = app.test_cli_runner().invoke(
        args=["model", "train", "--min-count", "2", "--epochs", "60", "--val-fraction", "0.2"]
    )
    assert result.exit_code == 0, result.output
    return products


def search_config(**extra) -> dict:
    """Test settings: the tiny backbone, whose random features put every photo close to
    every other (hence a stricter "same photo" cosine than real models need)."""
    return {
        "EMBEDDING_BACKBONE": "tiny",
        "NEIGHBOURS_K": 5,
        "SEARCH_RESULTS_N": 6,
        "SEARCH_SAME_PHOTO_COSINE": 0.9995,
        **extra,
    }


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """One app for the module: 48 products, heads trained, tasks run eagerly."""
    tmp = tmp_path_factory.mktemp("search")
    client = redis.Redis.from_url(TEST_REDIS_URL)
    client.flushdb()
    app = _make_app(
        tmp,
        f"sqlite:///{tmp / 'search.sqlite3'}",
        search_config(CELERY={"task_always_eager": True}),
    )
    products = build_search_catalogue(app, tmp / "media")
    app.train_output = None
    yield app, products, tmp / "media"
    with app.app_context():
        db.session.remove()
        db.engine.dispose()
    client.flushdb()


def run_tasks_here(monkeypatch) -> None:
    """Tasks the web side sends by name run at once, in this process, as a worker would run
    them (Celery's eager mode only covers tasks called through their function)."""

    def send(name: str, args: tuple = (), kwargs: dict | None = None, **options):
        task = getattr(tasks, name.rpartition(".")[2])
        return task.apply(args=args, kwargs=kwargs or {}, task_id=options.get("task_id"))

    monkeypatch.setattr(services, "send_task", send)


@pytest.fixture
def web(shop, monkeypatch):
    app, products, media = shop
    # Tasks are found through Celery's default app: make it this module's (eager) one again.
    app.extensions["celery"].set_default()
    run_tasks_here(monkeypatch)
    return app.test_client()


def upload_dir(app) -> Path:
    return Path(app.config["MEDIA_FOLDER"]) / services.UPLOAD_SUBDIR


def catalogue_photo(media: Path, pid: int) -> bytes:
    return (media / f"p{pid}.jpg").read_bytes()


def api_search(client, data: bytes, name: str = "photo.jpg", **fields):
    return client.post(
        "/api/search",
        data={"image": (io.BytesIO(data), name), **fields},
        content_type="multipart/form-data",
    )


def ids_of(body: dict) -> list[int]:
    return [item["id"] for item in body["items"]]


# -- model training ---------------------------------------------------------------------------


def test_model_train_saves_heads_and_calibration_beside_the_embeddings(shop):
    app, products, _ = shop
    result = app.test_cli_runner().invoke(
        args=["model", "train", "--min-count", "2", "--epochs", "5"]
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert re.search(r"subCategory\s+4\s+\d+\.\d+%\s+\d+\.\d+%", out), out
    assert "gender+articleType" in out and "baseColour" in out
    assert "Compare threshold: score >=" in out and "precision" in out
    with app.app_context():
        model_id = registry.neighbour_cache().active_model()
        folder = registry.store_for(model_id).path
    meta = json.loads((folder / "heads" / "meta.json").read_text())
    assert meta["model_id"] == model_id and meta["head_version"] == 1
    assert set(meta["validation"]) == {"sub", "type", "colour"}
    assert (folder / "heads" / "type.keras").exists()
    compare = json.loads((folder / "compare.json").read_text())
    assert compare["target_precision"] == 0.9 and 0 < compare["threshold"] <= 1


# -- the upload page and the results page -------------------------------------------------------


def test_upload_page_has_a_file_field_drop_zone_and_works_without_javascript(web):
    page = web.get("/search/").get_data(as_text=True)
    assert 'enctype="multipart/form-data"' in page and 'method="post"' in page
    assert 'type="file"' in page and 'accept="image/jpeg,image/png,image/webp"' in page
    assert "data-drop-zone" in page and "js/photo-search.js" in page
    assert "Search within all categories" in page
    assert 'href="/search/"' in web.get("/").get_data(as_text=True), "nav link to photo search"


def test_uploading_a_catalogue_photo_shows_that_product_first(shop, web):
    app, products, media = shop
    pid = 2001
    response = web.post(
        "/search/",
        data={"image": (io.BytesIO(catalogue_photo(media, pid)), "mine.jpg")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 303
    assert re.fullmatch(r"/search/jobs/[0-9a-f]{32}", response.location)
    page = web.get(response.location)
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    names = re.findall(r'class="product-card-name">([^<]+)<', html)
    assert len(names) == app.config["SEARCH_RESULTS_N"]
    assert names[0].endswith(str(pid))
    assert "practically the same photo" in html
    assert "What we see" in html and re.search(r"\d+%", html)
    assert "Search within all categories" in html
    assert 'http-equiv="refresh"' not in html, "a finished page does not refresh"
    photo = web.get(response.location + "/photo")
    assert photo.status_code == 200 and photo.mimetype == "image/jpeg"
    assert photo.headers["Cache-Control"] == "private, no-store"


def test_a_pending_search_page_refreshes_itself(shop, web, monkeypatch):
    app, _, media = shop
    monkeypatch.setattr(
        services, "enqueue", lambda kind, request_id: None
    )  # no worker: stays queued
    response = web.post(
        "/search/",
        data={"image": (io.BytesIO(catalogue_photo(media, 2002)), "x.jpg")},
        content_type="multipart/form-data",
    )
    html = web.get(response.location).get_data(as_text=True)
    assert "Searching the catalogue" in html
    assert '<noscript><meta http-equiv="refresh"' in html, "no-JavaScript fallback"
    assert 'data-job-status="/api/jobs/' in html and "js/photo-search.js" in html
    assert f'href="{response.location}"' in html, "a refresh link as well"
    body = web.get("/api/jobs/" + response.location.rsplit("/", 1)[1]).get_json()
    assert body["status"] == "pending" and body["state"] == "queued" and body["items"] == []


def test_search_within_all_categories_overrides_the_classifier(shop, web):
    app, _, media = shop
    first = web.post(
        "/search/",
        data={"image": (io.BytesIO(catalogue_photo(media, 2020)), "x.jpg")},
        content_type="multipart/form-data",
    )
    again = web.post(first.location + "/all")
    assert again.status_code == 303 and again.location != first.location
    answer = web.get("/api/jobs/" + again.location.rsplit("/", 1)[1]).get_json()
    assert answer["all_categories"] is True and answer["searched"] == "all"
    assert answer["message"] == "Searched all categories, as asked."
    html = web.get(again.location).get_data(as_text=True)
    assert "Search within all categories</button>" not in html
    # Ticking the box on the upload form does the same.
    ticked = web.post(
        "/search/",
        data={"image": (io.BytesIO(catalogue_photo(media, 2020)), "x.jpg"), "all_categories": "y"},
        content_type="multipart/form-data",
    )
    answer = web.get("/api/jobs/" + ticked.location.rsplit("/", 1)[1]).get_json()
    assert answer["searched"] == "all"


@pytest.mark.parametrize(
    ("data", "name", "message"),
    [
        (b"plain text, not a photo", "photo.jpg", "not a JPEG, PNG or WebP"),
        (b"", "empty.jpg", "The file is empty"),
        (encode(Image.new("RGB", (20, 20)), "GIF"), "a.jpg", "not a JPEG, PNG or WebP"),
        (None, "missing", "Please choose a photo"),
    ],
    ids=["text", "empty", "gif", "missing"],
)
def test_bad_uploads_on_the_page_get_a_message_at_the_field(shop, web, data, name, message):
    app, _, _ = shop
    before = sorted(os.listdir(upload_dir(app))) if upload_dir(app).exists() else []
    body = {} if data is None else {"image": (io.BytesIO(data), name)}
    response = web.post("/search/", data=body, content_type="multipart/form-data")
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert re.search(
        r'<ul class="errors" id="image-errors">\s*<li>[^<]*' + re.escape(message), html
    )
    after = sorted(os.listdir(upload_dir(app))) if upload_dir(app).exists() else []
    assert after == before, "a refused upload leaves nothing behind"


def test_unknown_expired_or_malformed_search_requests_are_404(web):
    for url in (
        "/search/jobs/" + "0" * 32,
        "/search/jobs/nope",
        "/search/jobs/" + "0" * 32 + "/photo",
    ):
        response = web.get(url)
        assert response.status_code == 404
        assert b"expired" in response.data
    body = web.get("/api/jobs/" + "a" * 32)
    assert body.status_code == 404 and "expired" in body.get_json()["error"]


# -- the JSON API --------------------------------------------------------------------------------


def test_api_search_then_poll_returns_the_similar_products_shape(shop, web):
    app, products, media = shop
    started = api_search(web, catalogue_photo(media, 2030), n="4")
    assert started.status_code == 202
    request_id = started.get_json()["job_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    response = web.get(f"/api/jobs/{request_id}")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok" and body["state"] == "done" and body["kind"] == "search"
    assert ids_of(body)[0] == 2030 and len(body["items"]) == 4
    similar = web.get("/api/products/2030/similar?n=4").get_json()
    assert set(body["items"][0]) == set(similar["items"][0]), "same item shape as /similar"
    assert {"status", "model", "message", "items"} <= set(body)
    assert body["model"] == similar["model"]
    assert body["heads"].startswith("heads1-"), "results name the head version too"
    fields = {p["field"] for p in body["predictions"]}
    assert fields == {"gender", "article_type", "sub_category", "base_colour"}
    assert all(0 <= p["confidence"] <= 1 for p in body["predictions"])
    assert body["searched"] in {"type", "sub", "all"}


def test_api_search_with_wait_answers_at_once(shop, web):
    _, _, media = shop
    response = api_search(web, catalogue_photo(media, 2040), wait="1")
    assert response.status_code == 200
    assert ids_of(response.get_json())[0] == 2040
    # What the worker spent finding the product in the photo (the search bench prints it).
    assert response.get_json()["foreground_ms"] >= 0
    again = web.get(f"/api/jobs/{response.get_json()['job_id']}?wait=1&timeout=2")
    assert again.status_code == 200 and ids_of(again.get_json())[0] == 2040


@pytest.mark.parametrize(
    ("fields", "status", "message"),
    [
        ({}, 400, "file field named 'image'"),
        ({"image": (io.BytesIO(b"%PDF-1.4 not an image"), "a.pdf")}, 400, "not a JPEG"),
        ({"image": (io.BytesIO(b""), "a.jpg")}, 400, "The file is empty"),
        ({"n": "0"}, 400, "'n' must be between 1 and 50"),
        ({"n": "lots"}, 400, "'n' must be a whole number"),
        ({"wait": "1", "timeout": "-3"}, 400, "'timeout' must be between"),
        ({"gender": ["Men", "Women"]}, 400, "'gender' takes one value"),
    ],
    ids=["no-file", "pdf", "empty", "n-zero", "n-text", "bad-timeout", "two-genders"],
)
def test_api_search_bad_requests_get_json_400s(shop, web, fields, status, message):
    _, _, media = shop
    if "image" not in fields and fields:
        fields = {"image": (io.BytesIO(catalogue_photo(media, 2001)), "a.jpg"), **fields}
    response = web.post("/api/search", data=fields, content_type="multipart/form-data")
    assert response.status_code == status
    assert response.mimetype == "application/json"
    assert message in response.get_json()["error"]


def test_api_upload_over_the_size_limit_gets_a_json_413(shop, web):
    app, _, _ = shop
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    try:
        response = api_search(web, os.urandom(100 * 1024))
    finally:
        app.config["MAX_CONTENT_LENGTH"] = 8 * 1024 * 1024
    assert response.status_code == 413
    assert "too large" in response.get_json()["error"]


# -- special photos are processed --------------------------------------------------------------


def exif_rotated(img: Image.Image) -> bytes:
    """The photo stored turned on its side, with EXIF orientation 6 saying how to turn it back."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(img.rotate(90, expand=True), "JPEG", exif=exif.tobytes(), quality=95)


def transparent_png(img: Image.Image) -> bytes:
    rgba = img.convert("RGBA")
    arr = np.asarray(rgba).copy()
    white = (arr[..., :3] > 235).all(axis=2)
    arr[white, 3] = 0  # the white background becomes transparent
    return encode(Image.fromarray(arr, "RGBA"), "PNG")


@pytest.mark.parametrize(
    "kind", ["cmyk-jpeg", "exif-rotated", "greyscale-png", "transparent-png", "webp", "large-jpeg"]
)
def test_special_photos_are_processed(shop, web, kind):
    app, products, media = shop
    pid = 2013
    img = Image.open(media / f"p{pid}.jpg").convert("RGB")
    data = {
        "cmyk-jpeg": lambda: encode(img.convert("CMYK"), "JPEG", quality=95),
        "exif-rotated": lambda: exif_rotated(img),
        "greyscale-png": lambda: encode(img.convert("L"), "PNG"),
        "transparent-png": lambda: transparent_png(img),
        "webp": lambda: encode(img, "WEBP", quality=95),
        "large-jpeg": lambda: encode(img.resize((1200, 1600)), "JPEG", quality=90),
    }[kind]()
    # All categories: the tiny test classifier's guesses must not decide what comes first.
    response = api_search(web, data, wait="1", all_categories="1")
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert len(body["items"]) == app.config["SEARCH_RESULTS_N"]
    if kind != "greyscale-png":  # grey loses the colour, so another product may come first
        assert ids_of(body)[0] == pid, (kind, ids_of(body))


def test_exif_orientation_is_honoured(shop, web):
    """The same sideways pixels without the EXIF tag are not recognised as that product."""
    _, _, media = shop
    img = Image.open(media / "p2005.jpg").convert("RGB")
    rotated = img.rotate(90, expand=True)
    with_tag = api_search(web, exif_rotated(img), wait="1", all_categories="1").get_json()
    without = api_search(web, encode(rotated, quality=95), wait="1", all_categories="1").get_json()
    assert with_tag["items"][0]["score"] > without["items"][0]["score"]
    assert ids_of(with_tag)[0] == 2005


# -- choosing: classifier levels and preferences ----------------------------------------------


class FixedHeads:
    """Stands in for trained heads with fixed predictions."""

    version = "heads-test"

    def __init__(self, **preds: tuple[str, float]) -> None:
        self.preds = {k: Prediction(*v) for k, v in preds.items()}

    def predict(self, embedding):
        return self.preds


def upload_photo(app, data: bytes) -> str:
    """Store photo bytes as a search upload; returns its relative path."""
    image = validate_image(data, max_pixels=10**6)
    return services.store_image(image, app.config["MEDIA_FOLDER"], services.UPLOAD_SUBDIR)


def run_search(app, media, pid, prefs=None, n=6, all_categories=False):
    path = upload_photo(app, catalogue_photo(media, pid))
    return photo_search.search_photo(path, prefs or Preferences(), n, all_categories)


def test_a_confident_group_is_searched_first_then_widened(shop, monkeypatch):
    app, products, media = shop
    monkeypatch.setattr(
        photo_search,
        "heads_for",
        lambda m: FixedHeads(type=("Women|Watches", 0.9), sub=("Watches", 0.9)),
    )
    app.config["SEARCH_SAME_PHOTO_COSINE"] = 1.01  # off: test the levels alone
    try:
        with app.app_context():
            result = run_search(app, media, 2001, n=10)  # a men's shirt photo
    finally:
        app.config["SEARCH_SAME_PHOTO_COSINE"] = search_config()["SEARCH_SAME_PHOTO_COSINE"]
    levels = [level for _, _, level in result["items"]]
    ids = [pid for pid, _, _ in result["items"]]
    # 6 women's watches exist: they come first, then the other (men's) watches, then the rest.
    assert levels == ["type"] * 6 + ["sub"] * 4
    assert all(products[i][:2] == ("Women", "Watches") for i in ids[:6])
    assert all(products[i][1] == "Watches" for i in ids[6:])
    assert result["searched"] == "sub"
    assert "widened the search" in result["message"]
    scores = [s for _, s, _ in result["items"]]
    assert scores[:6] == sorted(scores[:6], reverse=True), "best first within a level"


def test_an_unsure_classifier_searches_everything(shop, monkeypatch):
    app, products, media = shop
    monkeypatch.setattr(
        photo_search,
        "heads_for",
        lambda m: FixedHeads(type=("Women|Watches", 0.2), sub=("Watches", 0.3)),
    )
    with app.app_context():
        result = run_search(app, media, 2001)
    assert result["searched"] == "all"
    assert "not clear enough" in result["message"]
    assert not [p for p in result["predictions"] if p["confident"]]


def test_without_trained_heads_everything_is_searched(shop, monkeypatch):
    app, _, media = shop
    monkeypatch.setattr(photo_search, "heads_for", lambda m: None)
    with app.app_context():
        result = run_search(app, media, 2001)
    assert result["searched"] == "all" and result["predictions"] == []
    assert "has not been trained" in result["message"]
    assert result["items"][0][0] == 2001


def test_preferences_apply_while_choosing(shop, web):
    app, products, media = shop
    with web.session_transaction() as session:
        session["preferences"] = Preferences(disliked_colours={"Red"}).to_session()
    body = api_search(web, catalogue_photo(media, 2001), wait="1", n="12").get_json()
    assert len(body["items"]) == 12, "N results although the photo itself is red"
    assert all(item["base_colour"] != "Red" for item in body["items"])
    assert 2001 not in ids_of(body)
    # Explicit request parameters work like the similar-products API's.
    only_women = api_search(web, catalogue_photo(media, 2001), wait="1", gender="Women").get_json()
    assert {item["gender"] for item in only_women["items"]} == {"Women"}


def test_products_marked_not_interested_are_never_shown(shop, web):
    """Left out while choosing (N still comes back), and dropped from a finished search."""
    app, products, media = shop
    before = api_search(web, catalogue_photo(media, 2001), wait="1", n="12").get_json()
    marked = ids_of(before)[:3]
    for pid in marked:
        assert web.post(f"/api/products/{pid}/not-interested").status_code == 200
    after = api_search(web, catalogue_photo(media, 2001), wait="1", n="12").get_json()
    assert len(after["items"]) == 12
    assert not set(marked) & set(ids_of(after))
    # The search that ran before the marks no longer shows them either.
    again = web.get(f"/api/jobs/{before['job_id']}").get_json()
    assert not set(marked) & set(ids_of(again))
    assert len(again["items"]) == 12 - len(marked)


def test_the_evaluation_ranks_photos_exactly_as_the_live_search(shop):
    """``flask model evaluate`` measures what shoppers get: the same photos through the
    worker's search and through the evaluation's ranking give the same products in the same
    order, every level in play (same photo, type and colour, type, category, all)."""
    app, products, media = shop
    n = 20
    mirrored = encode(Image.open(media / "p2005.jpg").transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    photos = [catalogue_photo(media, pid) for pid in (2001, 2014, 2027, 2040)] + [mirrored]
    # Every prediction trusted (the tiny test heads are rarely sure), colour first.
    settings = {"SEARCH_MIN_CONFIDENCE": 0.0, "SEARCH_COLOUR_FIRST": True}
    saved = {key: app.config[key] for key in settings}
    app.config.update(settings)
    try:
        with app.app_context():
            paths = [upload_photo(app, data) for data in photos]
            live = [photo_search.search_photo(path, Preferences(), n) for path in paths]
            model_id = photo_search.served_model()
            ids, vectors = registry.store_for(model_id).load()
            rows = {p.id: p for p in db.session.scalars(select(Product))}
            labels = ev.Labels.from_records(
                [{f: getattr(rows[pid], f) for f in search_levels.FIELDS} for pid in ids.tolist()]
            )
            backbone = photo_search.backbone_for(model_id)
            images = [photo_search.read_photo(path, backbone.input_size) for path in paths]
            queries = backbone.embed(images)
            predictions = ev.head_predictions(photo_search.heads_for(model_id), queries)
            policy = photo_search.search_policy()
    finally:
        app.config.update(saved)
    recs, searched = ev.pipeline_rank(vectors, queries, predictions, labels, n, policy)
    for i, result in enumerate(live):
        assert [item[0] for item in result["items"]] == ids[recs[i]].tolist(), i
        assert result["searched"] == searched[i], i
    levels = {item[2] for result in live for item in result["items"]}
    assert {"photo", "colour", "type", "all"} <= levels, levels


def test_inactive_and_out_of_stock_products_are_never_shown(shop, web):
    app, products, media = shop
    with app.app_context():
        db.session.get(Product, 2001).active = False
        db.session.get(Product, 2002).stock = 0
        db.session.commit()
    try:
        body = api_search(web, catalogue_photo(media, 2001), wait="1", n="20").get_json()
        assert 2001 not in ids_of(body) and 2002 not in ids_of(body)
        assert len(body["items"]) == 20
    finally:
        with app.app_context():
            db.session.get(Product, 2001).active = True
            db.session.get(Product, 2002).stock = None
            db.session.commit()


def test_no_served_model_fails_the_search_request_with_a_503(shop, web, monkeypatch):
    app, _, media = shop
    client = redis.Redis.from_url(TEST_REDIS_URL)
    active = client.get("nbrs:active")
    client.delete("nbrs:active")
    sent = []  # the heal task is recorded here, not left in the broker's queue

    def send(name: str, args: tuple = (), kwargs: dict | None = None, **options):
        sent.append(name)
        return tasks.ml_heal_index.AsyncResult(f"heal-{len(sent)}")

    monkeypatch.setattr(exclusive, "send_task", send)
    try:
        response = api_search(web, catalogue_photo(media, 2001), wait="1")
    finally:
        client.set("nbrs:active", active)
        client.delete(healing.REQUESTED_KEY, exclusive.KEY.format(name=exclusive.INDEX))
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "failed" and "not ready yet" in body["message"]
    assert sent == [healing.HEAL_TASK]  # the lists are asked to be built again


# -- retention ---------------------------------------------------------------------------------


def test_old_uploads_are_deleted_and_fresh_ones_kept(shop, web):
    app, _, media = shop
    folder = upload_dir(app)
    folder.mkdir(parents=True, exist_ok=True)
    old, fresh = folder / "old.jpg", folder / "fresh.jpg"
    old.write_bytes(b"x")
    fresh.write_bytes(b"x")
    hours_ago = time.time() - 2 * 3600
    os.utime(old, (hours_ago, hours_ago))
    result = app.test_cli_runner().invoke(args=["search", "cleanup"])
    assert result.exit_code == 0 and "Removed 1 uploaded photo(s)." in result.output
    assert not old.exists() and fresh.exists()
    result = app.test_cli_runner().invoke(args=["search", "cleanup", "--older-than", "0"])
    assert not fresh.exists()


def test_each_search_task_cleans_up_at_most_once_a_minute(shop, web):
    app, _, media = shop
    folder = upload_dir(app)
    stale = folder / "stale.jpg"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"x")
    os.utime(stale, (0, 0))
    redis.Redis.from_url(TEST_REDIS_URL).delete(services.CLEANUP_KEY)
    api_search(web, catalogue_photo(media, 2001), wait="1")
    assert not stale.exists()
    stale.write_bytes(b"x")
    os.utime(stale, (0, 0))
    api_search(web, catalogue_photo(media, 2001), wait="1")
    assert stale.exists(), "the next cleanup waits for the minute to pass"


def test_a_results_page_whose_photo_was_deleted_says_so(shop, web):
    app, _, media = shop
    response = web.post(
        "/search/",
        data={"image": (io.BytesIO(catalogue_photo(media, 2003)), "x.jpg")},
        content_type="multipart/form-data",
    )
    services_dir = upload_dir(app)
    for f in services_dir.iterdir():
        f.unlink()
    html = web.get(response.location).get_data(as_text=True)
    assert "Your photo has been deleted" in html
    assert web.get(response.location + "/photo").status_code == 404
    assert web.post(response.location + "/all").status_code == 404
