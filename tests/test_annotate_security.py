"""Security of the annotation app, through its real routes (in-process ASGI client):
model output shows as text, labellers reach only their own labels, admin pages are for
admins, POSTs need the CSRF token, forged or stale cookies log the visitor out."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from annotate_helpers import PASSWORD, XSS, csrf_token, make_db
from fastapi.testclient import TestClient

from rlxf.config import load_config
from rlxf.feedback.human import server
from rlxf.feedback.human.app import COOKIE
from rlxf.feedback.human.auth import CookieSigner

TEMPLATES = Path(server.__file__).parent / "templates"


@pytest.fixture
def site(tmp_path):
    tasks = [(f"prompt {XSS}", [f"answer {XSS}", "plain answer"], {}),
             ("second", ["one", "two"], {}),
             ("third", ["alpha", "beta", "gamma"], {})]
    url, store = make_db(tmp_path / "a.db", tasks, ["ann", "bob"], admins=["root"])
    cfg = load_config(server.Config, None, [f"database={url}", "labels_per_task=2",
                                            "max_failed_logins=3"])
    app = server.create_app(cfg)
    clients = []

    def client(name: str | None = None) -> TestClient:
        c = TestClient(app, base_url="http://127.0.0.1", follow_redirects=False)
        clients.append(c)
        if name is not None:
            page = c.get("/login")
            r = c.post("/login", data={"name": name, "password": PASSWORD,
                                       "csrf_token": csrf_token(page.text)})
            assert r.status_code == 303 and r.headers["location"] == "/next"
        return c

    yield client, store
    for c in clients:
        c.close()


def claim(c: TestClient) -> tuple[int, str]:
    """Claim a task: (assignment id, its page)."""
    r = c.get("/next")
    assignment_id = int(r.headers["location"].rsplit("/", 1)[1])
    return assignment_id, c.get(f"/assignments/{assignment_id}").text


def count_labels(store) -> int:
    return sum(len(labels) for _, labels in store.labelled_tasks())


def test_model_output_renders_as_text(site):
    client, store = site
    ann = client("ann")
    assignment_id, page = claim(ann)
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;&lt;b&gt;x&lt;/b&gt;"
    assert f"answer {escaped}" in page and f"prompt {escaped}" in page
    assert "<script" not in page and "<b>x" not in page
    r = ann.post(f"/assignments/{assignment_id}",
                 data={"csrf_token": csrf_token(page), "choice": "A", "comment": XSS})
    assert r.status_code == 303
    done = ann.get(f"/assignments/{assignment_id}").text  # the labeller's own label view
    assert escaped in done and "<script" not in done
    admin_page = client("root").get("/admin").text  # comments are shown to admins
    assert escaped in admin_page and "<script" not in admin_page
    policy = ann.get("/me").headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src" not in policy  # no scripts at all


def test_templates_never_mark_text_safe():
    for template in TEMPLATES.glob("*.html"):
        text = re.sub(r"{#.*?#}", "", template.read_text(), flags=re.S)  # comments
        assert "|safe" not in text.replace(" ", "") and "autoescape" not in text, template
    source = (TEMPLATES.parent / "app.py").read_text()
    assert "autoescape=True" in source and "Markup" not in source


def test_a_labeller_cannot_reach_another_labellers_labels(site):
    client, store = site
    bob, ann = client("bob"), client("ann")
    bob_assignment, page = claim(bob)
    bob.post(f"/assignments/{bob_assignment}", data={"csrf_token": csrf_token(page),
                                                     "choice": "B", "comment": "bob's"})
    before = store.assignment(bob_assignment, store.authenticate("bob", PASSWORD).id).label
    ann_token = csrf_token(ann.get("/me").text)
    for target in (bob_assignment, 9999):  # someone else's id looks like a missing one
        assert ann.get(f"/assignments/{target}").status_code == 404
        r = ann.post(f"/assignments/{target}", data={"csrf_token": ann_token, "choice": "A"})
        assert r.status_code == 404
    after = store.assignment(bob_assignment, before.user_id).label
    assert after == before and count_labels(store) == 1
    mine = ann.get("/me").text
    assert "bob&#39;s" not in mine and f'/assignments/{bob_assignment}"' not in mine


def test_admin_pages_need_the_admin_role(site):
    client, _ = site
    for path in ("/admin", "/admin/tasks"):
        assert client("ann").get(path).status_code == 403
        assert client().get(path).headers["location"] == "/login"  # not logged in
        admin = client("root").get(path)
        assert admin.status_code == 200 and "Admin" in admin.text


def test_posts_without_the_right_csrf_token_are_refused(site):
    client, store = site
    ann, bob = client("ann"), client("bob")
    assignment_id, page = claim(ann)
    bob_token = csrf_token(bob.get("/me").text)
    for form in ({"choice": "A"}, {"choice": "A", "csrf_token": "forged"},
                 {"choice": "A", "csrf_token": bob_token}):  # valid, but another session's
        r = ann.post(f"/assignments/{assignment_id}", data=form)
        assert r.status_code == 403 and "out of date" in r.text
    assert count_labels(store) == 0
    assert ann.post("/logout", data={}).status_code == 403
    assert ann.get("/next").status_code == 303  # still logged in
    fresh = client()
    fresh.get("/login")
    r = fresh.post("/login", data={"name": "ann", "password": PASSWORD})
    assert r.status_code == 403
    r = ann.post(f"/assignments/{assignment_id}",
                 data={"choice": "A", "csrf_token": csrf_token(page)})
    assert r.status_code == 303 and count_labels(store) == 1


def test_tampered_forged_or_stale_cookies_log_out(site):
    client, store = site
    ann = client("ann")
    cookie = ann.cookies[COOKIE]
    payload, signature = cookie.split(".")
    forged_by_other_key = CookieSigner(b"not the key", 3600).dumps(
        CookieSigner(b"not the key", 3600).new_session(user_id=1))
    tampered = [cookie[:-2] + ("AA" if not cookie.endswith("AA") else "BB"),
                payload[:-1] + ("A" if payload[-1] != "A" else "B") + "." + signature,
                forged_by_other_key, "garbage"]
    for value in tampered:
        r = client().get("/next", headers={"Cookie": f"{COOKIE}={value}"})
        assert r.status_code == 303 and r.headers["location"] == "/login", value
    assert client().get("/next", headers={"Cookie": f"{COOKIE}={cookie}"}).status_code == 303
    assert client().get("/me", headers={"Cookie": f"{COOKIE}={cookie}"}).status_code == 200
    # After logout the old cookie is dead, even if someone kept a copy.
    r = ann.post("/logout", data={"csrf_token": csrf_token(ann.get("/me").text)})
    assert r.status_code == 303
    r = client().get("/me", headers={"Cookie": f"{COOKIE}={cookie}"})
    assert r.status_code == 303 and r.headers["location"] == "/login"


def test_session_cookie_flags(site):
    client, _ = site
    page = client().get("/login")
    set_cookie = page.headers["set-cookie"]
    assert set_cookie.startswith(f"{COOKIE}=")
    assert "HttpOnly" in set_cookie and re.search("samesite=lax", set_cookie, re.I)
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["referrer-policy"] == "no-referrer"


def test_failed_logins_are_rate_limited(site):
    client, _ = site
    c = client()
    token = csrf_token(c.get("/login").text)
    for _ in range(3):
        r = c.post("/login", data={"name": "ann", "password": "wrong", "csrf_token": token})
        assert r.status_code == 401 and "Wrong name or password" in r.text
    r = c.post("/login", data={"name": "ann", "password": PASSWORD, "csrf_token": token})
    assert r.status_code == 429
    # Another account from the same client is not locked.
    r = c.post("/login", data={"name": "bob", "password": PASSWORD, "csrf_token": token})
    assert r.status_code == 303


def test_disabling_an_account_ends_its_session(site):
    client, store = site
    ann = client("ann")
    assert ann.get("/me").status_code == 200
    store.set_disabled("ann", True)
    assert ann.get("/me").headers["location"] == "/login"


def test_invite_link_sets_password_once(site):
    client, store = site
    token = store.add_user("cid", "labeller", invite_ttl_s=60)
    c = client()
    page = c.get(f"/invite/{token}")
    assert page.status_code == 200
    r = c.post(f"/invite/{token}", data={"csrf_token": csrf_token(page.text),
                                         "password": "a new password", "confirm": "different"})
    assert r.status_code == 400
    r = c.post(f"/invite/{token}", data={"csrf_token": csrf_token(page.text),
                                         "password": "a new password",
                                         "confirm": "a new password"})
    assert r.status_code == 303 and c.get("/me").status_code == 200
    assert client().get(f"/invite/{token}").status_code == 404  # used up
    assert store.authenticate("cid", "a new password") is not None


def test_server_binds_to_loopback_by_default():
    assert server.Config().host == "127.0.0.1"


def test_non_ascii_cookies_and_csrf_tokens_are_refused_not_errors(site):
    """hmac.compare_digest raises TypeError on a non-ASCII str: such a CSRF token must get
    the 403 of any wrong token, and such a cookie mean "not logged in", not a 500."""
    client, store = site
    ann = client("ann")
    assignment_id, page = claim(ann)
    forged = csrf_token(page)[:-1] + "é"
    r = ann.post(f"/assignments/{assignment_id}", data={"choice": "A", "csrf_token": forged})
    assert r.status_code == 403 and "out of date" in r.text and count_labels(store) == 0
    cookie = ann.cookies[COOKIE]
    payload, signature = cookie.split(".")
    # The raw header bytes are UTF-8; the server decodes them as Latin-1 (two non-ASCII characters each).
    for value in (f"{payload}.{signature[:-1]}é", f"{payload}é.{signature}", "ü"):
        header = f"{COOKIE}={value}".encode()
        r = client().get("/next", headers={"Cookie": header})
        assert r.status_code == 303 and r.headers["location"] == "/login", value
        assert client().get("/login", headers={"Cookie": header}).status_code == 200, value
    signer = CookieSigner(b"key", 3600)
    session = signer.new_session(user_id=1)
    assert signer.loads("é.é") is None and not signer.csrf_ok(session, "é" + signer.csrf_token(session)[1:])
    assert signer.loads(signer.dumps(session)).sid == session.sid
    assert signer.csrf_ok(session, signer.csrf_token(session))
