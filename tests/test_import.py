"""Catalogue import: parsing the raw Kaggle styles.csv, and upserting it through the CLI."""

from __future__ import annotations

import csv
import hashlib
import io
import os
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.conftest import make_image_bytes
from webapp.catalog.importer import import_catalog
from webapp.catalog.parsing import CatalogError, parse_styles
from webapp.extensions import db
from webapp.models import Product

HEADER = (
    "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,"
    "productDisplayName"
)

# The raw Kaggle file's quirks, one per line (numbers are the file's line numbers).
QUIRKY_ROWS = [
    "1,Men,Apparel,Topwear,Shirts,Blue,Summer,2012,Casual,Blue Oxford Shirt",  # 2
    "2,Women,Footwear,Shoes,Heels,Red,Winter,2012.0,Party,Red Heels, Slim, Strap",  # 3
    "3,Men,Apparel,Topwear,Tshirts,,Fall,,Sports,Plain Tee",  # 4: empty colour and year
    "4,Men,Apparel,Topwear,Tshirts,Black,Fall,2011,Casual,Tee Without Photo",  # 5
    "1,Men,Apparel,Topwear,Shirts,Green,Summer,2012,Casual,Second Shirt One",  # 6: duplicate
    "abc,Men,Apparel,Topwear,Shirts,Blue,Summer,2012,Casual,Bad Id",  # 7
    ",Men,Apparel,Topwear,Shirts,Blue,Summer,2012,Casual,No Id",  # 8
    '5,Unisex,Accessories,Bags,Backpacks,Grey,Fall,2013,Casual,"Pack, ""Urban"" 20L"',  # 9
    "",  # 10: blank line, ignored
    "6,Men,Apparel,Topwear,Shirts,Blue,Summer,20x2,Casual,Bad Year",  # 11
    "7,Men,Apparel",  # 12: too few fields
]
GOOD_IDS = {1, 2, 3, 5}


def styles_text(
    rows: list[str], header: str = HEADER, *, bom: bool = True, crlf: bool = True
) -> str:
    """A styles.csv body as a user might download it."""
    newline = "\r\n" if crlf else "\n"
    return ("\ufeff" if bom else "") + newline.join([header, *rows]) + newline


def write_catalog(
    root: Path, rows: list[str], *, header: str = HEADER, images: dict[int, bytes] | None = None
) -> Path:
    """A catalogue folder: styles.csv (BOM, CRLF) plus images/<id>.jpg for ``images``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    (root / "styles.csv").write_bytes(styles_text(rows, header).encode("utf-8"))
    if images is None:
        images = {i: make_image_bytes(colour=(i * 30 % 255, 20, 20)) for i in GOOD_IDS}
    for product_id, data in images.items():
        (root / "images" / f"{product_id}.jpg").write_bytes(data)
    return root


def parse(text: str, **kwargs):
    return parse_styles(io.StringIO(text, newline=""), **kwargs)


# --- parsing: pure, no database -------------------------------------------------------------


def test_parse_quirky_file_keeps_good_rows_and_explains_each_skip():
    parsed = parse(styles_text(QUIRKY_ROWS))

    by_id = {row.id: row for row in parsed.rows}
    # Row 4 is valid text; its missing photo is found later, by the importer.
    assert sorted(by_id) == [1, 2, 3, 4, 5]
    assert by_id[1].values["name"] == "Blue Oxford Shirt"  # the first of the duplicates wins
    assert by_id[2].values["name"] == "Red Heels, Slim, Strap"
    assert by_id[2].values["year"] == 2012
    assert by_id[3].values["base_colour"] is None
    assert by_id[3].values["year"] is None
    assert by_id[5].values["name"] == 'Pack, "Urban" 20L'
    assert by_id[1].values["gender"] == "Men"
    assert not any("\r" in str(v) for row in parsed.rows for v in row.values.values())

    skips = [(s.line, s.product_id, s.reason) for s in parsed.skips]
    assert skips == [
        (6, "1", "duplicate id 1 (first seen on line 2)"),
        (7, "abc", "invalid id 'abc': expected a whole number"),
        (8, "", "missing id"),
        (11, "6", "invalid year '20x2': expected a four-digit year"),
        (12, "7", "expected 10 fields, found 3"),
    ]
    # Without price/stock columns the importer must not touch those columns.
    assert "price" not in parsed.attributes and "stock" not in parsed.attributes
    assert "price" not in by_id[1].values


def test_parse_without_bom_and_with_unix_newlines_gives_the_same_rows():
    quirky = parse(styles_text(QUIRKY_ROWS))
    plain = parse(styles_text(QUIRKY_ROWS, bom=False, crlf=False))
    assert [(r.id, r.values) for r in plain.rows] == [(r.id, r.values) for r in quirky.rows]


def test_parse_price_and_stock_columns_after_the_name_are_found_by_position():
    header = HEADER + ",price,stock"
    rows = [
        "1,Men,Apparel,Topwear,Shirts,Blue,Summer,2012,Casual,Shirt, Slim Fit,19.99,3",
        "2,Men,Apparel,Topwear,Shirts,Blue,Summer,2012,Casual,Plain Shirt,,",
        "3,Men,Apparel,Topwear,Shirts,Blue,Summer,2012,Casual,Cheap Shirt,abc,1",
        "4,Men,Apparel,Topwear,Shirts,Blue,Summer,2012,Casual,Odd Shirt,5,-2",
        "5,Men,Apparel,Topwear,Shirts,Blue,Summer,2012,Casual,Round Shirt,10.005,2.0",
    ]
    parsed = parse(styles_text(rows, header))

    by_id = {row.id: row.values for row in parsed.rows}
    assert by_id[1]["name"] == "Shirt, Slim Fit"
    assert by_id[1]["price"] == Decimal("19.99") and by_id[1]["stock"] == 3
    assert by_id[2]["price"] is None and by_id[2]["stock"] is None
    # Rounded to cents as NUMERIC(10, 2) stores it, so a re-import compares equal.
    assert by_id[5]["price"] == Decimal("10.01") and by_id[5]["stock"] == 2
    assert {s.product_id: s.reason for s in parsed.skips} == {
        "3": "invalid price 'abc': expected a number like 19.99",
        "4": "invalid stock '-2': must be between 0 and 2147483647",
    }
    assert set(parsed.attributes) >= {"price", "stock"}


def test_parse_header_is_matched_by_name_not_position_and_extra_columns_are_ignored():
    header = "productDisplayName,id,notes,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage"
    parsed = parse(
        styles_text(
            ["Shirt, Blue,9,n/a,Men,Apparel,Topwear,Shirts,Blue,Summer,2012,Casual"], header
        )
    )
    assert [(r.id, r.values["name"], r.values["usage"]) for r in parsed.rows] == [
        (9, "Shirt, Blue", "Casual")
    ]


def test_parse_empty_name_gets_a_plain_name_and_long_values_are_skipped():
    rows = [
        "1,Men,Apparel,Topwear,Shirts,Blue,Summer,2012,Casual,",
        "2,,,,,,,,,",
        "3," + "M" * 41 + ",Apparel,Topwear,Shirts,Blue,Summer,2012,Casual,Long Gender",
    ]
    parsed = parse(styles_text(rows))
    assert {r.id: r.values["name"] for r in parsed.rows} == {1: "Men Blue Shirts", 2: "Product 2"}
    assert [(s.product_id, s.reason) for s in parsed.skips] == [
        ("3", "gender is longer than 40 characters")
    ]


def test_parse_limit_counts_data_rows():
    parsed = parse(styles_text(QUIRKY_ROWS), limit=2)
    assert [r.id for r in parsed.rows] == [1, 2]
    assert parsed.skips == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "styles.csv is empty"),
        (
            "id,gender,productDisplayName\r\n1,Men,Shirt\r\n",
            "missing required column(s): masterCategory",
        ),
        (HEADER + ",id\n", "column 'id' appears twice"),
    ],
)
def test_parse_rejects_unusable_headers(text, message):
    with pytest.raises(CatalogError) as info:
        parse(text)
    assert message in str(info.value)


# --- importing: CLI on SQLite and PostgreSQL -------------------------------------------------


def run_import(app, *args: str):
    return app.test_cli_runner().invoke(args=["catalog", "import", *args])


def products(app) -> dict[int, Product]:
    with app.app_context():
        rows = db.session.scalars(select(Product)).all()
        db.session.expunge_all()
        return {p.id: p for p in rows}


def test_import_inserts_good_rows_and_reports_each_skip(any_db_app, tmp_path):
    folder = write_catalog(tmp_path / "cat", QUIRKY_ROWS)
    result = run_import(any_db_app, str(folder))

    assert result.exit_code == 0, result.output
    assert "inserted:  4" in result.stdout
    assert "updated:   0" in result.stdout
    assert "skipped:   6" in result.stdout
    for expected in [
        "line 5 (id 4): image missing: images/4.jpg",
        "line 6 (id 1): duplicate id 1 (first seen on line 2)",
        "line 7 (id abc): invalid id 'abc': expected a whole number",
        "line 8 (no id): missing id",
        "line 11 (id 6): invalid year '20x2'",
        "line 12 (id 7): expected 10 fields, found 3",
    ]:
        assert expected in result.stdout
    assert "Importing: 5/5 rows" in result.stderr  # line-based progress when not a terminal

    stored = products(any_db_app)
    assert set(stored) == GOOD_IDS
    assert stored[2].name == "Red Heels, Slim, Strap"
    assert stored[3].base_colour is None and stored[3].year is None
    assert stored[1].active is True and stored[1].price is None and stored[1].stock is None
    image = folder / "images" / "1.jpg"
    assert stored[1].image_path == os.path.abspath(image)
    assert stored[1].image_sha256 == hashlib.sha256(image.read_bytes()).hexdigest()


def test_reimport_changes_nothing_and_a_changed_value_updates_one_row(any_db_app, tmp_path):
    folder = write_catalog(tmp_path / "cat", QUIRKY_ROWS)
    assert run_import(any_db_app, str(folder)).exit_code == 0
    before = {i: p.updated_at for i, p in products(any_db_app).items()}

    again = run_import(any_db_app, str(folder))
    assert again.exit_code == 0, again.output
    assert "inserted:  0" in again.stdout
    assert "updated:   0" in again.stdout
    assert "unchanged: 4" in again.stdout
    assert {i: p.updated_at for i, p in products(any_db_app).items()} == before

    changed = [r.replace("Plain Tee", "Plain Tee v2") for r in QUIRKY_ROWS]
    write_catalog(folder, changed)
    third = run_import(any_db_app, str(folder))
    assert "inserted:  0" in third.stdout
    assert "updated:   1" in third.stdout
    assert "unchanged: 3" in third.stdout
    after = products(any_db_app)
    assert after[3].name == "Plain Tee v2"
    assert after[3].updated_at > before[3]
    assert {i: after[i].updated_at for i in (1, 2, 5)} == {i: before[i] for i in (1, 2, 5)}


def test_a_changed_image_file_updates_its_hash(any_db_app, tmp_path):
    folder = write_catalog(tmp_path / "cat", QUIRKY_ROWS)
    run_import(any_db_app, str(folder))
    new_photo = make_image_bytes(colour=(1, 200, 1))
    (folder / "images" / "5.jpg").write_bytes(new_photo)

    result = run_import(any_db_app, str(folder))
    assert "updated:   1" in result.stdout
    assert products(any_db_app)[5].image_sha256 == hashlib.sha256(new_photo).hexdigest()


def test_price_and_stock_are_imported_when_present_and_left_alone_when_absent(any_db_app, tmp_path):
    rows = [
        "1,Men,Apparel,Topwear,Shirts,Blue,Summer,2012,Casual,Shirt, Slim Fit,19.99,0",
        "2,Men,Apparel,Topwear,Shirts,Blue,Summer,2012,Casual,Plain Shirt,,",
    ]
    images = {1: make_image_bytes(), 2: make_image_bytes(colour=(0, 0, 0))}
    folder = write_catalog(tmp_path / "cat", rows, header=HEADER + ",price,stock", images=images)
    assert run_import(any_db_app, str(folder)).exit_code == 0
    stored = products(any_db_app)
    assert stored[1].name == "Shirt, Slim Fit"
    assert stored[1].price == Decimal("19.99") and stored[1].stock == 0
    assert stored[1].in_stock is False
    assert stored[2].price is None and stored[2].stock is None

    # The same products from a file without price/stock: prices set earlier are kept.
    plain = [
        "1,Men,Apparel,Topwear,Shirts,Blue,Summer,2012,Casual,Shirt, Slim Fit",
        "2,Men,Apparel,Topwear,Shirts,Blue,Summer,2012,Casual,Plain Shirt",
    ]
    write_catalog(folder, plain, images=images)
    result = run_import(any_db_app, str(folder))
    assert "unchanged: 2" in result.stdout
    assert products(any_db_app)[1].price == Decimal("19.99")


def test_copy_mode_puts_images_in_the_media_folder(any_db_app, tmp_path):
    folder = write_catalog(tmp_path / "cat", QUIRKY_ROWS)
    result = run_import(any_db_app, str(folder), "--images", "copy")
    assert result.exit_code == 0, result.output
    assert "copied to the media folder" in result.stdout

    media = Path(any_db_app.config["MEDIA_FOLDER"])
    stored = products(any_db_app)
    for product_id in GOOD_IDS:
        assert stored[product_id].image_path == f"catalog/{product_id}.jpg"
        copied = media / "catalog" / f"{product_id}.jpg"
        assert copied.read_bytes() == (folder / "images" / f"{product_id}.jpg").read_bytes()
    assert not list((media / "catalog").glob("*.part"))

    # A lost copy is restored by the next run without touching the database row.
    (media / "catalog" / "1.jpg").unlink()
    again = run_import(any_db_app, str(folder), "--images", "copy")
    assert "unchanged: 4" in again.stdout
    assert (media / "catalog" / "1.jpg").exists()


def test_image_mode_comes_from_config_when_not_given(app, tmp_path):
    app.config["CATALOG_IMAGE_MODE"] = "copy"
    folder = write_catalog(tmp_path / "cat", QUIRKY_ROWS)
    assert run_import(app, str(folder)).exit_code == 0
    assert products(app)[1].image_path == "catalog/1.jpg"


def test_empty_and_broken_images_are_skipped(app, tmp_path):
    images = {1: make_image_bytes(), 2: b"", 3: b"<html>not found</html>"}
    rows = QUIRKY_ROWS[:3]
    folder = write_catalog(tmp_path / "cat", rows, images=images)
    result = run_import(app, str(folder))
    assert result.exit_code == 0
    assert "line 3 (id 2): image empty: images/2.jpg" in result.stdout
    assert "line 4 (id 3): image unreadable: images/3.jpg (not a readable image" in result.stdout
    assert set(products(app)) == {1}


def test_huge_image_is_skipped(app, tmp_path):
    app.config["MAX_IMAGE_PIXELS"] = 100
    folder = write_catalog(tmp_path / "cat", QUIRKY_ROWS[:1], images={1: make_image_bytes()})
    result = run_import(app, str(folder))
    assert "image unreadable: images/1.jpg (image is too large (60x80 pixels))" in result.stdout


def test_report_lists_every_skip_and_summary_is_capped(app, tmp_path):
    rows = [f"x{i},Men,Apparel,Topwear,Shirts,Blue,Summer,2012,Casual,Bad" for i in range(60)]
    folder = write_catalog(tmp_path / "cat", rows, images={})
    report = tmp_path / "skips.csv"

    result = run_import(app, str(folder), "--report", str(report))
    assert result.exit_code == 0
    assert "skipped:   60" in result.stdout
    assert "line 51 (id x49)" in result.stdout and "line 52 (id x50)" not in result.stdout
    assert "... and 10 more" in result.stdout
    with report.open(newline="", encoding="utf-8") as handle:
        listed = list(csv.DictReader(handle))
    assert len(listed) == 60
    assert listed[-1] == {
        "line": "61",
        "id": "x59",
        "reason": "invalid id 'x59': expected a whole number",
    }


def test_limit_imports_only_the_first_rows(app, tmp_path):
    folder = write_catalog(tmp_path / "cat", QUIRKY_ROWS)
    result = run_import(app, str(folder), "--limit", "2")
    assert "inserted:  2" in result.stdout
    assert set(products(app)) == {1, 2}


def test_a_path_to_styles_csv_works_too(app, tmp_path):
    folder = write_catalog(tmp_path / "cat", QUIRKY_ROWS)
    assert run_import(app, str(folder / "styles.csv")).exit_code == 0
    assert set(products(app)) == GOOD_IDS


def _no_folder(root: Path) -> Path:
    return root / "nowhere"


def _no_styles(root: Path) -> Path:
    (root / "empty").mkdir()
    return root / "empty"


def _bad_header(root: Path) -> Path:
    return write_catalog(root / "c", [], header="id,name")


def _no_images(root: Path) -> Path:
    (root / "noimg").mkdir()
    (root / "noimg" / "styles.csv").write_text(HEADER)
    return root / "noimg"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_no_folder, "does not exist"),
        (_no_styles, "has no styles.csv"),
        (_bad_header, "missing required column(s): gender, masterCategory"),
        (_no_images, "has no images/ folder"),
    ],
)
def test_unusable_catalogue_fails_with_a_clear_message(app, tmp_path, make, message):
    result = run_import(app, str(make(tmp_path)))
    assert result.exit_code == 1
    assert "Error:" in result.output and message in result.output
    assert "Traceback" not in result.output
    assert products(app) == {}


def test_non_utf8_file_fails_with_a_clear_message(app, tmp_path):
    folder = write_catalog(tmp_path / "cat", [])
    (folder / "styles.csv").write_bytes(
        (HEADER + "\n1,Men,Apparel,Topwear,Shirts,Blue,Summer,2012,Casual,Caf\xe9\n").encode(
            "latin-1"
        )
    )
    result = run_import(app, str(folder))
    assert result.exit_code == 1
    assert "styles.csv is not UTF-8 text" in result.output


def test_missing_schema_gives_a_hint(app, tmp_path):
    with app.app_context():
        db.drop_all()
    result = run_import(app, str(write_catalog(tmp_path / "cat", QUIRKY_ROWS)))
    assert result.exit_code == 1
    assert "db upgrade" in result.output


def test_service_reports_progress_per_batch(app, tmp_path):
    folder = write_catalog(tmp_path / "cat", QUIRKY_ROWS)
    calls: list[tuple[int, int]] = []
    with app.app_context():
        result = import_catalog(
            folder, session=db.session, batch_size=2, progress=lambda d, t: calls.append((d, t))
        )
    assert calls == [(0, 5), (2, 5), (4, 5), (5, 5)]
    assert sorted(result.inserted) == sorted(GOOD_IDS)
    assert [s.reason for s in result.skipped if s.product_id == "4"] == [
        "image missing: images/4.jpg"
    ]


def test_service_rejects_an_unknown_image_mode(app, tmp_path):
    with app.app_context(), pytest.raises(CatalogError, match="image mode must be one of"):
        import_catalog(tmp_path, session=db.session, image_mode="symlink")


def test_database_error_mid_import_is_reported_and_a_rerun_recovers(any_db_app, tmp_path):
    folder = write_catalog(tmp_path / "cat", QUIRKY_ROWS)

    def race(done: int, total: int) -> None:
        # Another writer adds product 1 after the importer has read the table.
        if done == 0:
            with db.engine.begin() as connection:
                connection.execute(
                    Product.__table__.insert(),
                    {
                        "id": 1,
                        "name": "Racer",
                        "active": True,
                        "created_at": now,
                        "updated_at": now,
                    },
                )

    now = datetime.now(UTC)
    with any_db_app.app_context():
        with pytest.raises(CatalogError) as info:
            import_catalog(folder, session=db.session, batch_size=2, progress=race)
        assert "the database refused the rows on lines 2-3" in str(info.value)
        assert "running the import again continues safely" in str(info.value)
        result = import_catalog(folder, session=db.session)
    assert sorted(result.inserted) == [2, 3, 5]
    assert result.updated == [1]
    assert products(any_db_app)[1].name == "Blue Oxford Shirt"
