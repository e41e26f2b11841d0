"""Shared fixtures in the flaskr shape: app, client, runner, auth; plus real PostgreSQL and Redis."""

from __future__ import annotations

import atexit
import io
import os
import re
import uuid
from pathlib import Path

import numpy as np
import pytest
import redis
from PIL import Image

from cli import register_commands
from webapp import create_app
from webapp.extensions import db as _db
from webapp.models import Product, Role, User
from worker.jobs import indexing

# PostgreSQL server used for the PostgreSQL runs; each test session gets its own database.
# The reference catalogue (real photos) the slow tests read in place.
REFERENCE_CATALOG = Path(
    os.environ.get(
        "SHOP_TEST_CATALOG_PATH",
        Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-small",
    )
)
PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _claim_redis_database() -> str:
    """A Redis database of this test session's own, so concurrent runs (and their Celery
    workers) never consume each other's tasks or flush each other's keys.

    Claims live in database 0 (tests flush their own database) and expire after 6 hours in
    case a run is killed; TEST_REDIS_URL overrides the whole choice.
    """
    if os.environ.get("TEST_REDIS_URL"):
        return os.environ["TEST_REDIS_URL"]
    claims = redis.Redis(host="127.0.0.1", port=6379, db=0, socket_connect_timeout=2)
    try:
        for number in range(15, 0, -1):
            key = f"shop-tests:db:{number}"
            if claims.set(key, os.getpid(), nx=True, ex=6 * 3600):
                atexit.register(claims.delete, key)
                return f"redis://127.0.0.1:6379/{number}"
    except redis.ConnectionError:
        pass  # tests that need Redis fail with a clear connection error of their own
    return "redis://127.0.0.1:6379/15"


TEST_REDIS_URL = _claim_redis_database()


@pytest.fixture(autouse=True)
def fast_password_hashing(monkeypatch):
    """Cheap password hashes in tests: the production method costs a quarter second each."""
    from functools import partial

    from webapp import models
    from webapp.account import services as account_services

    fast = partial(models.generate_password_hash, method="pbkdf2:sha256:1000")
    monkeypatch.setattr(models, "generate_password_hash", fast)
    monkeypatch.setattr(account_services, "generate_password_hash", fast)
    account_services._dummy_hash.cache_clear()
    yield
    account_services._dummy_hash.cache_clear()


def base_config(tmp_path, database_uri: str) -> dict:
    """A test configuration: everything under tmp_path, CSRF on unless a test turns it off."""
    return {
        "TESTING": True,
        "SECRET_KEY": "test-secret",
        "SQLALCHEMY_DATABASE_URI": database_uri,
        "MEDIA_FOLDER": str(tmp_path / "media"),
        "MODEL_FOLDER": str(tmp_path / "models"),
        "REDIS_URL": TEST_REDIS_URL,
        # Tests that tune say so; the others keep the plain backbone they embed with.
        "EMBEDDING_TUNED": "off",
        # The same arithmetic on every CPU (bfloat16 training: tests/test_tuned_precision.py).
        "TUNE_PRECISION": "float32",
        "WTF_CSRF_ENABLED": False,
        "SERVER_NAME": None,
        # Rate limits stay on, counted per app and generous: a module-scoped app serves many
        # tests' uploads and sign-ins. Tests of the limits set their own (and Redis storage).
        "RATELIMIT_STORAGE_URI": "memory://",
        **{
            name: "1000 per minute"
            for name in (
                "RATELIMIT_SIGNIN_ACCOUNT",
                "RATELIMIT_SIGNIN_ADDRESS",
                "RATELIMIT_REGISTER",
                "RATELIMIT_UPLOADS",
                "RATELIMIT_ADMIN_UPLOADS",
            )
        },
    }


@pytest.fixture(scope="session")
def postgres_database():
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    psycopg = pytest.importorskip("psycopg")
    name = f"shop_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:  # pragma: no cover - the service is part of the setup
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}")
    admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    yield f"{base}/{name}"
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


def _make_app(tmp_path, uri: str, extra: dict | None = None):
    app = create_app({**base_config(tmp_path, uri), **(extra or {})})
    register_commands(app)  # as wsgi.py does for `flask --app wsgi`
    with app.app_context():
        _db.drop_all()
        _db.create_all()
    return app


@pytest.fixture
def app(tmp_path):
    """The app on a fresh SQLite file."""
    app = _make_app(tmp_path, f"sqlite:///{tmp_path / 'test.sqlite3'}")
    yield app
    with app.app_context():
        _db.session.remove()
        _db.engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_db_app(request, tmp_path):
    """The app on SQLite and, as a second run, on the real PostgreSQL service."""
    if request.param == "sqlite":
        uri = f"sqlite:///{tmp_path / 'test.sqlite3'}"
    else:
        uri = request.getfixturevalue("postgres_database")
    app = _make_app(tmp_path, uri)
    yield app
    with app.app_context():
        _db.session.remove()
        _db.drop_all()
        _db.engine.dispose()


@pytest.fixture
def csrf_app(tmp_path):
    """The app with CSRF protection on, as in production."""
    app = _make_app(tmp_path, f"sqlite:///{tmp_path / 'test.sqlite3'}", {"WTF_CSRF_ENABLED": True})
    yield app
    with app.app_context():
        _db.engine.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


def make_image_bytes(fmt: str = "JPEG", size=(60, 80), colour=(200, 30, 30), mode="RGB") -> bytes:
    """A small real image, encoded in memory."""
    buf = io.BytesIO()
    Image.new(mode, size, colour if mode != "L" else 128).save(buf, format=fmt)
    return buf.getvalue()


def add_product(**fields) -> Product:
    """Insert one product with sensible defaults (inside an app context)."""
    defaults = {
        "name": "Test Shirt",
        "gender": "Men",
        "master_category": "Apparel",
        "sub_category": "Topwear",
        "article_type": "Shirts",
        "base_colour": "Blue",
        "season": "Summer",
        "year": 2012,
        "usage": "Casual",
        "active": True,
    }
    defaults.update(fields)
    if "id" not in defaults:
        defaults["id"] = (_db.session.query(_db.func.max(Product.id)).scalar() or 0) + 1
    product = Product(**defaults)
    _db.session.add(product)
    _db.session.commit()
    return product


class AuthActions:
    """Register users and sign in/out through the real pages."""

    def __init__(self, app, client):
        self._app = app
        self._client = client

    def create_user(self, email: str, password: str = "correct horse", role: Role = Role.SHOPPER):
        with self._app.app_context():
            user = User(email=email, role=role)
            user.set_password(password)
            _db.session.add(user)
            _db.session.commit()
            return user.id

    def login(
        self, role: str = "shopper", email: str | None = None, password: str = "correct horse"
    ):
        email = email or f"{role}@example.com"
        with self._app.app_context():
            exists = _db.session.query(User).filter_by(email=email).first()
        if not exists:
            self.create_user(email, password, Role(role))
        data = {"email": email, "password": password}
        if self._app.config.get("WTF_CSRF_ENABLED"):
            data["csrf_token"] = csrf_token_from(self._client.get("/account/login"))
        return self._client.post("/account/login", data=data)

    def logout(self):
        data = {}
        if self._app.config.get("WTF_CSRF_ENABLED"):
            data["csrf_token"] = csrf_token_from(self._client.get("/"))
        return self._client.post("/account/logout", data=data)


def csrf_token_from(response) -> str:
    """Read the CSRF token out of a rendered page."""
    match = re.search(rb'name="csrf_token"[^>]*value="([^"]+)"', response.data)
    assert match, "page has no CSRF token"
    return match.group(1).decode()


@pytest.fixture
def auth(app, client):
    return AuthActions(app, client)


# -- an indexed catalogue: tiny backbone, real Redis ------------------------------------

COLOURS = ["Red", "Blue", "Green", "Black", "White", "Yellow"]
RGB = {
    "Red": (200, 30, 30),
    "Blue": (30, 30, 200),
    "Green": (30, 160, 40),
    "Black": (15, 15, 15),
    "White": (235, 235, 235),
    "Yellow": (230, 210, 30),
}


def save_photo(media, name: str, colour: str, seed: int) -> str:
    """A 60x80 product-like photo: a coloured shape with a little noise, on white."""
    rng = np.random.default_rng(seed)
    arr = np.full((80, 60, 3), 255, np.uint8)
    top, left = rng.integers(5, 20), rng.integers(5, 15)
    arr[top : top + 50, left : left + 35] = RGB[colour]
    arr = np.clip(arr.astype(int) + rng.integers(-10, 10, arr.shape), 0, 255).astype(np.uint8)
    path = media / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, "JPEG")
    return name


@pytest.fixture
def redis_db():
    client = redis.Redis.from_url(TEST_REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture
def catalogue(app, redis_db, tmp_path):
    """30 products with photos, embedded with the tiny backbone, lists built with K=5."""
    app.config.update(EMBEDDING_BACKBONE="tiny", NEIGHBOURS_K=5)
    media = tmp_path / "media"
    with app.app_context():
        for i in range(30):
            colour = COLOURS[i % len(COLOURS)]
            add_product(
                id=1000 + i,
                name=f"Product {i}",
                base_colour=colour,
                image_path=save_photo(media, f"p{i}.jpg", colour, i),
            )
        report = indexing.embed_catalog()
        assert report.embedded == 30 and report.skipped == []
        indexing.build_neighbours(report.model_id)
    return app, report.model_id, media


LABELLED_TYPES = [("Men", "Shirts", "Topwear"), ("Women", "Jeans", "Bottomwear")]
LABELLED_COLOURS = ["Red", "Blue", "Green"]


@pytest.fixture
def labelled(app, redis_db, tmp_path):
    """48 products: two gender + article types x three colours (8 of each), tiny backbone."""
    app.config.update(EMBEDDING_BACKBONE="tiny", NEIGHBOURS_K=5)
    media = tmp_path / "media"
    with app.app_context():
        for i in range(48):
            gender, article_type, sub = LABELLED_TYPES[i % 2]
            colour = LABELLED_COLOURS[(i // 2) % 3]
            add_product(
                id=2000 + i,
                name=f"Product {i}",
                gender=gender,
                article_type=article_type,
                sub_category=sub,
                base_colour=colour,
                image_path=save_photo(media, f"q{i}.jpg", colour, i),
            )
        report = indexing.embed_catalog()
        assert report.embedded == 48
        indexing.build_neighbours(report.model_id)
    return app, report.model_id


def write_query_folder(folder):
    """A Kaggle-style query folder: three Men's shirts the labelled catalogue does not hold
    (red, blue, green) and one product it does (2000)."""
    import csv

    (folder / "images").mkdir(parents=True)
    rows = []
    for i, colour in enumerate(["Red", "Blue", "Green"]):
        save_photo(folder / "images", f"{9000 + i}.jpg", colour, 100 + i)
        rows.append(
            {
                "id": 9000 + i,
                "gender": "Men",
                "masterCategory": "Apparel",
                "subCategory": "Topwear",
                "articleType": "Shirts",
                "baseColour": colour,
            }
        )
    rows.append(
        {
            "id": 2000,
            "gender": "Men",
            "masterCategory": "Apparel",  # in the catalogue
            "subCategory": "Topwear",
            "articleType": "Shirts",
            "baseColour": "Red",
        }
    )
    save_photo(folder / "images", "2000.jpg", "Red", 1)
    with (folder / "styles.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder
