"""A shopper in a real browser: filter the catalogue, open a product, register, dislike a colour.

Playwright's Python package drives Debian's Chromium (no browser download), headless. The
screenshot is kept under ``artifacts/browser/`` for people to look at.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from tests.conftest import _make_app, add_product, save_photo

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts" / "browser"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def live_shop(tmp_path):
    """The shop served over real HTTP (CSRF on), with a small catalogue that has photos."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    app = _make_app(
        tmp_path, f"sqlite:///{tmp_path / 'browser.sqlite3'}", {"WTF_CSRF_ENABLED": True}
    )
    media = tmp_path / "media"
    with app.app_context():
        pid = 100
        for gender in ("Men", "Women"):
            for article_type in ("Shirts", "Jeans"):
                for colour in ("Red", "Blue", "Black"):
                    pid += 1
                    add_product(
                        id=pid,
                        name=f"{gender} {colour} {article_type} {pid}",
                        gender=gender,
                        article_type=article_type,
                        sub_category="Topwear" if article_type == "Shirts" else "Bottomwear",
                        base_colour=colour,
                        image_path=save_photo(media, f"{pid}.jpg", colour, pid),
                    )
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture
def page():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.console_errors = errors
        yield page
        browser.close()


def product_names(page) -> list[str]:
    return [n.strip() for n in page.locator(".product-card-name").all_inner_texts()]


def test_shopper_filters_registers_and_dislikes_a_colour(live_shop, page):
    page.goto(live_shop + "/")
    assert len(product_names(page)) == 12

    # Two facet filters, applied through the facet links; the URL carries them.
    page.locator(".facets a", has_text="Women").first.click()
    page.locator(".facets a", has_text="Shirts").first.click()
    assert "gender=Women" in page.url and "type=Shirts" in page.url
    names = product_names(page)
    assert len(names) == 3 and all(n.startswith("Women") and "Shirts" in n for n in names)

    # Open a product: its page shows its attributes and breadcrumbs.
    page.locator(".product-card-link").first.click()
    assert "/products/" in page.url
    assert page.locator("h1").inner_text().startswith("Women")
    assert page.locator(".breadcrumbs").count() == 1

    # Register.
    page.goto(live_shop + "/account/register")
    page.get_by_label("Email").fill("shopper@example.com")
    page.get_by_label("Password", exact=True).fill("correct horse battery")
    page.get_by_label("Repeat the password").fill("correct horse battery")
    page.get_by_role("button", name="Create account").click()
    assert page.get_by_role("button", name="Sign out").count() == 1

    # Dislike red, keep "hide disliked colours" on, save.
    page.goto(live_shop + "/account/preferences")
    page.get_by_label("Red", exact=True).check()
    page.get_by_role("button", name="Save preferences").click()

    # The catalogue honours it: no red products, and a note says why.
    page.goto(live_shop + "/")
    names = product_names(page)
    assert len(names) == 8
    assert not [n for n in names if " Red " in n]
    assert "disliked" in page.locator(".preference-note").inner_text().lower()

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "catalogue-without-red.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert page.console_errors == [], page.console_errors  # e.g. no CSP violations
