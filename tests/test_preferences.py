"""The preferences page: anonymous (session) and signed-in (DB) shoppers, merge on sign-in."""

from __future__ import annotations

import csv
import os
import re

import pytest
from sqlalchemy import event, select

from tests.conftest import AuthActions, add_product, csrf_token_from
from webapp.account.services import catalogue_choices
from webapp.extensions import db
from webapp.models import PreferenceItem, Product, User
from webapp.preferences import SESSION_KEY, Preferences, user_preferences


def add_catalogue(app) -> None:
    """A small catalogue with two masters, an inactive product and a doubly-filed type."""
    with app.app_context():
        add_product(base_colour="Red", gender="Men")
        add_product(base_colour="Blue", gender="Women", article_type="Tshirts")
        add_product(
            base_colour="Navy Blue",
            gender="Women",
            master_category="Footwear",
            sub_category="Shoes",
            article_type="Casual Shoes",
        )
        add_product(
            base_colour="Black",
            gender="Unisex",
            master_category="Footwear",
            sub_category="Sandal",
            article_type="Sandals",
        )
        add_product(
            base_colour="Black",
            master_category="Footwear",
            sub_category="Sandal",
            article_type="Sandals",
        )
        # One Sandals product filed under Shoes: the type stays listed once, under Sandal.
        add_product(
            base_colour="Black",
            master_category="Footwear",
            sub_category="Shoes",
            article_type="Sandals",
        )
        # Inactive products do not offer their values.
        add_product(base_colour="Purple", gender="Girls", article_type="Kurtas", active=False)


def session_preferences(client) -> Preferences | None:
    with client.session_transaction() as sess:
        data = sess.get(SESSION_KEY)
    return None if data is None else Preferences.from_session(data)


def stored_preferences(app, email: str) -> Preferences:
    with app.app_context():
        user = db.session.scalars(select(User).filter_by(email=email)).one()
        return user_preferences(user)


SAMPLE = {
    "colours": ["Red", "Black"],
    "genders": ["Women"],
    "hide_master": [],
    "hide_sub": ["Sandal"],
    "hide_type": ["Tshirts"],
}


# --- the page -------------------------------------------------------------------------


def test_page_lists_the_catalogues_own_values(app, client):
    add_catalogue(app)
    response = client.get("/account/preferences")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    colours = ["Black", "Blue", "Navy Blue", "Red"]
    positions = [
        html.index(f'name="colours" id="colour-{i}" value="{c}"') for i, c in enumerate(colours, 1)
    ]
    assert positions == sorted(positions)
    assert "Purple" not in html  # only on an inactive product
    for gender in ("Men", "Unisex", "Women"):
        assert re.search(rf'name="genders" id="gender-\d+" value="{gender}"', html)
    assert "Girls" not in html and "Kurtas" not in html
    assert "<summary>Apparel</summary>" in html and "<summary>Footwear</summary>" in html
    assert html.count('value="Sandals"') == 1
    assert 'category-group" open' not in html  # nothing hidden yet, so every group is closed
    assert "Hide products in my disliked colours from the catalogue" in html
    assert 'value="Reset preferences"' in html


def test_every_checkbox_has_a_label(app, client):
    add_catalogue(app)
    html = client.get("/account/preferences").get_data(as_text=True)
    ids = re.findall(r'<input type="checkbox" name="[^"]+" id="([^"]+)"', html)
    assert len(ids) == len(set(ids)) > 10
    for checkbox_id in ids:
        assert f'<label for="{checkbox_id}">' in html


def test_catalogue_tree_puts_each_value_under_one_parent(app):
    add_catalogue(app)
    with app.app_context():
        choices = catalogue_choices()
    assert choices.colours == ["Black", "Blue", "Navy Blue", "Red"]
    assert choices.genders == ["Men", "Unisex", "Women"]
    assert choices.masters == ["Apparel", "Footwear"]
    assert choices.subs == ["Sandal", "Shoes", "Topwear"]
    assert choices.types == ["Casual Shoes", "Sandals", "Shirts", "Tshirts"]
    footwear = {sub.name: sub.types for sub in choices.tree[1].subs}
    assert footwear == {"Sandal": ["Sandals"], "Shoes": ["Casual Shoes"]}


def test_catalogue_choices_cost_a_fixed_number_of_queries(app):
    with app.app_context():
        db.session.add_all(
            Product(
                id=i,
                name=f"Product {i}",
                gender="Women",
                master_category="Apparel",
                sub_category="Topwear",
                article_type=f"Type {i % 30}",
                base_colour=f"Colour {i % 20}",
            )
            for i in range(1, 61)
        )
        db.session.commit()
        statements: list[str] = []

        def count(conn, cursor, statement, *args):
            statements.append(statement)

        event.listen(db.engine, "before_cursor_execute", count)
        try:
            choices = catalogue_choices()
        finally:
            event.remove(db.engine, "before_cursor_execute", count)
    assert len(choices.colours) == 20 and len(choices.types) == 30
    assert len(statements) <= 3


def test_empty_catalogue_says_so(client):
    html = client.get("/account/preferences").get_data(as_text=True)
    assert "no products yet" in html


# --- anonymous shoppers: the session --------------------------------------------------


def test_anonymous_preferences_are_kept_in_the_session(app, client):
    add_catalogue(app)
    response = client.post("/account/preferences", data=SAMPLE)  # box unticked
    assert response.status_code == 302
    assert response.location == "/account/preferences"
    prefs = session_preferences(client)
    assert prefs.disliked_colours == {"Red", "Black"}
    assert prefs.genders == {"Women"}
    assert prefs.hidden == {"master": set(), "sub": {"Sandal"}, "type": {"Tshirts"}}
    assert prefs.hide_disliked_colours is False
    with app.app_context():
        assert db.session.scalars(select(PreferenceItem)).first() is None

    html = client.get("/account/preferences").get_data(as_text=True)
    assert "Your preferences were saved." in html
    assert 'value="Red" checked' in html and 'value="Blue" checked' not in html
    assert 'id="hide_disliked_colours" name="hide_disliked_colours" type="checkbox"' in html
    # The Footwear group opens because something inside it is hidden.
    assert re.search(r'<details class="category-group" open>\s*<summary>Footwear', html)


def test_hide_disliked_colours_is_on_by_default(app, client):
    add_catalogue(app)
    html = client.get("/account/preferences").get_data(as_text=True)
    assert 'checked id="hide_disliked_colours"' in html
    client.post("/account/preferences", data={"colours": ["Red"], "hide_disliked_colours": "y"})
    assert session_preferences(client).hide_disliked_colours is True


def test_anonymous_reset_clears_the_session(app, client):
    add_catalogue(app)
    client.post("/account/preferences", data=SAMPLE)
    response = client.post("/account/preferences", data={"clear": "Reset preferences"})
    assert response.status_code == 302
    assert session_preferences(client) is None
    assert "Your preferences were reset." in client.get("/account/preferences").get_data(
        as_text=True
    )


def test_the_session_holds_every_catalogue_value_within_a_cookie(app):
    """Worst case for an anonymous shopper: every value of the reference catalogue ticked."""
    styles = os.path.join(app.config["CATALOG_PATH"], "styles.csv")
    if not os.path.exists(styles):
        pytest.skip("reference catalogue not available")
    with open(styles, newline="", encoding="utf-8", errors="replace") as f:
        rows = list(csv.DictReader(f))
    prefs = Preferences(
        disliked_colours={r["baseColour"] for r in rows if r["baseColour"]},
        genders={r["gender"] for r in rows},
        hidden={
            "master": {r["masterCategory"] for r in rows},
            "sub": {r["subCategory"] for r in rows},
            "type": {r["articleType"] for r in rows},
        },
    )
    cookie = app.session_interface.get_signing_serializer(app).dumps(
        {SESSION_KEY: prefs.to_session(), "csrf_token": "x" * 40}
    )
    assert len(cookie) < 4000  # browsers drop cookies over 4 KB


# --- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("colours", "Purple", "Not one of the catalogue&#39;s colours: &#39;Purple&#39;"),
        ("genders", "Robots", "Not one of the catalogue&#39;s genders: &#39;Robots&#39;"),
        ("hide_master", "Weapons", "master categories: &#39;Weapons&#39;"),
        ("hide_sub", "<b>x</b>", "sub-categories: &#39;&lt;b&gt;x&lt;/b&gt;&#39;"),
        ("hide_type", "Kurtas", "article types: &#39;Kurtas&#39;"),
    ],
)
def test_unknown_values_are_rejected_and_nothing_is_stored(app, client, field, value, message):
    add_catalogue(app)
    data = {**SAMPLE, field: [*SAMPLE[field], value]}
    response = client.post("/account/preferences", data=data)
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert message in html
    assert "Some choices could not be saved" in html
    assert session_preferences(client) is None


def test_unknown_values_are_rejected_for_signed_in_shoppers(app, client, auth):
    add_catalogue(app)
    auth.login()
    response = client.post("/account/preferences", data={"colours": ["Red", "Mauve"]})
    assert response.status_code == 400
    assert stored_preferences(app, "shopper@example.com") == Preferences()


# --- signed-in shoppers: the DB -------------------------------------------------------


def test_signed_in_preferences_are_stored_in_the_database(any_db_app):
    app, client = any_db_app, any_db_app.test_client()
    add_catalogue(app)
    AuthActions(app, client).login()
    assert client.post("/account/preferences", data=SAMPLE).status_code == 302
    prefs = stored_preferences(app, "shopper@example.com")
    assert (
        prefs.items()
        == Preferences(
            disliked_colours={"Red", "Black"},
            genders={"Women"},
            hidden={"master": set(), "sub": {"Sandal"}, "type": {"Tshirts"}},
        ).items()
    )
    assert prefs.hide_disliked_colours is False
    assert session_preferences(client) is None

    # Saving again keeps unchanged rows and swaps the rest (no unique-constraint clash).
    changed = {**SAMPLE, "colours": ["Red", "Blue"], "hide_disliked_colours": "y"}
    assert client.post("/account/preferences", data=changed).status_code == 302
    prefs = stored_preferences(app, "shopper@example.com")
    assert prefs.disliked_colours == {"Red", "Blue"}
    assert prefs.hide_disliked_colours is True
    with app.app_context():
        assert len(db.session.scalars(select(PreferenceItem)).all()) == len(prefs.items())

    html = client.get("/account/preferences").get_data(as_text=True)
    assert 'value="Blue" checked' in html and 'value="Black" checked' not in html


def test_signed_in_reset_deletes_the_rows(app, client, auth):
    add_catalogue(app)
    auth.login()
    client.post("/account/preferences", data=SAMPLE)
    client.post("/account/preferences", data={"clear": "Reset preferences"})
    assert stored_preferences(app, "shopper@example.com") == Preferences()
    with app.app_context():
        assert db.session.scalars(select(PreferenceItem)).first() is None


# --- merge on sign-in and on register -------------------------------------------------


def test_sign_in_merges_session_preferences_into_the_account(any_db_app):
    app, client = any_db_app, any_db_app.test_client()
    add_catalogue(app)
    auth = AuthActions(app, client)
    user_id = auth.create_user("merge@example.com")
    with app.app_context():
        user = db.session.get(User, user_id)
        user.preference_items.append(PreferenceItem(kind="colour", value="Red"))
        user.preference_items.append(PreferenceItem(kind="type", value="Shirts"))
        db.session.commit()

    anonymous = {"colours": ["Red", "Blue"], "genders": ["Women"], "hide_disliked_colours": "y"}
    client.post("/account/preferences", data=anonymous)
    response = auth.login(email="merge@example.com")
    assert response.status_code == 302

    prefs = stored_preferences(app, "merge@example.com")
    assert prefs.disliked_colours == {"Red", "Blue"}
    assert prefs.genders == {"Women"}
    assert prefs.hidden["type"] == {"Shirts"}
    assert prefs.hide_disliked_colours is True
    assert session_preferences(client) is None
    assert "were added to your account" in client.get("/").get_data(as_text=True)


def test_sign_in_without_session_preferences_leaves_the_account_alone(app, client, auth):
    add_catalogue(app)
    user_id = auth.create_user("alone@example.com")
    with app.app_context():
        user = db.session.get(User, user_id)
        user.preference_items.append(PreferenceItem(kind="gender", value="Men"))
        user.hide_disliked_colours = False
        db.session.commit()
    auth.login(email="alone@example.com")
    prefs = stored_preferences(app, "alone@example.com")
    assert prefs.items() == [("gender", "Men")]
    assert prefs.hide_disliked_colours is False


def test_register_keeps_the_anonymous_preferences(app, client):
    add_catalogue(app)
    client.post("/account/preferences", data=SAMPLE)
    response = client.post(
        "/account/register",
        data={"email": "fresh@example.com", "password": "s3cret-pass", "confirm": "s3cret-pass"},
    )
    assert response.status_code == 302
    prefs = stored_preferences(app, "fresh@example.com")
    assert prefs.disliked_colours == {"Red", "Black"}
    assert prefs.hidden["sub"] == {"Sandal"}
    assert prefs.hide_disliked_colours is False
    assert session_preferences(client) is None
    # After signing out the shopper is anonymous again with nothing in the session.
    client.post("/account/logout")
    assert session_preferences(client) is None


# --- CSRF -----------------------------------------------------------------------------


def test_csrf_preferences_without_token_is_rejected(csrf_app):
    add_catalogue(csrf_app)
    client = csrf_app.test_client()
    assert client.post("/account/preferences", data=SAMPLE).status_code == 400
    assert session_preferences(client) is None

    token = csrf_token_from(client.get("/account/preferences"))
    response = client.post("/account/preferences", data={**SAMPLE, "csrf_token": token})
    assert response.status_code == 302
    assert session_preferences(client).genders == {"Women"}

    # Reset needs the token too.
    assert client.post("/account/preferences", data={"clear": "1"}).status_code == 400
    assert session_preferences(client).genders == {"Women"}


def test_csrf_signed_in_preferences_without_token_is_rejected(csrf_app):
    add_catalogue(csrf_app)
    client = csrf_app.test_client()
    AuthActions(csrf_app, client).login()
    assert client.post("/account/preferences", data=SAMPLE).status_code == 400
    assert stored_preferences(csrf_app, "shopper@example.com") == Preferences()
