"""The catalogue's cached facet counts and cursor pages: correct after every kind of change,
every product exactly once across pages, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from sqlalchemy import func, insert, select
from werkzeug.datastructures import MultiDict

from tests.conftest import _make_app
from tests.test_shop import (
    PRODUCT_DEFAULTS,
    count_statements,
    facet_counts_on_page,
    load_rows,
    shown_ids,
)
from webapp.admin import services as admin_services
from webapp.extensions import db
from webapp.models import Product
from webapp.shop import paging, services

NEXT = re.compile(r'href="([^"]+)" rel="next"')
PREV = re.compile(r'href="([^"]+)" rel="prev"')
NUMBERED = re.compile(r'href="([^"]+)"><span class="visually-hidden">Page </span>(\d+)</a>')

# Ties and missing values in every sort column, so cursors must break ties by id and carry
# on from the products with a value to those without one.
COLOURS = ("Red", "Blue", "Black", None)
TYPES = ("Shirts", "Tshirts", "Jeans")
ROWS = [
    dict(
        id=i,
        name=f"Item {i % 7}" if i % 5 else f"Item {i}",
        base_colour=COLOURS[i % 4],
        article_type=TYPES[i % 3],
        gender=("Men", "Women")[i % 2],
        year=None if i % 6 == 0 else 2010 + i % 3,
        price=None if i % 4 == 0 else Decimal(10 + i % 5),
        active=i % 11 != 0,
    )
    for i in range(1, 61)
]


def follow(client, url: str, pattern: re.Pattern) -> list[list[int]]:
    """The ids of each page from ``url`` on, following the link that ``pattern`` finds."""
    pages = []
    while url:
        response = client.get(url)
        pages.append(shown_ids(response))
        match = pattern.search(response.get_data(as_text=True))
        url = match.group(1).replace("&amp;", "&") if match else None
    return pages


def listed(app, sort: str, **filters: tuple[str, ...]) -> list[int]:
    """The active products matching ``filters`` in the sort's whole order, straight from SQL."""
    with app.app_context():
        stmt = (
            select(Product.id)
            .where(Product.active.is_(True), *services.facet_clauses(filters))
            .order_by(*services.order_by(sort))
        )
        return list(db.session.scalars(stmt))


@pytest.fixture(params=["sort matches", "walk index"])
def read_strategy(request, monkeypatch):
    """Pages read by sorting the matches (small listings) or by a bounded walk along the
    sort's index that often runs out and falls back (as long listings are read)."""
    if request.param == "walk index":
        monkeypatch.setattr(paging, "SORT_MATCHES_ROWS", 0)
        monkeypatch.setattr(paging, "WALK_ROWS", 6)
    return request.param


@pytest.mark.parametrize("sort", list(services.SORTS))
def test_next_links_list_every_product_once_in_order(any_db_app, sort, read_strategy):
    load_rows(any_db_app, ROWS)
    any_db_app.config["PRODUCTS_PER_PAGE"] = 4
    client = any_db_app.test_client()
    for filters in ({}, {"type": ("Shirts", "Jeans"), "gender": ("Men",)}):
        query = "&".join(f"{k}={v}" for k, values in filters.items() for v in values)
        pages = follow(client, f"/?sort={sort}&{query}", NEXT)
        ids = [pid for page in pages for pid in page]
        assert ids == listed(any_db_app, sort, **filters), (sort, filters)
        assert all(len(page) == 4 for page in pages[:-1])
        # Back from the last page through the previous links: the same pages, reversed.
        last = client.get(f"/?sort={sort}&{query}&page={len(pages)}&before={paging.END}")
        assert shown_ids(last) == pages[-1]
        assert "There is no page" not in last.get_data(as_text=True)
        match = PREV.search(last.get_data(as_text=True))
        back = follow(client, match.group(1).replace("&amp;", "&"), PREV) if match else []
        assert [pages[-1], *back] == pages[::-1], (sort, filters)


def test_cursor_pages_agree_with_numbered_pages(any_db_app, read_strategy):
    load_rows(any_db_app, ROWS)
    any_db_app.config["PRODUCTS_PER_PAGE"] = 5
    client = any_db_app.test_client()
    for sort in services.SORTS:
        by_cursor = follow(client, f"/?sort={sort}", NEXT)
        by_number = [shown_ids(client.get(f"/?sort={sort}&page={n}")) for n in range(1, 12)]
        assert by_number == by_cursor, sort


def test_page_numbers_are_offered_only_near_the_start(shop_rows, monkeypatch):
    monkeypatch.setattr(paging, "NUMBERED_ROWS", 8)
    shop_rows.config["PRODUCTS_PER_PAGE"] = 4  # 55 active products: 14 pages
    client = shop_rows.test_client()
    html = client.get("/").get_data(as_text=True)
    numbers = {int(n): href for href, n in NUMBERED.findall(html)}
    # Pages 2 and 3 start within 8 rows; the last page is read backwards from the end.
    assert set(numbers) == {2, 3, 14}
    assert "before=end" in numbers[14] and "after=" not in numbers[3]
    # A deep page reached by cursors links on by cursor, with no far numbers.
    pages = follow(client, "/", NEXT)
    assert len(pages) == 14 and [len(p) for p in pages[-2:]] == [4, 3]


def test_bad_cursors_read_from_the_start(shop_rows):
    client = shop_rows.test_client()
    first = shown_ids(client.get("/?sort=price_asc"))
    for cursor in ("garbage", "W10", "WyJ4IiwxXQ", "x" * 5000, "WzEsIC0xXQ", "%00"):
        assert shown_ids(client.get(f"/?sort=price_asc&after={cursor}")) == first, cursor
        assert shown_ids(client.get(f"/?sort=price_asc&before={cursor}")) == first, cursor


@pytest.fixture
def shop_rows(app):
    load_rows(app, ROWS)
    return app


def test_counts_follow_admin_edits_and_imports(any_db_app):
    load_rows(any_db_app, ROWS)
    client = any_db_app.test_client()
    url = "/?type=Shirts&gender=Men"
    before = facet_counts_on_page(client.get(url))
    # A second look is served from the cached summary: no GROUP BY at all.
    with count_statements(any_db_app) as statements:
        assert facet_counts_on_page(client.get(url)) == before
    assert not any("GROUP BY" in s for s in statements)

    shirt = next(r for r in ROWS if r["article_type"] == "Shirts" and r["gender"] == "Men")
    with any_db_app.test_request_context("/"):
        admin_services.update_product(shirt["id"], {"base_colour": "Purple"})
    after_edit = facet_counts_on_page(client.get(url))
    assert after_edit["colour"]["Purple"] == 1
    assert after_edit == reference_counts(any_db_app, url)

    with any_db_app.test_request_context("/"):
        admin_services.set_active(shirt["id"], False)
    after_hiding = facet_counts_on_page(client.get(url))
    assert "Purple" not in after_hiding["colour"]
    assert after_hiding == reference_counts(any_db_app, url)

    # The importer writes many rows with bulk statements, outside the unit of work.
    with any_db_app.app_context():
        rows = [{**PRODUCT_DEFAULTS, "id": 500 + i, "name": f"New {i}"} for i in range(3)]
        db.session.execute(insert(Product), rows)
        db.session.commit()
    after_import = facet_counts_on_page(client.get(url))
    assert after_import["type"]["Shirts"] == after_hiding["type"]["Shirts"] + 3
    assert after_import == reference_counts(any_db_app, url)


def test_rolled_back_changes_keep_the_cache(app):
    load_rows(app, ROWS)
    client = app.test_client()
    client.get("/")
    with app.app_context():
        db.session.get(Product, 1).base_colour = "Purple"
        db.session.flush()
        db.session.rollback()
    with count_statements(app) as statements:
        assert "Purple" not in facet_counts_on_page(client.get("/"))["colour"]
    assert not any("GROUP BY" in s for s in statements)


def test_counts_are_right_without_redis(tmp_path):
    app = _make_app(
        tmp_path, f"sqlite:///{tmp_path / 'x.sqlite3'}", {"REDIS_URL": "redis://127.0.0.1:1/0"}
    )
    load_rows(app, ROWS)
    client = app.test_client()
    counts = facet_counts_on_page(client.get("/?colour=Red"))
    assert counts == reference_counts(app, "/?colour=Red")
    with app.test_request_context("/"):
        admin_services.update_product(2, {"base_colour": "Red"})
    assert facet_counts_on_page(client.get("/?colour=Red")) == reference_counts(app, "/?colour=Red")


def reference_counts(app, url: str) -> dict[str, dict[str, int]]:
    """The facet counts of ``url`` recomputed from every row in Python."""
    pairs = [tuple(pair.split("=")) for pair in url.split("?", 1)[1].split("&")]
    query = services.parse_catalog_args(MultiDict(pairs))
    with app.app_context():
        products = db.session.scalars(select(Product).where(Product.active.is_(True))).all()
        counts: dict[str, dict[str, int]] = {}
        for key, column in services.FACETS.items():
            found: dict[str, int] = {}
            for p in products:
                others = all(
                    getattr(p, services.FACETS[k]) in v
                    for k, v in query.filters.items()
                    if k != key
                )
                value = getattr(p, column)
                if others and value is not None:
                    found[value] = found.get(value, 0) + 1
            for value in query.filters.get(key, ()):
                found.setdefault(value, 0)
            if found:
                counts[key] = found
        return counts


@pytest.mark.postgres
def test_name_search_uses_the_trigram_index_on_postgres(tmp_path, postgres_database):
    """The catalogue's search clause (a substring of the name, any case, wildcards in the
    text taken literally) finds what the text says, and past a few pages of rows the database
    answers a rare word through the trigram index (at a million products a millisecond
    instead of a 0.4 s scan)."""
    app = _make_app(tmp_path, postgres_database)
    names = ["Blue Denim Jacket", "navy denim jeans", "Red Kurta", "100% Cotton Tee", "100 Tees"]
    filler = [f"Plain cotton shirt {i}" for i in range(3000)]
    with app.app_context():
        db.session.execute(
            insert(Product),
            [
                {**PRODUCT_DEFAULTS, "id": i, "name": n}
                for i, n in enumerate([*names, *filler], start=1)
            ],
        )
        db.session.commit()
        with db.engine.connect() as connection:  # as autovacuum would: statistics, and the
            # index's list of rows added since it was built folded in
            connection.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                "VACUUM ANALYZE product"
            )

        def found(q: str) -> set[int]:
            stmt = select(Product.id).where(*services.search_clauses(q))
            return set(db.session.scalars(stmt))

        assert found("DENIM") == {1, 2}
        assert found("100%") == {4}  # the % is a character here, not a wildcard
        assert found("kurta") == {3}
        stmt = select(func.count()).select_from(Product).where(*services.search_clauses("kurta"))
        compiled = stmt.compile(db.engine)
        with db.engine.connect() as connection:
            plan = connection.exec_driver_sql(f"EXPLAIN {compiled}", compiled.params).scalars()
            plan = "\n".join(plan)
        assert "ix_product_name_trgm" in plan, plan
        db.session.remove()
        db.drop_all()
        db.engine.dispose()
