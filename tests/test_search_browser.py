"""A shopper in a real browser drops a photo on the photo search page; with no worker yet the
results page says search is unavailable, then fills in by itself when a real worker (tiny
backbone) starts and answers; then the shopper searches all categories."""

from __future__ import annotations

import base64
import re
import threading
from pathlib import Path

import pytest
import redis
from werkzeug.serving import make_server

from tests.conftest import TEST_REDIS_URL, _make_app
from tests.test_browser import ARTIFACTS, CHROMIUM, page  # noqa: F401  (the page fixture)
from tests.test_search import build_search_catalogue, catalogue_photo, search_config
from tests.worker_process import WorkerProcess
from webapp.extensions import db

pytestmark = pytest.mark.browser


@pytest.fixture
def live_search(tmp_path):
    """The shop over real HTTP (CSRF on) with a trained catalogue; the worker starts later."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    client = redis.Redis.from_url(TEST_REDIS_URL)
    client.flushdb()
    app = _make_app(
        tmp_path,
        f"sqlite:///{tmp_path / 'browser.sqlite3'}",
        search_config(WTF_CSRF_ENABLED=True),
    )
    products = build_search_catalogue(app, tmp_path / "media")
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    worker = WorkerProcess(app.config, tmp_path / "worker.log")
    worker.env["SEARCH_SAME_PHOTO_COSINE"] = str(app.config["SEARCH_SAME_PHOTO_COSINE"])
    worker.env["SEARCH_RESULTS_N"] = str(app.config["SEARCH_RESULTS_N"])
    yield app, products, tmp_path / "media", f"http://127.0.0.1:{server.server_port}", worker
    worker.kill()
    server.shutdown()
    with app.app_context():
        db.session.remove()
        db.engine.dispose()
    client.flushdb()


DROP = """(b64) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], "dropped.jpg", { type: "image/jpeg" }));
  return transfer;
}"""


def test_drop_a_photo_and_watch_the_results_fill_in(live_search, page):  # noqa: F811
    app, products, media, base, worker = live_search
    pid = 2026
    page.goto(base + "/")
    page.get_by_role("link", name="Photo search").click()
    assert page.url.endswith("/search/")

    # Drop the photo on the field's area: the field takes it and a preview appears.
    photo = base64.b64encode(catalogue_photo(media, pid)).decode()
    transfer = page.evaluate_handle(DROP, photo)
    page.dispatch_event("[data-drop-zone]", "drop", {"dataTransfer": transfer})
    preview = page.locator("img[data-preview]")
    # The preview shows once the browser has read the file: wait for it (a busy machine is slow).
    preview.wait_for(state="visible", timeout=10_000)
    assert preview.is_visible()
    assert preview.get_attribute("src").startswith("blob:")
    assert page.locator("input[type=file]").evaluate("(el) => el.files[0].name") == "dropped.jpg"
    page.get_by_role("button", name="Find similar products").click()

    # No worker yet: the page says it is searching, and keeps asking.
    assert re.search(r"/search/jobs/[0-9a-f]{32}$", page.url)
    assert "Searching the catalogue" in page.locator(".search-status").inner_text()
    assert page.locator(".search-results").count() == 0
    job_url = page.url

    # Still no worker a few seconds on: the page says so plainly, and keeps asking.
    page.get_by_text("Photo search is unavailable right now").wait_for(timeout=30_000)
    assert page.url == job_url and page.locator(".search-results").count() == 0

    # The worker starts, takes the job, and the page fills in by itself.
    with app.app_context():
        worker.start(app.extensions["celery"])
    page.locator(".search-results .product-card").first.wait_for(timeout=60_000)
    assert page.url == job_url
    gender, article_type, _, colour = products[pid]
    names = [
        n.strip() for n in page.locator(".search-results .product-card-name").all_inner_texts()
    ]
    assert len(names) == app.config["SEARCH_RESULTS_N"]
    assert names[0] == f"{gender} {colour} {article_type} {pid}"
    assert page.locator("img.query-photo").evaluate("(img) => img.naturalWidth") == 60
    assert page.locator(".predictions dt").count() == 4
    assert "alike" in page.locator(".search-results .badge").first.inner_text()

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "photo-search-results.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    # Override the classifier: the same photo, all categories.
    page.get_by_role("button", name="Search within all categories").click()
    page.locator(".search-results .product-card").first.wait_for(timeout=30_000)
    assert page.url != job_url
    assert "Searched all categories, as asked." in page.locator(".search-message").inner_text()
    assert page.console_errors == [], page.console_errors
