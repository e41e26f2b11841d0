"""Similar products past a product's cached list on a catalogue served through its index: a
worker finds them (``worker.jobs.similar``), preferences applied while choosing, and a product
page asks it through the broker (a real Celery worker)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.worker_process import WorkerProcess
from webapp import registry
from webapp.eligibility import Eligibility
from webapp.extensions import db
from webapp.models import Product
from webapp.preferences import SESSION_KEY, Preferences
from worker.jobs import indexing
from worker.jobs.similar import more_similar

NOT = {"Red", "Blue"}


@pytest.fixture
def served_by_index(catalogue):
    """The 30-product catalogue with its lists rebuilt through the index (a large catalogue's
    path), K=5 cached."""
    app, model_id, media = catalogue
    app.config["NEIGHBOURS_INDEX"] = "ann"
    with app.app_context():
        indexing.build_neighbours(model_id)
    return app, model_id, media


def exact_eligible(model_id: str, product_id: int, eligibility: Eligibility, skip: set[int]):
    """Every eligible product's cosine with the product, best first (ids, cosines)."""
    ids, vectors = registry.store_for(model_id).load()
    vectors = np.asarray(vectors, np.float32)
    sims = vectors @ vectors[np.searchsorted(ids, product_id)]
    allowed = {p.id for p in db.session.query(Product).filter(*eligibility.clauses())}
    keep = [i for i, pid in enumerate(ids.tolist()) if pid in allowed and pid not in skip]
    order = sorted(keep, key=lambda i: -sims[i])
    return ids[order], sims[order]


def test_the_worker_finds_the_nearest_eligible_products(served_by_index):
    app, model_id, _ = served_by_index
    prefs = Preferences(disliked_colours=NOT)
    with app.app_context():
        cached, _ = registry.neighbour_cache().get_list(model_id, 1000)
        chosen = {int(cached[0])}
        found = more_similar(model_id, 1000, prefs.to_session(), [1003], chosen, 8)
        eligibility = Eligibility.of(prefs, exclude=[1003])
        ids, cosines = exact_eligible(model_id, 1000, eligibility, {1000, *chosen})
        assert len(found) == 8
        got = [int(pid) for pid, _ in found]
        assert not {1000, 1003, *chosen} & set(got)
        colours = {db.session.get(Product, pid).base_colour for pid in got}
        assert not colours & NOT
        # The nearest eligible ones, with their full cosines (ties within float error aside).
        scores = np.asarray([score for _, score in found])
        assert np.allclose(scores, cosines[:8], atol=1e-4)
        # Fewer eligible than asked: every one of them (the search restricted to them).
        few = Preferences(disliked_colours={"Red", "Blue", "Green", "Black", "White"})
        rest = more_similar(model_id, 1000, few.to_session(), [], set(), 20)
        ids, _ = exact_eligible(model_id, 1000, Eligibility.of(few), {1000})
        assert sorted(pid for pid, _ in rest) == sorted(ids.tolist()) and len(rest) == 5


def test_a_product_page_asks_a_worker_past_its_list(served_by_index, tmp_path):
    app, _, _ = served_by_index
    worker = WorkerProcess(app.config, tmp_path / "worker.log", queues="default,ml")
    with app.app_context():
        worker.start(app.extensions["celery"])
    try:
        client = app.test_client()
        with client.session_transaction() as session:
            session[SESSION_KEY] = Preferences(disliked_colours=NOT).to_session()
        body = client.get("/api/products/1000/similar?n=12").get_json()
        ids = [item["id"] for item in body["items"]]
        assert len(ids) == 12  # 5 cached, so the rest came from the worker
        with app.app_context():
            colours = {db.session.get(Product, pid).base_colour for pid in ids}
        assert not colours & NOT and 1000 not in ids
    finally:
        worker.kill()
