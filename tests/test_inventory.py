"""Inventory: bulk imports run in-process, duplicate checks, index status, product job states."""

from __future__ import annotations

import csv
import hashlib
import io
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from celery import Celery
from sqlalchemy import func, select

from ml.neighbours import all_neighbours
from ml.thresholds import DEFAULT_DUPLICATE_THRESHOLD
from tests.conftest import REFERENCE_CATALOG, add_product, save_photo
from tests.inventory_data import build_upload, photo_bytes, reencoded
from webapp import exclusive, registry
from webapp.extensions import db
from webapp.inventory import duplicates, imports, index_state, perceptual
from webapp.inventory.job_lock import JobLock
from webapp.inventory.safety import UploadRejected, ZipLimits, inspect_csv, inspect_zip
from webapp.models import ImportJob, Product, ProductImageHash
from webapp.thresholds import duplicate_threshold
from worker import tasks
from worker.jobs import bulk_import, hashing, indexing
from worker.jobs.indexing import update_products

LIMITS = ZipLimits(max_uncompressed=50 * 1024 * 1024, max_ratio=100)


# -- helpers -------------------------------------------------------------------------------


def zip_of(members: dict[str, bytes], method=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def post_import(client, csv_bytes: bytes, zip_bytes: bytes, **extra):
    return client.post(
        "/admin/inventory/imports/new",
        data={
            "styles": (io.BytesIO(csv_bytes), "styles.csv"),
            "photos": (io.BytesIO(zip_bytes), "photos.zip"),
            **extra,
        },
        content_type="multipart/form-data",
    )


def exact_lists(model_id: str) -> dict[int, np.ndarray]:
    """Brute-force top-K scores of every stored product, to compare with the cached lists."""
    ids, vectors = registry.store_for(model_id).load()
    k = int(registry.neighbour_cache().meta(model_id)["k"])
    _idx, scores = all_neighbours(np.asarray(vectors), k)
    return {int(pid): scores[i] for i, pid in enumerate(ids.tolist())}


def assert_lists_exact(model_id: str) -> None:
    """Every product's cached list holds its true top-K (scores equal up to float16)."""
    cache = registry.neighbour_cache()
    expected = exact_lists(model_id)
    for pid, scores in expected.items():
        cached = cache.get_list(model_id, pid)
        assert cached is not None, f"product {pid} has no list"
        assert np.allclose(cached[1], scores, atol=2e-3), f"list of {pid} is not its top-K"


def list_bytes(redis_db, model_id: str) -> dict[int, bytes]:
    prefix = f"nbrs:{model_id}:list:"
    return {
        int(key.decode()[len(prefix) :]): redis_db.get(key)
        for key in redis_db.scan_iter(match=prefix + "*")
    }


@pytest.fixture
def hashed(catalogue):
    """The catalogue as an import leaves it: each product knows its photo's sha256."""
    app, model_id, media = catalogue
    with app.app_context():
        for product in db.session.scalars(select(Product)):
            data = (media / product.image_path).read_bytes()
            product.image_sha256 = hashlib.sha256(data).hexdigest()
        db.session.commit()
    # The tiny test backbone finds everything alike; only near-identical photos count here.
    app.config["DUPLICATE_COSINE"] = 0.999
    return catalogue


@pytest.fixture
def admin(client, auth):
    auth.login(role="admin")
    return client


def record_sent(monkeypatch, handle) -> None:
    """Send every task to ``handle(short name, args)`` instead of the broker."""

    def send_task(self, name, args=(), kwargs=None, **options):
        return handle(name.rsplit(".", 1)[-1], tuple(args))

    monkeypatch.setattr(Celery, "send_task", send_task)


@pytest.fixture
def queued(monkeypatch):
    """Record what would be sent to the workers instead of sending it."""
    seen: list[tuple[str, tuple]] = []

    def handle(name: str, args: tuple):
        seen.append((name, args))
        return SimpleNamespace(id=f"task-{name}-{len(seen)}")

    record_sent(monkeypatch, handle)
    return seen


@pytest.fixture
def upkeep_now(monkeypatch):
    """Run the index upkeep a product change sends in this process, signals included."""
    ran = []

    def handle(name: str, args: tuple):
        assert name == "ml_update_product", name
        ran.append(tasks.ml_update_product.apply(args=args))
        return ran[-1]

    record_sent(monkeypatch, handle)
    return ran


# -- upload safety -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "../evil.jpg",
        "images/../../evil.jpg",
        "/etc/passwd",
        "C:\\windows\\evil.jpg",
        "images\\..\\..\\evil.jpg",
    ],
)
def test_zip_with_path_traversal_names_is_refused(name):
    data = zip_of({"images/1.jpg": photo_bytes("Red", 1), name: b"x"})
    with pytest.raises(UploadRejected, match="refused"):
        inspect_zip(io.BytesIO(data), LIMITS)


def test_zip_bomb_is_refused_from_its_directory(tmp_path):
    bomb = zip_of({"images/1.jpg": b"\0" * (20 * 1024 * 1024)})
    assert len(bomb) < 100_000
    with pytest.raises(UploadRejected, match="ZIP bomb"):
        inspect_zip(io.BytesIO(bomb), LIMITS)
    small = ZipLimits(max_uncompressed=1024 * 1024, max_ratio=10_000)
    with pytest.raises(UploadRejected, match="unpacked; the limit is 1.0 MB"):
        inspect_zip(io.BytesIO(bomb), small)


def test_zip_members_that_share_their_data_are_refused():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("images/1.jpg", photo_bytes("Red", 1))
        twin = zipfile.ZipInfo("images/2.jpg")
        first = zf.filelist[0]
        for attr in ("header_offset", "compress_size", "file_size", "CRC", "compress_type"):
            setattr(twin, attr, getattr(first, attr))
        zf.filelist.append(twin)
    with pytest.raises(UploadRejected, match="share their data"):
        inspect_zip(io.BytesIO(buf.getvalue()), LIMITS)


def test_zip_plan_maps_photos_and_reports_the_rest():
    data = zip_of(
        {
            "catalogue/images/12.jpg": photo_bytes("Red", 12),
            "13.JPEG": photo_bytes("Red", 13),
            "other/12.jpg": photo_bytes("Red", 99),
            "14.png": b"png",
            "readme.md": b"hi",
            "__MACOSX/._12.jpg": b"junk",
            "0.jpg": b"zero",
        }
    )
    plan = inspect_zip(io.BytesIO(data), LIMITS)
    assert plan.photos == {12: "catalogue/images/12.jpg", 13: "13.JPEG"}
    reasons = dict(plan.ignored)
    assert "came first" in reasons["other/12.jpg"]
    assert "only JPEG" in reasons["14.png"]
    assert "not a product photo" in reasons["readme.md"]
    assert "hidden" in reasons["__MACOSX/._12.jpg"]
    assert "not a valid product id" in reasons["0.jpg"]


def test_not_a_zip_is_refused():
    with pytest.raises(UploadRejected, match="not a readable ZIP"):
        inspect_zip(io.BytesIO(b"PK\x03\x04 not really"), LIMITS)


def test_csv_with_a_million_columns_is_refused_before_parsing(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_text(",".join(f"c{i}" for i in range(10**6)) + "\n1,2\n")
    with pytest.raises(UploadRejected, match="header is longer than 64.0 KB"):
        inspect_csv(path)
    path.write_text(",".join(["id"] * 500) + "\n")
    with pytest.raises(UploadRejected, match="header has 500 columns; at most 200"):
        inspect_csv(path)
    path.write_text("id,name\n1," + "x" * 100_000 + "\n")
    with pytest.raises(UploadRejected, match="line 2 is longer than"):
        inspect_csv(path)


# -- the upload form -------------------------------------------------------------------------


def test_upload_queues_a_job_and_stores_the_files(app, admin, queued):
    up = build_upload(3)
    response = post_import(admin, up.csv_bytes, up.zip_bytes)
    assert response.status_code == 302
    with app.app_context():
        job = db.session.scalars(select(ImportJob)).one()
        assert response.location == f"/admin/inventory/imports/{job.id}"
        assert job.status.value == "queued" and job.started_by == "admin@example.com"
        assert job.rows_total == len(up.good) + len(up.skipped)
        folder = imports.job_folder(job.id)
        assert (folder / "styles.csv").read_bytes() == up.csv_bytes
        assert (folder / "photos.zip").read_bytes() == up.zip_bytes
        assert job.task_id == "task-import_products-1"
    assert queued == [("import_products", (job.id,))]
    page = admin.get(response.location)
    assert page.status_code == 200
    assert b'<progress id="import-bar" max="100" value="0"' in page.data
    assert b'http-equiv="refresh"' in page.data  # works without JavaScript too


BAD_UPLOADS = {
    "traversal": (None, zip_of({"../../etc/cron.d/evil.jpg": b"x"}), "climbs out of the folder"),
    "absolute": (None, zip_of({"/tmp/evil.jpg": b"x"}), "is an absolute path"),
    "bomb": (None, zip_of({"1.jpg": b"\0" * (30 * 1024 * 1024)}), "(a ZIP bomb?)"),
    "million-columns": (",".join(["c"] * 10**6).encode(), None, "header is longer than"),
    "missing-columns": (b"id,name\n1,shirt\n", None, "missing required column(s)"),
    "not-utf8": (b"id,gender\n\xff\xfe\n", None, "not UTF-8"),
    "empty-csv": (b"", None, "styles.csv is empty"),
    "no-photos": (None, zip_of({"readme.txt": b"x"}), "holds no product photos"),
    "not-a-zip": (None, b"this is not a zip", "not a readable ZIP"),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_uploads_fail_cleanly_with_a_message(app, admin, queued, case):
    csv_bytes, zip_bytes, message = BAD_UPLOADS[case]
    good = build_upload(2)
    response = post_import(
        admin,
        good.csv_bytes if csv_bytes is None else csv_bytes,
        good.zip_bytes if zip_bytes is None else zip_bytes,
    )
    assert response.status_code == 400
    assert message.encode() in response.data, response.data.decode()[-2000:]
    assert b"Traceback" not in response.data
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(ImportJob)) == 0
        folder = imports.imports_folder()
        assert not folder.exists() or list(folder.iterdir()) == []
    assert queued == []


def test_missing_files_are_form_errors(admin, queued):
    response = admin.post(
        "/admin/inventory/imports/new", data={}, content_type="multipart/form-data"
    )
    assert response.status_code == 400
    assert b"Please choose the styles.csv file." in response.data
    assert b"Please choose the ZIP file of photos." in response.data


def test_upload_over_the_import_limit_gets_a_413_with_the_limit(app, admin, queued):
    app.config["IMPORT_MAX_UPLOAD"] = 1024 * 1024
    response = post_import(admin, b"id\n", b"x" * (2 * 1024 * 1024))
    assert response.status_code == 413
    assert b"the limit for bulk imports is 1 MB" in response.data


def test_import_form_accepts_more_than_the_site_wide_limit(app, admin, queued):
    app.config["MAX_CONTENT_LENGTH"] = 32 * 1024
    up = build_upload(40)
    assert len(up.zip_bytes) > 32 * 1024
    assert post_import(admin, up.csv_bytes, up.zip_bytes).status_code == 302


# -- running a job in-process -----------------------------------------------------------


def run_job(app, job_id: int) -> None:
    with app.app_context():
        assert bulk_import.run_import(job_id)["result"] == "imported"
        assert bulk_import.run_index(job_id)["result"] == "done"


def test_bulk_import_end_to_end_in_process(hashed, admin, queued):
    app, model_id, media = hashed
    client = admin
    copies = {1000: (media / "p0.jpg").read_bytes(), 1001: (media / "p1.jpg").read_bytes()}
    up = build_upload(12, copies_of=copies)
    with app.app_context():
        built_at = registry.neighbour_cache().meta(model_id)["built_at"]
    assert post_import(client, up.csv_bytes, up.zip_bytes).status_code == 302
    with app.app_context():
        job_id = db.session.scalars(select(ImportJob.id)).one()
    run_job(app, job_id)
    assert [name for name, _ in queued] == ["import_products", "ml_index_import"]

    with app.app_context():
        job = db.session.get(ImportJob, job_id)
        assert job.status.value == "done" and job.stage == "finished"
        assert (job.inserted, job.updated, job.unchanged) == (len(up.good), 0, 0)
        assert job.skipped == len(up.skipped)
        assert job.rows_done == job.rows_total == len(up.good) + len(up.skipped)
        assert job.index_done == job.index_total == len(up.good)
        stored = registry.store_for(model_id).keys_by_id()
        for pid in up.good:
            product = db.session.get(Product, pid)
            assert product.image_path == f"catalog/{pid}.jpg"
            assert stored[pid] == product.image_sha256
        assert_lists_exact(model_id)
        assert registry.neighbour_cache().meta(model_id)["built_at"] == built_at, "no rebuild"
        assert not imports.job_folder(job_id).exists()
        info = imports.progress(job)
        assert info["percent"] == 100 and info["finished"]

    report = list(
        csv.DictReader(
            io.StringIO(
                client.get(f"/admin/inventory/imports/{job_id}/report.csv").get_data(as_text=True)
            )
        )
    )
    skipped = {r["product_id"]: r["reason"] for r in report if r["kind"] == "skipped"}
    assert skipped.keys() == up.skipped.keys()
    for pid, fragment in up.skipped.items():
        assert fragment in skipped[pid]
    ignored = [r["reason"] for r in report if r["kind"] == "ignored"]
    for member, fragment in up.ignored.items():
        assert any(r.startswith(member + ":") and fragment in r for r in ignored), (member, ignored)
    dups = {
        (int(r["product_id"]), int(r["duplicate_of"]), r["match"])
        for r in report
        if r["kind"] == "duplicate"
    }
    [(new_exact, old_exact)] = up.exact.items()
    [(new_close, old_close)] = up.perceptual.items()
    assert (new_exact, old_exact, "exact") in dups
    assert all(r["line"] for r in report if r["kind"] != "ignored"), "every row has its line"
    assert (new_close, old_close, "perceptual") in dups

    page = client.get(f"/admin/inventory/imports/{job_id}")
    assert b'value="100"' in page.data and b"Download the report" in page.data
    assert b"http-equiv" not in page.data
    listing = client.get("/admin/inventory/imports")
    assert b"admin@example.com" in listing.data and b"Done" in listing.data


def test_a_job_interrupted_mid_import_resumes_with_the_same_counts(
    app, redis_db, queued, monkeypatch
):
    app.config.update(IMPORT_BATCH_SIZE=4, EMBEDDING_BACKBONE="tiny", NEIGHBOURS_K=4)
    up = build_upload(14)
    from werkzeug.datastructures import FileStorage

    with app.app_context():
        from webapp.models import Role, User

        user = User(email="boss@example.com", role=Role.ADMIN, password_hash="x")
        db.session.add(user)
        db.session.commit()
        job = imports.create_job(
            FileStorage(io.BytesIO(up.csv_bytes), "styles.csv"),
            FileStorage(io.BytesIO(up.zip_bytes), "photos.zip"),
            user,
        )
        job_id = job.id

        class Killed(BaseException):
            """Stands in for SIGKILL: nothing after it runs."""

        real = bulk_import.import_catalog

        def dies_after_two_batches(*args, progress, **kwargs):
            def wrapped(done, total):
                progress(done, total)
                if done >= 8:
                    raise Killed

            return real(*args, progress=wrapped, **kwargs)

        monkeypatch.setattr(bulk_import, "import_catalog", dies_after_two_batches)
        with pytest.raises(Killed):
            bulk_import.run_import(job_id)
        db.session.rollback()
        half = db.session.get(ImportJob, job_id)
        assert half.status.value == "running" and 0 < half.rows_done < half.rows_total
        assert db.session.scalar(select(func.count()).select_from(Product)) == 8
        assert not JobLock(job_id, "import").held(), "a dead holder frees the lock"

        monkeypatch.setattr(bulk_import, "import_catalog", real)
        assert bulk_import.resume_unfinished() == [job_id]
        assert bulk_import.run_import(job_id)["result"] == "imported"
        assert bulk_import.run_index(job_id)["result"] == "done"
        job = db.session.get(ImportJob, job_id)
        assert (job.inserted, job.updated, job.unchanged) == (14, 0, 0)
        assert job.skipped == len(up.skipped)
        assert db.session.scalar(select(func.count()).select_from(Product)) == 14
        # Running either stage again changes nothing.
        assert bulk_import.run_import(job_id)["result"] == "done"


def test_reimporting_changed_rows_counts_updates(app, redis_db, queued):
    app.config.update(EMBEDDING_BACKBONE="tiny", NEIGHBOURS_K=4)
    up = build_upload(5)
    from werkzeug.datastructures import FileStorage

    with app.app_context():
        from webapp.models import Role, User

        user = User(email="boss@example.com", role=Role.ADMIN, password_hash="x")
        db.session.add(user)
        db.session.commit()
        ids = []
        for csv_bytes in (up.csv_bytes, up.csv_bytes.replace(b"Shirt 20001", b"Tee 20001")):
            job = imports.create_job(
                FileStorage(io.BytesIO(csv_bytes), "styles.csv"),
                FileStorage(io.BytesIO(up.zip_bytes), "photos.zip"),
                user,
            )
            bulk_import.run_import(job.id)
            bulk_import.run_index(job.id)
            ids.append(job.id)
        second = db.session.get(ImportJob, ids[1])
        assert (second.inserted, second.updated, second.unchanged) == (0, 1, 4)
        assert second.index_total == 1


def test_a_failed_job_says_why_and_can_be_resumed(app, admin, redis_db, queued, monkeypatch):
    up = build_upload(3)
    post_import(admin, up.csv_bytes, up.zip_bytes)
    with app.app_context():
        job_id = db.session.scalars(select(ImportJob.id)).one()

        def broken(*args, **kwargs):
            raise RuntimeError("disk on fire")

        monkeypatch.setattr(bulk_import, "import_catalog", broken)
        assert bulk_import.run_import(job_id)["result"] == "failed"
        job = db.session.get(ImportJob, job_id)
        assert job.status.value == "failed" and "RuntimeError" in job.message
        assert imports.can_resume(job)
    page = admin.get(f"/admin/inventory/imports/{job_id}")
    assert b"Resume the job" in page.data and b"RuntimeError" in page.data
    response = admin.post(f"/admin/inventory/imports/{job_id}/resume")
    assert response.status_code == 302
    with app.app_context():
        assert db.session.get(ImportJob, job_id).status.value == "queued"
    assert queued[-1] == ("import_products", (job_id,))


def test_progress_json_and_unknown_jobs(app, admin, queued):
    up = build_upload(2)
    post_import(admin, up.csv_bytes, up.zip_bytes)
    body = admin.get("/admin/inventory/imports/1/progress").get_json()
    assert body["status"] == "queued" and body["percent"] == 0 and body["rows_total"] == 6
    assert admin.get("/admin/inventory/imports/999/progress").status_code == 404
    assert admin.get("/admin/inventory/imports/999").status_code == 404
    assert admin.get("/admin/inventory/imports/999/report.csv").status_code == 404


def test_report_cells_cannot_become_spreadsheet_formulas():
    assert imports._cell("=HYPERLINK(1)") == "'=HYPERLINK(1)"
    assert imports._cell("@cmd") == "'@cmd"
    assert imports._cell("plain") == "plain" and imports._cell(None) == ""


# -- incremental upkeep for many products --------------------------------------------------


def add_photos(app, media, first: int, count: int) -> list[int]:
    with app.app_context():
        for i in range(count):
            colour = ["Red", "Blue", "Green"][i % 3]
            add_product(
                id=first + i,
                name=f"New {i}",
                base_colour=colour,
                image_path=save_photo(media, f"new{first + i}.jpg", colour, 500 + i),
            )
    return list(range(first, first + count))


def test_batched_upkeep_rewrites_only_affected_lists(catalogue, redis_db):
    app, model_id, media = catalogue
    before = list_bytes(redis_db, model_id)
    new = add_photos(app, media, 5000, 3)
    with app.app_context():
        report = update_products(new)
        assert sorted(report.embedded) == new and report.lists_updated
        assert 3 <= len(report.rewritten) < 33
        assert_lists_exact(model_id)
    after = list_bytes(redis_db, model_id)
    untouched = [pid for pid in before if pid not in report.rewritten]
    assert untouched and all(after[pid] == before[pid] for pid in untouched)
    assert any(after[pid] != before[pid] for pid in report.rewritten if pid in before)


def test_batched_upkeep_resumes_from_its_plan(catalogue, tmp_path):
    app, model_id, media = catalogue
    new = add_photos(app, media, 6000, 5)
    plan = tmp_path / "plan.npz"

    class Killed(BaseException):
        pass

    def dies(done, total):
        if done >= 2:
            raise Killed

    with app.app_context():
        with pytest.raises(Killed):
            update_products(new, plan_path=plan, progress=dies, chunk=2)
        assert plan.exists()
        report = update_products(new, plan_path=plan, chunk=2)
        assert sorted(report.embedded) == new
        assert_lists_exact(model_id)


# -- duplicates -------------------------------------------------------------------------------


CATALOGUE_IMAGES = REFERENCE_CATALOG / "images"


def rescaled(data: bytes, factor: float) -> bytes:
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB")
    size = (round(img.width * factor), round(img.height * factor))
    buf = io.BytesIO()
    img.resize(size, Image.Resampling.LANCZOS).save(buf, "PNG")
    return buf.getvalue()


def hash_distances(original: bytes, *others: bytes) -> list[int]:
    arr = perceptual.to_array([perceptual.phash_file(b) for b in (original, *others)])
    return perceptual.distances(arr[:1], arr)[0].tolist()


def test_perceptual_hash_of_copies_and_of_other_photos():
    original = photo_bytes("Red", 7)
    d = hash_distances(
        original, reencoded(original, 90), rescaled(original, 2), photo_bytes("Blue", 8)
    )
    assert d[0] == 0 and d[1] <= 12 and d[2] <= 12 and d[3] > 60


@pytest.mark.skipif(not CATALOGUE_IMAGES.is_dir(), reason="reference catalogue not present")
def test_perceptual_hash_on_real_catalogue_photos():
    """Re-encoded at JPEG quality 90, doubled or shrunk to three quarters, a catalogue photo
    stays within the default 12 bits; at quality 60 nearly always (97% of 200 photos when
    measured); twenty different catalogue photos never come that close to each other."""
    photos = sorted(CATALOGUE_IMAGES.glob("*.jpg"))[::2000][:20]
    close_at_60 = 0
    for path in photos:
        data = path.read_bytes()
        d = hash_distances(data, reencoded(data, 90), rescaled(data, 2), rescaled(data, 0.75))
        assert max(d) <= 12, (path.name, d)
        close_at_60 += hash_distances(data, reencoded(data, 60))[1] <= 12
    assert close_at_60 >= 17
    arr = perceptual.to_array([perceptual.phash_file(p) for p in photos])
    d = perceptual.distances(arr, arr)
    np.fill_diagonal(d, 256)
    assert d.min() > 12


def test_identical_groups_and_the_duplicates_page(catalogue, admin):
    app, _model_id, media = catalogue
    client = admin
    with app.app_context():
        for pid, sha in (
            (1000, "a" * 64),
            (1001, "a" * 64),
            (1002, "a" * 64),
            (1003, "b" * 64),
            (1004, "b" * 64),
        ):
            db.session.get(Product, pid).image_sha256 = sha
        db.session.commit()
        groups, total, products = duplicates.identical_groups()
        assert total == 2 and products == 5
        assert [[p.id for p in g.products] for g in groups] == [[1000, 1001, 1002], [1003, 1004]]
    page = client.get("/admin/inventory/duplicates")
    assert page.status_code == 200
    assert b"<strong>2</strong> groups of byte-identical photos, 5 products" in page.data


def test_reupload_of_a_catalogue_photo_is_flagged_and_can_be_cancelled(hashed, admin, upkeep_now):
    app, model_id, media = hashed
    client = admin
    photo = (media / "p3.jpg").read_bytes()
    response = client.post(
        "/admin/products/new",
        data={
            "name": "Same again",
            "base_colour": "Black",
            "image": (io.BytesIO(photo), "again.jpg"),
        },
        content_type="multipart/form-data",
    )
    assert response.status_code == 302
    new_id = int(response.location.split("/")[-2])
    page = client.get(response.location).get_data(as_text=True)
    assert "Possible duplicate of product 1003" in page
    assert f"/admin/products/{new_id}/image" in page and "/admin/products/1003/image" in page
    assert "Cancel: delete this product" in page and "Keep it" in page

    state = client.get(f"/admin/inventory/products/{new_id}/index-job").get_json()
    assert state["job"]["state"] == "done" and state["job"]["action"] == "embedded"
    hows = {d["id"]: d["how"] for d in state["duplicates"]}
    assert hows[1003] == "exact"

    # Cancel: the delete button of the warning removes the new product.
    client.post(f"/admin/products/{new_id}/delete")
    with app.app_context():
        assert db.session.get(Product, new_id) is None
        assert registry.neighbour_cache().get_list(model_id, new_id) is None


def test_a_reencoded_reupload_is_flagged_and_keeping_it_silences_the_warning(
    hashed, admin, upkeep_now
):
    app, model_id, media = hashed
    client = admin
    with app.app_context():
        hashing.hash_products()
    photo = reencoded((media / "p1.jpg").read_bytes(), 90)
    response = client.post(
        "/admin/products/new",
        data={"name": "Re-encoded", "image": (io.BytesIO(photo), "re.jpg")},
        content_type="multipart/form-data",
    )
    new_id = int(response.location.split("/")[-2])
    page = client.get(response.location).get_data(as_text=True)
    assert "Possible duplicate of product 1001" in page
    assert "re-encoded or rescaled" in page
    assert client.post(f"/admin/inventory/products/{new_id}/keep").status_code == 302
    page = client.get(response.location).get_data(as_text=True)
    assert "Possible duplicate of" not in page
    with app.app_context():
        assert db.session.get(ProductImageHash, new_id).reviewed_by == "admin@example.com"


def test_embedding_near_duplicates_use_the_threshold(catalogue, admin, monkeypatch):
    app, model_id, media = catalogue
    app.config["DUPLICATE_COSINE"] = 0.999
    with app.app_context():
        # Two catalogue photos with nearly the same look: the lists say how close they are.
        found = duplicates.find_matches([1000])[1000]
        cache = registry.neighbour_cache()
        ids, scores = cache.get_list(model_id, 1000)
        expected = {int(i) for i, s in zip(ids, scores, strict=True) if s >= 0.999}
        assert {o for o, how, _s, _d in found if how == "similar"} == expected
        app.config["DUPLICATE_COSINE"] = 0.0
        assert duplicate_threshold(model_id) == (DEFAULT_DUPLICATE_THRESHOLD, "default")


# -- admin single create/edit: index state and incremental lists --------------------------------


def test_admin_create_and_delete_touch_only_the_affected_lists(
    catalogue, admin, redis_db, monkeypatch
):
    """Acceptance 2 through the admin pages: the new product enters its nearest neighbours'
    lists, a deleted one leaves every list, and every other list keeps its exact bytes."""
    app, model_id, media = catalogue
    client = admin
    reports = []

    def run_now(name: str, args: tuple):
        assert name == "ml_update_product", name
        reports.append(indexing.update_product(*args))
        return SimpleNamespace(id=f"t{len(reports)}")

    record_sent(monkeypatch, run_now)
    before = list_bytes(redis_db, model_id)
    with app.app_context():
        built_at = registry.neighbour_cache().meta(model_id)["built_at"]
    photo = reencoded(photo_bytes("Red", 4242), 95)
    response = client.post(
        "/admin/products/new",
        data={"name": "Admin red", "base_colour": "Red", "image": (io.BytesIO(photo), "red.jpg")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 302
    new_id = int(response.location.split("/")[-2])
    [added] = reports
    assert added.action == "embedded" and new_id in added.rewritten
    assert len(added.rewritten) < len(before)
    after = list_bytes(redis_db, model_id)
    with app.app_context():
        assert_lists_exact(model_id)
        exact = exact_lists(model_id)
        k = 5
        ids, vectors = registry.store_for(model_id).load()
        vectors = np.asarray(vectors)
        new_vec = vectors[list(ids).index(new_id)]
        sims = vectors @ new_vec
        for pid in before:
            pos = list(ids).index(pid)
            enters = sims[pos] >= exact[pid][k - 1] - 1e-5
            in_list = new_id in registry.neighbour_cache().get_list(model_id, pid)[0].tolist()
            assert in_list == bool(enters), pid
    entered = [pid for pid in before if new_id in indexing_list(app, model_id, pid)]
    assert entered, "the new product reached its nearest neighbours' lists"
    for pid in before:
        if pid not in added.rewritten:
            assert after[pid] == before[pid], f"list {pid} was rewritten without cause"
    state = client.get(f"/admin/inventory/products/{new_id}/index-job").get_json()
    assert state["job"]["state"] == "queued" and state["job"]["task_id"] == "t1"

    page = client.get(f"/admin/products/{new_id}/delete")
    assert page.status_code == 200
    assert client.post(f"/admin/products/{new_id}/delete").status_code == 302
    removed = reports[-1]
    assert removed.action == "removed" and removed.deleted_lists == [new_id]
    final = list_bytes(redis_db, model_id)
    assert new_id not in final
    assert all(new_id not in indexing_list(app, model_id, pid) for pid in final)
    for pid in final:
        if pid not in removed.rewritten:
            assert final[pid] == after[pid]
    with app.app_context():
        assert_lists_exact(model_id)
        assert registry.neighbour_cache().meta(model_id)["built_at"] == built_at


def indexing_list(app, model_id: str, pid: int) -> list[int]:
    with app.app_context():
        found = registry.neighbour_cache().get_list(model_id, pid)
    return [] if found is None else found[0].tolist()


def test_product_job_state_follows_the_task(catalogue, admin):
    app, model_id, media = catalogue
    with app.app_context():
        add_product(id=4000, name="Tracked", image_path=save_photo(media, "t.jpg", "Red", 77))
        index_state.record(4000, "abc", "created")
        assert index_state.state(4000)["state"] == "queued"
        # The worker's signals move it on; apply() runs the same signals in this process.
        result = tasks.ml_update_product.apply(args=(4000,), task_id="abc")
        assert result.successful()
        state = index_state.state(4000)
        assert state["state"] == "done" and state["action"] == "embedded"
        assert index_state.state(4001)["state"] == "none"
        # A newer job wins over a late signal of an older one.
        index_state.record(4000, "newer", "image_changed")
        tasks.ml_update_product.apply(args=(4000,), task_id="abc")
        assert index_state.state(4000)["state"] == "queued"
    client = admin
    page = client.get("/admin/products/4000/edit")
    assert b'id="product-index-job"' in page.data and b'data-state="queued"' in page.data
    assert client.get("/admin/inventory/products/999999/index-job").status_code == 404


# -- index status panel -------------------------------------------------------------------------


def test_index_status_panel(catalogue, admin, queued, redis_db):
    app, model_id, media = catalogue
    client = admin
    redis_db.rpush("ml", b"a", b"b")
    page = client.get("/admin/inventory/index").get_data(as_text=True)
    assert f'<dd id="active-model">{model_id}</dd>' in page
    assert "30 of 30" in page and "ml: 2" in page and "default: 0" in page and "index: 0" in page
    assert "none answered" in page
    response = client.post("/admin/inventory/index/rebuild")
    assert response.status_code == 302
    assert queued == [] or queued[-1][0] == "ml_index_catalog"
    assert "Rebuilding the index: queued" in client.get(response.location).get_data(as_text=True)
    client.post("/admin/inventory/index/calibrate")
    assert queued[-1][0] == "ml_calibrate_duplicates"
    redis_db.delete(exclusive.KEY.format(name=exclusive.INDEX))  # as if the rebuild had ended
    tuning = client.post("/admin/inventory/index/tune")
    assert queued[-1][0] == "ml_tune_catalog"
    assert "Tuning the backbone on the catalogue: queued" in client.get(tuning.location).get_data(
        as_text=True
    )
    # stores that only feed training are not listed as models
    Path(app.config["MODEL_FOLDER"], f"{model_id}.maps-conv1-v2", "parts").mkdir(parents=True)
    assert ".maps-" not in client.get("/admin/inventory/index").get_data(as_text=True)


def test_index_status_without_redis(app, admin):
    app.config["REDIS_URL"] = "redis://127.0.0.1:1/0"
    page = admin.get("/admin/inventory/index")
    assert page.status_code == 200
    assert b"Redis is unreachable" in page.data


def test_inventory_routes_are_under_the_admin_blueprint(app):
    endpoints = {r.endpoint for r in app.url_map.iter_rules() if "/inventory/" in r.rule}
    assert endpoints and all(e.startswith("admin.inventory.") for e in endpoints)
    assert {
        "admin.inventory.import_new",
        "admin.inventory.import_progress",
        "admin.inventory.index_rebuild",
        "admin.inventory.product_keep",
    } <= endpoints


def test_a_job_and_the_duplicate_queries_on_both_databases(any_db_app, redis_db, queued):
    app = any_db_app
    # The tiny test backbone finds everything alike: leave the embedding check out here.
    app.config.update(EMBEDDING_BACKBONE="tiny", NEIGHBOURS_K=4, DUPLICATE_COSINE=1.01)
    up = build_upload(6, copies_of={20000: photo_bytes("Red", 20000)})
    from werkzeug.datastructures import FileStorage

    from webapp.models import Role, User

    with app.app_context():
        user = User(email="boss@example.com", role=Role.ADMIN, password_hash="x")
        db.session.add(user)
        db.session.commit()
        job = imports.create_job(
            FileStorage(io.BytesIO(up.csv_bytes), "styles.csv"),
            FileStorage(io.BytesIO(up.zip_bytes), "photos.zip"),
            user,
        )
        assert bulk_import.run_import(job.id)["result"] == "imported"
        assert bulk_import.run_index(job.id)["result"] == "done"
        job = db.session.get(ImportJob, job.id)
        assert (job.inserted, job.skipped, job.duplicates) == (7, 4, 2)  # the copy and 20000
        assert "next full index build" in job.message  # no lists were built yet
        groups, total, products = duplicates.identical_groups()
        assert (total, products) == (1, 2)
        assert [p.id for p in groups[0].products] == [20000, 20006]
        assert duplicates.hash_coverage() == (7, 7)
        assert duplicates.lookalike_groups() == ([], 0)
        rows = imports.report_rows(job.id)
        assert [r.kind for r in rows[:4]] == ["skipped"] * 4


@pytest.mark.slow
@pytest.mark.skipif(not CATALOGUE_IMAGES.is_dir(), reason="reference catalogue not present")
def test_the_reference_catalogue_has_651_groups_of_identical_photos(app):
    """Import the whole reference catalogue (photos read in place) and list its groups."""
    from webapp.catalog import import_catalog

    with app.app_context():
        result = import_catalog(CATALOGUE_IMAGES.parent, session=db.session)
        assert len(result.inserted) == 41_071
        groups, total, products = duplicates.identical_groups(1, 5)
        assert (total, products) == (651, 1429)
        assert all(len({p.image_sha256 for p in g.products}) == 1 for g in groups)
        assert all(len(g.products) >= 2 for g in groups)


def test_a_killed_but_unreaped_lock_holder_counts_as_gone():
    """A worker killed with SIGKILL can linger as a zombie; its job lock must be taken over."""
    import subprocess

    from webapp.inventory.job_lock import _pid_alive

    child = subprocess.Popen(["sleep", "30"])
    assert _pid_alive(child.pid)
    child.kill()
    time.sleep(0.2)  # killed, not yet waited for: a zombie
    assert not _pid_alive(child.pid)
    child.wait()
    assert not _pid_alive(child.pid)
