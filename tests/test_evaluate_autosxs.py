"""AutoSxS: win-rate intervals checked by hand, a scripted judge with a known position
bias, human-label agreement, and `rlxf autosxs` end to end on a tiny local judge."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from conftest import write_jsonl

from rlxf.config import load_config
from rlxf.errors import ConfigError, DataError
from rlxf.evaluate import autosxs
from rlxf.evaluate.sxs import wilson_interval, win_rate
from rlxf.evaluate.agreement import binary_report
from rlxf.feedback.ai import AnswerScores, JudgeSettings, load_template

K, BIAS = 0.5, 1.0  # the scripted judge: log-odds of position 1 = K * (len1 - len2) + BIAS


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


class LengthJudge:
    """A judge (the rlxf.feedback.ai.judge.Judge interface, no model) that prefers the
    longer response and favours whichever response it is shown first by BIAS log-odds.
    It cannot read an answer containing "???" (an unparseable verdict)."""

    identity = "length-judge"

    def __init__(self):
        self.calls = 0

    def answer_logprobs(self, prompts, answers):
        out = []
        for p in prompts:
            self.calls += 1
            first = p.rsplit("Response 1: ", 1)[1].split("\n")[0]
            second = p.rsplit("Response 2: ", 1)[1].split("\n")[0]
            if "???" in first + second:
                out.append(AnswerScores("unparseable", text="hmm"))
            else:
                out.append(AnswerScores("logprobs", (K * (len(first) - len(second)) + BIAS, 0.0)))
        return out

    def generate(self, prompts, *, max_tokens, temperature, n=1, stop=(), seed=0):
        return [[f"the first reply has {len(p.rsplit('Response 1: ', 1)[1].split(chr(10))[0])} characters"] * n
                for p in prompts]

    def stats(self):
        return {"requests": self.calls}


SETTINGS = JudgeSettings(template=load_template("helpful"))


def test_wilson_interval_matches_the_hand_computation():
    # 8 wins of 10 at 95%: z = 1.959964, z² = 3.841459, p = 0.8
    #   centre = (0.8 + 3.841459 / 20) / (1 + 3.841459 / 10) = 0.992073 / 1.384146 = 0.716740
    #   half   = 1.959964 / 1.384146 * sqrt(0.8 * 0.2 / 10 + 3.841459 / 400)
    #          = 1.416009 * sqrt(0.016 + 0.009604) = 1.416009 * 0.160012 = 0.226578
    #   -> [0.490162, 0.943318]
    low, high = wilson_interval(8, 10)
    assert (low, high) == pytest.approx((0.490162, 0.943318), abs=1e-6)
    # 0 of 10: the interval is [0, z² / (n + z²)] = [0, 3.841459 / 13.841459] = [0, 0.277533]
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.277533), abs=1e-6)
    # 90%: z = 1.644854, z² = 2.705543; 5 of 10 -> centre 0.5,
    #   half = 1.644854 / 1.270554 * sqrt(0.025 + 2.705543 / 400) = 1.294595 * 0.178224 = 0.230728
    assert wilson_interval(5, 10, level=0.9) == pytest.approx((0.269272, 0.730728), abs=1e-6)


def test_win_rate_counts_ties_half_and_skips_undecided():
    w = win_rate(["A", "A", "B", "tie", None], "A")
    # (2 wins + 1 tie / 2) / 4 decided = 0.625; the interval is Wilson's for 2.5 of 4
    assert (w.rate, w.n, w.wins, w.ties) == (0.625, 4, 2, 1)
    assert (w.low, w.high) == pytest.approx(wilson_interval(2.5, 4))
    assert win_rate([None], "A").rate is None


def test_judgments_are_position_debiased_with_choice_and_confidence():
    prompts = ["User: a", "User: b", "User: c", "User: d"]
    a = ["a long answer", "short", "same", "fine"]
    b = ["short", "a long answer", "four", "???"]
    result = autosxs.judge_side_by_side(LengthJudge(), prompts, a, b, SETTINGS)
    j = result.judgments
    assert j["choice"].tolist()[:3] == ["A", "B", "tie"] and pd.isna(j["choice"][3])
    # pair 1, len(A) - len(B) = 8: AB order P(first) = σ(4 + 1), BA order P(first) = σ(-4 + 1), so
    # P(A) = (σ(5) + 1 - σ(-3)) / 2 = (0.993307 + 0.952574) / 2 = 0.972941
    assert j["prob_a"][0] == pytest.approx((sigmoid(5) + 1 - sigmoid(-3)) / 2)
    assert j["confidence"][1] == pytest.approx(j["prob_a"][0])  # the mirror pair
    # equal lengths: the judge says "first" both times (σ(1) = 0.73); averaged, the bias cancels to 0.5
    assert j["p_first_ab"][2] == pytest.approx(sigmoid(1)) and j["prob_a"][2] == pytest.approx(0.5)
    assert bool(j["flipped"][2]) and j["confidence"][2] == pytest.approx(0.5)
    assert j["error"].tolist() == ["", "", "", "unparseable"] and j["explanation"].tolist() == [""] * 4
    s = result.summary
    assert (s["pairs"], s["decided"], s["no_answer"], s["wins_a"], s["wins_b"], s["ties"]) == (4, 3, 1, 1, 1, 1)
    assert s["win_rate_a"]["rate"] == pytest.approx(0.5) and s["win_rate_b"]["rate"] == pytest.approx(0.5)
    assert s["judging"]["flip_rate"] == pytest.approx(1 / 3)
    assert {k: s["judging"][k] for k in ("unparseable_pairs", "too_long_pairs", "refused_pairs", "failed_pairs",
                                          "shortened_prompts")} == {"unparseable_pairs": 1, "too_long_pairs": 0,
                                                                    "refused_pairs": 0, "failed_pairs": 0,
                                                                    "shortened_prompts": 0}


def test_a_choice_that_flips_with_the_order_is_a_tie_unless_averaging_is_asked_for(caplog):
    """len(A) - len(B) = 1: order AB P(first) = σ(0.5 + 1) = 0.818 (A), order BA σ(-0.5 + 1) =
    0.622 (B): the judge picked position 1 both times. Averaged, P(A) = (0.818 + 0.378) / 2 =
    0.598, a win for A that the position made; by default the pair is a tie."""
    prompts, a, b = ["User: x", "User: y"], ["abcd", "a long answer"], ["abc", "short"]
    with caplog.at_level("WARNING", logger="rlxf"):
        tied = autosxs.judge_side_by_side(LengthJudge(), prompts, a, b, SETTINGS)
    assert tied.judgments["prob_a"][0] == pytest.approx((sigmoid(1.5) + 1 - sigmoid(0.5)) / 2)
    assert tied.judgments["flipped"].tolist() == [True, False]
    assert tied.judgments["choice"].tolist() == ["tie", "A"]  # the second: A in both orders
    assert tied.summary["win_rate_a"]["rate"] == pytest.approx(0.75) and "picked the same position" not in caplog.text
    averaged = autosxs.judge_side_by_side(LengthJudge(), prompts, a, b, SETTINGS, order_flips="average")
    assert averaged.judgments["choice"].tolist() == ["A", "A"] and averaged.summary["win_rate_a"]["rate"] == 1.0
    with caplog.at_level("WARNING", logger="rlxf"):
        autosxs.judge_side_by_side(LengthJudge(), ["User: x"] * 2, ["abcd", "same"], ["abc", "four"], SETTINGS)
    assert "picked the same position in both orders on 100% of the pairs" in caplog.text


def test_one_order_only_keeps_the_position_bias():
    settings = JudgeSettings(template=load_template("helpful"), both_orders=False)
    j = autosxs.judge_side_by_side(LengthJudge(), ["User: x"], ["same"], ["four"], settings).judgments
    assert j["choice"].tolist() == ["A"] and j["prob_a"][0] == pytest.approx(sigmoid(1))


def test_chain_of_thought_rationales_become_the_explanation():
    settings = JudgeSettings(template=load_template("helpful"), cot=True)
    j = autosxs.judge_side_by_side(LengthJudge(), ["User: x"], ["abc"], ["abcdef"], settings).judgments
    assert j["explanation"][0] == ("[A shown first] the first reply has 3 characters\n"
                                   "[B shown first] the first reply has 6 characters")


def test_agreement_with_human_labels():
    a = ["a long answer", "short", "a long answer", "short", "a long answer", "same"]
    b = ["short", "a long answer", "short", "a long answer", "short", "four"]
    # judge:  A     B     A     B     A    tie
    human = ["A", "B", "B", "A", "tie", "A"]
    result = autosxs.judge_side_by_side(LengthJudge(), ["User: q"] * 6, a, b, SETTINGS, human=human)
    h = result.summary["human"]
    # compared: pairs 1-4 (pair 5 the humans tied, pair 6 the judge tied); truth "A preferred"
    # = [T, F, F, T], judge = [T, F, T, F]: tp 1, fp 1, fn 1, tn 1 -> accuracy 0.5, precision
    # 0.5, recall 0.5, F1 0.5; kappa: p_o 0.5, p_e 0.5 * 0.5 + 0.5 * 0.5 = 0.5 -> 0
    assert h["compared"] == 4 and h["labelled"] == 6
    agreement = h["agreement"]
    assert agreement["confusion"] == {"tp": 1, "fp": 1, "fn": 1, "tn": 1}
    for key in ("accuracy", "precision", "recall", "f1"):
        assert agreement[key] == pytest.approx(0.5)
    assert agreement["cohen_kappa"] == pytest.approx(0.0)
    # the humans' own win rate of A: A in pairs 1, 4, 6, a tie in 5 -> (3 + 0.5) / 6
    assert h["win_rate_a"]["rate"] == pytest.approx(3.5 / 6)


def test_human_cells_are_parsed_strictly():
    assert [autosxs.parse_human(v, "sft", "ppo") for v in ("a", " B ", "TIE", "sft", "PPO", "", None)] == \
        ["A", "B", "tie", "A", "B", None, None]
    with pytest.raises(DataError, match=r"h\.jsonl:3: field 'human': must be 'A', 'B', 'tie'"):
        autosxs.parse_human("maybe", where=("h.jsonl", 3, "human"))


def test_config_refuses_a_human_column_without_a_file():
    with pytest.raises(ConfigError, match="human_column needs data"):
        load_config(autosxs.Config, None, ["out=o", "judge.model=j", "model_a=a", "model_b=b", "prompts=p",
                                           "human_column=h"])


def test_autosxs_with_a_tiny_local_judge_writes_judgments_and_agreement(tmp_path, tiny_model_dir):
    rows = [{"prompt": "question : what color is the fox ? answer :", "tuned": "the fox is red .",
             "sft": "the fox is blue .", "human": "A"},
            {"prompt": "say hello to tom .", "tuned": "go away .", "sft": "hello tom !", "human": "B"},
            {"prompt": "what does the bear eat ?", "tuned": "the bear eats fish .", "sft": "fish", "human": "tuned"},
            {"prompt": "two plus three is", "tuned": "five .", "sft": "six .", "human": "tie"},
            {"prompt": "where does the owl live ?", "tuned": "in the forest .", "sft": "owl owl owl",
             "human": None}]
    data = write_jsonl(tmp_path / "answers.jsonl", rows)
    args = [f"out={tmp_path / 'run'}", f"data={data}", "column_a=tuned", "column_b=sft", "name_a=tuned",
            "name_b=sft", "human_column=human", f"judge.model={tiny_model_dir}", "judge.device=cpu",
            "template=tinyworld", "progress=false"]
    summary = autosxs.run(load_config(autosxs.Config, None, args))
    run = tmp_path / "run"
    judged = pd.read_json(run / "judgments.jsonl", lines=True)
    csv = pd.read_csv(run / "judgments.csv", keep_default_na=False)
    assert len(judged) == len(csv) == 5 and list(csv["answer_a"]) == [r["tuned"] for r in rows]
    assert set(judged["choice"]) <= {"A", "B", "tie"} and summary["decided"] == 5  # a real model always answers
    assert judged["confidence"].tolist() == pytest.approx([max(p, 1 - p) for p in judged["prob_a"]])
    assert judged["human"].tolist()[:4] == ["A", "B", "A", "tie"]
    # the agreement in the summary is agreement.binary_report over the pairs both sides decided
    both = judged[judged["human"].isin(["A", "B"]) & judged["choice"].isin(["A", "B"])]
    expected = binary_report((both["human"] == "A").tolist(), (both["choice"] == "A").tolist())
    assert summary["human"]["agreement"] == json.loads(json.dumps(expected))
    w = summary["win_rate_a"]
    assert w["method"] == "wilson" and w["low"] <= w["rate"] <= w["high"] and w["n"] == 5
    assert summary["judging"]["cache_misses"] > 0 and (run / "judge_cache.sqlite").is_file()
    assert json.loads((run / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert autosxs.run(load_config(autosxs.Config, None, args)) == json.loads(json.dumps(summary))  # done


def test_judge_mistakes_are_found_before_any_answer_is_sampled(tmp_path, tiny_model_dir, monkeypatch):
    from rlxf.evaluate import sxs

    sampled = []
    monkeypatch.setattr(sxs, "sample_answers", lambda path, *a, **k: sampled.append(path))
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "say hello to tom ."}])
    base = [f"model_a={tiny_model_dir}", f"model_b={tiny_model_dir}", f"prompts={prompts}", "judge.device=cpu",
            "progress=false"]
    # no judge there; then a template that alone is longer than the tiny judge's 128 positions
    for i, (more, error) in enumerate([([f"judge.model={tmp_path / 'nojudge'}"], "no folder .*nojudge"),
                                       ([f"judge.model={tiny_model_dir}", "template=harmless"],
                                        r"template alone .* tokens, more than the \d+ the judge's 128 positions")]):
        with pytest.raises(ConfigError, match=error):
            autosxs.run(load_config(autosxs.Config, None, [f"out={tmp_path / str(i)}", *base, *more]))
    assert sampled == []


def test_a_judge_that_decided_no_pair_leaves_the_run_incomplete(tmp_path, monkeypatch):
    from rlxf.feedback.ai import backends, label

    monkeypatch.setattr(backends, "make_judge", lambda *a, **k: LengthJudge())
    data = write_jsonl(tmp_path / "answers.jsonl", [{"prompt": "q", "answer_a": "a ???", "answer_b": "b"},
                                                    {"prompt": "r", "answer_a": "c", "answer_b": "d ???"}])
    cfg = load_config(autosxs.Config, None, [f"out={tmp_path / 'run'}", f"data={data}", "judge.model=m",
                                             "template=helpful", "progress=false"])
    with pytest.raises(label.NothingLabelled, match="labelled none of the 2 pairs .*judgments.jsonl's error column"):
        autosxs.run(cfg)
    assert (tmp_path / "run" / "judgments.jsonl").is_file() and not (tmp_path / "run" / "summary.json").exists()


def test_autosxs_and_sxs_read_the_csv_that_sxs_wrote_exactly(tmp_path, monkeypatch):
    """`rlxf autosxs data=OUT/sxs.csv` (and `rlxf sxs` on it again) gets the very answers
    `rlxf sxs` wrote there: commas, quotes, line breaks, empty answers and text that reads
    like a number or a missing value included."""
    from rlxf.evaluate import sxs
    from rlxf.feedback.ai import backends

    answers_a = ["plain", "a, with commas", 'she said "no", twice', "two\nlines, \"quoted\"\n", "", "NA"]
    answers_b = ["nan", "windows\r\nline", "  spaced  ", "0.5", "True", "ünïcödé ✓ longer"]
    data = write_jsonl(tmp_path / "answers.jsonl", [
        {"prompt": f"question {i}, \"{i}\"" + "\nmore" * (i % 2), "answer_a": a, "answer_b": b,
         "answer_b_ended": i != 2} for i, (a, b) in enumerate(zip(answers_a, answers_b))])
    sxs.run(load_config(sxs.Config, None, [f"data={data}", f"out={tmp_path / 'sxs'}", "show_rows=0"]))
    table = tmp_path / "sxs" / "sxs.csv"

    read = sxs.read_answers(str(table))
    assert read.a == answers_a and read.b == answers_b and read.lines[:3] == [2, 3, 6]  # row 1 holds two line breaks
    assert read.ended_b == [True, True, False, True, True, True]  # sxs.csv's ended_b read back
    again = sxs.run(load_config(sxs.Config, None, [f"data={table}", f"out={tmp_path / 'again'}", "show_rows=0"]))
    assert again["rows"] == 6 and (tmp_path / "again" / "sxs.csv").read_bytes() == table.read_bytes()

    monkeypatch.setattr(backends, "make_judge", lambda *a, **k: LengthJudge())
    autosxs.run(load_config(autosxs.Config, None, [f"out={tmp_path / 'auto'}", f"data={table}", "judge.model=m",
                                                   "template=helpful", "progress=false"]))
    judged = pd.read_json(tmp_path / "auto" / "judgments.jsonl", lines=True, dtype=False)
    assert judged["answer_a"].tolist() == answers_a and judged["answer_b"].tolist() == answers_b
