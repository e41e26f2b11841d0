"""A search request belongs to the session (or account) that made it: anybody else gets the
404 of an unknown id on its page, its photo and the API. Its share link lets others in on
purpose. No worker runs here: requests stay queued, which is all access needs."""

from __future__ import annotations

import html
import io
import json
import re
import time
import uuid

import pytest

from tests.conftest import AuthActions, make_image_bytes
from webapp.search import access, services

EXPIRED = b"expired or never existed"


@pytest.fixture
def shop(app, redis_db, monkeypatch):
    """The app with a real Redis; tasks sent by name are only recorded."""
    sent: list[tuple[str, tuple]] = []
    monkeypatch.setattr(
        services, "send_task", lambda name, args=(), kwargs=None, **_: sent.append((name, args))
    )
    app.sent = sent
    return app


def start_search(client) -> str:
    response = client.post(
        "/search/",
        data={"image": (io.BytesIO(make_image_bytes()), "mine.jpg")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 303, response.get_data(as_text=True)
    return response.location.rsplit("/", 1)[1]


def path_of(url: str) -> str:
    """The path and query of an absolute URL (the test client takes those)."""
    return re.sub(r"^https?://[^/]+", "", html.unescape(url))


def test_another_session_gets_a_404_on_the_page_the_photo_and_the_api(shop):
    owner, stranger = shop.test_client(), shop.test_client()
    request_id = start_search(owner)
    assert owner.get(f"/search/jobs/{request_id}").status_code == 200
    assert owner.get(f"/search/jobs/{request_id}/photo").status_code == 200
    assert owner.get(f"/api/jobs/{request_id}").status_code == 202
    for url in (f"/search/jobs/{request_id}", f"/search/jobs/{request_id}/photo"):
        response = stranger.get(url)
        assert response.status_code == 404 and EXPIRED in response.data, url
    api = stranger.get(f"/api/jobs/{request_id}")
    assert api.status_code == 404 and "expired" in api.get_json()["error"]
    assert stranger.post(f"/search/jobs/{request_id}/all").status_code == 404
    assert len(shop.sent) == 1, "the stranger's tries sent nothing"


def test_the_share_link_opens_the_results_and_the_photo_to_anyone(shop):
    owner, friend = shop.test_client(), shop.test_client()
    request_id = start_search(owner)
    page = owner.get(f"/search/jobs/{request_id}").get_data(as_text=True)
    link = re.search(r'class="share-link" readonly value="([^"]+)"', page).group(1)
    assert link.startswith("http") and f"/search/jobs/{request_id}?key=" in link
    shared = friend.get(path_of(link))
    assert shared.status_code == 200
    text = shared.get_data(as_text=True)
    assert 'class="share-link"' not in text, "only the owner is offered the link"
    photo = re.search(r'class="query-photo" src="([^"]+)"', text).group(1)
    assert "key=" in photo and friend.get(path_of(photo)).status_code == 200
    poll = re.search(r'data-job-status="([^"]+)"', text).group(1)
    assert "key=" in poll and friend.get(path_of(poll)).status_code == 202
    key = link.rsplit("key=", 1)[1]
    assert friend.get(f"/search/jobs/{request_id}?key={key[:-2]}xx").status_code == 404
    other_id = start_search(owner)
    assert friend.get(f"/search/jobs/{other_id}?key={key}").status_code == 404


def test_a_signed_in_shopper_sees_their_search_from_another_session(shop):
    first, second, other = shop.test_client(), shop.test_client(), shop.test_client()
    AuthActions(shop, first).login(email="ann@example.com")
    request_id = start_search(first)
    AuthActions(shop, second).login(email="ann@example.com")
    assert second.get(f"/search/jobs/{request_id}").status_code == 200
    AuthActions(shop, other).login(email="bob@example.com")
    assert other.get(f"/search/jobs/{request_id}").status_code == 404


def test_an_api_caller_polls_with_its_own_cookie_jar_and_may_share(shop):
    caller, stranger = shop.test_client(), shop.test_client()
    started = caller.post(
        "/api/search",
        data={"image": (io.BytesIO(make_image_bytes()), "a.jpg")},
        content_type="multipart/form-data",
    )
    assert started.status_code == 202
    assert "session=" in started.headers.get("Set-Cookie", ""), "the owner token rides a cookie"
    body = started.get_json()
    assert caller.get(body["status_url"]).status_code == 202
    assert stranger.get(body["status_url"]).status_code == 404
    key = body["share_url"].rsplit("key=", 1)[1]
    with shop.test_request_context():
        assert key == access.share_key(body["job_id"])
    shared = stranger.get(f"{body['status_url']}?key={key}")
    assert shared.status_code == 202 and shared.get_json()["job_id"] == body["job_id"]


def test_another_session_gets_a_404_on_a_compare(shop):
    owner, stranger = shop.test_client(), shop.test_client()
    response = owner.post(
        "/search/compare",
        data={
            "image_1": (io.BytesIO(make_image_bytes()), "a.jpg"),
            "image_2": (io.BytesIO(make_image_bytes(colour=(0, 0, 200))), "b.jpg"),
        },
        content_type="multipart/form-data",
    )
    assert response.status_code == 303
    assert owner.get(response.location).status_code == 200
    assert stranger.get(response.location).status_code == 404
    assert stranger.get("/api/jobs/" + response.location.rsplit("/", 1)[1]).status_code == 404


def test_records_written_before_owners_existed_stay_readable_by_id(shop, redis_db):
    request_id = uuid.uuid4().hex
    record = {
        "id": request_id,
        "kind": "compare",
        "state": "done",
        "created_at": time.time(),
        "images": [],
        "result": {"score": 0.5, "similar": False, "threshold": 0.9, "model": "m"},
    }
    redis_db.set(services.REQUEST_KEY.format(id=request_id), json.dumps(record))
    response = shop.test_client().get(f"/api/jobs/{request_id}")
    assert response.status_code == 200 and response.get_json()["score"] == 0.5
