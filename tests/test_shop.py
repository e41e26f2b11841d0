"""Catalogue, product detail and product image pages."""

from __future__ import annotations

import re
import uuid
from contextlib import contextmanager
from decimal import Decimal

import pytest
from sqlalchemy import event, func, select
from werkzeug.datastructures import MultiDict

from tests.conftest import PG_ADMIN_URL, _make_app, add_product, make_image_bytes
from webapp.eligibility import Eligibility
from webapp.extensions import db
from webapp.models import Product, Role, User
from webapp.preferences import SESSION_KEY, Preferences
from webapp.shop import facets, services

CARD_LINK = re.compile(r'class="product-card-link" href="/products/(\d+)"')
FACET_ROW = re.compile(
    r'name="(\w+)" value="([^"]+)"[^>]*>\s*<a[^>]*>[^<]*</a>\s*<span[^>]*>\((\d+)'
)


def shown_ids(response) -> list[int]:
    """Product ids of the cards on a catalogue page, in page order."""
    assert response.status_code == 200, response.data[:500]
    return [int(i) for i in CARD_LINK.findall(response.get_data(as_text=True))]


def facet_counts_on_page(response) -> dict[str, dict[str, int]]:
    """{facet key: {value: count}} as the page shows them."""
    counts: dict[str, dict[str, int]] = {}
    for key, value, n in FACET_ROW.findall(response.get_data(as_text=True)):
        counts.setdefault(key, {})[value] = int(n)
    return counts


def set_preferences(client, prefs: Preferences) -> None:
    """Store an anonymous shopper's preferences in the session cookie."""
    with client.session_transaction() as s:
        s[SESSION_KEY] = prefs.to_session()


def sign_in(app, client, role: Role) -> None:
    """Sign a user in through Flask-Login's session key, independent of the login form."""
    with app.app_context():
        # No usable password: these tests never go through the login form (and hashing is slow).
        user = User(
            email=f"{role.value}-{uuid.uuid4().hex[:8]}@example.com", role=role, password_hash="!"
        )
        db.session.add(user)
        db.session.commit()
        user_id = user.id
    with client.session_transaction() as s:
        s["_user_id"] = str(user_id)
        s["_fresh"] = True


@contextmanager
def count_statements(app):
    """Collect every SQL statement the app's engine runs inside the block."""
    statements: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


# A small catalogue that exercises every facet; ids are fixed so expectations are explicit.
PRODUCT_DEFAULTS = dict(
    gender="Men",
    master_category="Apparel",
    sub_category="Topwear",
    article_type="Shirts",
    base_colour="Blue",
    season="Summer",
    year=2012,
    usage="Casual",
    active=True,
)
ROWS = [
    dict(
        id=1,
        name="Blue Oxford Shirt",
        article_type="Shirts",
        base_colour="Blue",
        year=2011,
        price=Decimal("30.00"),
    ),
    dict(
        id=2,
        name="Red Check Shirt",
        article_type="Shirts",
        base_colour="Red",
        year=2015,
        price=Decimal("25.00"),
    ),
    dict(id=3, name="Red Graphic Tshirt", article_type="Tshirts", base_colour="Red", year=2013),
    dict(
        id=4,
        name="Black Round Neck Tshirt",
        article_type="Tshirts",
        base_colour="Black",
        year=2016,
        price=Decimal("10.00"),
        season="Winter",
    ),
    dict(
        id=5,
        name="Women Red Dress",
        gender="Women",
        sub_category="Dress",
        article_type="Dresses",
        base_colour="Red",
        year=2014,
        usage="Party",
    ),
    dict(
        id=6,
        name="Women Blue Jeans",
        gender="Women",
        sub_category="Bottomwear",
        article_type="Jeans",
        base_colour="Blue",
        year=None,
        season="Fall",
    ),
    dict(
        id=7,
        name="Leather Belt",
        master_category="Accessories",
        sub_category="Belts",
        article_type="Belts",
        base_colour="Brown",
        year=2012,
        price=Decimal("15.50"),
    ),
    dict(id=8, name="Retired Red Shirt", article_type="Shirts", base_colour="Red", active=False),
    dict(
        id=9,
        name="Formal Shoe",
        master_category="Footwear",
        sub_category="Shoes",
        article_type="Formal Shoes",
        base_colour="Black",
        season="Winter",
        year=2017,
        usage="Formal",
        price=Decimal("1299.00"),
        stock=0,
    ),
]
ACTIVE = {r["id"] for r in ROWS if r.get("active", True)}


def load_rows(app, rows=ROWS) -> None:
    """Insert catalogue rows in one transaction."""
    with app.app_context():
        db.session.add_all(Product(**{**PRODUCT_DEFAULTS, **row}) for row in rows)
        db.session.commit()


@contextmanager
def own_postgres_database():
    """A PostgreSQL database of this module's own, so function-scoped apps cannot wipe it."""
    psycopg = pytest.importorskip("psycopg")
    name = f"shop_catalogue_{uuid.uuid4().hex[:10]}"
    admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


# Most tests only read the small catalogue, so it is built once per module and database;
# tests that add rows use the function-scoped app fixtures from conftest instead.
@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def any_db_shop(request, tmp_path_factory):
    """The small catalogue on SQLite and on PostgreSQL (read-only for its tests)."""
    folder = tmp_path_factory.mktemp("shop")
    if request.param == "sqlite":
        app = _make_app(folder, f"sqlite:///{folder / 'shop.sqlite3'}")
        load_rows(app)
        yield app
    else:
        with own_postgres_database() as uri:
            app = _make_app(folder, uri)
            load_rows(app)
            yield app
            with app.app_context():
                db.session.remove()
                db.engine.dispose()
        return
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """The small catalogue on SQLite only, for tests of pages rather than of SQL."""
    folder = tmp_path_factory.mktemp("shop")
    app = _make_app(folder, f"sqlite:///{folder / 'shop.sqlite3'}")
    load_rows(app)
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def per_page(shop, monkeypatch):
    """Set the catalogue page size for one test."""
    return lambda n: monkeypatch.setitem(shop.config, "PRODUCTS_PER_PAGE", n)


# ---------- Listing, filters and counts ----------


def test_catalogue_lists_only_active_products(shop):
    response = shop.test_client().get("/")
    html = response.get_data(as_text=True)
    assert set(shown_ids(response)) == ACTIVE
    assert "Retired Red Shirt" not in html
    assert f"of {len(ACTIVE)} products" in html


FILTER_CASES = [
    ("gender=Women", {5, 6}),
    ("master=Accessories", {7}),
    ("sub=Bottomwear", {6}),
    ("type=Tshirts", {3, 4}),
    ("colour=Red", {2, 3, 5}),
    ("season=Winter", {4, 9}),
    ("usage=Party", {5}),
    ("type=Shirts&type=Tshirts", {1, 2, 3, 4}),  # values of one facet are OR-ed
    ("type=Shirts&type=Tshirts&colour=Red", {2, 3}),  # facets are AND-ed
    ("gender=Women&colour=Blue", {6}),
    ("colour=Black&season=Winter&master=Apparel", {4}),
    ("colour=Purple", set()),
]


def test_each_facet_filter_and_combinations(any_db_shop):
    client = any_db_shop.test_client()
    for query, expected in FILTER_CASES:
        assert set(shown_ids(client.get(f"/?{query}"))) == expected, query


def test_facet_counts_apply_other_filters_but_not_their_own(shop):
    response = shop.test_client().get("/?type=Shirts&type=Tshirts&colour=Red")
    counts = facet_counts_on_page(response)
    # Type counts ignore the type selection but apply colour=Red (ids 2, 3 and 5).
    assert counts["type"] == {"Shirts": 1, "Tshirts": 1, "Dresses": 1}
    # Colour counts apply the type selection (ids 1-4) but not colour=Red.
    assert counts["colour"] == {"Red": 2, "Blue": 1, "Black": 1}
    # Other facets apply both selections: ids 2 and 3.
    assert counts["gender"] == {"Men": 2}
    assert counts["season"] == {"Summer": 2}


def test_selected_value_with_no_matches_stays_listed_and_checked(shop):
    response = shop.test_client().get("/?colour=Brown&type=Shirts")
    html = response.get_data(as_text=True)
    assert shown_ids(response) == []
    assert facet_counts_on_page(response)["colour"]["Brown"] == 0
    assert re.search(r'name="colour" value="Brown"[^>]*checked', html)
    assert "Nothing matches these filters" in html


def test_facet_counts_service_matches_brute_force(any_db_shop):
    with any_db_shop.test_request_context("/"):
        products = db.session.scalars(select(Product).where(Product.active.is_(True))).all()
        for filters in (
            {"gender": ("Men",), "colour": ("Red", "Blue")},
            {"type": ("Shirts", "Tshirts"), "season": ("Summer",)},
            {},
        ):
            query = services.CatalogQuery(q="r", filters=filters)
            page = services.catalog_page(query, Preferences(), per_page=50)
            matching = [p for p in products if "r" in p.name.lower()]
            for key, column in services.FACETS.items():
                others = {k: v for k, v in filters.items() if k != key}
                expected: dict[str, int] = {}
                for p in matching:
                    if all(getattr(p, services.FACETS[k]) in v for k, v in others.items()):
                        expected[getattr(p, column)] = expected.get(getattr(p, column), 0) + 1
                got = {fv.value: fv.count for fv in page.facets[key] if fv.count}
                assert got == expected, (filters, key)
            shown = {
                p.id
                for p in matching
                if all(getattr(p, services.FACETS[k]) in v for k, v in filters.items())
            }
            assert {p.id for p in page.products} == shown
            assert page.total == len(shown)


def test_filter_links_and_chips_keep_the_rest_of_the_url(shop):
    html = (
        shop.test_client().get("/?type=Shirts&colour=Red&q=shirt&sort=name").get_data(as_text=True)
    )
    # Removing the colour chip keeps the type, the search text and the sort order.
    assert 'href="/?q=shirt&amp;type=Shirts&amp;sort=name"' in html
    # "Clear all" drops every filter and the search text but keeps the sort.
    assert re.search(r'href="/\?sort=name">Clear all', html)
    # A facet value link adds itself to the current selection.
    assert 'href="/?q=shirt&amp;type=Shirts&amp;type=Tshirts&amp;colour=Red&amp;sort=name"' in html
    # The GET form carries every selection as a ticked checkbox.
    assert re.search(r'name="type" value="Shirts"[^>]*checked', html)
    assert re.search(r'name="colour" value="Red"[^>]*checked', html)
    assert re.search(r'<form id="catalog-form"[^>]*method="get"', html)


# ---------- Search and sorting ----------


def test_text_search_is_a_case_insensitive_substring(any_db_shop):
    client = any_db_shop.test_client()
    for q, expected in [
        ("shirt", {1, 2, 3, 4}),
        ("SHIRT", {1, 2, 3, 4}),
        ("  women  ", {5, 6}),
        ("cHeCk", {2}),
        ("nothing like this", set()),
    ]:
        assert set(shown_ids(client.get("/", query_string={"q": q}))) == expected, q


def test_search_wildcards_are_literal(any_db_app):
    load_rows(
        any_db_app,
        [
            dict(id=20, name="100% Cotton Tee"),
            dict(id=21, name="Model_X Cap"),
            dict(id=22, name="Plain Tee"),
        ],
    )
    client = any_db_app.test_client()
    assert shown_ids(client.get("/", query_string={"q": "100%"})) == [20]
    assert shown_ids(client.get("/", query_string={"q": "%"})) == [20]
    assert shown_ids(client.get("/", query_string={"q": "_"})) == [21]
    assert shown_ids(client.get("/", query_string={"q": "l_x"})) == [21]
    # A trailing backslash would end a LIKE pattern with its escape character if not escaped.
    assert shown_ids(client.get("/", query_string={"q": "tee\\"})) == []


def test_search_combines_with_filters(shop):
    assert shown_ids(shop.test_client().get("/?q=red&type=Shirts")) == [2]


def test_sort_orders(any_db_shop):
    client = any_db_shop.test_client()
    for sort, expected in [
        ("relevance", [1, 2, 3, 4, 5, 6, 7, 9]),
        ("name", [4, 1, 9, 7, 2, 3, 6, 5]),
        ("newest", [9, 4, 2, 5, 3, 7, 1, 6]),  # the product without a year comes last
        ("price_asc", [4, 7, 2, 1, 9, 3, 5, 6]),  # products without a price last, by id
        ("price_desc", [9, 1, 2, 7, 4, 3, 5, 6]),
    ]:
        assert shown_ids(client.get(f"/?sort={sort}")) == expected, sort


# ---------- Pagination ----------


def test_pagination_keeps_filters_and_covers_every_product_once(shop, per_page):
    per_page(2)
    client = shop.test_client()
    first = client.get("/?colour=Red&colour=Blue&sort=name")
    html = first.get_data(as_text=True)
    assert re.search(r'href="[^"]*page=1" aria-current="page"', html)
    next_link = re.search(r'href="([^"]+)" rel="next"', html).group(1).replace("&amp;", "&")
    assert "colour=Red" in next_link and "colour=Blue" in next_link and "sort=name" in next_link
    pages = [shown_ids(first)]
    while next_link:
        response = client.get(next_link)
        pages.append(shown_ids(response))
        match = re.search(r'href="([^"]+)" rel="next"', response.get_data(as_text=True))
        next_link = match.group(1).replace("&amp;", "&") if match else None
    # Red or Blue, by name, in pages of 2, each product exactly once.
    assert pages == [[1, 2], [3, 6], [5]]


def test_page_past_the_end_shows_the_last_page_with_a_message(shop, per_page):
    per_page(3)
    response = shop.test_client().get("/?page=99")
    assert shown_ids(response) == [7, 9]
    assert "There is no page 99: showing the last page, 3." in response.get_data(as_text=True)


def test_bad_page_numbers_are_forgiven(shop, per_page):
    per_page(3)
    client = shop.test_client()
    for query in ("page=abc", "page=-1", "page=0", "page=1.5", "page=", "page=%00"):
        assert shown_ids(client.get(f"/?{query}")) == [1, 2, 3], query
    assert shown_ids(client.get("/?page=99999999999999999999999")) == [7, 9]


# ---------- Bad input ----------


def test_unknown_sort_falls_back_to_the_default(shop):
    assert shown_ids(shop.test_client().get("/?sort=drop+table")) == sorted(ACTIVE)


def test_overlong_search_text_is_a_400_with_a_message(shop):
    response = shop.test_client().get("/", query_string={"q": "x" * 5000})
    assert response.status_code == 400
    assert "search text is too long" in response.get_data(as_text=True)
    assert "Traceback" not in response.get_data(as_text=True)


def test_too_many_filter_values_is_a_400(shop):
    too_many = MultiDict([("type", f"T{i}") for i in range(services.MAX_VALUES_PER_FACET + 1)])
    response = shop.test_client().get("/", query_string=too_many)
    assert response.status_code == 400
    assert "Too many values for the type filter" in response.get_data(as_text=True)


def test_control_characters_in_params_do_not_break_the_database(any_db_shop):
    client = any_db_shop.test_client()
    assert set(shown_ids(client.get("/", query_string={"q": "shi\x00rt"}))) == {1, 2, 3, 4}
    assert shown_ids(client.get("/", query_string={"colour": "Re\x00d", "type": "Shirts"})) == [2]


def test_huge_product_ids_are_404_not_overflows(any_db_shop):
    client = any_db_shop.test_client()
    assert client.get("/products/99999999999999999999").status_code == 404
    assert client.get("/products/0").status_code == 404
    assert client.get("/products/99999999999999999999/image").status_code == 404


# ---------- Preferences ----------


def test_hidden_categories_and_genders_always_apply(shop):
    client = shop.test_client()
    set_preferences(client, Preferences.from_items([("type", "Shirts"), ("master", "Accessories")]))
    response = client.get("/")
    assert set(shown_ids(response)) == {3, 4, 5, 6, 9}
    assert "Hiding 2 categories" in response.get_data(as_text=True)
    set_preferences(client, Preferences.from_items([("gender", "Women")]))
    response = client.get("/")
    assert set(shown_ids(response)) == {5, 6}
    assert "Showing Women only" in response.get_data(as_text=True)
    # Hidden categories apply even with hide_disliked_colours off.
    set_preferences(client, Preferences.from_items([("sub", "Belts")], hide_disliked_colours=False))
    assert set(shown_ids(client.get("/"))) == ACTIVE - {7}


def test_disliked_colours_hidden_only_when_the_shopper_asks(shop):
    client = shop.test_client()
    set_preferences(client, Preferences.from_items([("colour", "Red")], hide_disliked_colours=True))
    response = client.get("/")
    html = response.get_data(as_text=True)
    assert set(shown_ids(response)) == ACTIVE - {2, 3, 5}
    assert "Hiding 1 disliked colour" in html
    assert 'href="/account/preferences">Edit preferences' in html
    # Facet counts follow the preferences too: Red is gone, Shirts counts only the blue one.
    counts = facet_counts_on_page(response)
    assert "Red" not in counts["colour"]
    assert counts["type"]["Shirts"] == 1

    set_preferences(
        client, Preferences.from_items([("colour", "Red")], hide_disliked_colours=False)
    )
    response = client.get("/")
    assert set(shown_ids(response)) == ACTIVE
    assert "disliked colour" not in response.get_data(as_text=True)


def test_catalogue_clauses_agree_with_the_in_memory_check(any_db_app):
    load_rows(
        any_db_app,
        [*ROWS, dict(id=30, name="Mystery item", gender=None, base_colour=None, article_type=None)],
    )
    with any_db_app.app_context():
        everything = db.session.scalars(select(Product)).all()
        cases = [
            Preferences(),
            Preferences.from_items([("colour", "Red"), ("colour", "Blue")]),
            Preferences.from_items([("colour", "Red")], hide_disliked_colours=False),
            Preferences.from_items([("gender", "Women")]),
            Preferences.from_items([("type", "Shirts"), ("sub", "Belts"), ("master", "Nothing")]),
            Preferences.from_items([("gender", "Men"), ("colour", "Black"), ("type", "Tshirts")]),
        ]
        for prefs in cases:
            # What the catalogue filters on: everything but the (empty) search text.
            eligibility = Eligibility.of(prefs, in_stock=False)
            stmt = select(Product.id).where(*services.base_clauses(services.CatalogQuery(), prefs))
            from_sql = set(db.session.scalars(stmt))
            assert from_sql == {p.id for p in everything if eligibility.allows(p)}, prefs
        # A product without a colour is not hidden by disliked colours (NULL is not a colour).
        red_disliked = Eligibility.of(Preferences.from_items([("colour", "Red")])).clauses()
        assert 30 in set(db.session.scalars(select(Product.id).where(*red_disliked)))


# ---------- Query count ----------


def test_catalogue_runs_a_bounded_number_of_queries(app):
    load_rows(
        app,
        [
            dict(id=i, name=f"Shirt {i}", base_colour=("Red", "Blue", "Green")[i % 3])
            for i in range(1, 41)
        ],
    )
    client = app.test_client()
    set_preferences(client, Preferences.from_items([("colour", "Green"), ("type", "Belts")]))
    for url in (
        "/?type=Shirts&colour=Red&colour=Blue&sort=name",
        "/?type=Shirts&colour=Red&colour=Blue&q=shirt&sort=name",
    ):
        for size in (2, 40):
            app.config["PRODUCTS_PER_PAGE"] = size
            with count_statements(app) as statements:
                response = client.get(url)
            assert len(shown_ids(response)) == min(size, 27)
            # The first page of a search text computes its facet summary (one GROUP BY over
            # every facet); later pages reuse it. The products: one query per segment read.
            first = size == 2
            assert sum(s.count("GROUP BY") for s in statements) == (1 if first else 0)
            assert len(statements) <= (1 if first else 0) + 2, (url, size)


def per_facet_counts(base, filters) -> dict[str, dict[str, int]]:
    """The facet counts the plain way: per facet, one GROUP BY applying the other facets."""
    result = {}
    for key in services.FACETS:
        column = services.facet_column(key)
        stmt = (
            select(column, func.count())
            .where(*base, *services.facet_clauses(filters, exclude=key))
            .group_by(column)
        )
        result[key] = {value: n for value, n in db.session.execute(stmt) if value is not None}
    return result


def test_summary_facet_counts_equal_the_per_facet_queries(any_db_shop):
    cases = [
        ({}, Preferences()),
        ({"type": ("Shirts", "Tshirts"), "colour": ("Red",)}, Preferences()),
        ({"gender": ("Men", "Women"), "season": ("Winter", "Nowhere")}, Preferences()),
        ({"colour": ("Blue",)}, Preferences.from_items([("colour", "Red"), ("sub", "Belts")])),
    ]
    with any_db_shop.test_request_context("/"):
        for filters, prefs in cases:
            for q in ("", "r", "shirt"):
                base = services.base_clauses(services.CatalogQuery(q=q), prefs)
                summary = facets.catalogue_summary(q, services.search_clauses(q))
                counts, total = facets.counts_and_total(summary, prefs, filters)
                assert counts == per_facet_counts(base, filters), (filters, q)
                where = [*base, *services.facet_clauses(filters)]
                expected_total = db.session.scalar(
                    select(func.count()).select_from(Product).where(*where)
                )
                assert total == expected_total, (filters, q)


# ---------- Product detail ----------


def test_product_detail_shows_attributes_and_breadcrumbs(shop):
    html = shop.test_client().get("/products/9").get_data(as_text=True)
    assert '<h1 id="product-title">Formal Shoe</h1>' in html
    for value in ("Men", "Footwear", "Shoes", "Formal Shoes", "Black", "Winter", "2017", "Formal"):
        assert f">{value}<" in html, value
    assert "1,299.00" in html
    assert "Out of stock" in html
    breadcrumbs = re.search(r'<nav class="breadcrumbs".*?</nav>', html, re.S).group(0)
    assert 'href="/?master=Footwear"' in breadcrumbs
    assert 'href="/?master=Footwear&amp;sub=Shoes"' in breadcrumbs
    assert 'href="/?master=Footwear&amp;sub=Shoes&amp;type=Formal+Shoes"' in breadcrumbs
    assert 'aria-current="page">Formal Shoe<' in breadcrumbs
    assert 'src="/products/9/image"' in html and 'alt="Photo of Formal Shoe"' in html


def test_product_detail_hides_unknown_price_and_stock(shop):
    html = shop.test_client().get("/products/3").get_data(as_text=True)
    assert "Out of stock" not in html
    assert 'class="price' not in html


def test_breadcrumb_links_lead_to_the_category(shop):
    client = shop.test_client()
    assert set(shown_ids(client.get("/?master=Footwear&sub=Shoes&type=Formal+Shoes"))) == {9}
    assert set(shown_ids(client.get("/?master=Apparel&sub=Topwear&type=Shirts"))) == {1, 2}


def test_missing_and_inactive_products_are_404_for_shoppers(shop):
    client = shop.test_client()
    assert client.get("/products/999").status_code == 404
    assert client.get("/products/8").status_code == 404
    assert client.get("/products/8/image").status_code == 404
    sign_in(shop, client, Role.SHOPPER)
    assert client.get("/products/8").status_code == 404


def test_admins_see_inactive_products_with_a_notice(shop):
    client = shop.test_client()
    sign_in(shop, client, Role.ADMIN)
    response = client.get("/products/8")
    assert response.status_code == 200
    assert "This product is inactive" in response.get_data(as_text=True)
    # The catalogue itself still lists active products only, even for admins.
    assert set(shown_ids(client.get("/"))) == ACTIVE


# ---------- Product images ----------


def test_image_from_media_folder_is_served_with_cache_headers(app, tmp_path):
    data = make_image_bytes()
    (tmp_path / "media" / "products").mkdir(parents=True, exist_ok=True)
    (tmp_path / "media" / "products" / "a1.jpg").write_bytes(data)
    with app.app_context():
        add_product(id=1, image_path="products/a1.jpg")
    client = app.test_client()
    response = client.get("/products/1/image")
    assert response.status_code == 200
    assert response.data == data
    assert response.mimetype == "image/jpeg"
    assert response.cache_control.max_age == app.config["SEND_FILE_MAX_AGE_DEFAULT"]
    assert response.cache_control.public
    etag = response.headers["ETag"]
    again = client.get("/products/1/image", headers={"If-None-Match": etag})
    assert again.status_code == 304


def test_image_with_absolute_path_is_served(app, tmp_path):
    data = make_image_bytes(colour=(10, 200, 10))
    folder = tmp_path / "catalogue" / "images"
    folder.mkdir(parents=True)
    (folder / "15970.jpg").write_bytes(data)
    with app.app_context():
        add_product(id=15970, image_path=str(folder / "15970.jpg"))
    response = app.test_client().get("/products/15970/image")
    assert response.status_code == 200
    assert response.data == data


@pytest.mark.parametrize(
    "stored", ["../secret.jpg", "products/../../secret.jpg", "./../secret.jpg"]
)
def test_image_path_traversal_is_refused(app, tmp_path, stored):
    (tmp_path / "secret.jpg").write_bytes(b"not for the public")
    with app.app_context():
        add_product(id=1, image_path=stored)
    response = app.test_client().get("/products/1/image")
    assert response.status_code == 404
    assert b"not for the public" not in response.data


@pytest.mark.parametrize("stored", [None, "products/missing.jpg"])
def test_missing_image_redirects_to_the_placeholder(app, stored):
    with app.app_context():
        add_product(id=1, image_path=stored)
    client = app.test_client()
    response = client.get("/products/1/image")
    assert response.status_code == 302
    assert response.headers["Location"].endswith("/static/img/placeholder.svg")
    placeholder = client.get(response.headers["Location"])
    assert placeholder.status_code == 200
    assert placeholder.mimetype == "image/svg+xml"
    placeholder.close()


def test_catalogue_images_are_lazy_with_fixed_dimensions(shop):
    html = shop.test_client().get("/").get_data(as_text=True)
    images = re.findall(r"<img [^>]*>", html)
    assert len(images) == len(ACTIVE)
    for tag in images:
        assert 'loading="lazy"' in tag and 'width="60"' in tag and 'height="80"' in tag
        assert "alt=" in tag
