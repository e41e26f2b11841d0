"""Self-healing of the neighbour lists after Redis lost them (no worker: the heal runs here).

The chaos test (tests/chaos/test_redis_loss.py) runs the same through a real worker; these
check each piece: what counts as a problem, who asks for a heal and how often, and that the
heal rebuilds from the stored embeddings without embedding anything again.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from ml.store import EmbeddingStore
from tests.conftest import add_product, save_photo
from webapp import exclusive, healing, registry
from webapp.extensions import db
from webapp.models import Product
from webapp.search.services import search_view
from worker.jobs import healing as heal_job


@pytest.fixture
def sent(monkeypatch):
    """Tasks the web side sends (by name), recorded instead of reaching a broker."""
    names: list[str] = []

    def fake_send(name, args=(), kwargs=None, **options):
        names.append(name)
        return SimpleNamespace(id=f"task-{len(names)}")

    monkeypatch.setattr(exclusive, "send_task", fake_send)
    return names


def store_files(app, model_id: str) -> dict[str, int]:
    root = Path(app.config["MODEL_FOLDER"]) / model_id
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_whole_lists_are_no_problem_and_each_loss_is_named(catalogue, redis_db):
    app, model_id, _ = catalogue
    with app.app_context():
        cache = registry.neighbour_cache()
        assert healing.lists_problem() is None
        redis_db.delete(*[cache.key(model_id, "list", pid) for pid in range(1000, 1030)])
        assert "sampled lists" in healing.lists_problem()
        redis_db.delete(cache.key(model_id, "ids"))
        assert "list index" in healing.lists_problem()
        # A build in progress marks the lists incomplete for a moment: not a problem yet.
        redis_db.hset(cache.key(model_id, "meta"), mapping={"complete": 0})
        assert healing.lists_problem() is None
        stale = time.time() - healing.STALE_BUILD_S - 1
        redis_db.hset(cache.key(model_id, "meta"), mapping={"updated_at": stale})
        assert "half-way" in healing.lists_problem()
        redis_db.delete(cache.key(model_id, "meta"))
        assert "gone" in healing.lists_problem()
        redis_db.flushdb()
        assert healing.lists_problem() == "no model is served"


def test_a_new_shop_has_nothing_to_heal(app, redis_db, sent):
    with app.app_context():
        add_product(id=7, name="Not embedded yet", image_path="p.jpg")
        assert healing.lists_problem() is None
    response = app.test_client().get("/api/products/7/similar")
    assert response.status_code == 503 and "being prepared" in response.get_json()["message"]
    assert sent == []


def test_pages_ask_for_a_heal_by_name_once(catalogue, redis_db, sent):
    app, _, _ = catalogue
    redis_db.flushdb()  # Redis restarted without its data
    client = app.test_client()
    for path in ("/products/1000", "/products/1001", "/api/products/1002/similar"):
        response = client.get(path)
        assert response.status_code in (200, 503)
        assert "being prepared" in response.get_data(as_text=True)
    assert sent == [healing.HEAL_TASK]
    with app.app_context():
        assert exclusive.in_flight(exclusive.INDEX) == "task-1"
    # Once the interval has passed, the heal still in flight is not sent twice.
    redis_db.delete(healing.REQUESTED_KEY)
    client.get("/products/1003")
    assert sent == [healing.HEAL_TASK]


def test_a_failed_photo_search_asks_only_when_nothing_is_served(catalogue, redis_db, sent):
    app, _, _ = catalogue
    with app.app_context():
        record = {"id": "a" * 32, "state": "failed", "code": 503, "all_categories": False}
        assert search_view(record).code == 503
        assert sent == []
        redis_db.flushdb()
        search_view({**record, "error": "Photo search is not ready yet"})
        assert sent == [healing.HEAL_TASK]


def test_no_heal_is_asked_while_redis_is_down(catalogue):
    app, _, _ = catalogue
    app.config["REDIS_URL"] = "redis://127.0.0.1:1/0"  # nothing listens there
    with app.app_context():
        app.extensions.pop("redis", None)
        assert healing.request_heal("test") is None
        assert healing.heal_if_needed() is None
        assert healing.heal_if_unserved("test") is None
    page = app.test_client().get("/products/1000")
    assert page.status_code == 200 and "unavailable right now" in page.get_data(as_text=True)


def test_heal_rebuilds_lost_lists_without_embedding_again(catalogue, redis_db):
    app, model_id, _ = catalogue
    with app.app_context():
        before = store_files(app, model_id)
        redis_db.flushdb()
        summary = heal_job.heal_index()
        assert summary["healed"] and summary["rebuilt"] and summary["embedded"] == 0
        assert summary["model"] == model_id and summary["products"] == 30
        cache = registry.neighbour_cache()
        assert cache.active_model() == model_id
        assert all(lst is not None for lst in cache.get_lists(model_id, list(range(1000, 1030))))
        assert heal_job.heal_index() == {"healed": False, "problem": None}

        # Lists lost one by one (an evicting Redis): the index looks up to date, yet rebuilt.
        redis_db.delete(*[cache.key(model_id, "list", pid) for pid in range(1000, 1030, 2)])
        summary = heal_job.heal_index()
        assert summary["healed"] and summary["rebuilt"] and summary["embedded"] == 0
        assert cache.get_list(model_id, 1000) is not None
        assert store_files(app, model_id) == before


def test_heal_embeds_a_few_lost_products_but_never_a_catalogue(catalogue, redis_db, monkeypatch):
    app, model_id, media = catalogue
    monkeypatch.setattr(heal_job, "EMBED_AT_MOST", 2)
    with app.app_context():
        for i in range(4):  # their update tasks were lost with Redis's data
            add_product(id=3000 + i, image_path=save_photo(media, f"lost{i}.jpg", "Red", i))
        redis_db.flushdb()
        refused = heal_job.heal_index()  # 4 missing > max(2, 34 // 10): an embed in progress?
        assert not refused["healed"] and refused["problem"] == "no model is served"
        assert EmbeddingStore(app.config["MODEL_FOLDER"], model_id).id_count() == 30
        for i in range(1, 4):
            db.session.delete(db.session.get(Product, 3000 + i))
        db.session.commit()
        summary = heal_job.heal_index()
        assert summary["healed"] and summary["embedded"] == 1 and summary["products"] == 31


def test_heal_never_embeds_a_whole_catalogue(catalogue, redis_db):
    app, model_id, _ = catalogue
    app.config["EMBEDDING_INPUT_SIZE"] = 40  # another model id, with nothing embedded
    with app.app_context():
        configured = registry.load_backbone().model_id
        assert configured != model_id
        redis_db.flushdb()
        summary = heal_job.heal_index()
        assert not summary["healed"] and summary["model"] == configured
        assert EmbeddingStore(app.config["MODEL_FOLDER"], configured).id_count() == 0
        assert registry.neighbour_cache().active_model() is None


def test_the_worker_check_asks_and_says_when_to_look_again(catalogue, redis_db, sent):
    app, _, _ = catalogue
    app.config["INDEX_HEAL_INTERVAL"] = 7
    with app.app_context():
        assert heal_job.check_lists() == 7 and sent == []
        redis_db.flushdb()
        assert heal_job.check_lists() == 7 and sent == [healing.HEAL_TASK]
        app.config["INDEX_HEAL_INTERVAL"] = 0
        assert heal_job.check_lists() == 0
        assert healing.request_heal("off") is None and sent == [healing.HEAL_TASK]


def test_sampling_sees_a_list_that_reappears_as_whole(catalogue, redis_db, monkeypatch):
    """A product leaving the catalogue loses its list just before it leaves the index."""
    app, model_id, _ = catalogue
    monkeypatch.setattr(healing.time, "sleep", lambda s: None)
    with app.app_context():
        cache = registry.neighbour_cache()
        ids, kth = cache.read_index(model_id)
        redis_db.delete(cache.key(model_id, "list", 1000))
        monkeypatch.setattr(healing, "SAMPLE", 30)
        assert "1 of" in healing.lists_problem()
        # The index is rewritten without it between the two looks of one check.
        keep = ids != 1000
        cache.write_index(model_id, ids[keep], kth[keep], k=5, complete=True)
        assert healing._missing_lists(cache, model_id, ids) == 0
