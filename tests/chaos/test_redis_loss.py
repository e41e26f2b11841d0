"""Redis loses its data under a running shop (acceptance test (d) of the reliability work).

A private ``redis-server`` on a free port (the shared one is never flushed), a real worker
with a tiny random-weight backbone, and the app pointed at both. After ``FLUSHALL`` pages and
the similar-products API say "being prepared" (never a 500), a search request that vanished
answers 404 saying it expired, and the lists come back without a manual command: asked for
by the pages, and by the worker's own check when no page asks. The embeddings on disk are
not computed again; a product whose update task was lost with the flush is embedded alone.
"""

from __future__ import annotations

import ast
import io
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

from ml.cache import NeighbourCache
from tests.conftest import AuthActions, _make_app, make_image_bytes
from tests.test_worker_e2e import write_catalogue
from tests.worker_process import WorkerProcess
from webapp.extensions import db
from webapp.models import Product
from worker.tasks import ml_index_catalog

PRODUCTS = list(range(5000, 5024))
# How long the lists may take to come back (they take well under a second here).
HEAL_DEADLINE_S = 60
HEAL_LOG_RE = re.compile(r"ml_heal_index\[[^\]]+\] succeeded in [\d.]+s: (\{.*\})")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def private_redis(tmp_path):
    """A redis-server of this test's own, without persistence (as the issue's shop had)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        + ["--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0", client
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def shop(tmp_path, private_redis):
    """App + real worker on the private Redis, the catalogue imported and indexed."""
    url, client = private_redis
    app = _make_app(
        tmp_path,
        f"sqlite:///{tmp_path / 'shop.sqlite3'}",
        {
            "REDIS_URL": url,
            "RATELIMIT_STORAGE_URI": url,
            "EMBEDDING_BACKBONE": "tiny",
            "NEIGHBOURS_K": 6,
            "INDEX_HEAL_INTERVAL": 2,
        },
    )
    worker = WorkerProcess(app.config, tmp_path / "worker.log")
    with app.app_context():
        worker.start(app.extensions["celery"])
    try:
        write_catalogue(tmp_path / "cat", len(PRODUCTS))
        result = app.test_cli_runner().invoke(args=["catalog", "import", str(tmp_path / "cat")])
        assert result.exit_code == 0, result.output
        with app.app_context():
            summary = ml_index_catalog.delay().get(timeout=180)
        assert summary["embedded"] == len(PRODUCTS) and summary["rebuilt"]
        yield app, client, worker, summary["model"]
    finally:
        worker.kill()
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


def store_files(app, model_id: str) -> dict[str, tuple[int, int]]:
    """Every file of a model's embedding store: (size, mtime) by relative path."""
    root = Path(app.config["MODEL_FOLDER"]) / model_id
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


def heals(worker: WorkerProcess, count: int) -> list[dict]:
    """The summaries of the heals that rebuilt lists, from the worker's log, once there are
    ``count`` (a task logs its summary a moment after its lists are served)."""
    deadline = time.monotonic() + HEAL_DEADLINE_S
    while True:
        found = [ast.literal_eval(m) for m in HEAL_LOG_RE.findall(worker.log_path.read_text())]
        found = [summary for summary in found if summary["healed"]]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def wait_for_lists(cache: NeighbourCache, model_id: str, product_ids: list[int], poll=None):
    """Until every product has a list of the served model; returns the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < HEAL_DEADLINE_S:
        if poll is not None:
            poll()
        if cache.active_model() == model_id and all(
            blob is not None for blob in cache.get_lists(model_id, product_ids)
        ):
            return time.monotonic() - started
        time.sleep(0.2)
    pytest.fail(f"the lists did not come back within {HEAL_DEADLINE_S}s")


def test_redis_flush_under_a_running_shop_heals_without_a_manual_command(shop, tmp_path):
    app, client, worker, model_id = shop
    cache = NeighbourCache(client)
    browser = app.test_client()
    before = store_files(app, model_id)
    assert before and cache.active_model() == model_id

    # A photo search request that Redis will lose.
    photo = (io.BytesIO(make_image_bytes(colour=(200, 30, 30))), "query.jpg")
    started = browser.post("/api/search", data={"image": photo})
    assert started.status_code == 202, started.get_data(as_text=True)
    request_id = started.get_json()["job_id"]
    AuthActions(app, browser).login("admin")

    # 1. Pages ask for the lists at once; they say "being prepared" meanwhile, never 500.
    client.flushall()
    api = browser.get("/api/products/5000/similar")
    assert api.status_code == 503 and api.get_json()["status"] == "pending"
    assert "being prepared" in api.get_json()["message"]
    page = browser.get("/products/5001")
    assert page.status_code == 200 and "being prepared" in page.get_data(as_text=True)
    assert browser.get("/admin/inventory/index").status_code == 200
    gone = browser.get(f"/api/jobs/{request_id}")
    assert gone.status_code == 404 and "expired" in gone.get_data(as_text=True)
    gone_page = browser.get(f"/search/jobs/{request_id}")
    assert gone_page.status_code == 404 and "expired" in gone_page.get_data(as_text=True)

    answers: list[int] = []

    def browse() -> None:
        for pid in (5002, 5003):
            answers.append(browser.get(f"/api/products/{pid}/similar").status_code)
            answers.append(browser.get(f"/products/{pid}").status_code)

    seconds = wait_for_lists(cache, model_id, PRODUCTS, poll=browse)
    print(f"lists back {seconds:.1f}s after the flush, asked for by the pages")
    assert answers and set(answers) <= {200, 503}, answers
    assert browser.get("/api/products/5000/similar").get_json()["status"] == "ok"
    assert store_files(app, model_id) == before, "the store must not be written again"
    healed = heals(worker, 1)
    assert len(healed) == 1 and healed[0]["embedded"] == 0, healed

    # 2. No page asks (the web side's requests are off): the worker's own check heals.
    app.config["INDEX_HEAL_INTERVAL"] = 0
    client.flushall()
    assert cache.active_model() is None
    seconds = wait_for_lists(cache, model_id, PRODUCTS)
    print(f"lists back {seconds:.1f}s after the flush, by the worker's own check")
    assert store_files(app, model_id) == before
    healed = heals(worker, 2)
    assert len(healed) == 2 and healed[1]["embedded"] == 0, healed

    # 3. A product whose update task was lost with the flush: the heal embeds it alone.
    shutil.copy(
        tmp_path / "cat" / "images" / "5000.jpg", Path(app.config["MEDIA_FOLDER"]) / "lost.jpg"
    )
    with app.app_context():
        db.session.add(
            Product(
                id=9000,
                name="Lost shirt",
                gender="Men",
                base_colour="Red",
                article_type="Shirts",
                image_path="lost.jpg",
                active=True,
            )
        )
        db.session.commit()
    client.flushall()
    wait_for_lists(cache, model_id, [*PRODUCTS, 9000])
    healed = heals(worker, 3)
    assert len(healed) == 3 and healed[2]["embedded"] == 1, healed
    assert healed[2]["already"] == len(PRODUCTS)
    assert 9000 in cache.get_list(model_id, 5000)[0].tolist()
