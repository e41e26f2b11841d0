"""Photo search with shoppers' own photos: the crop box (API, pages, worker), the foreground
step, one card per picture ("also listed as"), and the "nothing looks much like this" state.

Tasks run in this process as in ``test_search.py`` (tiny backbone, trained heads); the
catalogue adds products that list the same picture as others.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import redis
from PIL import Image

from ml import thresholds
from ml.colour import ColourDescriptor
from ml.foreground import box_iou
from ml.preprocess import load_image
from tests.conftest import TEST_REDIS_URL, _make_app, add_product
from tests.test_search import (
    api_search,
    build_search_catalogue,
    catalogue_photo,
    encode,
    ids_of,
    run_tasks_here,
    search_config,
)
from tests.test_tuned_network import data, trained  # noqa: F401  (module fixtures)
from webapp import registry
from webapp.extensions import db
from webapp.models import Product
from webapp.search import crop as crop_rules
from webapp.search import services
from webapp.search.collapse import same_picture_groups
from worker.jobs import hashing, indexing, photo_search

# Two products the composite photo holds: a red men's shirt (left) and blue men's jeans (right).
LEFT, RIGHT = 2001, 2015
# Products listing another's picture: byte for byte, and re-encoded as PNG.
SAME_BYTES = {3001: 2001}
SAME_PICTURE = {3002: 2005}


def add_copies(app, media: Path) -> None:
    """Products whose photo is another product's (same bytes, or the same picture saved as
    PNG), embedded, hashed and in the neighbour lists like every other."""
    with app.app_context():
        for pid, source in {**SAME_BYTES, **SAME_PICTURE}.items():
            original = db.session.get(Product, source)
            path = media / f"p{pid}" / ("a.jpg" if pid in SAME_BYTES else "a.png")
            path.parent.mkdir(parents=True, exist_ok=True)
            if pid in SAME_BYTES:
                shutil.copyfile(media / f"p{source}.jpg", path)
            else:
                Image.open(media / f"p{source}.jpg").save(path, "PNG")
            add_product(
                id=pid,
                name=f"Copy of {original.name}",
                gender=original.gender,
                master_category=original.master_category,
                sub_category=original.sub_category,
                article_type=original.article_type,
                base_colour=original.base_colour,
                image_path=str(path.relative_to(media)),
            )
        for product in db.session.scalars(db.select(Product)):
            product.image_sha256 = hashlib.sha256(
                (media / product.image_path).read_bytes()
            ).hexdigest()
        db.session.commit()
        report = indexing.embed_catalog()
        indexing.build_neighbours(report.model_id)
        assert hashing.hash_products() == 50


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """48 drawn products plus two that list another's picture; heads trained."""
    tmp = tmp_path_factory.mktemp("search-wild")
    client = redis.Redis.from_url(TEST_REDIS_URL)
    client.flushdb()
    app = _make_app(
        tmp,
        f"sqlite:///{tmp / 'wild.sqlite3'}",
        search_config(CELERY={"task_always_eager": True}),
    )
    media = tmp / "media"
    products = build_search_catalogue(app, media)
    add_copies(app, media)
    yield app, products, media
    with app.app_context():
        db.session.remove()
        db.engine.dispose()
    client.flushdb()


@pytest.fixture
def web(shop, monkeypatch):
    app, _, _ = shop
    app.extensions["celery"].set_default()
    run_tasks_here(monkeypatch)
    return app.test_client()


@pytest.fixture
def queries(monkeypatch):
    """Every photo the worker embeds for a search, as ``read_query`` made it."""
    seen = []
    original = photo_search.read_query

    def spy(*args, **kwargs):
        seen.append(original(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(photo_search, "read_query", spy)
    return seen


def composite(media: Path, background=(255, 255, 255)) -> bytes:
    """A 120x80 PNG: the LEFT product's photo beside the RIGHT one's."""
    canvas = Image.new("RGB", (120, 80), background)
    canvas.paste(Image.open(media / f"p{LEFT}.jpg").convert("RGB"), (0, 0))
    canvas.paste(Image.open(media / f"p{RIGHT}.jpg").convert("RGB"), (60, 0))
    return encode(canvas, "PNG")


def wild_photo(media: Path, pid: int) -> tuple[bytes, tuple[float, float, float, float]]:
    """A 240x240 JPEG: the product cut from its white background onto a warm, grainy floor,
    off-centre; with the box (relative) where it was put."""
    rng = np.random.default_rng(pid)
    floor = np.array([150, 110, 70]) + rng.integers(-12, 13, (240, 240, 3))
    product = np.asarray(Image.open(media / f"p{pid}.jpg").convert("RGB")).astype(int)
    mask = (product < 225).any(axis=2)
    top, left = 120, 140
    region = floor[top : top + 80, left : left + 60]
    region[mask] = product[mask]
    rows, cols = np.nonzero(mask)
    box = (
        (left + cols.min()) / 240,
        (top + rows.min()) / 240,
        (cols.max() - cols.min() + 1) / 240,
        (rows.max() - rows.min() + 1) / 240,
    )
    photo = Image.fromarray(np.clip(floor, 0, 255).astype(np.uint8))
    return encode(photo, "JPEG", quality=92), box


def record_of(app, request_id: str) -> dict:
    with app.app_context():
        return services.get_request(request_id)


def job_id(location: str) -> str:
    return location.rsplit("/", 1)[1]


# -- the crop box: its rule --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0.1,0.2,0.5", "four numbers"),
        ("a,b,c,d", "four numbers"),
        ("0,0,1.2,1", "from 0 to 1"),
        ("-0.1,0,0.5,0.5", "from 0 to 1"),
        ("nan,0,0.5,0.5", "from 0 to 1"),
        ("inf,0,0.5,0.5", "from 0 to 1"),
        ("0.6,0,0.5,0.5", "within the photo"),
        ("0,0.7,0.5,0.5", "within the photo"),
        ("0.2,0.2,0.05,0.5", "more than 0.05"),
        ("0.2,0.2,0.5,0.01", "more than 0.05"),
    ],
)
def test_bad_crop_boxes_are_refused_with_the_reason(text, message):
    with pytest.raises(crop_rules.InvalidCrop, match=message):
        crop_rules.parse_crop(text)


def test_a_box_covering_the_whole_photo_is_no_box():
    assert crop_rules.parse_crop("") is None and crop_rules.parse_crop(None) is None
    assert crop_rules.parse_crop("0,0,1,1") is None
    assert crop_rules.from_percent([0, 0, 100, 100]) is None
    assert crop_rules.from_percent([None, 0, 100, 100]) is None
    assert crop_rules.parse_crop(" 0.5, 0 ,0.5,1 ") == (0.5, 0.0, 0.5, 1.0)
    # A box dragged to the edge may overshoot it by a rounding error: it is kept inside.
    assert crop_rules.check_crop([0.3333334, 0, 0.6666667, 1]) == (0.333333, 0.0, 0.666667, 1.0)
    assert crop_rules.to_percent((0.5, 0.0, 0.25, 1.0)) == {"x": 50, "y": 0, "w": 25, "h": 100}


# -- the crop box reaches the worker -------------------------------------------------------------


def test_two_crops_of_one_photo_embed_different_things_and_find_their_products(shop, web, queries):
    app, products, media = shop
    photo = composite(media)
    answers = {}
    for side, box in {"left": "0,0,0.5,1", "right": "0.5,0,0.5,1"}.items():
        response = api_search(web, photo, crop=box, wait="1", all_categories="1")
        assert response.status_code == 200, response.get_data(as_text=True)
        answers[side] = response.get_json()
        assert record_of(app, answers[side]["job_id"])["crop"] == [float(v) for v in box.split(",")]
        assert answers[side]["crop"] == [float(v) for v in box.split(",")]
    left, right = (q.image for q in queries)
    assert left.size == right.size == (24, 32), "the half keeps 32 px on its longer side"
    with app.app_context():
        backbone = registry.backbone_for(answers["left"]["model"])
    vectors = backbone.embed([left, right])
    assert float(vectors[0] @ vectors[1]) < 0.999, "the two halves embed differently"
    assert ids_of(answers["left"])[0] == LEFT and ids_of(answers["right"])[0] == RIGHT
    # The whole photo is neither.
    whole = api_search(web, photo, wait="1", all_categories="1").get_json()
    assert whole["crop"] is None and queries[-1].crop is None
    assert queries[-1].image.size == (32, 21)


def test_a_shoppers_photo_is_cut_to_the_product_found(shop, web, queries):
    app, products, media = shop
    photo, pasted = wild_photo(media, RIGHT)
    body = api_search(web, photo, wait="1").get_json()
    assert body["status"] == "ok"
    found = body["product_box"]
    assert found is not None and box_iou(found, pasted) > 0.5, (found, pasted)
    prepared = queries[-1].image
    assert prepared.mode == "RGBA", "the background outside the product is transparent"
    assert np.asarray(prepared)[..., 3].min() < 128
    assert queries[-1].foreground_ms < 1000
    # A catalogue photo (on white) is searched exactly as uploaded.
    same = api_search(web, catalogue_photo(media, RIGHT), wait="1").get_json()
    assert same["product_box"] is None and queries[-1].image.mode == "RGB"
    assert ids_of(same)[0] == RIGHT


def test_a_crop_on_a_shoppers_photo_finds_the_product_inside_it(shop, web):
    app, products, media = shop
    photo, pasted = wild_photo(media, RIGHT)
    body = api_search(web, photo, crop="0.5,0.4,0.5,0.6", wait="1").get_json()
    x, y, w, h = body["product_box"]
    assert x >= 0.5 and y >= 0.4 and x + w <= 1.0001 and y + h <= 1.0001
    assert box_iou(body["product_box"], pasted) > 0.5


@pytest.mark.parametrize(
    ("crop", "message"),
    [
        ("0,0,1", "'crop': a crop box is four numbers x,y,w,h; got 3."),
        ("x,0,1,1", "'crop': a crop box is four numbers"),
        ("0,0,1.5,1", "from 0 to 1"),
        ("0.5,0,0.6,1", "within the photo"),
        ("0,0,0.04,1", "more than 0.05"),
    ],
)
def test_api_crop_validation_gets_a_json_400(shop, web, crop, message):
    app, _, media = shop
    before = len(list((Path(app.config["MEDIA_FOLDER"]) / services.UPLOAD_SUBDIR).glob("*")))
    response = api_search(web, catalogue_photo(media, LEFT), crop=crop)
    assert response.status_code == 400 and response.mimetype == "application/json"
    assert message in response.get_json()["error"]
    after = len(list((Path(app.config["MEDIA_FOLDER"]) / services.UPLOAD_SUBDIR).glob("*")))
    assert after == before, "nothing stored for a refused request"


# -- the crop box on the pages -------------------------------------------------------------------


def test_the_upload_page_offers_the_box_only_with_javascript(web):
    html = web.get("/search/").get_data(as_text=True)
    fieldset = re.search(r"<fieldset class=\"crop-fields\" data-crop-fields hidden>", html)
    assert fieldset, "hidden until a script shows it over the chosen photo"
    for name, value in {"crop_x": "0", "crop_y": "0", "crop_w": "100", "crop_h": "100"}.items():
        assert re.search(rf'name="{name}"[^>]*type="number"[^>]*value="{value}', html) or re.search(
            rf'type="number"[^>]*name="{name}"[^>]*value="{value}', html
        ), name
    assert "<label" in html and "Left edge (%)" in html


def test_the_upload_form_sends_the_box_and_the_results_page_draws_it(shop, web):
    app, _, media = shop
    response = web.post(
        "/search/",
        data={
            "image": (io.BytesIO(composite(media)), "two.png"),
            "crop_x": "50",
            "crop_y": "0",
            "crop_w": "50",
            "crop_h": "100",
        },
        content_type="multipart/form-data",
    )
    assert response.status_code == 303
    assert record_of(app, job_id(response.location))["crop"] == [0.5, 0.0, 0.5, 1.0]
    html = web.get(response.location).get_data(as_text=True)
    assert re.search(r'<rect x="50.0" y="0.0" width="50.0" height="100.0"', html)
    assert "Searched the part inside the box" in html
    names = re.findall(r'class="product-card-name">([^<]+)<', html)
    assert names[0].endswith(str(RIGHT))
    # The form to search another part starts from the box searched.
    assert re.search(r'action="/search/jobs/[0-9a-f]{32}/crop"', html)
    assert re.search(r'name="crop_x"[^>]*value="50.0"', html)

    # Searching within all categories keeps the box.
    wider = web.post(response.location + "/all")
    assert record_of(app, job_id(wider.location))["crop"] == [0.5, 0.0, 0.5, 1.0]

    # A new box: a new search of the same photo.
    again = web.post(
        response.location + "/crop",
        data={"crop_x": "0", "crop_y": "0", "crop_w": "50", "crop_h": "100"},
    )
    assert again.status_code == 303 and again.location != response.location
    assert record_of(app, job_id(again.location))["crop"] == [0.0, 0.0, 0.5, 1.0]
    names = re.findall(
        r'class="product-card-name">([^<]+)<', web.get(again.location).get_data(as_text=True)
    )
    assert names[0].endswith(str(LEFT))


def test_a_bad_box_on_the_pages_says_what_is_wrong(shop, web):
    app, _, media = shop
    bad = {"crop_x": "60", "crop_y": "0", "crop_w": "50", "crop_h": "100"}
    page = web.post(
        "/search/",
        data={"image": (io.BytesIO(composite(media)), "two.png"), **bad},
        content_type="multipart/form-data",
    )
    html = page.get_data(as_text=True)
    assert page.status_code == 400 and "within the photo" in html
    assert '<fieldset class="crop-fields" data-crop-fields>' in html, "shown with its error"
    first = web.post(
        "/search/",
        data={"image": (io.BytesIO(composite(media)), "two.png")},
        content_type="multipart/form-data",
    )
    assert record_of(app, job_id(first.location))["crop"] is None, "no box: the whole photo"
    again = web.post(first.location + "/crop", data={**bad, "crop_w": "3"})
    html = again.get_data(as_text=True)
    assert again.status_code == 400 and "more than 0.05" in html
    assert "Products that look like it" in html or "Closest matches" in html
    again = web.post(first.location + "/crop", data={**bad, "crop_w": "lots"})
    assert again.status_code == 400


def test_the_results_page_shows_the_product_found(shop, web):
    _, _, media = shop
    photo, _ = wild_photo(media, RIGHT)
    response = web.post(
        "/search/",
        data={"image": (io.BytesIO(photo), "floor.jpg")},
        content_type="multipart/form-data",
    )
    html = web.get(response.location).get_data(as_text=True)
    assert "Searched the product found in the photo" in html
    assert 'class="crop-outline crop-outline-found"' in html
    assert "crop-outline-used" not in html, "the whole photo was searched: no box of the shopper's"


# -- one card per picture ------------------------------------------------------------------------


def test_same_picture_groups_follow_bytes_and_perceptual_hashes(shop):
    app, _, _ = shop
    with app.app_context():
        groups = same_picture_groups([2002, 3001, 2005, 2001, 3002, 2003])
    assert groups == [[2002], [3001, 2001], [2005, 3002], [2003]]


def test_products_listing_the_same_picture_share_one_card(shop, web):
    app, products, media = shop
    body = api_search(web, catalogue_photo(media, 2001), wait="1").get_json()
    ids = ids_of(body)
    assert len(ids) == app.config["SEARCH_RESULTS_N"] == len(set(ids)), "N cards, all different"
    assert ids[0] in (2001, 3001) and not {2001, 3001} <= set(ids)
    other = 3001 if ids[0] == 2001 else 2001
    [listed] = body["also_listed_as"][str(ids[0])]
    assert listed["id"] == other and listed["url"] == f"/products/{other}"
    assert listed["name"].endswith("Men Red Shirts 2001")
    response = web.post(
        "/search/",
        data={"image": (io.BytesIO(catalogue_photo(media, 2005)), "mine.jpg")},
        content_type="multipart/form-data",
    )
    html = web.get(response.location).get_data(as_text=True)
    cards = re.findall(r'<li class="product-card similar-card" data-product-id="(\d+)"', html)
    assert len(cards) == len(set(cards)) == app.config["SEARCH_RESULTS_N"]
    assert {2005, 3002} & {int(c) for c in cards} and not {2005, 3002} <= {int(c) for c in cards}
    assert re.search(r"Also listed as\s*<a href=\"/products/(2005|3002)\">", html)


def test_a_card_whose_product_was_withdrawn_goes_to_its_twin(shop, web):
    app, _, media = shop
    body = api_search(web, catalogue_photo(media, 2001), wait="1").get_json()
    shown = ids_of(body)[0]
    twin = 3001 if shown == 2001 else 2001
    with app.app_context():
        db.session.get(Product, shown).active = False
        db.session.commit()
    try:
        again = web.get(f"/api/jobs/{body['job_id']}").get_json()
        assert ids_of(again)[0] == twin and str(twin) not in again["also_listed_as"]
    finally:
        with app.app_context():
            db.session.get(Product, shown).active = True
            db.session.commit()


# -- nothing in the store looks much like this ----------------------------------------------------


def texture() -> bytes:
    """A plain texture: fine diagonal stripes of two greens, nothing like any product."""
    yy, xx = np.mgrid[0:160, 0:160]
    stripes = ((xx + yy) // 4) % 2
    arr = np.where(stripes[..., None] == 1, [40, 120, 60], [90, 170, 100]).astype(np.uint8)
    return encode(Image.fromarray(arr), "JPEG", quality=90)


@pytest.fixture
def compare_threshold(shop):
    """Sets the served model's calibrated compare threshold (a score) for one test."""
    app, _, _ = shop
    with app.app_context():
        model_id = registry.neighbour_cache().active_model()
    path = thresholds.compare_threshold_file(app.config["MODEL_FOLDER"], model_id)
    saved = path.read_text()

    def set_score(score: float) -> None:
        path.write_text(json.dumps({**json.loads(saved), "threshold": score}))

    yield set_score
    path.write_text(saved)


def test_a_photo_of_nothing_in_the_store_says_so(shop, web, compare_threshold):
    app, _, media = shop
    # The tiny test backbone puts every photo close to every other: a strict threshold.
    compare_threshold(0.99995)
    body = api_search(web, texture(), wait="1").get_json()
    assert body["no_close_match"] is True and len(body["items"]) == 6
    response = web.post(
        "/search/",
        data={"image": (io.BytesIO(texture()), "stripes.jpg")},
        content_type="multipart/form-data",
    )
    html = web.get(response.location).get_data(as_text=True)
    assert "Nothing in the store looks much like this; closest matches:" in html
    assert "Products that look like it" not in html
    # A catalogue photo is as close as can be: its results are presented as alike.
    same = api_search(web, catalogue_photo(media, 2009), wait="1").get_json()
    assert same["no_close_match"] is False
    html = web.get(f"/search/jobs/{same['job_id']}").get_data(as_text=True)
    assert "Products that look like it" in html and "Nothing in the store" not in html


def test_the_setting_overrides_the_compare_threshold_and_no_calibration_means_no_verdict(
    shop, web, compare_threshold
):
    app, _, media = shop
    compare_threshold(0.5)  # cosine 0: everything counts as close
    assert api_search(web, texture(), wait="1").get_json()["no_close_match"] is False
    app.config["SEARCH_NO_MATCH_COSINE"] = 0.99999
    try:
        assert api_search(web, texture(), wait="1").get_json()["no_close_match"] is True
    finally:
        app.config["SEARCH_NO_MATCH_COSINE"] = 0.0
    with app.app_context():
        model_id = registry.neighbour_cache().active_model()
        path = thresholds.compare_threshold_file(app.config["MODEL_FOLDER"], model_id)
        path.unlink()
        assert photo_search.search_results.close_match_cosine(model_id) == (None, None)
    body = api_search(web, texture(), wait="1").get_json()
    assert body["no_close_match"] is False


# -- the tuned network reads the product's colour from the photo's transparency -----------------


def test_the_tuned_embedding_reads_colour_inside_the_mask(trained, monkeypatch):  # noqa: F811
    tiny, _, _, _, _, network, _ = trained
    embedder = network.backbone(tiny)
    arr = np.zeros((80, 60, 4), np.uint8)
    arr[..., :3] = (30, 200, 40)  # a green floor, made transparent...
    arr[8:72, 5:55, 3] = 100  # ...but for a soft edge around the product
    arr[20:60, 15:45] = (200, 30, 30, 255)  # the product: red, opaque
    rgba = Image.fromarray(arr, "RGBA")
    seen = []
    describe = embedder._colour.describe
    monkeypatch.setattr(
        embedder._colour, "describe", lambda images: seen.append(images) or describe(images)
    )
    vector = embedder.embed([rgba])[0]
    assert seen[0][0].mode == "RGBA", "the descriptor got the mask"
    masked = ColourDescriptor().describe([rgba])[0]
    on_white = ColourDescriptor().describe([load_image(rgba)])[0]
    assert float(masked @ on_white) < 0.95, "laid on white, the floor would count as product"
    _, _, colour, _ = network.slices()
    part = vector[colour] / np.linalg.norm(vector[colour])
    np.testing.assert_allclose(part, masked, atol=1e-5)
