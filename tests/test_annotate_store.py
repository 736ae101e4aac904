"""The annotation store's promises (quota, no repeats, timeouts, idempotent labels),
importing tasks, and managing accounts. Times are passed in (``now=``), never slept."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from annotate_helpers import PASSWORD, make_db, make_tasks, sql

from rlxf.config import load_config
from rlxf.errors import ConfigError, DataError, RlxfError
from rlxf.feedback.human import importer, users
from rlxf.feedback.human.store import Store, Submit, open_store, parse_database_url


def ids(store: Store) -> dict[str, int]:
    return {u.name: u.id for u in store.users()}


def test_claim_respects_quota_and_never_repeats_a_task(tmp_path):
    _, store = make_db(tmp_path / "a.db", make_tasks(2), ["u1", "u2", "u3"])
    u = ids(store)
    a1 = store.claim(u["u1"], labels_per_task=2, timeout_s=60, now=0)
    a2 = store.claim(u["u2"], labels_per_task=2, timeout_s=60, now=0)
    a3 = store.claim(u["u3"], labels_per_task=2, timeout_s=60, now=0)
    # Two live assignments fill task 1's quota of 2, so u3 gets the other task.
    assert a1.task.id == a2.task.id != a3.task.id
    # Asking again without submitting resumes the same assignment.
    assert store.claim(u["u1"], 2, 60, now=1).id == a1.id
    assert store.submit(a1.id, u["u1"], "ranked", (0, 1), "", 2, now=2) is Submit.RECORDED
    a1b = store.claim(u["u1"], 2, 60, now=3)
    assert a1b.task.id == a3.task.id  # the only task u1 has not had
    assert store.submit(a1b.id, u["u1"], "tie", None, "", 2, now=4) is Submit.RECORDED
    assert store.claim(u["u1"], 2, 60, now=5) is None  # both tasks seen: nothing left


def test_expired_assignment_returns_to_the_pool(tmp_path):
    _, store = make_db(tmp_path / "a.db", make_tasks(1), ["u1", "u2", "u3"])
    u = ids(store)
    first = store.claim(u["u1"], labels_per_task=1, timeout_s=10, now=0)
    assert store.claim(u["u2"], 1, 10, now=9.9) is None  # u1 still holds the only slot
    second = store.claim(u["u2"], 1, 10, now=10.1)  # u1's time ran out
    assert second.task.id == first.task.id
    assert store.claim(u["u1"], 1, 10, now=10.2) is None  # never the same task twice
    # u1 submits late, after u2 took the slot: refused, nothing stored.
    assert store.submit(first.id, u["u1"], "ranked", (1, 0), "", 1, now=11) is Submit.EXPIRED
    assert store.submit(second.id, u["u2"], "ranked", (0, 1), "", 1, now=12) is Submit.RECORDED
    assert [len(labels) for _, labels in store.labelled_tasks()] == [1]


def test_late_label_is_kept_when_nobody_took_the_slot(tmp_path):
    _, store = make_db(tmp_path / "a.db", make_tasks(1), ["u1"])
    u1 = ids(store)["u1"]
    a = store.claim(u1, labels_per_task=1, timeout_s=10, now=0)
    assert store.submit(a.id, u1, "ranked", (1, 0), "", 1, now=500) is Submit.RECORDED


def test_submit_is_idempotent_and_private(tmp_path):
    _, store = make_db(tmp_path / "a.db", make_tasks(1), ["u1", "u2"])
    u = ids(store)
    a = store.claim(u["u1"], 2, 60)
    assert store.submit(a.id, u["u1"], "ranked", (1, 0), "first", 2) is Submit.RECORDED
    # A retry, even with other content, changes nothing.
    assert store.submit(a.id, u["u1"], "ranked", (0, 1), "again", 2) is Submit.ALREADY_RECORDED
    (task, labels), = store.labelled_tasks()
    assert [(la.ranking, la.comment) for la in labels] == [((1, 0), "first")]
    assert task.id == a.task.id and store.claim(u["u2"], 2, 60).task.id == task.id
    # Someone else's assignment does not exist for u2.
    assert store.assignment(a.id, u["u2"]) is None
    assert store.submit(a.id, u["u2"], "ranked", (0, 1), "", 2) is Submit.NOT_FOUND
    assert store.assignment(a.id, u["u1"]).label.comment == "first"


def test_invalid_labels_are_refused_and_leave_no_trace(tmp_path):
    _, store = make_db(tmp_path / "a.db", make_tasks(0, 1, k=3), ["u1"])
    u1 = ids(store)["u1"]
    a = store.claim(u1, 1, 60)
    for outcome, ranking in [("ranked", (0, 0, 1)), ("ranked", (0, 1)), ("tie", None),
                             ("ranked", None), ("best", None), ("skip", (0, 1, 2))]:
        with pytest.raises(ValueError):
            store.submit(a.id, u1, outcome, ranking, "", 1)
    assert list(store.labelled_tasks()) == []
    assert store.submit(a.id, u1, "ranked", (2, 0, 1), "", 1) is Submit.RECORDED


def test_a_skip_does_not_use_up_a_slot(tmp_path):
    _, store = make_db(tmp_path / "a.db", make_tasks(1), ["u1", "u2"])
    u = ids(store)
    a = store.claim(u["u1"], labels_per_task=1, timeout_s=60)
    assert store.submit(a.id, u["u1"], "skip", None, "unsure", 1) is Submit.RECORDED
    b = store.claim(u["u2"], 1, 60)
    assert b is not None and b.task.id == a.task.id


def test_concurrent_claims_in_threads_keep_the_rules(tmp_path):
    names = [f"u{i}" for i in range(8)]
    _, store = make_db(tmp_path / "a.db", make_tasks(20), names)
    u = ids(store)
    errors = []

    def work(name):
        try:
            while (a := store.claim(u[name], labels_per_task=3, timeout_s=60)) is not None:
                assert store.submit(a.id, u[name], "ranked", (0, 1), "", 3) is Submit.RECORDED
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    per_task = {task.id: [la.user_name for la in labels] for task, labels in store.labelled_tasks()}
    assert len(per_task) == 20
    assert all(len(who) == 3 == len(set(who)) for who in per_task.values())


def test_restart_keeps_everything(tmp_path):
    url, store = make_db(tmp_path / "a.db", make_tasks(1), ["u1"])
    a = store.claim(ids(store)["u1"], 1, 60)
    store.submit(a.id, ids(store)["u1"], "ranked", (0, 1), "", 1)
    again = open_store(url)
    assert again.secret == store.secret  # sessions survive a restart
    assert [len(labels) for _, labels in again.labelled_tasks()] == [1]
    assert again.authenticate("u1", PASSWORD).name == "u1"


def test_database_urls():
    assert parse_database_url("sqlite:///labels.db").target == "labels.db"
    assert parse_database_url("sqlite:////abs/labels.db").target == "/abs/labels.db"
    assert parse_database_url("postgresql://me@db/labels").scheme == "postgresql"
    with pytest.raises(ConfigError, match="sqlite:///labels.db"):
        parse_database_url("labels.db")
    with pytest.raises(ConfigError, match="in-memory"):
        parse_database_url("sqlite:///:memory:")
    with pytest.raises(ConfigError, match="PostgreSQL needs a second Store backend"):
        open_store("postgresql://me@db/labels")
    with pytest.raises(RlxfError, match="does not exist"):
        open_store("sqlite:////nonexistent/dir/x.db")


# --- accounts -----------------------------------------------------------------------------

def test_invites_passwords_and_disabling(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'a.db'}", create=True)
    token = store.add_user("ann", "labeller", invite_ttl_s=100, now=0)
    assert store.authenticate("ann", "") is None  # no password yet
    assert not store.invite_valid(token, now=100.5)  # expired
    assert store.redeem_invite(token, "long enough", now=200) is None
    token = store.new_invite("ann", invite_ttl_s=100)
    with pytest.raises(RlxfError, match="at least 8"):
        store.redeem_invite(token, "short")
    user = store.redeem_invite(token, "long enough")
    assert user.name == "ann" and store.redeem_invite(token, "long enough") is None  # once
    assert store.authenticate("ANN", "long enough").id == user.id  # names ignore case
    assert store.authenticate("ann", "wrong password") is None
    store.set_disabled("ann", True)
    assert store.authenticate("ann", "long enough") is None
    assert store.user(user.id).session_version > user.session_version  # sessions ended
    with pytest.raises(RlxfError, match="exists already"):
        store.add_user("Ann", "labeller", 100)
    with pytest.raises(RlxfError, match="account name"):
        store.add_user("<b>", "labeller", 100)
    hashes = [r[0] for r in sql(store, "SELECT password_hash FROM users")]
    assert hashes[0].startswith("scrypt$") and "long enough" not in hashes[0]


def test_users_command(tmp_path):
    db = f"sqlite:///{tmp_path / 'a.db'}"
    out = users.run(load_config(users.Config, None, [f"database={db}", "add=[ann,bob]",
                                                     "base_url=https://label.example"]))
    assert sorted(out["invites"]) == ["ann", "bob"]
    assert out["invites"]["ann"].startswith("https://label.example/invite/")
    assert {a["status"] for a in out["accounts"]} == {"invited"}
    out = users.run(load_config(users.Config, None, [f"database={db}", "add=[root]",
                                                     "role=admin", "disable=[bob]"]))
    roles = {a["name"]: (a["role"], a["status"]) for a in out["accounts"]}
    assert roles == {"ann": ("labeller", "invited"), "bob": ("labeller", "disabled"),
                     "root": ("admin", "invited")}
    with pytest.raises(RlxfError, match=r"exist already: \['ann'\]"):
        users.run(load_config(users.Config, None, [f"database={db}", "add=[ann,cid]"]))
    assert "cid" not in {a["name"] for a in users.run(users.Config(database=db))["accounts"]}
    with pytest.raises(ConfigError, match="both disable and enable"):
        load_config(users.Config, None, ["disable=[ann]", "enable=[ann]"])


# --- import -------------------------------------------------------------------------------

def write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def run_import(tmp_path, *overrides: str) -> tuple[dict, Store]:
    db = f"sqlite:///{tmp_path / 'tasks.db'}"
    cfg = load_config(importer.Config, None, [f"database={db}", *overrides])
    return importer.run(cfg), open_store(db)


def all_tasks(store: Store):
    rows = sql(store, "SELECT prompt, answers, meta FROM tasks ORDER BY id")
    return [(json.loads(p), json.loads(a), json.loads(m)) for p, a, m in rows]


def test_import_pairs_hides_which_answer_was_chosen(tmp_path):
    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(40)]
    summary, store = run_import(tmp_path, f"files=[{write(tmp_path / 'p.jsonl', rows)}]")
    assert summary == {"added": 40, "duplicates": 0, "skipped_rows": 0, "tasks_in_database": 40}
    tasks = all_tasks(store)
    assert all(sorted(a) == sorted([f"good {p[1:]}", f"bad {p[1:]}"]) for p, a, _ in tasks)
    chosen_first = sum(a[0].startswith("good") for _, a, _ in tasks)
    assert 10 <= chosen_first <= 30  # shuffled, not always first (seeded, so fixed)
    assert all(set(meta) == {"source"} for _, _, meta in tasks)  # no trace of the label
    # Importing again adds nothing.
    summary, _ = run_import(tmp_path, f"files=[{write(tmp_path / 'p.jsonl', rows)}]")
    assert (summary["added"], summary["duplicates"]) == (0, 40)


def test_import_rankings_answers_and_conversations(tmp_path):
    ranked = write(tmp_path / "r.jsonl", [
        {"prompt": "rank", "completions": ["w", "x", "y", "z"], "ranking": [3, 2, 1, 0]},
        {"input_text": "vertex", "candidate_0": "c0", "candidate_1": "c1", "choice": 1}])
    plain = write(tmp_path / "a.jsonl", [
        {"prompt": "three", "answers": ["a", "b", "c"]},
        {"prompt": [{"role": "user", "content": "hi"}], "answers": ["hello", "hey"]}])
    unranked = write(tmp_path / "u.jsonl", [{"prompt": "two", "completions": ["p", "q"]}])
    summary, store = run_import(tmp_path, f"files=[{ranked},{plain},{unranked}]")
    assert summary["added"] == 5
    got = {json.dumps(p): sorted(a) for p, a, _ in all_tasks(store)}
    assert got == {'"rank"': ["w", "x", "y", "z"], '"vertex"': ["c0", "c1"],
                   '"three"': ["a", "b", "c"], '[{"role": "user", "content": "hi"}]':
                   ["hello", "hey"], '"two"': ["p", "q"]}


def test_import_bad_rows_name_file_line_and_field(tmp_path):
    bad = write(tmp_path / "bad.jsonl", [{"prompt": "ok", "answers": ["a", "b"]},
                                         {"prompt": "dup", "answers": ["a", "a "]},
                                         {"prompt": "one", "answers": ["a"]}])
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'answers': .*identical"):
        run_import(tmp_path, f"files=[{bad}]")
    summary, _ = run_import(tmp_path, f"files=[{bad}]", "skip_bad=true")
    assert (summary["added"], summary["skipped_rows"]) == (1, 2)
    pairs = write(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "a"}])
    with pytest.raises(DataError, match=r"pairs.jsonl:1: field 'rejected'"):
        run_import(tmp_path, f"files=[{pairs}]")
    # a bad second file stops the import before the good first one is added
    good = write(tmp_path / "good.jsonl", [{"prompt": "fresh", "answers": ["x", "y"]}])
    with pytest.raises(DataError, match=r"pairs.jsonl:1: field 'rejected'"):
        run_import(tmp_path, f"files=[{good},{pairs}]")
    assert "fresh" not in [p for p, _, _ in all_tasks(open_store(f"sqlite:///{tmp_path / 'tasks.db'}"))]


def test_import_refuses_an_empty_answer_as_rlxf_label_does(tmp_path):
    """The loaders accept an Anthropic HH row with an empty final answer (a real HH label),
    but a task needs two answers to show: such a row is bad, as in `rlxf label`."""
    dialogue = "\n\nHuman: how do I hurt someone?\n\nAssistant:"
    rows = [{"chosen": dialogue + " I won't help with that.", "rejected": dialogue + " Here is how."},
            {"chosen": dialogue, "rejected": dialogue + " Here is how."},  # labeller preferred saying nothing
            {"prompt": "q", "chosen": "fine", "rejected": "ok"},
            {"prompt": "r", "completions": ["x", "   ", "z"], "ranking": [0, 2, 1]}]
    hh = write(tmp_path / "hh.jsonl", rows)
    with pytest.raises(DataError, match=r"hh.jsonl:2: field 'chosen': is empty; an answer needs some text "
                                        r"\(skip_bad=true skips such rows\)"):
        run_import(tmp_path, f"files=[{hh}]")
    ranking = write(tmp_path / "rank.jsonl", rows[3:])
    with pytest.raises(DataError, match=r"rank.jsonl:1: field 'completions\[1\]': is empty"):
        run_import(tmp_path, f"files=[{ranking}]")
    summary, store = run_import(tmp_path, f"files=[{hh}]", "skip_bad=true")
    assert (summary["added"], summary["skipped_rows"]) == (2, 2)
    assert all(answer.strip() for _, answers, _ in all_tasks(store) for answer in answers)


def test_import_config_is_checked_before_any_work():
    with pytest.raises(ConfigError, match="nothing to import"):
        load_config(importer.Config, None, [])
    with pytest.raises(ConfigError, match="needs generate.prompts"):
        load_config(importer.Config, None, ["generate.models=[m]"])
    with pytest.raises(ConfigError, match="answers_per_prompt must be >= 2"):
        load_config(importer.Config, None, ["files=[x]", "generate.answers_per_prompt=1"])
