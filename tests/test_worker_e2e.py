"""End to end through a real Celery worker and the real Redis: import, embed, lists, upkeep."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import redis
from PIL import Image

from tests.conftest import TEST_REDIS_URL, _make_app
from tests.worker_process import WorkerProcess
from webapp import registry
from webapp.extensions import db
from webapp.models import Product
from worker.tasks import ml_index_catalog, ml_update_product

RGB = {"Red": (200, 30, 30), "Blue": (30, 30, 200), "Green": (30, 160, 40), "Black": (15, 15, 15)}


def write_catalogue(folder, count: int) -> None:
    """A small Kaggle-style folder: styles.csv and images/<id>.jpg."""
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(1)
    with open(folder / "styles.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "id",
                "gender",
                "masterCategory",
                "subCategory",
                "articleType",
                "baseColour",
                "season",
                "year",
                "usage",
                "productDisplayName",
            ]
        )
        for i in range(count):
            colour = list(RGB)[i % 4]
            pid = 5000 + i
            w.writerow(
                [
                    pid,
                    "Men",
                    "Apparel",
                    "Topwear",
                    "Shirts",
                    colour,
                    "Summer",
                    2012,
                    "Casual",
                    f"Shirt {i}",
                ]
            )
            arr = np.full((80, 60, 3), 255, np.uint8)
            top = int(rng.integers(5, 25))
            arr[top : top + 45, 10:50] = RGB[colour]
            Image.fromarray(arr).save(folder / "images" / f"{pid}.jpg", "JPEG")


@pytest.fixture
def e2e(tmp_path):
    client = redis.Redis.from_url(TEST_REDIS_URL)
    client.flushdb()
    app = _make_app(
        tmp_path,
        f"sqlite:///{tmp_path / 'e2e.sqlite3'}",
        {"EMBEDDING_BACKBONE": "tiny", "NEIGHBOURS_K": 6},
    )
    worker = WorkerProcess(app.config, tmp_path / "worker.log")
    with app.app_context():
        worker.start(app.extensions["celery"])
    yield app, tmp_path
    worker.kill()
    client.flushdb()


def test_worker_builds_lists_and_keeps_them_up_to_date(e2e):
    app, tmp_path = e2e
    write_catalogue(tmp_path / "cat", 24)
    result = app.test_cli_runner().invoke(args=["catalog", "import", str(tmp_path / "cat")])
    assert result.exit_code == 0, result.output

    with app.app_context():
        summary = ml_index_catalog.delay().get(timeout=180)
        assert summary["embedded"] == 24 and summary["products"] == 24 and summary["rebuilt"]
        cache = registry.neighbour_cache()
        model_id = cache.active_model()
        assert model_id == summary["model"]
        before = {pid: cache.get_list(model_id, pid)[0].tolist() for pid in range(5000, 5024)}
        built_at = cache.meta(model_id)["built_at"]
        again = ml_index_catalog.delay().get(timeout=60)
        assert again["embedded"] == 0 and not again["rebuilt"], "a repeat run skips done work"
        assert cache.meta(model_id)["built_at"] == built_at

        # A new product: a near copy of product 5000's photo.
        src = np.asarray(Image.open(tmp_path / "cat" / "images" / "5000.jpg")).copy()
        src[:3] = 255
        Image.fromarray(src).save(tmp_path / "media" / "new.jpg", "JPEG")
        db.session.add(
            Product(
                id=9000,
                name="New shirt",
                gender="Men",
                base_colour="Red",
                article_type="Shirts",
                image_path="new.jpg",
                active=True,
            )
        )
        db.session.commit()
        added = ml_update_product.delay(9000).get(timeout=60)
        assert added["action"] == "embedded"
        assert 0 < added["rewritten"] < 25  # only the affected lists, not a rebuild
        assert 9000 in cache.get_list(model_id, 5000)[0].tolist()
        assert cache.get_list(model_id, 9000)[0][0] == 5000

        # Delete an original product: it leaves every list; its own list goes.
        db.session.delete(db.session.get(Product, 5001))
        db.session.commit()
        removed = ml_update_product.delay(5001).get(timeout=60)
        assert removed["action"] == "removed"
        assert cache.get_list(model_id, 5001) is None
        lists = {pid: cache.get_list(model_id, pid)[0].tolist() for pid in range(5002, 5024)}
        assert all(5001 not in lst for lst in lists.values())
        assert any(5001 in lst for lst in before.values())
        unchanged = [pid for pid in lists if lists[pid] == before[pid]]
        assert unchanged, "lists that neither product touched stay as they were"
        meta = cache.meta(model_id)
        assert meta["built_at"] == built_at, "upkeep must not rebuild the lists"
        assert float(meta["updated_at"]) > float(built_at)
        assert cache.active_model() == model_id
