"""Concurrent admin saves against a real 2-process worker lose no embedding and no list.

50 products created through the admin form by 8 clients at once, while another process
compacts the embedding store over and over (as ``flask catalog embed`` does when it ends):
every product's job ends ``done``/``embedded``, the store holds each product with a photo
exactly once, every product has a list, and every list is a true top-K of the final store.
"""

from __future__ import annotations

import io
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import redis
from sqlalchemy import select

from ml.neighbours import all_neighbours
from ml.store import EmbeddingStore
from tests.conftest import COLOURS, TEST_REDIS_URL, AuthActions, _make_app, add_product, save_photo
from tests.worker_process import WorkerProcess
from webapp import registry
from webapp.extensions import db
from webapp.inventory import index_state
from webapp.models import Product, Role
from worker.jobs import indexing

pytestmark = pytest.mark.postgres

CLIENTS = 8
CREATES = 50
SEED = 20
K = 5
# Float16 scores in Redis against float32 recomputed here.
SCORE_ATOL = 2e-3


@pytest.fixture
def shop(tmp_path, postgres_database):
    """A seeded, listed catalogue on PostgreSQL and a real worker with two pool processes."""
    client = redis.Redis.from_url(TEST_REDIS_URL)
    client.flushdb()
    app = _make_app(
        tmp_path,
        postgres_database,
        # Limits are another test's subject: 8 clients on one address would hit them here.
        {"EMBEDDING_BACKBONE": "tiny", "NEIGHBOURS_K": K, "RATELIMIT_ENABLED": False},
    )
    media = tmp_path / "media"
    with app.app_context():
        for i in range(SEED):
            colour = COLOURS[i % len(COLOURS)]
            name = save_photo(media, f"seed/{i}.jpg", colour, i)
            add_product(id=100 + i, name=f"Seed {i}", base_colour=colour, image_path=name)
        model_id = indexing.embed_catalog().model_id
        indexing.build_neighbours(model_id)
    worker = WorkerProcess(app.config, tmp_path / "worker.log", concurrency=2)
    with app.app_context():
        worker.start(app.extensions["celery"])
    yield app, model_id, tmp_path
    worker.kill()
    client.flushdb()
    with app.app_context():
        db.session.remove()
        db.drop_all()
        db.engine.dispose()


def photo(n: int, folder) -> bytes:
    """A distinct product photo (a few colours, so lists overlap and change often)."""
    name = save_photo(folder, f"{n}.jpg", COLOURS[n % 3], 1000 + n)
    return (folder / name).read_bytes()


def create_products(app, share: list[int], folder, outcome: dict) -> None:
    """One admin client: create its share of products, trying again after a 409 (two admins
    took the same id), as the page asks."""
    client = app.test_client()
    assert AuthActions(app, client).login(email="admin@example.com").status_code == 302
    for n in share:
        data = photo(n, folder)
        for _ in range(20):
            response = client.post(
                "/admin/products/new",
                data={"name": f"Concurrent {n}", "base_colour": COLOURS[n % 3], "active": "y"}
                | {"image": (io.BytesIO(data), "photo.jpg")},
                content_type="multipart/form-data",
            )
            if response.status_code != 409:
                break
            outcome["retries"] += 1
            time.sleep(random.uniform(0, 0.05))
        match = re.fullmatch(r"/admin/products/(\d+)/edit", response.location or "")
        if response.status_code == 302 and match:
            outcome["created"].append(int(match[1]))
        else:
            outcome["errors"].append(response.status_code)


def wait_until_indexed(app, product_ids: list[int], timeout: float) -> dict[int, dict]:
    """Every product's index job state once none is queued or running (or at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        with app.app_context():
            states = {pid: index_state.state(pid) for pid in product_ids}
        pending = [p for p, s in states.items() if s["state"] not in ("done", "failed")]
        if not pending or time.monotonic() > deadline:
            return states
        time.sleep(0.25)


def test_concurrent_admin_creates_are_all_embedded_and_listed(shop):
    app, model_id, tmp_path = shop
    AuthActions(app, app.test_client()).create_user("admin@example.com", role=Role.ADMIN)
    store = EmbeddingStore(app.config["MODEL_FOLDER"], model_id)
    stop = threading.Event()
    compactions = []

    def compact_meanwhile() -> None:
        while not stop.is_set():
            store.compact()
            compactions.append(1)
            time.sleep(0.05)

    outcome: dict = {"created": [], "errors": [], "retries": 0}
    shares = [list(range(CREATES))[c::CLIENTS] for c in range(CLIENTS)]
    compactor = threading.Thread(target=compact_meanwhile)
    compactor.start()
    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            for share in shares:
                pool.submit(create_products, app, share, tmp_path / "uploads", outcome)
        assert outcome["errors"] == [] and len(outcome["created"]) == CREATES, outcome
        states = wait_until_indexed(app, outcome["created"], timeout=180)
    finally:
        stop.set()
        compactor.join()

    log = (tmp_path / "worker.log").read_text(errors="replace")
    not_done = {p: s for p, s in states.items() if s.get("action") != "embedded"}
    assert not not_done, f"jobs not done/embedded: {not_done}\n{log[-3000:]}"
    assert "FileNotFoundError" not in log
    assert "Traceback" not in log, log[-3000:]
    pool_processes = set(re.findall(r"ForkPoolWorker-\d+\] Task worker\.tasks\.ml_update", log))
    assert len(pool_processes) == 2, "both pool processes took product jobs"

    with app.app_context():
        with_photo = db.session.scalars(
            select(Product.id).where(Product.image_path.is_not(None))
        ).all()
        assert set(outcome["created"]) <= set(with_photo)
        reader = EmbeddingStore(app.config["MODEL_FOLDER"], model_id)
        ids, vectors = reader.load()
        assert len(set(ids.tolist())) == len(ids) == reader.id_count()
        assert sorted(ids.tolist()) == sorted(with_photo), "the store has every product once"

        cache = registry.neighbour_cache()
        index_ids, _ = cache.read_index(model_id)
        assert sorted(index_ids.tolist()) == sorted(with_photo)
        vectors = np.asarray(vectors, np.float32)
        _, exact = all_neighbours(vectors, K)
        row = {int(p): r for r, p in enumerate(ids)}
        for pid, r in row.items():
            listed = cache.get_list(model_id, pid)
            assert listed is not None, f"product {pid} has no list"
            neighbours, scores = listed
            assert pid not in neighbours.tolist()
            true = vectors[[row[int(n)] for n in neighbours]] @ vectors[r]
            np.testing.assert_allclose(scores, true, atol=SCORE_ATOL)
            np.testing.assert_allclose(scores, exact[r], atol=SCORE_ATOL, err_msg=f"list {pid}")

    client = app.test_client()
    for pid in outcome["created"]:
        body = client.get(f"/api/products/{pid}/similar?n=3").get_json()
        assert body["status"] == "ok" and len(body["items"]) == 3, (pid, body)
    assert compactions, "the store was compacted while products were saved"
    print(
        f"{CREATES} creates from {CLIENTS} clients: {outcome['retries']} id clashes retried, "
        f"{len(compactions)} compactions meanwhile"
    )
