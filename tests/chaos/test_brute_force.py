"""Password guessing against the real sign-in page, counters in a real Redis.

Windows are a couple of seconds long (settings, as an operator would set them) so the tests
can wait one out. A private ``redis-server`` on a free port is stopped under the running
shop to show a Redis outage neither fails sign-in nor lifts the limits.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest
import redis

from tests.conftest import TEST_REDIS_URL, _make_app

WINDOW_S = 2
LIMITS = {
    "RATELIMIT_SIGNIN_ACCOUNT": f"5 per {WINDOW_S} seconds",
    "RATELIMIT_SIGNIN_ADDRESS": f"12 per {WINDOW_S} seconds",
}
PASSWORD = "correct horse"


def make_shop(tmp_path, storage_uri: str):
    """The app with short sign-in windows, counting in ``storage_uri``, and one admin."""
    app = _make_app(
        tmp_path,
        f"sqlite:///{tmp_path / 'test.sqlite3'}",
        {"RATELIMIT_STORAGE_URI": storage_uri, **LIMITS},
    )
    return app


def add_admin(app, email: str = "admin@example.com") -> str:
    from webapp.extensions import db
    from webapp.models import Role, User

    with app.app_context():
        user = User(email=email, role=Role.ADMIN)
        user.set_password(PASSWORD)
        db.session.add(user)
        db.session.commit()
    return email


def sign_in(client, email: str, password: str, address: str = "198.51.100.7"):
    return client.post(
        "/account/login",
        data={"email": email, "password": password},
        environ_base={"REMOTE_ADDR": address},
    )


@pytest.fixture
def shop(tmp_path, redis_db):
    """The shop counting in the tests' Redis database (flushed before and after)."""
    app = make_shop(tmp_path, TEST_REDIS_URL)
    yield app, add_admin(app)


def test_thirty_wrong_passwords_get_429s_and_the_right_one_works_after_the_window(shop):
    app, email = shop
    client = app.test_client()
    answers = [sign_in(client, email, f"guess-{i}") for i in range(30)]
    codes = [r.status_code for r in answers]
    # Five failures are answered as failures; every later guess is refused unanswered.
    assert codes[:5] == [400] * 5 and codes[5:] == [429] * 25, codes
    for refused in answers[5:]:
        assert 1 <= int(refused.headers["Retry-After"]) <= WINDOW_S
    page = answers[-1].get_data(as_text=True)
    assert "Too many failed sign-in attempts" in page and "Please wait" in page
    # The right password is refused too while the window lasts: a guess that happens to be
    # right gets no other answer than a wrong one.
    assert sign_in(client, email, PASSWORD).status_code == 429

    time.sleep(int(answers[-1].headers["Retry-After"]) + 0.2)
    ok = sign_in(client, email, PASSWORD)
    assert ok.status_code == 302
    assert client.get("/admin/products").status_code == 200


def test_the_account_limit_holds_across_addresses_and_the_address_limit_across_accounts(shop):
    app, email = shop
    client = app.test_client()
    # A slow distributed guess: five addresses, one try each, still one account's budget.
    codes = [sign_in(client, email, "nope", f"203.0.113.{i}").status_code for i in range(7)]
    assert codes == [400] * 5 + [429] * 2
    # One address trying many accounts: the address's budget (12), whatever the accounts.
    codes = [sign_in(client, f"user{i}@example.com", "nope").status_code for i in range(14)]
    assert codes == [400] * 12 + [429] * 2
    # Another address, another account: unaffected.
    other = add_admin(app, "other@example.com")
    assert sign_in(client, other, PASSWORD, "192.0.2.55").status_code == 302


def test_the_counters_live_in_redis(shop):
    app, email = shop
    client = app.test_client()
    for _ in range(3):
        sign_in(client, email, "nope")
    keys = [k.decode() for k in redis.Redis.from_url(TEST_REDIS_URL).keys("*shop*")]
    assert any("account:admin@example.com" in k for k in keys), keys
    assert any("198.51.100.7" in k for k in keys), keys


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def private_redis():
    """A redis-server of this test's own (the shared one is never stopped)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    procs = []

    def start():
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        client = redis.Redis(port=port, socket_connect_timeout=0.2)
        for _ in range(100):
            try:
                client.ping()
                return proc
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop():
        procs[-1].terminate()
        procs[-1].wait(10)

    start()
    yield f"redis://127.0.0.1:{port}/0", start, stop
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)


def test_redis_down_neither_fails_sign_in_nor_lifts_the_limit(tmp_path, private_redis):
    url, start, stop = private_redis
    app = make_shop(tmp_path, url)
    email = add_admin(app)
    client = app.test_client()
    assert [sign_in(client, email, "nope").status_code for _ in range(2)] == [400, 400]

    stop()
    # Pages answer (no 500) and each web process counts in memory meanwhile.
    codes = [sign_in(client, email, "nope").status_code for _ in range(7)]
    assert codes == [400] * 5 + [429] * 2, codes
    assert client.get("/account/login").status_code == 200

    start()  # back, empty: the shop goes on counting there once it notices
    time.sleep(WINDOW_S + 0.2)
    assert sign_in(client, email, PASSWORD).status_code == 302
