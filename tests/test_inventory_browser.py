"""An admin in a real browser uploads a small styles.csv + ZIP, watches the progress bar
reach 100% while a real worker runs the job, and opens the report."""

from __future__ import annotations

import csv
import threading
import time
from pathlib import Path

import pytest
import redis
from werkzeug.serving import make_server

from tests.conftest import AuthActions, _make_app
from tests.inventory_data import build_upload
from tests.test_browser import ARTIFACTS, CHROMIUM, page  # noqa: F401  (the page fixture)
from tests.test_inventory_worker import REDIS_URL, SETTINGS, build_catalogue, start_worker
from webapp.extensions import db
from webapp.models import Role

pytestmark = pytest.mark.browser


@pytest.fixture
def live_admin(tmp_path):
    """The shop over real HTTP (CSRF on), an admin account, an indexed catalogue, a worker."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    settings = {**SETTINGS, "IMPORT_BATCH_SIZE": 10, "IMPORT_THROTTLE_S": 0.2}
    app = _make_app(
        tmp_path,
        f"sqlite:///{tmp_path / 'browser.sqlite3'}",
        {**settings, "WTF_CSRF_ENABLED": True},
    )
    build_catalogue(app, tmp_path / "media")
    AuthActions(app, app.test_client()).create_user("boss@example.com", "correct horse", Role.ADMIN)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    worker = start_worker(app, tmp_path / "worker.log", settings)
    yield app, f"http://127.0.0.1:{server.server_port}", tmp_path
    worker.kill()
    server.shutdown()
    with app.app_context():
        db.session.remove()
        db.engine.dispose()
    client.flushdb()


def test_admin_uploads_watches_progress_and_opens_the_report(live_admin, page):  # noqa: F811
    from playwright.sync_api import Error as PlaywrightError

    app, base, tmp_path = live_admin
    up = build_upload(60, first_id=30000)
    (tmp_path / "styles.csv").write_bytes(up.csv_bytes)
    (tmp_path / "photos.zip").write_bytes(up.zip_bytes)

    page.goto(base + "/account/login")
    page.get_by_label("Email").fill("boss@example.com")
    page.get_by_label("Password", exact=True).fill("correct horse")
    page.get_by_role("button", name="Sign in").click()
    page.goto(base + "/admin/products")
    page.get_by_role("link", name="Bulk import").first.click()

    page.get_by_label("styles.csv").set_input_files(str(tmp_path / "styles.csv"))
    page.get_by_label("Photos (ZIP)").set_input_files(str(tmp_path / "photos.zip"))
    page.get_by_role("button", name="Start the import").click()
    assert "/admin/inventory/imports/" in page.url

    # Watch the bar: the script polls the JSON endpoint and moves it until the job is done.
    seen: list[int] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            value = page.evaluate("document.getElementById('import-bar')?.value ?? -1")
        except PlaywrightError:  # the page reloads itself to show the report
            continue
        if value >= 0 and (not seen or seen[-1] != value):
            seen.append(int(value))
        if value == 100:
            break
        time.sleep(0.1)
    assert seen and seen[-1] == 100, seen
    assert any(0 < v < 100 for v in seen), f"the bar moved through {seen}"
    assert seen == sorted(seen), "the bar never goes back"
    page.wait_for_load_state()
    status = page.locator(".import-status strong").inner_text()
    assert status == "Done"
    counts = page.locator(".import-counts").inner_text()
    assert f"{len(up.good)} of {len(up.good)}" in counts  # photos embedded

    # The report: on the page, and as a CSV download.
    report = page.locator(".report-table")
    assert report.locator("text=Skipped").count() == len(up.skipped)
    assert "image missing" in report.inner_text()
    with page.expect_download() as download:
        page.get_by_role("link", name="Download the report (CSV)").click()
    path = download.value.path()
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["product_id"] for r in rows if r["kind"] == "skipped"} == set(up.skipped)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "bulk-import-report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert page.console_errors == [], page.console_errors  # e.g. no CSP violations
