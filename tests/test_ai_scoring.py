"""RLAIF arithmetic, strict parsers, templates and constitutions: values worked out by hand."""

from __future__ import annotations

import math

import pytest

from rlxf.config import load_config
from rlxf.errors import ConfigError
from rlxf.feedback.ai.constitution import load_constitution
from rlxf.feedback.ai.labeller import JudgeSettings, judge_pairs
from rlxf.feedback.ai.judge import AnswerScores
from rlxf.feedback.ai.parse import parse_choice, parse_rating
from rlxf.feedback.ai.scoring import (ChoiceScore, exclusive_logprobs, expected_rating, order_flipped, prob_first,
                                      rating_distribution, swap_average)
from rlxf.feedback.ai.templates import (builtin_templates, context_text, load_template, pairwise_prompt,
                                        rating_prompt)

log = math.log


def test_preference_is_softmax_over_the_two_answer_logprobs():
    # p("1") = 0.6, p("2") = 0.2 (0.2 elsewhere): P(first) = 0.6 / (0.6 + 0.2) = 0.75
    assert prob_first(log(0.6), log(0.2)) == pytest.approx(0.75, abs=1e-12)
    assert prob_first(-1000.0, -1000.0) == pytest.approx(0.5)  # stable far from 0


def test_swap_averaging_by_hand():
    # Order AB gives (0.8, 0.2) over positions: P(A) = 0.8.
    # Order BA gives (0.3, 0.7): position 2 holds A there, so P(A) = 0.7.
    # Averaged: P(A) = (0.8 + 0.7) / 2 = 0.75.
    assert swap_average(0.8, 0.3) == pytest.approx(0.75, abs=1e-12)
    # a judge that always says "position 1" with 0.9 ends up undecided: (0.9 + 0.1) / 2
    assert swap_average(0.9, 0.9) == pytest.approx(0.5, abs=1e-12)


def test_order_flip_means_same_position_both_times():
    assert order_flipped(0.8, 0.6)        # position 1 both times: A, then B
    assert order_flipped(0.3, 0.4)        # position 2 both times
    assert not order_flipped(0.8, 0.3)    # A both times
    assert not order_flipped(0.5, 0.9)    # 0.5 is no choice


def test_direct_score_expectation_with_two_token_ten():
    # Exact answer probabilities: P(1)=0.2, P(2)=0.2, P(5)=0.4, P(10)=0.1 (0.1 on non-ratings).
    # "10" is read as "1" then "0", so the judge's P(prefix "1") = 0.2 + 0.1 = 0.3.
    # Exclusive P(1) = 0.3 - 0.1 = 0.2; renormalised over 0.9:
    # E = (1*0.2 + 2*0.2 + 5*0.4 + 10*0.1) / 0.9 = 3.6 / 0.9 = 4.0
    exact = {1: 0.2, 2: 0.2, 5: 0.4, 10: 0.1}
    scores = []
    for k in range(1, 11):
        p = 0.3 if k == 1 else exact.get(k, 1e-15)
        scores.append(ChoiceScore(log(p), (1, 0) if k == 10 else (k,)))
    dist = rating_distribution(scores)
    assert dist[0] == pytest.approx(0.2 / 0.9, abs=1e-9)
    assert expected_rating(range(1, 11), dist) == pytest.approx(4.0, abs=1e-9)
    # Without the correction P(1) would be 0.3 of 1.0: E = 0.3 + 0.4 + 2.0 + 1.0 = 3.7.
    naive = [math.exp(s.logprob) for s in scores]
    assert sum(k * p for k, p in zip(range(1, 11), naive)) / sum(naive) == pytest.approx(3.7, abs=1e-9)


def test_single_token_ten_is_not_subtracted():
    # "10" is its own token: P("1") already excludes it; nothing nests.
    scores = [ChoiceScore(log(0.5), (1,)), ChoiceScore(log(0.25), (10,))]
    assert exclusive_logprobs(scores) == pytest.approx([log(0.5), log(0.25)])
    # deeper nesting: "1" ⊂ "10" ⊂ "100": only the minimal extension is subtracted
    nested = [ChoiceScore(log(0.5), (1,)), ChoiceScore(log(0.3), (1, 0)), ChoiceScore(log(0.1), (1, 0, 0))]
    assert [math.exp(v) for v in exclusive_logprobs(nested)] == pytest.approx([0.2, 0.2, 0.1])


@pytest.mark.parametrize("text, expected", [
    ("1", 0), (" 2", 1), ("2.", 1), ("Response 1", 0), ("Preferred Response=2", 1), ("**2**", 1),
    ("Answer: 1", 0), ("Summary 2 is better", 1), ("1\n\nBecause it is right.", 0), ("(2)", 1),
    ("1 or 2", None), ("both", None), ("Response 1 and Response 2", None), ("12", None),
    ("I prefer the first one", None), ("", None), ("Response 3", None), ("1, 2", None),
    ("Response 1 is worse", None),
])
def test_strict_choice_parser(text, expected):
    assert parse_choice(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("7", 7), ("7/10", 7), ("Rating: 7", 7), ("**7**", 7), ("Score = 10.", 10), ("Rating (1-10): 4", 4),
    ("7-8", None), ("11", None), ("0", None), ("seven", None), ("7 or 8", None), ("100", None),
])
def test_strict_rating_parser(text, expected):
    assert parse_rating(text) == expected


@pytest.mark.parametrize("text, expected", [
    # the answer opens the line, then the judge explains (cut where its answer tokens ran out)
    ("Response 2 is better because it", 1), ("Response 2, because it is more", 1), ("2 - it is more helpful", 1),
    ("Response 1: it answers the question", 0), ("Response 2 is better than Response 1.", 1),
    # a lead-in before it, the label repeated after the template's ending, brackets
    ("Preferred Response=Response 2", 1), ("The preferred response is 2.", 1), ("[[2]]", 1), ("Answer: (2)", 1),
    ("Preferred: 1", 0), ("**Answer:** **Response 2**", 1), ("Less Harmful Response=1", 0),
    ("The better response is Response 1, as it", 0), ("Final verdict: [[1]]", 0),
])
def test_choice_parser_reads_an_answer_that_opens_the_line(text, expected):
    assert parse_choice(text) == expected


@pytest.mark.parametrize("text", [
    "1 or 2", "Response 1 and Response 2 are equal", "Response 1 or Response 2", "1, or 2", "1 - 2",
    "Response 2 is better than Response 2",  # names one label twice: no comparison at all
    "Response 1 is better, 2 is worse",  # the explanation opens with another label
    "12 is better", "Response 21", "1.5",  # a number, not a label
    "I think Response 2 is better", "The answer is that 2 is better", "After comparing, 2",  # not at the start
    "2nd",  # no separator after the label
    "Response 2 is more accurate",  # a comparison outside the verdict phrases: "is more harmful" reads the other way
])
def test_choice_parser_rejects_what_is_ambiguous_or_not_at_the_start(text):
    assert parse_choice(text) is None


@pytest.mark.parametrize("text, expected", [
    ("8/10 - clear and correct", 8), ("Rating: 8. The answer is", 8), ("7 out of 10", 7), ("[[7]]", 7),
    ("Rating: [[10]]", 10), ("**Rating:** 6/10, because", 6), ("Score: 3 - it is wrong", 3), ("10/10", 10),
])
def test_rating_parser_reads_a_rating_that_opens_the_line(text, expected):
    assert parse_rating(text) == expected


@pytest.mark.parametrize("text", [
    "7.5", "7,5", "7 - 8", "7/5", "4 out of 5", "7/100", "12/10", "0/10", "[[11]]", "8, or 9",
    "I would rate it 8", "The response deserves 8/10",
])
def test_rating_parser_rejects_what_is_ambiguous_out_of_range_or_not_at_the_start(text):
    assert parse_rating(text) is None


class ScriptedJudge:
    """A judge whose verdicts are given per prompt substring (no model), to test the plumbing."""

    identity = "scripted"

    def __init__(self, verdicts):
        self.verdicts = verdicts

    def answer_logprobs(self, prompts, answers):
        out = []
        for p in prompts:
            first = p.split("Response 1: ")[-1].split("\n")[0]
            out.append(self.verdicts[first])
        return out

    def stats(self):
        return {}


def test_unparseable_orders_leave_the_pair_unlabelled():
    lp = AnswerScores("logprobs", (log(0.8), log(0.2)))
    bad = AnswerScores("unparseable", text="1 or 2")
    t = load_template("helpful")
    judge = ScriptedJudge({"good": lp, "bad": bad})
    [strict] = judge_pairs(judge, [("User: q", "good", "bad")], JudgeSettings(template=t))
    assert strict.prob_a is None and strict.unparseable == 1 and strict.unparsed == ("1 or 2",)
    # with require_both_orders=false the one readable order (AB, P(first)=0.8) decides
    [lenient] = judge_pairs(judge, [("User: q", "good", "bad")],
                            JudgeSettings(template=t, require_both_orders=False))
    assert lenient.prob_a == pytest.approx(0.8)
    # a text verdict is one-hot: AB says "1" (A), BA says "1" (B) -> (1 + 0) / 2 = 0.5, flipped
    one = AnswerScores("text", choice=0, text="1")
    [text] = judge_pairs(ScriptedJudge({"good": one, "bad": one}), [("User: q", "good", "bad")],
                         JudgeSettings(template=t))
    assert text.prob_a == 0.5 and text.flipped


def test_builtin_templates_render_and_bad_ones_are_refused(tmp_path):
    assert {"summarize", "helpful", "harmless", "tinyworld"} <= set(builtin_templates())
    t = load_template("helpful")
    prompt = pairwise_prompt(t, "User: hi {there}", "Hello!", "Go away.", principle="Be kind.")
    assert prompt.endswith("Response 1: Hello!\nResponse 2: Go away.\nPreferred Response=")
    assert "Be kind." in prompt and "{there}" in prompt  # user text is never formatted
    assert "Response 1 gives the correct value" not in prompt  # rationale only with cot
    assert "Response 1 gives the correct value" in pairwise_prompt(t, "c", "a", "b", cot=True)
    assert rating_prompt(t, "User: hi", "Hello!").endswith("Response: Hello!\nRating (1-10):")
    assert context_text("\n\nHuman: hi\n\nAssistant:") == "Human: hi"
    assert context_text(({"role": "user", "content": "hi"},)) == "User: hi"

    bad = tmp_path / "bad.yaml"
    bad.write_text("preamble: x\nsample: '{context} {answer1}'\n")
    with pytest.raises(ConfigError, match=r"unknown placeholder\(s\) \{answer1\}"):
        load_template(str(bad))
    typo = tmp_path / "typo.yaml"
    typo.write_text("preamble: x\nsample: '{context} {response1} {response2}'\nendig: '='\n")
    with pytest.raises(ConfigError, match="did you mean 'ending'"):
        load_template(str(typo))
    with pytest.raises(ConfigError, match="neither a file nor a built-in"):
        load_template("nonexistent")


def test_constitution_sampling_is_deterministic_and_spread():
    c = load_constitution("default")
    assert len(c.principles) >= 6
    picks = [c.sample(0, f"prompt {i}", "a", "b").name for i in range(200)]
    assert picks == [c.sample(0, f"prompt {i}", "a", "b").name for i in range(200)]
    assert len(set(picks)) == len(c.principles)  # every principle gets used


def test_label_config_rules():
    from rlxf.feedback.ai import label

    base = ["out=o", "data=d", "judge.model=m"]
    assert load_config(label.Config, None, base).both_orders
    with pytest.raises(ConfigError, match="set cot=true"):
        load_config(label.Config, None, base + ["samples=3"])
    with pytest.raises(ConfigError, match="set temperature > 0"):
        load_config(label.Config, None, base + ["samples=3", "cot=true"])
    with pytest.raises(ConfigError, match="needs judge.base_url"):
        load_config(label.Config, None, base + ["judge.backend=openai"])
    with pytest.raises(ConfigError, match="set judge.backend=openai"):
        load_config(label.Config, None, base + ["judge.base_url=http://x/v1"])
