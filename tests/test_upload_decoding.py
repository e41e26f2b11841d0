"""Uploads decoded once, at reduced size: ``ml.preprocess.load_image_reduced`` and photo
search's ``open_upload`` / ``read_query``. A large photo decoded at a fraction of its size
gives the same crop, the same product box and the same results as a full decode; EXIF
orientation is kept; tiny photos and one-pixel crop boxes still work."""

from __future__ import annotations

import io

import numpy as np
import pytest
import redis
from PIL import Image

from ml import foreground, wild
from ml.foreground import box_iou
from ml.preprocess import load_image, load_image_reduced
from tests.conftest import TEST_REDIS_URL, _make_app
from tests.test_search import (
    api_search,
    build_search_catalogue,
    exif_rotated,
    run_tasks_here,
    search_config,
)
from webapp.extensions import db
from webapp.preferences import Preferences
from webapp.search import services
from webapp.uploads import store_image, validate_image
from worker.jobs import photo_search

SIZE = 160  # the network's input size photo search reads uploads for
LARGE = (1500, 2000)  # width, height of a large upload


def encode(img: Image.Image, fmt: str = "JPEG", **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}) | params)
    return buf.getvalue()


def textured_photo(seed: int, size: tuple[int, int] = LARGE) -> Image.Image:
    """A photo the size of a phone's: a red garment-like block on a wooden floor."""
    rng = np.random.default_rng(seed)
    w, h = size
    small = wild.background("wood", rng, w // 10, h // 10)
    canvas = np.asarray(
        Image.fromarray(np.clip(small * 255, 0, 255).astype(np.uint8)).resize(size), np.float32
    )
    canvas += rng.normal(0, 6, canvas.shape)  # sensor grain: JPEG data a camera would write
    canvas[int(0.3 * h) : int(0.7 * h), int(0.35 * w) : int(0.65 * w)] = (200, 40, 40)
    return Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))


def mean_difference(a: Image.Image, b: Image.Image, size: tuple[int, int]) -> float:
    """Mean absolute pixel difference (0..255) of two photos brought to the same size."""
    x = np.asarray(a.resize(size, Image.Resampling.BICUBIC), np.float32)
    y = np.asarray(b.resize(size, Image.Resampling.BICUBIC), np.float32)
    return float(np.abs(x - y).mean())


def ranked(result: dict) -> list[int]:
    """Product ids of a worker's search result, best first."""
    return [item[0] for item in result["items"]]


# -- ml.preprocess.load_image_reduced -------------------------------------------------------


@pytest.fixture(scope="module")
def large_jpeg() -> bytes:
    return encode(textured_photo(0))


def test_a_large_jpeg_is_decoded_small_and_looks_as_a_full_decode_does(large_jpeg):
    reduced = load_image_reduced(large_jpeg, SIZE)
    assert reduced.mode == "RGB"
    # At 1/4: twice the network's size at least, for the resize that follows.
    assert reduced.size == (375, 500)
    assert abs(reduced.width / reduced.height - 0.75) < 0.01
    assert mean_difference(reduced, load_image(large_jpeg), (120, 160)) < 3.0


@pytest.mark.parametrize(
    "box",
    [(0.3, 0.2, 0.25, 0.5), (0.25, 0.25, 0.25, 0.25), (0.1, 0.6, 0.06, 0.06), (0.5, 0.5, 0.6, 0.6)],
)
def test_a_crop_box_keeps_the_network_s_size_and_its_content(large_jpeg, box):
    """The box keeps twice the network's input size across its longer side (a box a quarter
    of the photo wide is decoded larger than the whole photo would be), less than twice
    that again, and shows what a full decode's box shows."""
    reduced = load_image_reduced(large_jpeg, SIZE, box)
    full = load_image(large_jpeg)
    crop, full_crop = foreground.crop_relative(reduced, box), foreground.crop_relative(full, box)
    assert max(crop.size) >= 2 * SIZE or reduced.size == full.size, (crop.size, reduced.size)
    assert max(crop.size) < 4 * SIZE + 2 or reduced.size == full.size, (crop.size, reduced.size)
    assert abs(crop.width / crop.height - full_crop.width / full_crop.height) < 0.1
    assert mean_difference(crop, full_crop, crop.size) < 4.0


def test_a_tiny_box_on_a_large_photo_costs_no_more_than_max_side(large_jpeg):
    box = (0.5, 0.5, 0.06, 0.06)
    assert load_image_reduced(large_jpeg, SIZE, box).size == LARGE  # the box needs it all
    assert load_image_reduced(large_jpeg, SIZE, box, max_side=1000).size == (750, 1000)
    # 1/2 by the JPEG decoder, then halved again: the nearest whole steps below 900.
    assert load_image_reduced(large_jpeg, SIZE, box, max_side=900).size == (375, 500)
    with pytest.raises(ValueError, match="max_side"):
        load_image_reduced(large_jpeg, SIZE, box, max_side=0)


def test_exif_orientation_is_kept_and_decides_the_size(large_jpeg):
    """A photo stored on its side (EXIF orientation 6) comes back upright; the box is in
    upright units, so a box wide in the upright photo is given its width's pixels."""
    upright = textured_photo(1)
    upright.paste((20, 20, 220), (0, 0, 300, 300))  # a blue corner: top left when upright
    data = exif_rotated(upright)
    with Image.open(io.BytesIO(data)) as stored:
        assert stored.size == (2000, 1500)  # as the camera wrote it
    reduced = load_image_reduced(data, SIZE)
    assert reduced.width < reduced.height
    assert mean_difference(reduced, upright, (120, 160)) < 4.0
    corner = np.asarray(reduced)[: reduced.height // 10, : reduced.width // 10].mean(axis=(0, 1))
    assert corner[2] > 150 > corner[0], corner
    # 1125 x 200 pixels upright: decoded at 1/2, the box keeps 562 pixels. Read sideways it
    # would be 1500 x 150 and decoded at 1/4, leaving the box 281 pixels.
    box = (0.0, 0.0, 0.75, 0.1)
    crop = foreground.crop_relative(load_image_reduced(data, SIZE, box), box)
    assert max(crop.size) >= 2 * SIZE and crop.width > crop.height, crop.size


def test_a_png_is_shrunk_by_a_whole_factor():
    data = encode(textured_photo(2, (2000, 1500)), "PNG")
    reduced = load_image_reduced(data, SIZE)
    assert reduced.size == (-(-2000 // 6), -(-1500 // 6))  # Image.reduce rounds up


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("size", [(1, 1), (3, 2), (2, 500)])
def test_tiny_and_thin_photos_come_back_whole(fmt, size):
    img = Image.new("RGB", size, (200, 40, 40))
    reduced = load_image_reduced(encode(img, fmt), SIZE)
    assert reduced.size == size
    # A one-pixel-wide box of a thin photo still gives a photo to embed.
    prepared, _ = foreground.prepare_query_and_box(reduced, (0.5, 0.0, 0.001, 1.0), SIZE)
    assert prepared.width >= 1 and 1 <= prepared.height <= SIZE


def test_a_path_is_read_as_bytes_are(tmp_path, large_jpeg):
    path = tmp_path / "photo.jpg"
    path.write_bytes(large_jpeg)
    a, b = load_image_reduced(path, SIZE), load_image_reduced(large_jpeg, SIZE)
    assert a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


def test_bad_input_raises_as_load_image_does(tmp_path, large_jpeg):
    with pytest.raises(ValueError, match="empty"):
        load_image_reduced(b"", SIZE)
    with pytest.raises(ValueError, match="not a supported image format"):
        load_image_reduced(b"just some text", SIZE)
    with pytest.raises(ValueError, match="truncated"):
        load_image_reduced(large_jpeg[: len(large_jpeg) // 2], SIZE)
    with pytest.raises(FileNotFoundError):
        load_image_reduced(tmp_path / "missing.jpg", SIZE)
    with pytest.raises(ValueError, match="size"):
        load_image_reduced(large_jpeg, 0)
    with pytest.raises(TypeError):
        load_image_reduced(Image.new("RGB", (4, 4)), SIZE)  # type: ignore[arg-type]


# -- photo search: the worker decodes each upload once, small ---------------------------------


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """48 catalogue products, heads trained, tasks run eagerly; the tiny backbone at the
    input size of the served ones, so uploads are read as large as they are in the shop."""
    tmp = tmp_path_factory.mktemp("upload-decoding")
    client = redis.Redis.from_url(TEST_REDIS_URL)
    client.flushdb()
    config = search_config(CELERY={"task_always_eager": True}, EMBEDDING_INPUT_SIZE=SIZE)
    app = _make_app(tmp, f"sqlite:///{tmp / 'shop.sqlite3'}", config)
    build_search_catalogue(app, tmp / "media")
    yield app, tmp / "media"
    with app.app_context():
        db.session.remove()
        db.engine.dispose()
    client.flushdb()


def enlarged(media, pid: int, on_floor: bool = False, seed: int = 0) -> Image.Image:
    """A 60x80 catalogue photo enlarged to 1500x2000; ``on_floor``: its white background
    replaced by a grainy grey floor (so the foreground step has a product to cut out)."""
    photo = Image.open(media / f"p{pid}.jpg").convert("RGB")
    big = np.asarray(photo.resize(LARGE, Image.Resampling.BICUBIC), np.int16)
    if on_floor:
        rng = np.random.default_rng(seed)
        floor = 140 + rng.integers(-6, 7, big.shape)
        big = np.where(big.min(axis=2, keepdims=True) > 225, floor, big)
    return Image.fromarray(np.clip(big, 0, 255).astype(np.uint8))


def stored_upload(app, data: bytes) -> str:
    """Photo bytes checked and stored as a search upload; its relative path."""
    image = validate_image(data, max_pixels=40_000_000)
    return store_image(image, app.config["MEDIA_FOLDER"], services.UPLOAD_SUBDIR)


def full_decode(relative: str, size: int, box=None, max_side=None) -> Image.Image:
    """What photo search read before: every pixel of the upload."""
    return load_image(relative)


def searched_part(photo: Image.Image, crop) -> Image.Image:
    """The part of a decoded upload the foreground step looks at (as ``read_query`` fits it)."""
    if crop is not None:
        return foreground._crop_fitted(photo, crop, SIZE)
    photo = photo.copy()
    photo.thumbnail((SIZE, SIZE), Image.Resampling.BICUBIC)
    return photo


CASES = [
    (2005, False, None),
    (2013, True, None),
    (2021, True, (0.2, 0.1, 0.6, 0.8)),
    (2030, True, (0.3, 0.2, 0.25, 0.5)),
    (2040, False, (0.1, 0.05, 0.8, 0.9)),
]


@pytest.mark.parametrize("pid,on_floor,crop", CASES)
def test_reduced_decoding_searches_as_a_full_decode_does(shop, monkeypatch, pid, on_floor, crop):
    """The photo prepared for a 160-pixel network (crop, product box, the cut itself) and
    the results of a search (the tiny test backbone) match those of a full decode."""
    app, media = shop
    with app.app_context():
        path = stored_upload(app, encode(enlarged(media, pid, on_floor, seed=pid)))
        searched = searched_part(photo_search.open_upload(path, SIZE, crop), crop)
        reduced = photo_search.read_query(path, SIZE, crop)
        found = photo_search.search_photo(path, Preferences(), 6, True, crop=crop)
        with monkeypatch.context() as patch:
            patch.setattr(photo_search, "load_image_reduced", full_decode)
            whole = photo_search.open_upload(path, SIZE, crop)
            assert whole.size == LARGE  # really a full decode
            searched_full = searched_part(whole, crop)
            full = photo_search.read_query(path, SIZE, crop)
            found_full = photo_search.search_photo(path, Preferences(), 6, True, crop=crop)
    # What the foreground step is given: the same picture.
    assert searched.size == searched_full.size
    assert mean_difference(searched, searched_full, searched.size) < 2
    assert reduced.crop == full.crop
    assert (reduced.product_box is None) == (full.product_box is None)
    if on_floor and crop is None:
        assert reduced.product_box is not None  # the foreground step did cut the product out
    if reduced.product_box is not None:
        assert box_iou(reduced.product_box, full.product_box) > 0.9
    assert max(reduced.image.size) <= SIZE
    # The cut around the product may differ by a pixel or two (its mask is worked out again).
    assert all(abs(a - b) <= 3 for a, b in zip(reduced.image.size, full.image.size, strict=True))
    if crop is None and not on_floor:
        assert ranked(found)[0] == pid  # practically the same photo: its own product first
    # The same results; the tiny test backbone scores many products within a few thousandths
    # of each other, so neighbours that close may trade places.
    assert set(ranked(found)[:3]) == set(ranked(found_full)[:3])
    cosines = [item[1] for item in found["items"]]
    assert cosines == pytest.approx([item[1] for item in found_full["items"]], abs=0.01)


def test_each_upload_is_decoded_once_per_search_and_the_steps_are_timed(shop, monkeypatch):
    app, media = shop
    opened = []
    real_open = Image.open

    def counting_open(fp, *args, **kwargs):
        opened.append(fp)
        return real_open(fp, *args, **kwargs)

    with app.app_context():
        path = stored_upload(app, encode(enlarged(media, 2013, on_floor=True)))
        photo_search.search_photo(path, Preferences(), 6)  # the model loads first
        monkeypatch.setattr(Image, "open", counting_open)
        result = photo_search.search_photo(path, Preferences(), 6, crop=(0.1, 0.1, 0.8, 0.8))
    assert len(opened) == 1, opened
    steps = [result[k] for k in ("decode_ms", "foreground_ms", "embed_ms", "rank_ms")]
    assert all(v >= 0 for v in steps)
    assert sum(steps) <= result["elapsed_ms"] + 1


def test_an_exif_rotated_large_upload_is_searched_upright(shop):
    app, media = shop
    with app.app_context():
        photo = enlarged(media, 2005)
        upright = photo_search.search_photo(
            stored_upload(app, encode(photo)), Preferences(), 6, True
        )
        turned = photo_search.search_photo(
            stored_upload(app, exif_rotated(photo)), Preferences(), 6, True
        )
    assert ranked(turned)[0] == 2005
    assert ranked(turned)[:3] == ranked(upright)[:3]


def test_a_tiny_upload_and_a_one_pixel_crop_box_are_searched(shop):
    app, media = shop
    with app.app_context():
        tiny = stored_upload(app, encode(Image.new("RGB", (2, 3), (200, 30, 30))))
        assert len(photo_search.search_photo(tiny, Preferences(), 6)["items"]) == 6
        large = stored_upload(app, encode(enlarged(media, 2021, on_floor=True)))
        thin = (0.5, 0.0, 1 / LARGE[0], 1.0)  # one pixel of the photo's width, all its height
        result = photo_search.search_photo(large, Preferences(), 6, crop=thin)
    assert len(result["items"]) == 6
    assert result["crop"] == list(thin)


def test_the_api_answer_carries_the_worker_s_timings(shop, monkeypatch):
    app, media = shop
    app.extensions["celery"].set_default()
    run_tasks_here(monkeypatch)
    response = api_search(app.test_client(), encode(enlarged(media, 2040)), wait="1")
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    for key in ("decode_ms", "foreground_ms", "embed_ms", "rank_ms"):
        assert 0 <= body[key] <= body["worker_ms"], (key, body)
