"""Register, sign in and sign out through the real pages."""

from __future__ import annotations

import pytest
from flask_login import current_user
from sqlalchemy import func, select

from tests.conftest import AuthActions, csrf_token_from
from webapp.account.services import (
    EmailTakenError,
    authenticate,
    register_user,
    safe_next_url,
)
from webapp.extensions import db
from webapp.models import Role, User


def user_count(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(User))


def signed_in_user_id(client) -> str | None:
    with client.session_transaction() as sess:
        return sess.get("_user_id")


def register(client, email="new@example.com", password="s3cret-pass", confirm=None, **params):
    return client.post(
        "/account/register",
        query_string=params,
        data={"email": email, "password": password, "confirm": confirm or password},
    )


# --- register -------------------------------------------------------------------------


def test_register_page_has_labelled_fields(client):
    page = client.get("/account/register")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    for field_id in ("email", "password", "confirm"):
        assert f'<label for="{field_id}"' in html


def test_register_creates_a_signed_in_shopper_with_a_normalised_email(app, client):
    response = register(client, email="  New.Shopper@Example.COM ")
    assert response.status_code == 302
    assert response.location == "/"
    with app.app_context():
        user = db.session.scalars(select(User)).one()
        assert user.email == "new.shopper@example.com"
        assert user.role == Role.SHOPPER
        assert user.password_hash != "s3cret-pass"
        assert user.check_password("s3cret-pass")
        assert signed_in_user_id(client) == str(user.id)
    home = client.get("/").get_data(as_text=True)
    assert "Your account is ready" in home
    assert "Sign out" in home


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"email": "not-an-email", "password": "s3cret-pass"}, "Enter a valid email address"),
        ({"email": "", "password": "s3cret-pass"}, "Enter your email address."),
        ({"email": "short@example.com", "password": "1234567"}, "Use between 8 and 256"),
        (
            {"email": "mismatch@example.com", "password": "s3cret-pass", "confirm": "other-pass"},
            "The two passwords do not match.",
        ),
    ],
)
def test_register_rejects_bad_input_with_a_form_error(app, client, data, message):
    response = register(client, **data)
    assert response.status_code == 400
    assert message in response.get_data(as_text=True)
    assert user_count(app) == 0
    assert signed_in_user_id(client) is None


def test_register_rejects_a_taken_email_whatever_its_case(app, client, auth):
    auth.create_user("taken@example.com")
    response = register(client, email="Taken@Example.com")
    assert response.status_code == 400
    assert "already exists" in response.get_data(as_text=True)
    assert user_count(app) == 1
    assert signed_in_user_id(client) is None


def test_register_user_service_refuses_duplicates(app):
    with app.app_context():
        register_user("dup@example.com", "s3cret-pass")
        with pytest.raises(EmailTakenError):
            register_user("DUP@example.com", "another-pass")
        assert db.session.scalar(select(func.count()).select_from(User)) == 1


def test_register_follows_a_safe_next(client):
    response = register(client, next="/account/preferences")
    assert response.location == "/account/preferences"


def test_register_when_signed_in_goes_back_to_the_catalogue(client, auth):
    auth.login()
    response = client.get("/account/register")
    assert response.status_code == 302
    assert response.location == "/"


# --- sign in --------------------------------------------------------------------------


def test_login_page_has_labelled_fields_and_remember_me(client):
    html = client.get("/account/login").get_data(as_text=True)
    assert '<label for="email"' in html
    assert '<label for="password"' in html
    assert 'name="remember"' in html


def test_login_signs_in_and_logout_signs_out(app, client, auth):
    user_id = auth.create_user("shopper@example.com")
    response = auth.login()
    assert response.status_code == 302
    assert response.location == "/"
    assert signed_in_user_id(client) == str(user_id)
    assert "Sign out" in client.get("/").get_data(as_text=True)

    response = auth.logout()
    assert response.status_code == 302
    assert signed_in_user_id(client) is None
    home = client.get("/").get_data(as_text=True)
    assert "You have signed out." in home
    assert "Sign in" in home


def test_login_ignores_email_case(client, auth):
    auth.create_user("mixed@example.com")
    response = client.post(
        "/account/login", data={"email": " MIXED@example.com", "password": "correct horse"}
    )
    assert response.status_code == 302
    assert signed_in_user_id(client) is not None


@pytest.mark.parametrize(
    ("email", "password"),
    [("shopper@example.com", "wrong password"), ("nobody@example.com", "correct horse")],
)
def test_login_failure_gives_one_generic_message(client, auth, email, password):
    auth.create_user("shopper@example.com")
    response = client.post("/account/login", data={"email": email, "password": password})
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert "Wrong email or password." in html
    # The address typed is kept so the shopper only retypes the password.
    assert f'value="{email}"' in html
    assert signed_in_user_id(client) is None


def test_login_with_empty_fields_is_a_form_error(client):
    response = client.post("/account/login", data={"email": "", "password": ""})
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert "Enter your email address." in html
    assert "Enter your password." in html


def test_authenticate_service(app, auth):
    auth.create_user("svc@example.com", password="right-one")
    with app.app_context():
        assert authenticate("svc@example.com", "right-one").email == "svc@example.com"
        assert authenticate("svc@example.com", "wrong-one") is None
        assert authenticate("nobody@example.com", "right-one") is None


def test_remember_me_sets_the_remember_cookie_only_when_asked(app, auth):
    auth.create_user("remember@example.com")
    data = {"email": "remember@example.com", "password": "correct horse"}

    without = app.test_client()
    without.post("/account/login", data=data)
    assert without.get_cookie("remember_token") is None

    with_remember = app.test_client()
    with_remember.post("/account/login", data={**data, "remember": "y"})
    assert with_remember.get_cookie("remember_token") is not None


def test_login_follows_a_safe_next(client, auth):
    auth.create_user("next@example.com")
    response = client.post(
        "/account/login",
        query_string={"next": "/account/preferences?tab=colours"},
        data={"email": "next@example.com", "password": "correct horse"},
    )
    assert response.status_code == 302
    assert response.location == "/account/preferences?tab=colours"


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example",
        "https://evil.example/account/login",
        "//evil.example",
        "/\\evil.example",
        "/\t/evil.example",
        "javascript:alert(1)",
        "evil.example",
    ],
)
def test_login_refuses_to_redirect_off_site(client, auth, target):
    auth.create_user("safe@example.com")
    response = client.post(
        "/account/login",
        query_string={"next": target},
        data={"email": "safe@example.com", "password": "correct horse"},
    )
    assert response.status_code == 302
    assert response.location == "/"
    # The login page does not echo the unsafe target into its links either.
    assert "evil.example" not in client.get(
        "/account/login", query_string={"next": target}
    ).get_data(as_text=True)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/", "/"),
        ("/p/12?x=1#top", "/p/12?x=1#top"),
        ("", None),
        (None, None),
        ("https://evil.example", None),
        ("//evil.example", None),
        ("/\\evil.example", None),
        ("/ok\n", None),
        ("relative/path", None),
    ],
)
def test_safe_next_url(target, expected):
    assert safe_next_url(target) == expected


def test_login_page_when_signed_in_redirects(client, auth):
    auth.login()
    response = client.get("/account/login", query_string={"next": "/account/preferences"})
    assert response.status_code == 302
    assert response.location == "/account/preferences"


def test_logout_is_post_only(client, auth):
    auth.login()
    assert client.get("/account/logout").status_code == 405
    assert signed_in_user_id(client) is not None


def test_logout_when_signed_out_just_redirects(client):
    response = client.post("/account/logout")
    assert response.status_code == 302
    assert response.location == "/"


def test_login_user_is_current_user_inside_the_request(app, auth):
    user_id = auth.create_user("ctx@example.com")
    with app.test_client() as c:
        c.post("/account/login", data={"email": "ctx@example.com", "password": "correct horse"})
        c.get("/")
        assert current_user.id == user_id


# --- CSRF -----------------------------------------------------------------------------


def test_csrf_register_without_token_is_rejected(csrf_app):
    client = csrf_app.test_client()
    response = register(client)
    assert response.status_code == 400
    assert user_count(csrf_app) == 0
    # With the token the same request succeeds, so the 400 above is the CSRF check.
    token = csrf_token_from(client.get("/account/register"))
    response = client.post(
        "/account/register",
        data={
            "email": "new@example.com",
            "password": "s3cret-pass",
            "confirm": "s3cret-pass",
            "csrf_token": token,
        },
    )
    assert response.status_code == 302
    assert user_count(csrf_app) == 1


def test_csrf_login_without_token_is_rejected(csrf_app):
    client = csrf_app.test_client()
    auth = AuthActions(csrf_app, client)
    auth.create_user("csrf@example.com")
    response = client.post(
        "/account/login", data={"email": "csrf@example.com", "password": "correct horse"}
    )
    assert response.status_code == 400
    assert signed_in_user_id(client) is None
    assert auth.login(email="csrf@example.com").status_code == 302
    assert signed_in_user_id(client) is not None


def test_csrf_logout_without_token_is_rejected(csrf_app):
    client = csrf_app.test_client()
    auth = AuthActions(csrf_app, client)
    auth.login()
    response = client.post("/account/logout")
    assert response.status_code == 400
    assert signed_in_user_id(client) is not None
    assert auth.logout().status_code == 302
    assert signed_in_user_id(client) is None
