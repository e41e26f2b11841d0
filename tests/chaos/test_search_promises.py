"""Every photo search ends, with real Redis and real Celery workers (tiny backbone).

(c) With no worker consuming the ``ml`` queue, the results page and the API say "Photo
search is unavailable right now" within the wait timeout instead of spinning.
(b) A 2-process worker SIGKILLed while it holds searches (frozen first, mid-search, so the
kill always lands on a running one): once a new worker starts, every search ends, with its
results or a clear failure, within 60 s, and none is answered twice.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import time

import pytest
import redis

from tests.conftest import TEST_REDIS_URL, _make_app, add_product
from tests.test_search import GENDERS, RGB, TYPES, draw_photo, search_config
from tests.worker_process import WorkerProcess
from webapp.extensions import db
from webapp.search import liveness, services
from worker.jobs import indexing

SEARCHES = 16
# A new worker must end every search within this many seconds of starting.
BOUND_S = 60


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """24 products embedded with the tiny backbone and listed; no worker yet."""
    tmp = tmp_path_factory.mktemp("promises")
    client = redis.Redis.from_url(TEST_REDIS_URL)
    client.flushdb()
    app = _make_app(
        tmp,
        f"sqlite:///{tmp / 'promises.sqlite3'}",
        search_config(RATELIMIT_ENABLED=False),  # limits are another test's subject
    )
    media = tmp / "media"
    media.mkdir(exist_ok=True)
    with app.app_context():
        pid = 3000
        for article_type in TYPES:
            for gender in GENDERS:
                for colour in RGB:
                    pid += 1
                    draw_photo(article_type, colour, gender, pid).save(media / f"p{pid}.jpg")
                    add_product(
                        id=pid,
                        name=f"{gender} {colour} {article_type} {pid}",
                        gender=gender,
                        sub_category=TYPES[article_type][0],
                        article_type=article_type,
                        base_colour=colour,
                        image_path=f"p{pid}.jpg",
                    )
        report = indexing.embed_catalog()
        indexing.build_neighbours(report.model_id)
    yield app, media, tmp
    with app.app_context():
        db.session.remove()
        db.engine.dispose()
    client.flushdb()


def photo(media, pid: int = 3001) -> bytes:
    return (media / f"p{pid}.jpg").read_bytes()


def search_api(client, data: bytes, **fields):
    return client.post(
        "/api/search",
        data={"image": (io.BytesIO(data), "photo.jpg"), **fields},
        content_type="multipart/form-data",
    )


def _answers(tmp, request_ids: list[str]) -> dict[str, list[str]]:
    """Each request's runs that answered 'done', as both workers' logs record them."""
    logs = "".join(
        (tmp / name).read_text() for name in ("first.log", "second.log") if (tmp / name).exists()
    )
    found = {}
    for request_id in request_ids:
        done = re.findall(rf"\[{request_id}\] succeeded in [0-9.e-]+s: 'done'", logs)
        if done:
            found[request_id] = done
    return found


def records(request_ids: list[str]) -> dict[str, dict]:
    """The requests' records as stored (no settling: only the workers act on them here)."""
    client = redis.Redis.from_url(TEST_REDIS_URL)
    raws = client.mget([services.REQUEST_KEY.format(id=i) for i in request_ids])
    return {i: json.loads(raw) for i, raw in zip(request_ids, raws, strict=True) if raw}


def test_no_worker_the_page_and_the_api_say_search_is_unavailable(shop):
    app, media, _ = shop
    redis.Redis.from_url(TEST_REDIS_URL).delete(liveness.WORKER_KEY)  # no ml worker at all
    wait_s = app.config["SEARCH_WAIT_TIMEOUT"]
    client = app.test_client()
    page = client.post(
        "/search/",
        data={"image": (io.BytesIO(photo(media)), "x.jpg")},
        content_type="multipart/form-data",
    )
    assert page.status_code == 303
    started = time.monotonic()
    answer = search_api(client, photo(media), wait="1")
    said_after = time.monotonic() - started
    print(f"\nno worker: the API said so after {said_after:.1f} s (wait timeout {wait_s:g} s)")
    assert said_after < wait_s, "said within the wait timeout"
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "60"
    body = answer.get_json()
    assert body["status"] == "unavailable" and body["message"] == liveness.UNAVAILABLE
    html = client.get(page.location).get_data(as_text=True)
    assert "Photo search is unavailable right now; please try again in a minute." in html
    assert "Searching the catalogue" not in html
    started = time.monotonic()
    compare = client.post(
        "/api/compare",
        data={
            "image_1": (io.BytesIO(photo(media)), "a.jpg"),
            "image_2": (io.BytesIO(photo(media, 3002)), "b.jpg"),
        },
        content_type="multipart/form-data",
    )
    assert time.monotonic() - started < wait_s
    assert compare.status_code == 503 and compare.get_json()["status"] == "unavailable"


def freeze_mid_search(worker: WorkerProcess, request_ids: list[str], timeout: float = 60) -> list:
    """Stop the worker's processes (SIGSTOP) at a moment when one of them runs a search and
    a couple have ended (the model is loaded); returns the ids of the searches caught running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [r["state"] for r in records(request_ids).values()]
        if "running" in states and states.count("done") >= 2:
            os.killpg(worker.proc.pid, signal.SIGSTOP)
            running = [i for i, r in records(request_ids).items() if r["state"] == "running"]
            if running:
                return running
            os.killpg(worker.proc.pid, signal.SIGCONT)  # it had just finished: try again
        time.sleep(0.005)
    raise AssertionError("no search was seen running")


def test_a_worker_killed_while_it_holds_searches_leaves_none_unanswered(shop):
    app, media, tmp = shop
    celery_app = app.extensions["celery"]
    first = WorkerProcess(app.config, tmp / "first.log", concurrency=2)
    with app.app_context():
        first.start(celery_app)
    client = app.test_client()
    pids = [3001 + i % 24 for i in range(SEARCHES)]
    ids = [search_api(client, photo(media, pid), all_categories="1") for pid in pids]
    ids = [r.get_json()["job_id"] for r in ids]
    caught = freeze_mid_search(first, ids)
    first.kill()  # SIGKILL: nothing gets to clean up, leases lapse
    left = {i: r["state"] for i, r in records(ids).items() if r["state"] != "done"}
    assert set(caught) <= set(left) and len(left) > len(caught), "queued ones were left too"
    assert len(left) < SEARCHES, "some had ended before the kill"

    second = WorkerProcess(app.config, tmp / "second.log", concurrency=2)
    with app.app_context():
        second.start(celery_app)
    started = time.monotonic()
    try:
        while time.monotonic() - started < BOUND_S:
            found = records(ids)
            if all(r["state"] in ("done", "failed") for r in found.values()):
                break
            time.sleep(0.5)
        ended_after = time.monotonic() - started
        # A record ends before the worker logs the task's return: wait for those lines
        # (bounded) before the kill, so the "answered once" count below reads them all.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(_answers(tmp, ids)) < len(ids):
            time.sleep(0.2)
    finally:
        second.kill()
    found = records(ids)
    assert len(found) == SEARCHES
    assert all(r["state"] in ("done", "failed") for r in found.values()), {
        i: r["state"] for i, r in found.items()
    }
    print(f"\n{len(caught)} caught running, {len(left)} unfinished at the kill; "
          f"all ended {ended_after:.1f} s after the new worker started")  # fmt: skip
    for request_id in caught:
        assert found[request_id]["attempts"] == 2, "the killed run, then one more"
        assert (
            f"search request {request_id} lost its worker: sent again"
            in (tmp / "second.log").read_text()
        ), "the new worker noticed it (nobody polled)"
    # Results through the API, as their owner sees them: every search the photo's product first.
    for request_id, pid in zip(ids, pids, strict=True):
        body = client.get(f"/api/jobs/{request_id}").get_json()
        assert body["status"] == "ok", body
        assert body["items"][0]["id"] == pid
    # Answered once: one run per request recorded "done", whatever messages came twice.
    answers = _answers(tmp, ids)
    for request_id in ids:
        assert len(answers.get(request_id, [])) == 1, (request_id, answers.get(request_id))
