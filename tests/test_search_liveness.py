"""Every search request ends: the rule for stale requests, settling them in the real Redis,
the worker's lease and its once-only answer, and the ml worker's beat. The real worker
killed mid-search is in ``tests/chaos/test_search_promises.py``."""

from __future__ import annotations

import io
import json
import time
import uuid
from types import SimpleNamespace

import pytest

from tests.conftest import make_image_bytes
from webapp.search import liveness, services, watchdog
from worker import signals
from worker.jobs import photo_search, search_requests

NOW = 1_000_000.0


def record_of(state: str, age: float = 0.0, **fields) -> dict:
    return {"id": "a" * 32, "kind": "search", "state": state, "created_at": NOW - age,
            "queued_at": NOW - age, **fields}  # fmt: skip


def rule(record: dict, *, alive: bool = True, leased: bool = False, startup: bool = False):
    return liveness.verdict(
        record, now=NOW, worker_alive=alive, leased=leased, queue_timeout=120, startup=startup
    )


@pytest.mark.parametrize(
    ("record", "options", "action", "message"),
    [
        (record_of("running", attempts=1), {"leased": True}, "wait", ""),
        (record_of("running", attempts=1), {}, "retry", ""),
        (record_of("running", attempts=2), {}, "fail", "interrupted twice"),
        (record_of("queued", 1), {}, "wait", ""),
        (record_of("queued", 1), {"alive": False}, "wait", ""),
        (record_of("queued", 6), {"alive": False}, "unavailable", "try again in a minute"),
        (record_of("queued", 1), {"startup": True}, "resend", ""),
        (record_of("queued", 31), {}, "resend", ""),
        (record_of("queued", 31, resent_at=NOW - 1), {}, "wait", ""),
        (record_of("queued", 31, resent_at=NOW - 40), {}, "resend", ""),
        (record_of("queued", 130), {"alive": False}, "fail", "unavailable right now"),
        (record_of("queued", 130), {}, "fail", "busy right now"),
        (record_of("done", 500), {"alive": False}, "wait", ""),
    ],
    ids=[
        "running-leased", "running-lost", "running-lost-twice", "queued-young",
        "queued-young-no-worker", "queued-no-worker", "queued-worker-starts", "queued-long",
        "queued-resent", "requeued-earlier-period", "queued-too-long-no-worker",
        "queued-too-long-busy", "done",
    ],
)  # fmt: skip
def test_the_rule_for_stale_requests(record, options, action, message):
    found = rule(record, **options)
    assert found.action == action
    assert message in found.message
    if action == "fail":
        assert found.code == 503


# -- settling in the real Redis ------------------------------------------------------------


@pytest.fixture
def shop(app, redis_db, monkeypatch):
    """The app with a real Redis; tasks sent by name are only recorded."""
    sent: list[tuple[str, tuple]] = []
    monkeypatch.setattr(
        services, "send_task", lambda name, args=(), kwargs=None, **_: sent.append((name, args))
    )
    app.sent = sent
    return app


def put(redis_db, state: str, age: float = 0.0, **fields) -> str:
    """Store a request record (pending) as if made ``age`` seconds ago; returns its id."""
    request_id = uuid.uuid4().hex
    now = time.time()
    record = {
        "id": request_id, "kind": "search", "state": state, "created_at": now - age,
        "queued_at": now - age, "images": [], "n": 3, "all_categories": False, "prefs": {},
        "model": None, "attempts": 0, **fields,
    }  # fmt: skip
    redis_db.set(services.REQUEST_KEY.format(id=request_id), json.dumps(record), ex=600)
    redis_db.zadd(liveness.PENDING_KEY, {request_id: now - age})
    return request_id


def stored(redis_db, request_id: str) -> dict:
    return json.loads(redis_db.get(services.REQUEST_KEY.format(id=request_id)))


def test_a_request_whose_worker_died_is_sent_again_once_then_failed(shop, redis_db):
    request_id = put(redis_db, "running", 20, attempts=1)
    with shop.app_context():
        assert watchdog.read_request(request_id)["state"] == "queued"
        assert watchdog.read_request(request_id)["state"] == "queued"
    assert shop.sent == [("worker.tasks.ml_search_photo", (request_id,))], "sent once"
    # The second run's worker dies too: that fails it, with a message that says so.
    redis_db.set(
        services.REQUEST_KEY.format(id=request_id),
        json.dumps({**stored(redis_db, request_id), "state": "running", "attempts": 2}),
    )
    with shop.app_context():
        record = watchdog.read_request(request_id)
    assert record["state"] == "failed" and record["code"] == 503
    assert "interrupted" in record["error"]
    assert redis_db.lpop(services.DONE_KEY.format(id=request_id)) is not None, "waiters woken"
    assert redis_db.zscore(liveness.PENDING_KEY, request_id) is None
    assert len(shop.sent) == 1


def test_a_running_request_whose_lease_is_held_is_left_alone(shop, redis_db):
    request_id = put(redis_db, "running", 20, attempts=1)
    lease = liveness.lease(redis_db, request_id)
    assert lease.acquire(blocking=False)
    with shop.app_context():
        assert watchdog.read_request(request_id)["state"] == "running"
    assert shop.sent == []


def test_with_no_worker_the_api_and_the_page_say_search_is_unavailable(shop, redis_db):
    client = shop.test_client()
    response = client.post(
        "/api/search",
        data={"image": (io.BytesIO(make_image_bytes()), "a.jpg")},
        content_type="multipart/form-data",
    )
    request_id = response.get_json()["job_id"]
    assert client.get(f"/api/jobs/{request_id}").get_json()["status"] == "pending"
    # As if it had been queued 6 s with nobody to take it:
    record = stored(redis_db, request_id)
    record["queued_at"] -= 6
    redis_db.set(services.REQUEST_KEY.format(id=request_id), json.dumps(record))
    poll = client.get(f"/api/jobs/{request_id}")
    assert poll.status_code == 202 and poll.headers["Retry-After"] == "60"
    body = poll.get_json()
    assert body["status"] == "unavailable" and body["state"] == "queued"
    assert body["message"] == liveness.UNAVAILABLE
    waited = client.get(f"/api/jobs/{request_id}?wait=1")
    assert waited.status_code == 503 and waited.get_json()["status"] == "unavailable"
    page = client.get(f"/search/jobs/{request_id}").get_data(as_text=True)
    assert "Photo search is unavailable right now; please try again in a minute." in page
    assert 'data-status="unavailable"' in page, "the page keeps asking, quietly"
    assert stored(redis_db, request_id)["state"] == "queued", "a worker may still answer it"
    # With a worker alive it is simply pending again.
    redis_db.set(liveness.WORKER_KEY, "w1", ex=15)
    assert client.get(f"/api/jobs/{request_id}").get_json()["status"] == "pending"


def test_a_request_queued_too_long_fails_and_says_why(shop, redis_db):
    shop.config["SEARCH_QUEUE_TIMEOUT"] = 3
    request_id = put(redis_db, "queued", 4, owner=None)
    redis_db.set(liveness.WORKER_KEY, "w1", ex=15)
    with shop.test_request_context():
        record = watchdog.wait_for_request(request_id, 5)
    assert record["state"] == "failed" and record["error"] == liveness.BUSY


def test_a_wait_with_no_worker_answers_before_its_timeout(shop, redis_db):
    client = shop.test_client()
    started = time.monotonic()
    response = client.post(
        "/api/search",
        data={"image": (io.BytesIO(make_image_bytes()), "a.jpg"), "wait": "1"},
        content_type="multipart/form-data",
    )
    assert time.monotonic() - started < shop.config["SEARCH_WAIT_TIMEOUT"]
    assert response.status_code == 503 and response.get_json()["status"] == "unavailable"


def test_a_sweep_settles_every_pending_request_and_forgets_ended_ones(shop, redis_db):
    lost = put(redis_db, "running", 20, attempts=1)
    waiting = put(redis_db, "queued", 1)
    done = put(redis_db, "done", 1)
    redis_db.zadd(liveness.PENDING_KEY, {"f" * 32: time.time()})  # its record expired
    redis_db.set(liveness.WORKER_KEY, "w1", ex=15)
    with shop.app_context():
        assert watchdog.sweep() == 4
        assert watchdog.sweep() == 0, "one sweep per beat across workers"
        assert watchdog.sweep(startup=True) == 2, "a starting worker sweeps at once"
    assert stored(redis_db, lost)["state"] == "queued"
    pending = {raw.decode() for raw in redis_db.zrange(liveness.PENDING_KEY, 0, -1)}
    assert pending == {lost, waiting} and done not in pending
    # The lost one was sent again by the first sweep, the queued one by the starting worker.
    assert sorted(shop.sent) == sorted(
        [("worker.tasks.ml_search_photo", (lost,)), ("worker.tasks.ml_search_photo", (waiting,))]
    )


# -- the worker side ------------------------------------------------------------------------


@pytest.fixture
def fake_search(monkeypatch):
    """Searches that answer at once, counted (no model needed)."""
    calls: list[str] = []

    def search(path, prefs, n, all_categories=False, exclude=(), crop=None):
        calls.append(path)
        return {"items": [], "predictions": [], "searched": "all", "model": "m"}

    monkeypatch.setattr(photo_search, "search_photo", search)
    return calls


def test_a_request_is_answered_once_however_often_its_message_comes(shop, redis_db, fake_search):
    request_id = put(redis_db, "queued", images=["search-uploads/x.jpg"])
    with shop.app_context():
        assert search_requests.run_search_request(request_id) == "done"
        assert search_requests.run_search_request(request_id) == "already done"
    assert len(fake_search) == 1
    record = stored(redis_db, request_id)
    assert record["state"] == "done" and record["attempts"] == 1 and record["worker"]
    assert not liveness.leased(redis_db, request_id), "the lease goes with the run"
    assert redis_db.zscore(liveness.PENDING_KEY, request_id) is None


def test_a_message_for_a_request_another_worker_holds_does_nothing(
    shop, redis_db, fake_search, monkeypatch
):
    monkeypatch.setattr(search_requests, "CLAIM_WAIT_S", 0.2)
    request_id = put(redis_db, "running", attempts=1, images=["search-uploads/x.jpg"])
    assert liveness.lease(redis_db, request_id).acquire(blocking=False)
    with shop.app_context():
        assert search_requests.run_search_request(request_id) == "held elsewhere"
    assert fake_search == [] and stored(redis_db, request_id)["state"] == "running"


def test_a_run_that_lost_its_lease_does_not_answer(shop, redis_db, monkeypatch):
    request_id = put(redis_db, "queued", images=["search-uploads/x.jpg"])

    def stalled(path, prefs, n, all_categories=False, exclude=(), crop=None):
        # Meanwhile its lease ran out and a settle sent the request again.
        redis_db.delete(liveness.LEASE_KEY.format(id=request_id))
        return {"items": []}

    monkeypatch.setattr(photo_search, "search_photo", stalled)
    with shop.app_context():
        assert search_requests.run_search_request(request_id) == "superseded"
    assert stored(redis_db, request_id)["state"] == "running", "left to the next run"


def test_the_lease_is_renewed_while_a_request_runs(redis_db):
    lease = liveness.lease(redis_db, "b" * 32, timeout=0.6)
    assert lease.acquire(blocking=False)
    with search_requests.LeaseKeeper(lease, every_s=0.1):
        time.sleep(1.2)
        assert liveness.leased(redis_db, "b" * 32), "twice its life, still held"
    time.sleep(0.8)
    assert not liveness.leased(redis_db, "b" * 32), "it lapses once nobody renews it"


def test_the_beat_says_the_worker_is_alive_and_a_starting_one_resends(shop, redis_db):
    request_id = put(redis_db, "queued", 1)
    with shop.app_context():
        assert search_requests.beat("celery@w1", startup=True) == 1
    assert redis_db.get(liveness.WORKER_KEY) == b"celery@w1"
    assert 0 < redis_db.ttl(liveness.WORKER_KEY) <= liveness.WORKER_TTL_S
    assert shop.sent == [("worker.tasks.ml_search_photo", (request_id,))]


def test_only_workers_that_consume_the_ml_queue_beat():
    def worker(*queues):
        return SimpleNamespace(
            app=SimpleNamespace(amqp=SimpleNamespace(queues=SimpleNamespace(
                consume_from={q: object() for q in queues}))))  # fmt: skip

    assert signals.consumes_ml(worker("default", "ml", "index"))
    assert not signals.consumes_ml(worker("default", "index"))
    assert not signals.consumes_ml(object())
