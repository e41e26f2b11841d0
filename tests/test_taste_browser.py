"""A shopper in a real browser likes three shirts, finds a "For you" row of shirts on the
catalogue, and pushes products away with "Not interested": the card goes at once without a
reload where JavaScript runs, and through a plain form post where it does not.

The neighbour lists are written straight into Redis (same gender and type first, then the
same type), so what the row should hold is known without a model."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import redis
from werkzeug.serving import make_server

from ml.cache import NeighbourCache
from tests.conftest import TEST_REDIS_URL, _make_app, add_product, save_photo
from tests.test_browser import ARTIFACTS, CHROMIUM, page  # noqa: F401  (the page fixture)
from webapp.extensions import db

pytestmark = pytest.mark.browser

MODEL_ID = "browser-test-model"
KINDS = [(g, t) for g in ("Men", "Women") for t in ("Shirts", "Jeans")]
COLOURS = ("Red", "Blue", "Black")


def closeness(a: tuple, b: tuple) -> float:
    """How alike two products are in the written lists: kind first, then type, then colour."""
    (ga, ta, ca, pa), (gb, tb, cb, pb) = a, b
    score = 0.9 if (ga, ta) == (gb, tb) else 0.6 if ta == tb else 0.3
    return score + (0.05 if ca == cb else 0.0) - abs(pa - pb) * 1e-4


@pytest.fixture
def live_taste(tmp_path):
    """The shop over real HTTP (CSRF on), 24 products and served neighbour lists."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    client = redis.Redis.from_url(TEST_REDIS_URL)
    client.flushdb()
    app = _make_app(
        tmp_path, f"sqlite:///{tmp_path / 'browser.sqlite3'}", {"WTF_CSRF_ENABLED": True}
    )
    products: dict[int, tuple] = {}
    with app.app_context():
        pid = 500
        for gender, article_type in KINDS:
            for colour in COLOURS:
                for _copy in range(2):
                    pid += 1
                    products[pid] = (gender, article_type, colour, pid)
                    add_product(
                        id=pid,
                        name=f"{gender} {colour} {article_type} {pid}",
                        gender=gender,
                        article_type=article_type,
                        sub_category="Topwear" if article_type == "Shirts" else "Bottomwear",
                        base_colour=colour,
                        image_path=save_photo(tmp_path / "media", f"{pid}.jpg", colour, pid),
                    )
    cache = NeighbourCache(client)
    ids = sorted(products)
    lists = [
        sorted((o for o in ids if o != p), key=lambda o: -closeness(products[p], products[o]))
        for p in ids
    ]
    scores = [
        [closeness(products[p], products[o]) for o in row]
        for p, row in zip(ids, lists, strict=True)
    ]
    cache.write_lists(MODEL_ID, ids, np.array(lists, np.int32), np.array(scores, np.float16))
    client.hset(cache.key(MODEL_ID, "meta"), mapping={"complete": "1"})
    cache.activate(MODEL_ID)

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", products
    server.shutdown()
    with app.app_context():
        db.session.remove()
        db.engine.dispose()
    client.flushdb()


CLICK_HEARTS = """(ids) => ids.forEach((id) =>
  document.querySelector(`button[data-taste="like"][data-product-id="${id}"]`).click())"""


def names(tab, selector: str) -> list[str]:
    return [n.strip() for n in tab.locator(selector).all_inner_texts()]


def screenshot(tab, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / name
    tab.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_likes_fill_the_for_you_row_and_not_interested_removes_a_card_at_once(
    live_taste,
    page,  # noqa: F811
):
    base, products = live_taste
    page.goto(base + "/")
    assert page.locator(".feed").count() == 0  # nothing liked or viewed yet: no row

    # Like a Men's shirt on its page and two more from its similar products, three quick
    # clicks in a row: the hearts fill at once, no reload, and all three are kept.
    page.goto(base + "/products/501")
    page.evaluate("window.notReloaded = true")
    liked = names(page, ".similar-card .product-card-name")[:2]
    assert all(n.startswith("Men") and "Shirts" in n for n in liked)
    ids = ["501", *(name.rsplit(" ", 1)[1] for name in liked)]
    with page.expect_response(lambda r: r.url.endswith(f"/api/products/{ids[-1]}/like")):
        # Three clicks within one task, as fast as no hand clicks: their calls overlap
        # unless the page sends them one after another.
        page.evaluate(CLICK_HEARTS, ids)
        assert page.locator('button[data-taste="like"][aria-pressed="true"]').count() == 3
    assert page.evaluate("window.notReloaded") is True
    stored = page.request.get(base + "/api/taste").json()["likes"]
    assert sorted(p["name"] for p in stored) == sorted(["Men Red Shirts 501", *liked])

    # The catalogue's first page: a "For you" row led by Men's shirts, each saying why.
    page.goto(base + "/")
    row = page.locator(".feed")
    assert row.locator("h2").inner_text() == "For you"
    shown = names(page, ".feed-card-name")
    assert len(shown) == 6
    liked_names = {"Men Red Shirts 501", *liked}
    assert not liked_names & set(shown)
    assert all(n.startswith("Men") and "Shirts" in n for n in shown[:3]), shown
    assert "Because you" in row.locator(".feed-reason").first.inner_text()

    # "Not interested" on a card of the row: gone at once, no reload, an undo offered.
    page.evaluate("window.notReloaded = true")
    victim = shown[0]
    with page.expect_response(lambda r: r.url.endswith("/not-interested")):
        page.get_by_role("button", name=f"Not interested in {victim}").click()
        assert victim not in names(page, ".feed-card-name")  # gone with the click itself
    notice = page.locator(".taste-notice")
    notice.wait_for(state="visible")
    assert "will not be recommended again" in notice.inner_text()
    assert page.evaluate("window.notReloaded") is True
    screenshot(page, "for-you-row-not-interested.png")

    # And on a similar-products card of another shirt's page.
    page.goto(base + "/products/502")
    page.evaluate("window.notReloaded = true")
    before = names(page, ".similar-card .product-card-name")
    assert victim not in before
    target = next(n for n in before if n not in liked_names)
    with page.expect_response(lambda r: r.url.endswith("/not-interested")):
        page.get_by_role("button", name=f"Not interested in {target}").click()
        after = names(page, ".similar-card .product-card-name")
    assert target not in after and len(after) == len(before) - 1
    assert page.evaluate("window.notReloaded") is True
    screenshot(page, "similar-not-interested.png")

    # It stays away after a reload, from similar products and from the row.
    page.reload()
    assert target not in names(page, ".similar-card .product-card-name")
    assert len(names(page, ".similar-card .product-card-name")) == 8
    page.goto(base + "/")
    assert not {victim, target} & set(names(page, ".feed-card-name"))
    assert page.console_errors == [], page.console_errors


def test_without_javascript_not_interested_is_a_plain_post_back_to_the_page(live_taste, page):  # noqa: F811
    base, _ = live_taste
    context = page.context.browser.new_context(
        java_script_enabled=False, viewport={"width": 1280, "height": 900}
    )
    plain = context.new_page()
    plain.goto(base + "/products/510")
    before = names(plain, ".similar-card .product-card-name")
    target = before[0]
    plain.get_by_role("button", name=f"Not interested in {target}").click()
    plain.wait_for_load_state()
    assert plain.url == base + "/products/510"
    after = names(plain, ".similar-card .product-card-name")
    assert target not in after and len(after) == 8
    assert "will not recommend" in plain.locator(".flashes").inner_text()

    # The heart works the same way.
    plain.get_by_role("button", name=f"Like {after[0]}").click()
    plain.wait_for_load_state()
    assert plain.url == base + "/products/510"
    assert (
        plain.get_by_role("button", name=f"Like {after[0]}").get_attribute("aria-pressed") == "true"
    )
    screenshot(plain, "similar-not-interested-no-js.png")

    # The likes and history page lists both, and clears them.
    plain.get_by_role("link", name="Likes & history").click()
    assert after[0] in plain.locator("#taste-likes").inner_text()
    assert target in plain.locator("#taste-not_interested").inner_text()
    assert "Men Blue Jeans 510" in plain.locator("#taste-views").inner_text()
    screenshot(plain, "likes-and-history.png")
    plain.get_by_role("button", name="Clear everything").click()
    assert (
        "Everything we kept about your taste was cleared." in plain.locator(".flashes").inner_text()
    )
    assert plain.locator("#taste-likes .product-card").count() == 0
    context.close()
