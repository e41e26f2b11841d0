"""Photo search and compare end to end: the web app, the real Redis broker and a real Celery
worker process (tiny backbone). Every bad upload is refused with a clear 4xx or processed
correctly, and the worker keeps serving afterwards."""

from __future__ import annotations

import io
import json
import os
import time
import uuid

import pytest
import redis
from PIL import Image

from tests.conftest import TEST_REDIS_URL, _make_app
from tests.test_search import (
    api_search,
    build_search_catalogue,
    catalogue_photo,
    encode,
    exif_rotated,
    ids_of,
    search_config,
)
from tests.worker_process import WorkerProcess
from webapp import registry
from webapp.extensions import db
from webapp.search import services

STRICT_SAME_PHOTO = "0.9995"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A catalogue with trained heads, and a worker process consuming its queues."""
    tmp = tmp_path_factory.mktemp("search-worker")
    client = redis.Redis.from_url(TEST_REDIS_URL)
    client.flushdb()
    app = _make_app(tmp, f"sqlite:///{tmp / 'live.sqlite3'}", search_config())
    products = build_search_catalogue(app, tmp / "media")
    worker = WorkerProcess(app.config, tmp / "worker.log")
    worker.env["SEARCH_SAME_PHOTO_COSINE"] = STRICT_SAME_PHOTO
    worker.env["SEARCH_RESULTS_N"] = "6"
    with app.app_context():
        worker.start(app.extensions["celery"])
    yield app, products, tmp / "media", worker
    worker.kill()
    with app.app_context():
        db.session.remove()
        db.engine.dispose()
    client.flushdb()


@pytest.fixture
def web(live):
    app = live[0]
    app.extensions["celery"].set_default()
    return app.test_client()


def assert_still_serving(web, media) -> None:
    """A normal search right after: answered by the worker, the photo's product first."""
    response = api_search(web, catalogue_photo(media, 2017), wait="1", all_categories="1")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert ids_of(response.get_json())[0] == 2017


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb)."""
    import struct
    import zlib

    data = bytearray(encode(Image.new("RGB", (1, 1)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def truncated_jpeg() -> bytes:
    noisy = Image.frombytes("RGB", (160, 160), os.urandom(160 * 160 * 3))
    data = encode(noisy, "JPEG", quality=90)
    return data[: len(data) // 2]


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (40, 40), c) for c in ((200, 30, 30), (30, 30, 200))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


REFUSED = {
    "non-image": (b"just some text pretending to be a photo", "photo.jpg", 400, "not a JPEG"),
    "truncated-jpeg": (truncated_jpeg(), "cut.jpg", 400, "incomplete"),
    "20000x20000-png": (png_declaring(20_000, 20_000), "huge.png", 400, "too large"),
    "animated-gif": (animated_gif(), "moving.gif", 400, "not a JPEG, PNG or WebP"),
    "zero-bytes": (b"", "empty.jpg", 400, "The file is empty"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_bad_uploads_are_refused_and_the_worker_keeps_serving(live, web, case):
    app, _, media, _ = live
    data, name, status, message = REFUSED[case]
    response = api_search(web, data, name)
    assert response.status_code == status
    assert message in response.get_json()["error"]
    folder = media / services.UPLOAD_SUBDIR
    assert not folder.exists() or not [p for p in folder.iterdir() if p.name.startswith(".")]
    assert_still_serving(web, media)


def test_an_upload_over_the_size_limit_gets_a_413_and_the_worker_keeps_serving(live, web):
    app, _, media, _ = live
    app.config["MAX_CONTENT_LENGTH"] = 256 * 1024
    try:
        response = api_search(web, os.urandom(300 * 1024), "big.jpg")
    finally:
        app.config["MAX_CONTENT_LENGTH"] = 8 * 1024 * 1024
    assert response.status_code == 413
    assert "too large: the limit is" in response.get_json()["error"]
    assert_still_serving(web, media)


@pytest.mark.parametrize("case", ["cmyk-jpeg", "exif-rotated-jpeg"])
def test_cmyk_and_exif_rotated_photos_are_processed_by_the_worker(live, web, case):
    app, _, media, _ = live
    img = Image.open(media / "p2009.jpg").convert("RGB")
    data = encode(img.convert("CMYK"), "JPEG", quality=95) if case == "cmyk-jpeg" else None
    data = data or exif_rotated(img)
    response = api_search(web, data, "photo.jpg", wait="1", all_categories="1")
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert ids_of(body)[0] == 2009 and len(body["items"]) == 6
    assert body["items"][0]["score"] > 0.99
    assert_still_serving(web, media)


def test_a_photo_the_worker_cannot_decode_fails_that_request_only(live, web):
    """A file that went bad after the upload checks (disk damage, say): a 422 for that request."""
    app, _, media, _ = live
    folder = media / services.UPLOAD_SUBDIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    request_id = uuid.uuid4().hex
    record = {
        "id": request_id,
        "kind": "search",
        "state": "queued",
        "created_at": time.time(),
        "images": [f"{services.UPLOAD_SUBDIR}/broken.jpg"],
        "n": 6,
        "all_categories": False,
        "prefs": {},
        "model": None,
    }
    redis.Redis.from_url(TEST_REDIS_URL).set(
        services.REQUEST_KEY.format(id=request_id), json.dumps(record)
    )
    with app.app_context():
        services.enqueue("search", request_id)
    response = web.get(f"/api/jobs/{request_id}?wait=1")
    assert response.status_code == 422
    assert "could not be read" in response.get_json()["message"]
    assert_still_serving(web, media)


def test_the_results_page_fills_in_from_the_worker(live, web):
    app, products, media, _ = live
    response = web.post(
        "/search/",
        data={"image": (io.BytesIO(catalogue_photo(media, 2021)), "mine.jpg")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 303
    request_id = response.location.rsplit("/", 1)[1]
    assert web.get(f"/api/jobs/{request_id}?wait=1").status_code == 200
    html = web.get(response.location).get_data(as_text=True)
    assert "Products that look like it" in html and "What we see" in html
    gender, article_type, _, colour = products[2021]
    first = html.index('class="product-card-name"')
    assert html[first:].startswith(
        f'class="product-card-name">{gender} {colour} {article_type} 2021<'
    )


# -- two-image compare ---------------------------------------------------------------------


def compare(web, first: bytes, second: bytes, **fields):
    return web.post(
        "/api/compare",
        data={
            "image_1": (io.BytesIO(first), "a.jpg"),
            "image_2": (io.BytesIO(second), "b.jpg"),
            **fields,
        },
        content_type="multipart/form-data",
    )


def test_compare_scores_two_photos_against_the_calibrated_threshold(live, web):
    app, _, media, _ = live
    with app.app_context():
        model_id = registry.neighbour_cache().active_model()
        calibrated = json.loads((registry.store_for(model_id).path / "compare.json").read_text())
    same = compare(web, catalogue_photo(media, 2001), catalogue_photo(media, 2001))
    assert same.status_code == 200, same.get_data(as_text=True)
    body = same.get_json()
    assert set(body) >= {"score", "similar", "threshold", "model", "elapsed_ms"}
    assert body["score"] == pytest.approx(1.0, abs=1e-3) and body["similar"] is True
    assert body["threshold"] == round(calibrated["threshold"], 4) and body["calibrated"] is True
    assert body["model"] == model_id and body["elapsed_ms"] > 0
    other = compare(web, catalogue_photo(media, 2001), catalogue_photo(media, 2030)).get_json()
    assert 0 <= other["score"] < body["score"]
    assert other["similar"] is (other["score"] >= other["threshold"])
    # Compare photos are deleted as soon as they are scored.
    raw = redis.Redis.from_url(TEST_REDIS_URL).get(services.REQUEST_KEY.format(id=body["job_id"]))
    stored = json.loads(raw)["images"]
    assert len(stored) == 2 and not any((media / path).exists() for path in stored)


def test_compare_with_a_model_id(live, web):
    app, _, media, _ = live
    with app.app_context():
        model_id = registry.neighbour_cache().active_model()
    photo = catalogue_photo(media, 2001)
    ok = compare(web, photo, photo, model=model_id)
    assert ok.status_code == 200 and ok.get_json()["model"] == model_id
    bad = compare(web, photo, photo, model="No Such Model!")
    assert bad.status_code == 400 and "'model' must be a model id" in bad.get_json()["error"]
    # Only served (or admin-enabled) ids: the worker never builds a model a request names.
    unknown = compare(web, photo, photo, model="resnet50-deadbeef-224-avg")
    assert unknown.status_code == 400 and model_id in unknown.get_json()["error"]
    assert_still_serving(web, media)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"image_1": (io.BytesIO(b"x"), "a.jpg")}, "'image_1': This file is not a JPEG"),
        ({}, "file field named 'image_1'"),
    ],
)
def test_compare_bad_uploads_get_400(live, web, fields, message):
    response = web.post("/api/compare", data=fields, content_type="multipart/form-data")
    assert response.status_code == 400
    assert message in response.get_json()["error"]


def test_compare_page_flow(live, web):
    app, _, media, _ = live
    page = web.get("/search/compare")
    assert page.status_code == 200 and b'name="image_2"' in page.data
    response = web.post(
        "/search/compare",
        data={
            "image_1": (io.BytesIO(catalogue_photo(media, 2001)), "a.jpg"),
            "image_2": (io.BytesIO(catalogue_photo(media, 2001)), "b.jpg"),
        },
        content_type="multipart/form-data",
    )
    assert response.status_code == 303
    request_id = response.location.rsplit("/", 1)[1]
    assert web.get(f"/api/jobs/{request_id}?wait=1").status_code == 200
    html = web.get(response.location).get_data(as_text=True)
    assert "100%" in html and "similar</span>" in html and "calibrated on catalogue pairs" in html
    missing = web.post(
        "/search/compare",
        data={"image_1": (io.BytesIO(catalogue_photo(media, 2001)), "a.jpg")},
        content_type="multipart/form-data",
    )
    assert missing.status_code == 400 and b"Please choose the second photo." in missing.data
