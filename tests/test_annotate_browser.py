"""A labeller in headless Chromium: log in, label pairs and rankings by clicking, then
the export holds exactly those labels. Skipped, with the reason shown, when Chromium or
chromedriver is not installed (``apt-get install chromium chromium-driver``)."""

from __future__ import annotations

import json

import pytest
from annotate_browser import Browser
from annotate_helpers import PASSWORD, XSS, ServerProcess, make_db

from rlxf.config import load_config
from rlxf.feedback.human import export

TASKS = [
    ("Say something nice.", ["You are great.", f"Nice {XSS}"], {}),
    ("Add 2 and 2.", ["4", "5"], {}),
    ("Name a colour.", ["red", "blue"], {}),
    ("Name a bird.", ["owl", "fox"], {}),
    ("Rank these greetings.", ["hello", "hi there", "good day"], {}),
    ("Rank these numbers.", ["one", "two", "three", "four"], {}),
]
PAIR_CHOICES = ["A", "B", "tie", "skip"]  # in the order pair tasks come up


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_label_by_clicking_then_export(tmp_path, chromium):
    url, store = make_db(tmp_path / "browser.db", TASKS, ["ann"])
    srv = ServerProcess(url, ["labels_per_task=1"], log_path=tmp_path / "server.log").start()
    browser = Browser(*chromium)
    try:
        expected_pairs, expected_rankings = label_everything(browser, srv.url)
    finally:
        browser.quit()
        srv.stop()

    assert (len(expected_pairs), len(expected_rankings)) == (3, 2)  # A, B, tie; K=3, K=4
    comments = [label.comment for _, labels in store.labelled_tasks() for label in labels]
    assert sorted(comments) == [""] * 5 + ["clearly better"]
    out = tmp_path / "export"
    export.run(load_config(export.Config, None, [f"database={url}", f"out={out}",
                                                 "votes=all", "ties=half"]))
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    rankings = [json.loads(line) for line in (out / "rankings.jsonl").read_text().splitlines()]
    assert sorted(_pair_key(p["prompt"], p["chosen"], p["rejected"], p["prob_chosen"])
                  for p in pairs) == sorted(expected_pairs)
    assert sorted((r["prompt"], tuple(r["completions"][i] for i in r["ranking"]))
                  for r in rankings) == sorted(expected_rankings)
    assert all(p["annotator"] == "ann" for p in pairs + rankings)


def label_everything(browser: Browser, base: str) -> tuple[list, list]:
    """Click through every task; return what the export must then contain."""
    browser.get(base + "/login")
    browser.type("#name", "ann")
    browser.type("#password", PASSWORD)
    browser.click("#login")
    expected_pairs, expected_rankings = [], []
    pair_choices, seen = iter(PAIR_CHOICES), set()
    while True:
        browser.wait_until(lambda: browser.exists("#task") or browser.exists("#message"),
                           "a task or the end")
        if browser.exists("#message"):
            break
        task_id = browser.attribute("#task", "data-task")
        assert task_id not in seen, "a task came back after it was labelled"
        seen.add(task_id)
        prompt = browser.text(browser.find("#prompt"))
        answers = [browser.text(e) for e in browser.find_all(".answer .text")]
        if XSS in answers[0] + answers[1]:
            # Shown literally, as text: the script neither ran nor became markup.
            assert f"Nice {XSS}" in answers and not browser.alert_open()
            assert not browser.exists(".answer .text b")
        if browser.attribute("#task", "data-kind") == "pair":
            choice = next(pair_choices)
            if choice == "A":
                browser.type("#comment", "clearly better")
            browser.click(f"#choose-{choice}")
            if choice in ("A", "B"):
                first = 0 if choice == "A" else 1
                expected_pairs.append(_pair_key(prompt, answers[first], answers[1 - first], 1.0))
            elif choice == "tie":
                expected_pairs.append(_pair_key(prompt, answers[0], answers[1], 0.5))
        else:
            k = len(answers)
            if k == 3:  # first a mistake: rank 1 given twice -> the server says so
                for position, rank in enumerate([1, 1, 2]):
                    browser.click(f"#rank-{position}-{rank}")
                browser.click("#submit-ranking")
                error = browser.text(browser.find("#error"))
                assert "exactly once" in error
                assert browser.attribute("#task", "data-task") == task_id
            ranks = list(range(k, 0, -1))  # the last answer on screen is the best
            for position, rank in enumerate(ranks):
                browser.click(f"#rank-{position}-{rank}")
                assert browser.is_selected(f"#rank-{position}-{rank}")
            browser.click("#submit-ranking")
            order = sorted(range(k), key=lambda p: ranks[p])
            expected_rankings.append((prompt, tuple(answers[p] for p in order)))
        browser.wait_until(lambda: not browser.exists(f'#task[data-task="{task_id}"]'),
                           "the next page")
    assert seen and len(seen) == len(TASKS)
    browser.get(base + "/me")
    assert browser.text(browser.find("#count-labelled")) == str(len(TASKS) - 1)  # one skip
    return expected_pairs, expected_rankings


def _pair_key(prompt: str, chosen: str, rejected: str, prob: float) -> tuple:
    """A tie's two answers are in no particular order."""
    if prob == 0.5:
        chosen, rejected = sorted([chosen, rejected])
    return prompt, chosen, rejected, prob
