"""The web app's labelling flow through its routes (in-process ASGI client), and the
command configs (examples load, every key documented)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from annotate_helpers import (PASSWORD, SAVED, answers_on_page, csrf_token, make_db, sql,
                              stored_labels)
from fastapi.testclient import TestClient

from rlxf.config import field_docs, load_config
from rlxf.feedback.human import export, importer, server, users

EXAMPLES = Path(server.__file__).parent / "examples"


def make_site(tmp_path, tasks, **overrides):
    url, store = make_db(tmp_path / "a.db", tasks, ["ann", "bob"], admins=["root"])
    cfg = load_config(server.Config, None, [f"database={url}",
                                            *(f"{k}={v}" for k, v in overrides.items())])
    app = server.create_app(cfg)

    def client(name: str) -> TestClient:
        c = TestClient(app, base_url="http://127.0.0.1", follow_redirects=False)
        page = c.get("/login")
        c.post("/login", data={"name": name, "password": PASSWORD,
                               "csrf_token": csrf_token(page.text)})
        return c

    return client, store


def open_next(c: TestClient) -> tuple[int, str]:
    r = c.get("/next")
    assert r.status_code == 303, r.text[-300:]
    assignment_id = int(re.search(r"/assignments/(\d+)", r.headers["location"]).group(1))
    return assignment_id, c.get(f"/assignments/{assignment_id}").text


def test_pair_choices_map_screen_letters_to_answers(tmp_path):
    tasks = [(f"p{i}", [f"first {i}", f"second {i}"], {}) for i in range(4)]
    client, store = make_site(tmp_path, tasks, labels_per_task=1)
    ann = client("ann")
    wanted = {}
    for choice in ("A", "B", "tie", "skip"):
        assignment_id, page = open_next(ann)
        shown = answers_on_page(page)
        r = ann.post(f"/assignments/{assignment_id}",
                     data={"csrf_token": csrf_token(page), "choice": choice})
        assert r.status_code == 303 and SAVED.match(r.headers["location"])
        wanted[assignment_id] = {"A": ("ranked", tuple(shown)),
                                 "B": ("ranked", tuple(reversed(shown))),
                                 "tie": ("tie", None), "skip": ("skip", None)}[choice]
        verdict = ann.get(f"/assignments/{assignment_id}").text
        assert {"A": "preferred answer A", "B": "preferred answer B", "tie": "a tie",
                "skip": "skipped"}[choice] in verdict
    assert {a: s[1:3] for a, s in stored_labels(store).items()} == wanted
    done = ann.get("/next")
    assert done.status_code == 200 and "no task left" in done.text
    me = ann.get("/me").text
    assert re.search(r'id="count-labelled">3<', me)


def test_ranking_form_is_checked_and_kept_on_error(tmp_path):
    client, store = make_site(tmp_path, [("rank", ["w", "x", "y"], {})])
    ann = client("ann")
    assignment_id, page = open_next(ann)
    token = csrf_token(page)
    post = lambda **form: ann.post(f"/assignments/{assignment_id}",  # noqa: E731
                                   data={"csrf_token": token, "choice": "rank", **form})
    r = post(rank_0="1", rank_1="2")
    assert r.status_code == 400 and "Give every answer a rank from 1 to 3" in r.text
    r = post(rank_0="1", rank_1="1", rank_2="3")
    assert r.status_code == 400 and "exactly once" in r.text
    assert 'id="rank-2-3" required checked' in r.text  # the choices made are kept
    assert post(rank_0="3", rank_1="0", rank_2="1").status_code == 400
    assert post(rank_0="x", rank_1="1", rank_2="2").status_code == 400
    assert stored_labels(store) == {}
    shown = answers_on_page(page)
    assert post(rank_0="2", rank_1="3", rank_2="1").status_code == 303
    (label,) = stored_labels(store).values()
    assert label[1:3] == ("ranked", (shown[2], shown[0], shown[1]))
    assert "Your ranking, best first: answers 3, 1, 2." in ann.get(
        f"/assignments/{assignment_id}").text


def test_double_submit_stores_one_label(tmp_path):
    client, store = make_site(tmp_path, [("p", ["a", "b"], {})])
    ann = client("ann")
    assignment_id, page = open_next(ann)
    for choice in ("A", "B"):  # a retry with another button changes nothing
        r = ann.post(f"/assignments/{assignment_id}",
                     data={"csrf_token": csrf_token(page), "choice": choice})
        assert r.status_code == 303
    (label,) = stored_labels(store).values()
    assert label[2] == tuple(answers_on_page(page))  # the first submit (A) stands


def test_a_label_after_the_timeout_is_refused_when_the_task_moved_on(tmp_path):
    client, store = make_site(tmp_path, [("p", ["a", "b"], {})], labels_per_task=1)
    ann, bob = client("ann"), client("bob")
    assignment_id, page = open_next(ann)
    assert "no task left" in bob.get("/next").text  # ann holds the only slot
    # Ann's time runs out (moved back in the database rather than slept through).
    sql(store, "UPDATE assignments SET expires_at = 0 WHERE id = ?", assignment_id)
    bob_assignment, bob_page = open_next(bob)  # the slot is free again: bob gets the task
    r = ann.post(f"/assignments/{assignment_id}",
                 data={"csrf_token": csrf_token(page), "choice": "A"})
    assert r.status_code == 409 and "went to someone else" in r.text
    r = bob.post(f"/assignments/{bob_assignment}",
                 data={"csrf_token": csrf_token(bob_page), "choice": "B"})
    assert r.status_code == 303
    assert [s[0] for s in stored_labels(store).values()] == ["bob"]


def test_admin_page_shows_counts_and_agreement(tmp_path):
    client, _ = make_site(tmp_path, [("p", ["a", "b"], {})], labels_per_task=2)
    for name in ("ann", "bob"):
        c = client(name)
        assignment_id, page = open_next(c)
        a_text = answers_on_page(page)[0]
        c.post(f"/assignments/{assignment_id}",
               data={"csrf_token": csrf_token(page), "choice": "A" if a_text == "a" else "B"})
    html = client("root").get("/admin").text
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))
    assert re.search(r"Complete 1 Labels 2", text)
    assert "Pairwise percent agreement 100.0%" in text  # both preferred "a"
    assert "ann labeller 1 0 0" in text and "100.0% (1)" in text  # labels, ties, skips


def test_malformed_urls_get_an_html_error_page(tmp_path):
    client, _ = make_site(tmp_path, [("p", ["a", "b"], {})])
    ann = client("ann")
    r = ann.get("/assignments/not-a-number")
    assert r.status_code == 400 and r.headers["content-type"].startswith("text/html")
    assert ann.get("/no/such/page").status_code == 404


@pytest.mark.parametrize("module, command", [(importer, "import"), (server, "serve"),
                                             (export, "export"), (users, "users")])
def test_command_configs_document_every_key_and_examples_load(module, command):
    def documented(cls):
        docs = field_docs(cls)
        for f in cls.__dataclass_fields__.values():
            assert docs.get(f.name), f"{cls.__name__}.{f.name} has no docstring"
            if hasattr(f.type, "__dataclass_fields__"):
                documented(f.type)

    documented(module.Config)
    cfg = load_config(module.Config, EXAMPLES / f"{command}.yaml")
    assert cfg.database == "sqlite:///annotate/labels.db"
