"""Photo search edge cases that need an app of their own: no embeddings, CSRF on, Redis down,
and a web process that must not import TensorFlow."""

from __future__ import annotations

import io
import subprocess
import sys

from tests.conftest import _make_app
from tests.test_search import ROOT, api_search, draw_photo, encode, run_tasks_here, search_config


def test_model_train_without_embeddings_explains_what_to_do(app, redis_db):
    app.config["EMBEDDING_BACKBONE"] = "tiny"
    result = app.test_cli_runner().invoke(args=["model", "train"])
    assert result.exit_code != 0
    assert "embed the catalogue first" in result.output


def test_api_needs_no_csrf_token_but_the_page_does(tmp_path, redis_db, monkeypatch):
    app = _make_app(
        tmp_path, f"sqlite:///{tmp_path / 'csrf.sqlite3'}", search_config(WTF_CSRF_ENABLED=True)
    )
    run_tasks_here(monkeypatch)
    client = app.test_client()
    photo = encode(draw_photo("Shirts", "Red", "Men", 1))
    api = api_search(client, photo)
    assert api.status_code in (200, 202), api.get_data(as_text=True)
    page = client.post(
        "/search/", data={"image": (io.BytesIO(photo), "a.jpg")}, content_type="multipart/form-data"
    )
    assert page.status_code == 400 and b"The form expired or was tampered with" in page.data


def test_redis_down_gives_a_503_not_a_500(tmp_path):
    app = _make_app(
        tmp_path, f"sqlite:///{tmp_path / 'down.sqlite3'}", {"REDIS_URL": "redis://127.0.0.1:1/0"}
    )
    client = app.test_client()
    photo = encode(draw_photo("Shirts", "Red", "Men", 1))
    response = api_search(client, photo)
    assert response.status_code == 503 and "unavailable" in response.get_json()["error"]
    page = client.post(
        "/search/", data={"image": (io.BytesIO(photo), "a.jpg")}, content_type="multipart/form-data"
    )
    assert page.status_code == 503 and b"unavailable right now" in page.data
    assert not list((tmp_path / "media").rglob("*.jpg")), "the upload is removed again"


def test_the_web_process_never_imports_tensorflow(tmp_path):
    code = f"""
import io, sys
from webapp import create_app
app = create_app({{"TESTING": True, "SECRET_KEY": "x", "WTF_CSRF_ENABLED": False,
    "SQLALCHEMY_DATABASE_URI": "sqlite:///{tmp_path}/web.sqlite3", "MEDIA_FOLDER": "{tmp_path}/m",
    "REDIS_URL": "redis://127.0.0.1:1/0"}})
c = app.test_client()
import webapp.search.views, webapp.search.services, webapp.api.views, worker.tasks
assert c.get("/search/").status_code == 200
assert c.get("/search/compare").status_code == 200
c.post("/api/search", data={{"image": (io.BytesIO(b"x"), "a.jpg")}})
bad = [m for m in ("tensorflow", "keras") if m in sys.modules]
assert not bad, bad
print("ok")
"""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
