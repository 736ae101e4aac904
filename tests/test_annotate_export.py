"""Exporting labels: vote aggregation, ties, rankings, and reading the files back with
``rlxf.data``."""

from __future__ import annotations

import json
import logging

import pytest
from annotate_helpers import make_db

from rlxf.config import load_config
from rlxf.data import Preference, Ranking, load_comparisons, load_preferences
from rlxf.feedback.human import export
from rlxf.feedback.human.export import borda
from rlxf.feedback.human.store import Store, Submit

PAIR = ("Which is better?", ["yes", "no"], {})
RANK = ([{"role": "user", "content": "Order these"}], ["w", "x", "y"], {})


def label(store: Store, name: str, decide) -> None:
    """Let ``name`` label every task it gets; ``decide(task)`` -> (outcome, ranking by text)."""
    user = next(u for u in store.users() if u.name == name)
    while (a := store.claim(user.id, labels_per_task=5, timeout_s=60)) is not None:
        outcome, texts = decide(a.task)
        ranking = None if texts is None else [a.task.answers.index(t) for t in texts]
        assert store.submit(a.id, user.id, outcome, ranking, "", 5) is Submit.RECORDED


def do_export(tmp_path, url: str, *overrides: str) -> tuple[dict, list[dict], list[dict]]:
    out = tmp_path / "out"
    summary = export.run(load_config(export.Config, None,
                                     [f"database={url}", f"out={out}", *overrides]))

    def read(name: str) -> list[dict]:
        path = out / name
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    return summary, read("pairs.jsonl"), read("rankings.jsonl")


@pytest.fixture
def voted(tmp_path):
    """One pair voted yes, yes, no, tie, skip; one 3-way ranking by three labellers."""
    url, store = make_db(tmp_path / "a.db", [PAIR, RANK], ["a", "b", "c", "d", "e"])
    votes = {"a": ("ranked", ["yes", "no"]), "b": ("ranked", ["yes", "no"]),
             "c": ("ranked", ["no", "yes"]), "d": ("tie", None), "e": ("skip", None)}
    ranks = {"a": ["w", "x", "y"], "b": ["x", "w", "y"], "c": ["w", "y", "x"]}
    for name in votes:
        label(store, name, lambda task, n=name: votes[n] if task.k == 2 else
              (("ranked", ranks[n]) if n in ranks else ("skip", None)))
    return url


def test_majority_pairs_and_borda_rankings(tmp_path, voted):
    summary, pairs, rankings = do_export(tmp_path, voted)
    # yes: 2 votes, no: 1, tie: 1 -> "yes" wins; the skip is not a vote.
    assert [(p["chosen"], p["rejected"], p["prob_chosen"], p["votes"]) for p in pairs] == [
        ("yes", "no", 1.0, 4)]
    # Borda totals of positions: w 0+1+0 = 1, x 1+0+2 = 3, y 2+2+1 = 5 -> w, x, y.
    (row,) = rankings
    assert [row["completions"][i] for i in row["ranking"]] == ["w", "x", "y"]
    assert row["prompt"] == RANK[0] and row["votes"] == 3
    assert summary["pairs"] == 1 and summary["rankings"] == 1


def test_all_votes_with_ties_as_half(tmp_path, voted):
    _, pairs, rankings = do_export(tmp_path, voted, "votes=all", "ties=half")
    got = sorted((p["annotator"], p["chosen"], p["rejected"], p["prob_chosen"]) for p in pairs)
    tie = [g for g in got if g[0] == "d"]
    assert tie and tie[0][3] == 0.5 and {tie[0][1], tie[0][2]} == {"yes", "no"}
    assert [g for g in got if g[0] != "d"] == [("a", "yes", "no", 1.0), ("b", "yes", "no", 1.0),
                                               ("c", "no", "yes", 1.0)]
    assert sorted((r["annotator"], tuple(r["completions"][i] for i in r["ranking"]))
                  for r in rankings) == [("a", ("w", "x", "y")), ("b", ("x", "w", "y")),
                                         ("c", ("w", "y", "x"))]


def test_rankings_as_pairs_and_min_labels(tmp_path, voted):
    _, pairs, rankings = do_export(tmp_path, voted, "rankings=pairs")
    assert rankings == [] and not (tmp_path / "out" / "rankings.jsonl").exists()
    ranked = [(p["chosen"], p["rejected"]) for p in pairs if p["task_id"] == 2]
    assert ranked == [("w", "x"), ("w", "y"), ("x", "y")]  # C(3, 2) pairs of w > x > y
    _, pairs, rankings = do_export(tmp_path, voted, "min_labels=4")
    assert [p["task_id"] for p in pairs] == [1] and rankings == []


def test_a_drawn_vote_is_a_tie(tmp_path):
    url, store = make_db(tmp_path / "a.db", [PAIR], ["a", "b"])
    label(store, "a", lambda task: ("ranked", ["yes", "no"]))
    label(store, "b", lambda task: ("ranked", ["no", "yes"]))
    assert do_export(tmp_path, url)[1] == []
    (row,) = do_export(tmp_path, url, "ties=half")[1]
    assert row["prob_chosen"] == 0.5 and row["votes"] == 2


def test_the_summary_counts_the_tasks_left_out_and_why(tmp_path, caplog):
    """Six pairs labelled by a and b: three agreed, one split 1-1, one both called a tie,
    one both skipped. A majority export with ties=exclude writes 3 rows and says why the
    other three tasks gave none."""
    agreed, split, tied, skipped = ["p1", "p2", "p3"], "p4", "p5", "p6"
    url, store = make_db(tmp_path / "a.db", [(p, ["yes", "no"], {}) for p in [*agreed, split, tied, skipped]],
                         ["a", "b"])
    def decide(task, name: str):
        if task.prompt in agreed:
            return "ranked", ["yes", "no"]
        if task.prompt == split:
            return "ranked", ["yes", "no"] if name == "a" else ["no", "yes"]
        return ("tie", None) if task.prompt == tied else ("skip", None)

    for name in ("a", "b"):
        label(store, name, lambda task, n=name: decide(task, n))
    with caplog.at_level(logging.INFO, logger="rlxf"):
        summary, pairs, _ = do_export(tmp_path, url)
    assert sorted(p["prompt"] for p in pairs) == agreed
    assert (summary["tasks_labelled"], summary["tasks_exported"]) == (6, 3)
    assert summary["tasks_left_out"] == {"ties": 2, "min_labels": 0, "only_skips": 1}
    assert "left out 3 task(s): 2 tied, with ties=exclude" in caplog.text and "1 every label a skip" in caplog.text

    summary, pairs, _ = do_export(tmp_path, url, "ties=half")
    assert len(pairs) == 5 and summary["tasks_left_out"] == {"ties": 0, "min_labels": 0, "only_skips": 1}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rlxf"):
        summary, pairs, _ = do_export(tmp_path, url, "min_labels=3")
    assert pairs == [] and summary["tasks_left_out"] == {"ties": 0, "min_labels": 5, "only_skips": 1}
    assert [r.levelno for r in caplog.records if "nothing was exported" in r.getMessage()] == [logging.WARNING]
    assert "5 fewer than min_labels=3 labels" in caplog.text


def test_exporting_a_database_without_labels_warns_that_nothing_was_exported(tmp_path, caplog):
    url, _ = make_db(tmp_path / "a.db", [PAIR, RANK], ["a"])
    with caplog.at_level(logging.INFO, logger="rlxf"):
        summary, pairs, rankings = do_export(tmp_path, url)
    assert pairs == rankings == [] and (summary["pairs"], summary["tasks_labelled"]) == (0, 0)
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage() == "nothing was exported: the database holds no labels yet"


def test_borda_draws_go_to_the_lower_index():
    assert borda(3, [(0, 1, 2), (1, 0, 2), (0, 2, 1)]) == (0, 1, 2)
    assert borda(3, [(2, 1, 0), (1, 2, 0)]) == (1, 2, 0)  # 1 and 2 tie on 1; 1 first


def test_exported_files_load_with_rlxf_data(tmp_path, voted):
    do_export(tmp_path, voted, "votes=all", "ties=half")
    pairs = load_preferences(tmp_path / "out" / "pairs.jsonl")
    assert all(isinstance(p, Preference) for p in pairs) and len(pairs) == 4
    assert sorted(p.prob_chosen for p in pairs) == [0.5, 1.0, 1.0, 1.0]
    rankings = load_comparisons(tmp_path / "out" / "rankings.jsonl")
    assert all(isinstance(r, Ranking) for r in rankings) and len(rankings) == 3
    assert rankings[0].prompt == ({"role": "user", "content": "Order these"},)


def test_agreement_file(tmp_path, voted):
    summary, _, _ = do_export(tmp_path, voted)
    saved = json.loads((tmp_path / "out" / "agreement.json").read_text())
    # Items and the better answer each labeller named (unordered label pairs that agree):
    #   pair:   a yes, b yes, c no, d tie  -> only a-b agree: 1 of 6
    #   (w, x): a w, b x, c w             -> 1 of 3
    #   (w, y): a w, b w, c w             -> 3 of 3
    #   (x, y): a x, b x, c y             -> 1 of 3
    # Pooled: (1 + 1 + 3 + 1) / (6 + 3 + 3 + 3) = 6 / 15.
    assert saved["items"] == 4
    assert saved["percent_agreement"] == pytest.approx(6 / 15)
    assert "e" not in saved["per_labeller"]  # a skip is not a judgment
    assert summary["agreement"]["percent_agreement"] == pytest.approx(6 / 15)


def test_a_borda_draw_exported_as_pairs_is_a_tie_not_a_certain_preference(tmp_path):
    """Two labellers rank w > x > y and x > w > y: w and x draw (totals 1 and 1), so their
    pair is a tie (prob_chosen 0.5, or no row with ties=exclude), never 1.0 for whichever
    answer the import happened to store first; both beat y for sure."""
    url, store = make_db(tmp_path / "a.db", [RANK], ["a", "b"])
    label(store, "a", lambda task: ("ranked", ["w", "x", "y"]))
    label(store, "b", lambda task: ("ranked", ["x", "w", "y"]))
    _, pairs, _ = do_export(tmp_path, url, "rankings=pairs", "ties=half")
    got = {(p["chosen"], p["rejected"]): p["prob_chosen"] for p in pairs}
    drawn = {k: v for k, v in got.items() if set(k) == {"w", "x"}}
    assert list(drawn.values()) == [0.5] and got[("w", "y")] == 1.0 and got[("x", "y")] == 1.0
    _, pairs, _ = do_export(tmp_path, url, "rankings=pairs", "ties=exclude")
    assert sorted((p["chosen"], p["rejected"]) for p in pairs) == [("w", "y"), ("x", "y")]


def test_majority_rows_keep_the_tally(tmp_path, voted):
    _, pairs, rankings = do_export(tmp_path, voted)
    # yes 2 (a, b), no 1 (c), tie 1 (d); e's skip is not a vote.
    assert pairs[0]["tally"] == {"chosen": 2, "rejected": 1, "tie": 1}
    # Totals of positions over a: w x y, b: x w y, c: w y x (stored order w, x, y).
    assert rankings[0]["borda_totals"] == [1, 3, 5]
    _, pairs, _ = do_export(tmp_path, voted, "rankings=pairs")
    tallies = {(p["chosen"], p["rejected"]): p["tally"] for p in pairs if p["task_id"] == 2}
    assert tallies == {("w", "x"): {"chosen": 2, "rejected": 1, "tie": 0},   # b put x first
                       ("w", "y"): {"chosen": 3, "rejected": 0, "tie": 0},
                       ("x", "y"): {"chosen": 2, "rejected": 1, "tie": 0}}  # c put y above x
    _, pairs, rankings = do_export(tmp_path, voted, "votes=all")
    assert not any("tally" in p for p in pairs) and not any("borda_totals" in r for r in rankings)


def test_rows_name_the_models_that_wrote_the_answers(tmp_path):
    pair = ("Which is better?", ["yes", "no"], {"models": ["m-yes", "m-no"], "ended": [True, False]})
    rank = ("Order these", ["w", "x", "y"], {"models": ["m-w", "m-x", "m-y"]})
    url, store = make_db(tmp_path / "a.db", [pair, rank, ("From a file", ["yes", "no"], {})], ["a", "b", "c"])
    for name in ("a", "b", "c"):
        label(store, name, lambda task, n=name: ("ranked", ["no", "yes"] if n != "c" else ["yes", "no"])
              if task.k == 2 else ("ranked", ["y", "w", "x"]))
    _, pairs, rankings = do_export(tmp_path, url)
    by_task = {p["task_id"]: p for p in pairs}
    assert (by_task[1]["chosen"], by_task[1]["chosen_model"], by_task[1]["rejected_model"]) == ("no", "m-no", "m-yes")
    assert by_task[1]["tally"] == {"chosen": 2, "rejected": 1, "tie": 0}  # a 2-1 majority, not 3-0
    assert "chosen_model" not in by_task[3]  # imported from a file: no models to name
    (row,) = rankings
    assert row["completion_models"] == ["m-w", "m-x", "m-y"]
    assert [row["completion_models"][i] for i in row["ranking"]] == ["m-y", "m-w", "m-x"]
    _, pairs, _ = do_export(tmp_path, url, "rankings=pairs", "votes=all")
    assert {(p["chosen_model"], p["rejected_model"]) for p in pairs if p["task_id"] == 2} == {
        ("m-y", "m-w"), ("m-y", "m-x"), ("m-w", "m-x")}

    # The loaders read the files with these extra fields.
    do_export(tmp_path, url)
    loaded = load_preferences(tmp_path / "out" / "pairs.jsonl")
    assert sorted((p.chosen, p.rejected) for p in loaded) == [("no", "yes"), ("no", "yes")]
    (ranking,) = load_comparisons(tmp_path / "out" / "rankings.jsonl")
    assert isinstance(ranking, Ranking) and ranking.ranking == tuple(row["ranking"])
