"""Embedding the catalogue, building neighbour lists and keeping them up to date incrementally
(the jobs of ``worker.jobs.indexing``)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ml.neighbours import all_neighbours
from tests.conftest import add_product, save_photo
from webapp import registry
from webapp.extensions import db
from webapp.models import Product
from worker.jobs import indexing


def all_lists(cache, model_id, ids):
    return {int(p): cache.get_list(model_id, p) for p in ids}


def test_embed_is_resumable_and_idempotent(catalogue):
    app, model_id, media = catalogue
    with app.app_context():
        again = indexing.embed_catalog()
        assert (again.embedded, again.already) == (0, 30)
        store = registry.store_for(model_id)
        # Simulate a job killed half-way: drop 10 products from the store, then run again.
        store.write_part(deleted=list(range(1000, 1010)))
        resumed = indexing.embed_catalog()
        assert resumed.embedded == 10 and resumed.already == 20
        assert len(store) == 30


def test_built_lists_equal_exact_search(catalogue):
    app, model_id, _ = catalogue
    with app.app_context():
        cache = registry.neighbour_cache()
        assert cache.active_model() == model_id
        ids, vectors = registry.store_for(model_id).load()
        idx, _ = all_neighbours(np.asarray(vectors), 5)
        for row, product_id in enumerate(ids):
            got, scores = cache.get_list(model_id, int(product_id))
            assert got.tolist() == ids[idx[row]].tolist()
            assert list(scores) == sorted(scores, reverse=True)


def test_a_build_through_the_graph_serves_the_same_lists_here(catalogue):
    """NEIGHBOURS_INDEX=ann (a large catalogue's build) gives the exact lists on a catalogue
    this small, served and complete, with no product its own neighbour."""
    app, model_id, _ = catalogue
    app.config["NEIGHBOURS_INDEX"] = "ann"
    with app.app_context():
        cache = registry.neighbour_cache()
        exact = all_lists(cache, model_id, registry.store_for(model_id).ids())
        report = indexing.build_neighbours(model_id)
        assert report.products == 30 and cache.meta(model_id)["complete"]
        rebuilt = all_lists(cache, model_id, registry.store_for(model_id).ids())
        ids, vectors = registry.store_for(model_id).load()
        vectors = np.asarray(vectors, np.float32)
        for product_id, (got, scores) in rebuilt.items():
            assert product_id not in got.tolist()
            # The same scores, within one step of the graph's float16 storage; products whose
            # exact scores tie within that step may take each other's places.
            assert np.allclose(scores, exact[product_id][1], atol=1e-3)
            cosines = vectors[np.searchsorted(ids, got)] @ vectors[np.searchsorted(ids, product_id)]
            assert (cosines >= exact[product_id][1][-1] - 1e-3).all()


@pytest.mark.parametrize("kind", ["exact", "ann"])
def test_add_and_delete_update_only_affected_lists(catalogue, kind):
    """The same on an exact catalogue and on one served through its saved index (a large
    catalogue's path: the lists a product enters are found among its nearest, and rewritten
    lists are asked of the index)."""
    app, model_id, media = catalogue
    app.config["NEIGHBOURS_INDEX"] = kind
    with app.app_context():
        if kind == "ann":
            indexing.build_neighbours(model_id)
        cache = registry.neighbour_cache()
        before = all_lists(cache, model_id, range(1000, 1030))

        # A near copy of product 1000's photo must enter the lists of 1000's neighbours.
        near = np.asarray(Image.open(media / "p0.jpg")).astype(int)
        near[:5] = 255  # a slightly different crop of the same photo
        Image.fromarray(near.astype(np.uint8)).save(media / "new.jpg", "JPEG")
        new = add_product(id=2000, name="New red", base_colour="Red", image_path="new.jpg")
        report = indexing.update_product(new.id)
        assert report.action == "embedded"
        after = all_lists(cache, model_id, range(1000, 1030))
        assert 2000 in after[1000][0].tolist()
        assert cache.get_list(model_id, 2000)[0][0] == 1000

        # Exactly the lists that changed were rewritten; the rest were not touched.
        changed = {p for p in before if before[p][0].tolist() != after[p][0].tolist()}
        assert changed and changed <= set(report.rewritten) - {2000}
        untouched = set(before) - set(report.rewritten)
        assert untouched, "an add should not rewrite every list"

        # The incremental result equals a full rebuild (through the index, up to products
        # whose scores tie within a float16 step).
        ids, vectors = registry.store_for(model_id).load()
        vectors = np.asarray(vectors, np.float32)
        idx, best = all_neighbours(vectors, 5)
        for row, product_id in enumerate(ids):
            got = cache.get_list(model_id, int(product_id))[0]
            if kind == "exact":
                assert got.tolist() == ids[idx[row]].tolist()
            else:
                cosines = vectors[np.searchsorted(ids, got)] @ vectors[row]
                assert len(got) == 5 and (cosines >= best[row, -1] - 1e-3).all()

        # Deleting it removes it from every list and drops its own.
        db.session.delete(db.session.get(Product, 2000))
        db.session.commit()
        gone = indexing.update_product(2000)
        assert gone.action == "removed" and gone.deleted_lists == [2000]
        assert cache.get_list(model_id, 2000) is None
        for product_id in range(1000, 1030):
            assert 2000 not in cache.get_list(model_id, product_id)[0].tolist()
        assert all_lists(cache, model_id, range(1000, 1030)).keys() == before.keys()
        for product_id, (got, _) in all_lists(cache, model_id, range(1000, 1030)).items():
            assert got.tolist() == before[product_id][0].tolist()


def test_attribute_edit_does_not_touch_lists(catalogue):
    app, model_id, _ = catalogue
    with app.app_context():
        product = db.session.get(Product, 1003)
        product.name = "Renamed"
        db.session.commit()
        report = indexing.update_product(1003)
        assert report.action == "unchanged" and report.rewritten == []


def test_unreadable_photo_is_reported_not_fatal(app, redis_db, tmp_path):
    app.config.update(EMBEDDING_BACKBONE="tiny")
    media = tmp_path / "media"
    media.mkdir(parents=True, exist_ok=True)
    (media / "broken.jpg").write_bytes(b"not a jpeg")
    with app.app_context():
        add_product(id=1, image_path=save_photo(media, "ok.jpg", "Red", 1))
        add_product(id=2, image_path="broken.jpg")
        add_product(id=3, image_path="missing.jpg")
        report = indexing.embed_catalog()
        assert report.embedded == 1
        assert sorted(pid for pid, _ in report.skipped) == [2, 3]
        with pytest.raises(ValueError, match="embed the catalogue first"):
            indexing.build_neighbours(report.model_id)


def test_update_product_absent_and_unreadable(catalogue):
    """The single-product update is the batched path: an unknown product is "absent", and an
    unreadable photo fails the product's job (nothing stored, no list written for it)."""
    app, model_id, media = catalogue
    with app.app_context():
        cache = registry.neighbour_cache()
        before = all_lists(cache, model_id, range(1000, 1030))
        assert indexing.update_product(99999).action == "absent"
        (media / "broken.jpg").write_bytes(b"not a jpeg")
        add_product(id=2002, image_path="broken.jpg")
        with pytest.raises(ValueError, match="product 2002 not embedded"):
            indexing.update_product(2002)
        assert 2002 not in registry.store_for(model_id).ids().tolist()
        assert cache.get_list(model_id, 2002) is None
        after = all_lists(cache, model_id, range(1000, 1030))
        assert {p: got.tolist() for p, (got, _) in after.items()} == {
            p: got.tolist() for p, (got, _) in before.items()
        }


def exact_lists(model_id: str, k: int = 5) -> dict[int, list[int]]:
    """Every product's list as a full rebuild from the store would give it."""
    ids, vectors = registry.store_for(model_id).load()
    idx, _ = all_neighbours(np.asarray(vectors), k)
    return {int(p): ids[idx[row]].tolist() for row, p in enumerate(ids)}


def test_an_update_waits_for_the_lists_lock_and_a_retry_lists_it(catalogue, monkeypatch):
    """While another process holds the model's lists lock, an update embeds its product but
    writes no list; past the wait it fails (the product's job says so), and the next update
    of the product lists it although its photo did not change."""
    import ml.cache

    app, model_id, media = catalogue
    monkeypatch.setattr(ml.cache, "LOCK_WAIT_S", 0.3)
    with app.app_context():
        add_product(id=2001, name="Blocked", image_path=save_photo(media, "b.jpg", "Red", 40))
        other = registry.neighbour_cache()
        with other.writing(model_id), pytest.raises(ml.cache.ListsBusy):
            indexing.update_product(2001)
        cache = registry.neighbour_cache()
        assert 2001 in registry.store_for(model_id).ids().tolist()
        assert cache.get_list(model_id, 2001) is None
        retry = indexing.update_product(2001)
        assert retry.action == "unchanged" and 2001 in retry.rewritten
        for product_id, neighbours in exact_lists(model_id).items():
            assert cache.get_list(model_id, product_id)[0].tolist() == neighbours
