"""A shopper in a real browser chooses the part of a photo to search: drags the box's corner
and the box itself over one of two products on the photo, sees results for that product,
then moves the box on the results page to the other product and searches again."""

from __future__ import annotations

import re

import pytest

from tests.test_browser import ARTIFACTS, page  # noqa: F401  (the page fixture)
from tests.test_search_browser import live_search  # noqa: F401  (the shop fixture)
from tests.test_search_wild import LEFT, RIGHT, composite, wild_photo

pytestmark = pytest.mark.browser


@pytest.fixture
def live_shop(live_search):  # noqa: F811
    """The photo-search browser tests' shop over real HTTP, with its worker running."""
    app, products, media, base, worker = live_search
    with app.app_context():
        worker.start(app.extensions["celery"])
    return app, products, media, base


def drag(page, start: tuple[float, float], end: tuple[float, float]) -> None:  # noqa: F811
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*end, steps=8)
    page.mouse.up()


def centre(locator) -> tuple[float, float]:
    box = locator.bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def crop_values(page) -> dict[str, float]:  # noqa: F811
    return {k: float(page.locator(f"input[name=crop_{k}]").input_value()) for k in "xywh"}


def top_name(page) -> str:  # noqa: F811
    page.locator(".search-results .product-card").first.wait_for(timeout=60_000)
    return page.locator(".search-results .product-card-name").first.inner_text().strip()


def test_drag_the_crop_box_and_see_results_for_that_part(live_shop, page):  # noqa: F811
    app, products, media, base = live_shop
    page.goto(base + "/search/")
    fields = page.locator("[data-crop-fields]")
    assert not fields.is_visible(), "no box before there is a photo"
    page.locator("input[type=file]").set_input_files(
        {"name": "two.png", "mimeType": "image/png", "buffer": composite(media)}
    )
    stage = page.locator(".crop-stage")
    stage.wait_for(state="visible", timeout=10_000)
    assert fields.is_visible()
    assert crop_values(page) == {"x": 0, "y": 0, "w": 100, "h": 100}, "the whole photo at first"
    area = stage.bounding_box()

    # The corner makes the box half as wide (the left product), then the box moves right.
    handle = centre(page.locator("[data-crop-handle]"))
    drag(page, handle, (handle[0] - area["width"] / 2, handle[1]))
    values = crop_values(page)
    assert values["x"] == 0 and abs(values["w"] - 50) <= 1.5 and values["h"] >= 97, values
    drag(
        page,
        centre(page.locator("[data-crop-box]")),
        (area["x"] + area["width"] * 0.9, area["y"] + area["height"] / 2),
    )
    values = crop_values(page)
    assert abs(values["x"] - 50) <= 1.5 and abs(values["w"] - 50) <= 1.5, values

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "photo-search-crop-upload.png"), full_page=True)
    page.get_by_role("button", name="Find similar products").click()
    gender, article_type, _, colour = products[RIGHT]
    assert top_name(page) == f"{gender} {colour} {article_type} {RIGHT}"
    assert "Searched the part inside the box" in page.locator(".crop-caption").inner_text()
    assert abs(float(page.locator("svg.crop-outline-used rect").get_attribute("x")) - 50) <= 1.5
    first_url = page.url
    page.screenshot(path=str(ARTIFACTS / "photo-search-crop-results.png"), full_page=True)

    # On the results page the box starts where the search looked: move it onto the left.
    stage = page.locator("[data-crop-stage]")
    area = stage.bounding_box()
    searched = crop_values(page)
    assert abs(searched["x"] - values["x"]) <= 0.1 and abs(searched["w"] - values["w"]) <= 0.1
    drag(
        page,
        centre(page.locator("[data-crop-box]")),
        (area["x"] + area["width"] * 0.25, area["y"] + area["height"] / 2),
    )
    values = crop_values(page)
    assert values["x"] <= 1.5 and abs(values["w"] - 50) <= 1.5, values
    # The typed fields are the box's keyboard way in: exactly the left half.
    for key, value in {"x": "0", "y": "0", "w": "50", "h": "100"}.items():
        page.locator(f"input[name=crop_{key}]").fill(value)
    box = page.locator("[data-crop-box]").bounding_box()
    assert abs(box["x"] - area["x"]) <= 2 and abs(box["width"] - area["width"] / 2) <= 3
    page.get_by_role("button", name="Search this part of the photo").click()
    page.wait_for_url(re.compile(r"/search/jobs/[0-9a-f]{32}$"))
    assert page.url != first_url
    gender, article_type, _, colour = products[LEFT]
    assert top_name(page) == f"{gender} {colour} {article_type} {LEFT}"
    assert page.locator("svg.crop-outline-used rect").get_attribute("x") == "0.0"
    shot = ARTIFACTS / "photo-search-crop-again.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert page.console_errors == [], page.console_errors


def test_the_results_page_draws_the_product_the_worker_found(live_shop, page):  # noqa: F811
    app, products, media, base = live_shop
    photo, pasted = wild_photo(media, RIGHT)
    page.goto(base + "/search/")
    page.locator("input[type=file]").set_input_files(
        {"name": "floor.jpg", "mimeType": "image/jpeg", "buffer": photo}
    )
    page.locator(".crop-stage").wait_for(state="visible", timeout=10_000)
    page.get_by_role("button", name="Find similar products").click()
    page.locator(".search-results .product-card").first.wait_for(timeout=60_000)
    assert "Searched the product found" in page.locator(".crop-caption").inner_text()
    found = page.locator("svg.crop-outline-found rect")
    x, y = (float(found.get_attribute(a)) for a in ("x", "y"))
    assert abs(x - 100 * pasted[0]) < 10 and abs(y - 100 * pasted[1]) < 10, (x, y, pasted)
    # The box to search another part starts on the product found.
    assert abs(float(page.locator("input[name=crop_x]").input_value()) - x) < 0.2
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "photo-search-product-found.png"), full_page=True)
    # Searching that box as it stands is a search of the shopper's own box (the browser
    # accepts the fields as they were filled in).
    first_url = page.url
    page.get_by_role("button", name="Search this part of the photo").click()
    page.wait_for_url(lambda url: url != first_url and re.search(r"/jobs/[0-9a-f]{32}$", url))
    page.locator(".search-results .product-card").first.wait_for(timeout=60_000)
    assert "Searched the part inside the box" in page.locator(".crop-caption").inner_text()
    assert page.console_errors == [], page.console_errors
