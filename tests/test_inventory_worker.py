"""Bulk import through real Celery workers: one is killed (SIGKILL) half-way, a new one
finishes the job; every good row ends up imported once, embedded and in the lists."""

from __future__ import annotations

import csv
import hashlib
import io
import time

import numpy as np
import pytest
import redis
from sqlalchemy import func, select

from ml.neighbours import all_neighbours
from tests.conftest import TEST_REDIS_URL, AuthActions, _make_app, add_product, save_photo
from tests.inventory_data import build_upload, photo_bytes
from tests.worker_process import WorkerProcess
from webapp import registry
from webapp.extensions import db
from webapp.inventory import imports
from webapp.models import ImportJob, Product
from worker.jobs import indexing

# This test session's own Redis database (see conftest): no other run flushes it.
REDIS_URL = TEST_REDIS_URL
SETTINGS = {
    "REDIS_URL": REDIS_URL,
    "EMBEDDING_BACKBONE": "tiny",
    "NEIGHBOURS_K": 5,
    "IMPORT_BATCH_SIZE": 20,
    # Slow the import down enough to kill the worker in the middle of it.
    "IMPORT_THROTTLE_S": 0.25,
    "DUPLICATE_COSINE": 0.999,
}
CATALOGUE = 20


def start_worker(app, log, settings: dict | None = None) -> WorkerProcess:
    """A real worker with the test app's settings."""
    worker = WorkerProcess(app.config, log)
    settings = settings or SETTINGS
    worker.env.update({k: str(v) for k, v in settings.items() if k != "REDIS_URL"})
    worker.env["EMBEDDING_INPUT_SIZE"] = "0"  # whatever instance/config.py says
    with app.app_context():
        worker.start(app.extensions["celery"])
    return worker


def build_catalogue(app, media) -> str:
    """CATALOGUE products with photos, embedded and listed; returns the model id."""
    with app.app_context():
        for i in range(CATALOGUE):
            colour = ["Red", "Blue", "Green", "Black"][i % 4]
            name = save_photo(media, f"cat/{i}.jpg", colour, i)
            add_product(
                id=100 + i,
                name=f"Catalogue {i}",
                base_colour=colour,
                image_path=name,
                image_sha256=hashlib.sha256((media / name).read_bytes()).hexdigest(),
            )
        report = indexing.embed_catalog()
        indexing.build_neighbours(report.model_id)
    return report.model_id


def wait_for(app, job_id: int, condition, timeout: float, what: str) -> ImportJob:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with app.app_context():
            job = db.session.get(ImportJob, job_id)
            if condition(job):
                db.session.expunge(job)
                return job
            db.session.remove()
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def shop(tmp_path):
    """A shop with a small catalogue, embedded and indexed; real Redis; workers cleaned up."""
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    app = _make_app(tmp_path, f"sqlite:///{tmp_path / 'shop.sqlite3'}", SETTINGS)
    media = tmp_path / "media"
    model_id = build_catalogue(app, media)
    workers: list[WorkerProcess] = []
    yield app, media, model_id, workers
    for worker in workers:
        worker.kill()
    client.flushdb()


def test_a_killed_worker_loses_nothing(shop, tmp_path):
    app, media, model_id, workers = shop
    copies = {100: (media / "cat/0.jpg").read_bytes(), 101: (media / "cat/1.jpg").read_bytes()}
    up = build_upload(280, copies_of=copies)
    with app.app_context():
        built_at = registry.neighbour_cache().meta(model_id)["built_at"]
    client = app.test_client()
    AuthActions(app, client).login(role="admin")
    workers.append(start_worker(app, tmp_path / "worker-1.log"))

    started = time.perf_counter()
    response = client.post(
        "/admin/inventory/imports/new",
        data={
            "styles": (io.BytesIO(up.csv_bytes), "styles.csv"),
            "photos": (io.BytesIO(up.zip_bytes), "photos.zip"),
        },
        content_type="multipart/form-data",
    )
    assert response.status_code == 302
    job_id = int(response.location.rsplit("/", 1)[1])

    # Kill the worker once three batches are in, long before the last one.
    half = wait_for(app, job_id, lambda j: j.rows_done >= 60, 60, "the import to get under way")
    workers[0].kill()
    assert half.status.value == "running" and half.stage == "import"
    assert half.rows_done < half.rows_total
    with app.app_context():
        in_db = db.session.scalar(select(func.count()).select_from(Product))
    assert CATALOGUE < in_db < CATALOGUE + len(up.good), "killed in the middle"

    # A new worker picks the job up by itself and finishes it.
    workers.append(start_worker(app, tmp_path / "worker-2.log"))
    job = wait_for(app, job_id, lambda j: j.status.value in ("done", "failed"), 120, "the job")
    seconds = time.perf_counter() - started
    assert job.status.value == "done", job.message
    print(f"\n{len(up.good)} rows imported and indexed in {seconds:.1f} s, one worker killed")

    # Counts as if nothing had happened.
    assert (job.inserted, job.updated, job.unchanged) == (len(up.good), 0, 0)
    assert job.skipped == len(up.skipped)
    assert job.rows_done == job.rows_total == len(up.good) + len(up.skipped)
    assert job.index_done == job.index_total == len(up.good)

    with app.app_context():
        # Every good row once, with its own copied photo; nothing half-written left behind.
        ids = set(db.session.scalars(select(Product.id)))
        assert ids == set(range(100, 100 + CATALOGUE)) | set(up.good)
        for pid in up.good:
            photo = media / "catalog" / f"{pid}.jpg"
            assert db.session.get(Product, pid).image_path == f"catalog/{pid}.jpg"
            assert photo.is_file()
        assert not list(media.rglob("*.part"))
        assert not imports.job_folder(job_id).exists()

        # Embedded, and every list is exactly its product's top-K, without a full rebuild.
        stored = registry.store_for(model_id).keys_by_id()
        assert set(stored) == ids
        for pid in up.good:
            assert stored[pid] == db.session.get(Product, pid).image_sha256
        cache = registry.neighbour_cache()
        assert cache.meta(model_id)["built_at"] == built_at
        store_ids, vectors = registry.store_for(model_id).load()
        _idx, scores = all_neighbours(np.asarray(vectors), 5)
        for row, pid in enumerate(store_ids.tolist()):
            cached = cache.get_list(model_id, pid)
            assert cached is not None and np.allclose(cached[1], scores[row], atol=2e-3), pid
        assert any(
            set(cache.get_list(model_id, pid)[0].tolist()) & set(up.good)
            for pid in range(100, 100 + CATALOGUE)
        ), "new products reached the catalogue's lists"

    # The report: every skipped row with its reason, the stray files, the duplicates.
    report = list(
        csv.DictReader(
            io.StringIO(client.get(f"/admin/inventory/imports/{job_id}/report.csv").text)
        )
    )
    skipped = {r["product_id"]: r["reason"] for r in report if r["kind"] == "skipped"}
    assert skipped.keys() == up.skipped.keys()
    assert all(up.skipped[pid] in reason for pid, reason in skipped.items())
    ignored = [r["reason"] for r in report if r["kind"] == "ignored"]
    assert len(ignored) == len(up.ignored)
    duplicates = {
        (int(r["product_id"]), int(r["duplicate_of"]), r["match"])
        for r in report
        if r["kind"] == "duplicate"
    }
    [(new_id, old_id)] = up.exact.items()
    assert (new_id, old_id, "exact") in duplicates
    page = client.get(f"/admin/inventory/imports/{job_id}")
    assert b'value="100"' in page.data

    # The index panel sees the worker and the served model.
    panel = client.get("/admin/inventory/index").get_data(as_text=True)
    assert "1 alive" in panel and model_id in panel

    # A single create through the admin page: its job state goes from queued to done.
    response = client.post(
        "/admin/products/new",
        data={"name": "One more", "image": (io.BytesIO(photo_bytes("Red", 31337)), "one.jpg")},
        content_type="multipart/form-data",
    )
    new_id = int(response.location.split("/")[-2])
    deadline = time.monotonic() + 60
    while True:
        state = client.get(f"/admin/inventory/products/{new_id}/index-job").get_json()["job"]
        if state["state"] == "done" or time.monotonic() > deadline:
            break
        assert state["state"] in ("queued", "running"), state
        time.sleep(0.1)
    assert state["state"] == "done" and state["action"] == "embedded"
    with app.app_context():
        assert registry.neighbour_cache().get_list(model_id, new_id) is not None
