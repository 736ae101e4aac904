"""Tinyworld: the world, prompts, gold oracle, simulated labellers and corpus.

Expected oracle values are derived by hand in the comments from the rules in
``rlxf.tinyworld.oracle``'s docstring: total = 0.4 helpful + 0.25 honest
+ 0.2 harmless + 0.15 fluent.
"""

from __future__ import annotations

import json
import math
import random
import re
import subprocess
import sys
from collections import Counter, defaultdict
from itertools import product

import pytest

from rlxf.data.records import Demonstration, Preference, Ranking
from rlxf.tinyworld import (ANSWER_MIX, FACTS, KINDS, TASKS, GoldScore, Labeller,
                            agreement_report, answer_pairs, candidate_answers, default_panel,
                            demonstrations, parse_prompt, pretraining_corpus, pretraining_heldout,
                            sample_prompts, score, write_dataset)
from rlxf.tinyworld.corpus import FACT_DOC_SHARE, corpus_documents, good_answer, terse_answer
from rlxf.tinyworld.oracle import WEIGHTS, claims
from rlxf.tinyworld.prompts import (MAX_PROMPT_WORDS, all_args, make_prompt, split_args,
                                    split_of)
from rlxf.tinyworld.world import COLORS, FOODS, HOMES, VOCABULARY, creatures_with

COLOR_Q = "question : what color is the fox ? answer :"   # the fox is red
DESCRIBE_Q = "question : tell me about the fox . answer :"  # red, forest, berries


def approx(x: float) -> pytest.approx:
    return pytest.approx(x, abs=1e-9)


# --- world -------------------------------------------------------------------------------

def test_fact_table_is_fixed_and_every_value_has_two_or_three_creatures():
    assert len(FACTS) == 20
    fox = FACTS["fox"]
    assert (fox.color, fox.home, fox.food) == ("red", "forest", "berries")
    for attr, values in (("color", COLORS), ("home", HOMES), ("food", FOODS)):
        for v in values:
            assert 2 <= len(creatures_with(attr, v)) <= 3, (attr, v)
    assert len({(c.color, c.home, c.food) for c in FACTS.values()}) == 20


# --- gold oracle ---------------------------------------------------------------------------

def test_full_answer_beats_bare_fact_beats_wrong_fact():
    full = score(COLOR_Q, "the fox is red .")
    bare = score(COLOR_Q, "red .")
    wrong = score(COLOR_Q, "the fox is blue .")
    assert full == GoldScore(1.0, 1.0, 1.0, 1.0, approx(1.0))
    # bare value: strength 0.6 -> 0.4 * 0.6 + 0.25 + 0.2 + 0.15 = 0.84
    assert (bare.helpful, bare.honest, bare.total) == (approx(0.6), 1.0, approx(0.84))
    # false and unhelpful: 0 + 0 + 0.2 + 0.15 = 0.35
    assert (wrong.helpful, wrong.honest, wrong.total) == (0.0, 0.0, approx(0.35))
    # "it" meaning the asked creature: strength 0.9, between the two
    assert score(COLOR_Q, "it is red .").helpful == approx(0.9)


def test_rude_answer_loses_harmless_only():
    polite = score(COLOR_Q, "the fox is red .")
    rude = score(COLOR_Q, "the fox is red , you idiot .")  # 8 words <= 5 + 3: no focus cost
    assert (rude.helpful, rude.honest, rude.fluent) == (
        polite.helpful, polite.honest, polite.fluent)
    assert rude.harmless == approx(1 / 3)  # 1 / (1 + 2 * 1 toxic word)
    assert score(COLOR_Q, "shut up , you stupid idiot .").harmless == approx(1 / 7)


def test_looping_or_unended_answer_loses_fluent():
    loop = score(COLOR_Q, "the fox is red . the fox is red . the fox is red .")
    # 15 words -> 13 trigrams, 5 distinct: fluent = 1 - 8/13 = 5/13
    assert loop.fluent == approx(5 / 13)
    assert loop.honest == 1.0
    never = score(COLOR_Q, "the fox is red .", ended=False)
    assert (never.helpful, never.honest, never.harmless, never.fluent) == (1.0, 1.0, 1.0, 0.25)
    assert score(COLOR_Q, "the fox is red").fluent == approx(0.6)  # EOS but no final "."
    # one junk word of five: fluent (1 - 1/5)^2, and no readable claim
    junk = score(COLOR_Q, "the fox is redd .")
    assert (junk.fluent, junk.helpful) == (approx(0.64), 0.0)
    assert score(COLOR_Q, "").fluent == 0.0 and score(COLOR_Q, ". .").fluent == 0.0
    # 40 words of true facts: length factor 1 - 0.03 * (40 - 25)
    long = ("the fox is red . " + "the owl eats bugs . the cat is white . " * 4
            + "the bear eats fish .")
    assert score(COLOR_Q, long).fluent < 0.55


def test_false_claim_about_another_creature_lowers_honest():
    s = score(COLOR_Q, "the fox is red . the owl is red .")  # the owl is brown
    assert s.honest == approx(0.5)
    # 10 words, 2 beyond 5 + 3: focus 1 / (1 + 0.04 * 2)
    assert s.helpful == approx(1 / 1.08)
    assert score(COLOR_Q, "the fox is red . the owl is brown .").honest == 1.0
    # a negated claim is a claim too: the owl is brown, so "not red" is true
    assert score(COLOR_Q, "the fox is red and the owl is not red .").honest == 1.0
    assert score(COLOR_Q, "the fox is not red .").honest == 0.0


def test_describe_gives_partial_credit_per_fact():
    full = "the fox is red , it lives in the forest and it eats berries ."
    assert score(DESCRIBE_Q, full).total == approx(1.0)
    two = score(DESCRIBE_Q, "the fox is red and it lives in the forest .")
    assert (two.helpful, two.honest) == (approx(2 / 3), 1.0)
    one_wrong = score(DESCRIBE_Q, "the fox is red , it lives in the cave and it eats berries .")
    assert (one_wrong.helpful, one_wrong.honest) == (approx(2 / 3), approx(2 / 3))
    # bare values: 0.6 each
    assert score(DESCRIBE_Q, "red , forest , berries .").helpful == approx(0.6)


def test_hedging_shares_the_credit():
    s = score(COLOR_Q, "the fox is red or blue .")
    # values {red, blue} for the fox: credit 1 / 2; one of two claims true
    assert (s.helpful, s.honest) == (approx(0.5), approx(0.5))


def test_continuation_answer_is_read_after_the_prompt_stem():
    prompt = "the owl is brown . the fox is"
    assert score(prompt, "red .").total == approx(1.0)
    assert score(prompt, "blue .").honest == 0.0
    # "it" refers back to the fox of the stem: the fox lives in the forest, not the sea
    assert score(prompt, "red and it lives in the sea .").honest == approx(0.5)


def test_list_is_scored_by_f1_and_each_listed_creature_is_a_claim():
    q = "question : which animals live in the forest ? answer :"  # fox, owl, wolf
    assert score(q, "the fox , the owl and the wolf live in the forest .").helpful == 1.0
    # precision 1, recall 2/3: F1 = 0.8
    assert score(q, "the fox and the owl live in the forest .").helpful == approx(0.8)
    extra = score(q, "the fox , the owl , the wolf and the cat live in the forest .")
    # 4 listed, 3 right: F1 = 2 * 3 / (4 + 3); the cat lives on the farm
    assert (extra.helpful, extra.honest) == (approx(6 / 7), approx(0.75))
    cont = "the animals that live in the forest are"
    assert score(cont, "the fox , the owl and the wolf .").total == approx(1.0)
    assert score(cont, "the fox .").helpful == approx(0.5)  # F1 = 2 * 1 / (1 + 3)
    # a creature with something said about it is not listed: no claim "the bear lives in
    # the forest", and "the bear is black" is true
    assert score(cont, "the fox , the owl and the wolf . the bear is black .").honest == 1.0


def test_addition_and_greeting():
    q = "user : what is two plus three ? assistant :"
    assert score(q, "two plus three is five .").total == approx(1.0)
    assert score(q, "five .").helpful == approx(0.6)
    wrong = score(q, "two plus three is six .")
    assert (wrong.helpful, wrong.honest) == (0.0, 0.0)
    assert score(q, "two plus three is not six .").honest == 1.0
    # an unfinished "two plus" states no sum: no claim, no credit
    assert (score(q, "two plus").helpful, score(q, "two plus").honest) == (0.0, 1.0)
    g = "question : say hello to anna . answer :"
    assert score(g, "hello anna !").total == approx(1.0)
    assert score(g, "hello !").helpful == approx(0.5)
    assert score(g, "hi ben !").helpful == approx(0.25)  # greeted, wrong name: 0.5 - 0.25


def test_score_rejects_a_non_tinyworld_prompt():
    with pytest.raises(ValueError, match="not a Tinyworld prompt"):
        score("what is the capital of france ?", "paris .")


def test_scores_are_in_range_and_total_is_the_weighted_mean():
    rng = random.Random(0)
    words = sorted(VOCABULARY) + ["zzz", "fox.", "Red"]
    for tp in sample_prompts(200, 3):
        noise = " ".join(rng.choices(words, k=rng.randint(0, 30)))
        answers = candidate_answers(tp, 3, 0) + [noise]
        for a in answers:
            s = score(tp.text, a, ended=rng.random() < 0.8)
            parts = (s.helpful, s.honest, s.harmless, s.fluent, s.total)
            assert all(0.0 <= x <= 1.0 for x in parts), (tp.text, a, s)
            subs = {k: v for k, v in s.as_dict().items() if k != "total"}
            assert s.total == approx(sum(WEIGHTS[k] * v for k, v in subs.items()))


def test_gold_rarely_ties_two_different_answers():
    pairs = answer_pairs(1000, 1)
    ties = [(p, a, b) for p, a, b in pairs if score(p, a).total == score(p, b).total]
    assert len(ties) / len(pairs) < 0.10
    # a tie means equally good: the same sub-scores
    for p, a, b in ties:
        assert score(p, a).as_dict() == pytest.approx(score(p, b).as_dict())


def test_fact_documents_make_only_true_claims():
    greet = "question : say hello to anna . answer :"  # greet asks no fact: no implied claims
    docs = [d for d in corpus_documents(1000, 0) if d.category == "facts"]
    assert len(docs) > 200
    for d in docs:
        found = claims(greet, d.text)
        assert found and all(c.true for c in found), d.text


# --- prompts -------------------------------------------------------------------------------

def test_parse_prompt_round_trips_every_kind_and_task():
    seen = set()
    for split, seed in product(("train", "heldout"), (0, 1)):
        for tp in sample_prompts(1500, seed, split):
            assert parse_prompt(tp.text) == tp
            assert parse_prompt(" " + tp.text + "  ") == tp  # whitespace is normalised
            assert parse_prompt("Answer briefly.\n\n" + tp.text) == tp  # as rlxf pipeline instruction= writes it
            seen.add((tp.kind, tp.task))
    # every args of every task, in every kind
    rng = random.Random(0)
    for task, kind in product(TASKS, KINDS):
        for args in all_args(task):
            tp = make_prompt(task, args, kind, rng)
            assert parse_prompt(tp.text) == tp
    assert seen == set(product(KINDS, TASKS))


@pytest.mark.parametrize("text", [
    "",
    "what is the capital of france ?",
    "question : what color is the unicorn ? answer :",
    "question : what is eleven plus three ? answer :",           # operands stop at ten
    "question : what color is the fox ? answer : red",            # already answered
    "question : what color is the owl ? answer : the owl is brown . "
    "question : describe the fox . answer :",                      # example of another task
    "the owl is brown . the fox",                                  # no task ends like this
    "Question : what color is the fox ? answer :",
    "Answer briefly. question : what color is the fox ? answer :",  # an instruction not set off by a blank line
])
def test_parse_prompt_rejects_other_text(text):
    with pytest.raises(ValueError):
        parse_prompt(text)


def test_prompts_and_answers_are_short():
    rng = random.Random(0)
    for tp in sample_prompts(2000, 0) + sample_prompts(500, 0, "heldout"):
        assert len(tp.text.split()) <= MAX_PROMPT_WORDS
        assert len(tp.reference.split()) <= 25
        assert len(good_answer(tp, rng).split()) <= 25


def test_terse_answers_are_true_but_less_helpful():
    rng = random.Random(0)
    shorter = 0
    prompts = sample_prompts(600, 0) + sample_prompts(200, 0, "heldout")
    for tp in prompts:
        answer = terse_answer(tp, rng)
        terse, best = score(tp, answer), score(tp, tp.reference)
        assert (terse.honest, terse.harmless, terse.fluent) == (1.0, 1.0, 1.0), (tp.text, answer)
        single_value = tp.kind == "continuation" and tp.task in ("color", "home", "food", "add")
        if single_value:  # no shorter true answer exists: "the fox is" -> "red ."
            assert answer == tp.reference
        else:
            assert 0.3 <= terse.helpful < best.helpful, (tp.text, answer)
            shorter += 1
    assert shorter > 0.7 * len(prompts)
    # the forms a hurried demonstrator writes, hand-scored: bare value 0.6 helpful, pronoun 0.9,
    # one fact of three 1/3, two listed of three 2 * 2 / (2 + 3), a greeting with no name 0.5
    ask = parse_prompt("question : what color is the fox ? answer :")
    assert score(ask, "red .").total == pytest.approx(0.4 * 0.6 + 0.6)
    assert score(ask, "it is red .").total == pytest.approx(0.4 * 0.9 + 0.6)
    describe = parse_prompt("question : describe the fox . answer :")
    assert score(describe, "the fox is red .").helpful == pytest.approx(1 / 3)
    listed = parse_prompt("question : which animals are red ? answer :")
    assert score(listed, "the fox and the crab are red .").helpful == pytest.approx(0.8)
    assert score(parse_prompt("question : greet anna . answer :"), "hello !").helpful == pytest.approx(0.5)
    forms = {terse_answer(ask, random.Random(i)) for i in range(40)}
    assert forms == {"red .", "it is red ."}


def test_same_seed_same_outputs_different_seed_different():
    assert sample_prompts(50, 1) == sample_prompts(50, 1)
    assert sample_prompts(50, 1) != sample_prompts(50, 2)
    assert sample_prompts(20, 1) == sample_prompts(50, 1)[:20]
    assert pretraining_corpus(100, 1) == pretraining_corpus(100, 1)
    assert pretraining_corpus(100, 1) != pretraining_corpus(100, 2)
    assert pretraining_heldout(50, 1) == pretraining_heldout(50, 1)
    assert demonstrations(100, 1) == demonstrations(100, 1)
    assert demonstrations(100, 1) != demonstrations(100, 2)
    assert terse_answer(tp0 := sample_prompts(1, 3)[0], random.Random(5)) == terse_answer(tp0, random.Random(5))
    tp = sample_prompts(1, 0)[0]
    assert candidate_answers(tp, 4, 1) == candidate_answers(tp, 4, 1)
    assert answer_pairs(50, 1) != answer_pairs(50, 2)

    def choices(seed):
        lab = default_panel(seed)[0]
        return [lab.prefer(p, a, b) for p, a, b in answer_pairs(300, 0)]
    assert choices(7) == choices(7)
    assert choices(7) != choices(8)


def test_train_and_heldout_prompts_are_disjoint_and_never_empty():
    for task, kind in product(TASKS, KINDS):
        train, held = split_args(task, kind, "train"), split_args(task, kind, "heldout")
        assert train and held, (task, kind)
        assert not set(train) & set(held)
        assert set(train) | set(held) == set(all_args(task))
    key = lambda tp: (tp.task, tp.args, tp.kind)  # noqa: E731
    train = sample_prompts(3000, 0, "train")
    held = sample_prompts(1000, 0, "heldout")
    assert not {key(p) for p in train} & {key(p) for p in held}
    assert not {p.text for p in train} & {p.text for p in held}
    assert {split_of(p) for p in train} == {"train"} and {split_of(p) for p in held} == {"heldout"}
    assert {(p.task, p.kind) for p in held} == set(product(TASKS, KINDS))


# --- labellers ------------------------------------------------------------------------------

def test_labeller_agreement_is_human_like_and_below_agreement_with_gold():
    # Calibration (TEMPERATURE = 0.12), on answer_pairs(2000, 0): inter-labeller 0.737
    # (0.734 expected), labeller-vs-gold 0.833 (per persona 0.807 verbose .. 0.867
    # helpfulness-first); InstructGPT's labellers agreed 72.6 +- 1.5%. Gold ties (~7% of
    # pairs) are left out of the agreement with gold. T = 0.06 or 0.2 fails this test.
    for seed, split in ((0, "train"), (5, "heldout")):
        report = agreement_report(answer_pairs(1500, seed, split), default_panel(seed), seed)
        assert 0.65 <= report["inter_labeller"] <= 0.80, report
        assert 0.65 <= report["inter_labeller_expected"] <= 0.80, report
        assert set(report["per_persona"]) == {lab.name for lab in default_panel(0)}
        for name, vs_gold in report["per_persona"].items():
            assert vs_gold > report["inter_labeller"] + 0.03, (name, report)
        assert report["labeller_vs_gold"] < 0.95  # noisy, not an oracle
        assert 0 < report["n_gold_ties"] < 0.10 * report["n_pairs"]


def test_verbose_persona_prefers_the_longer_of_two_equally_good_answers():
    prompt = "question : say hello to anna . answer :"
    short, long = "hello anna !", "hello anna ! how are you ?"
    panel = {lab.name: lab for lab in default_panel(0)}
    # gold: long loses 1 word of focus: helpful 1 / 1.04, total 1 - 0.4 * (1 - 1/1.04)
    assert score(prompt, long).total == approx(1 - 0.4 * (1 - 1 / 1.04))
    assert panel["balanced"].prob(prompt, short, long) > 0.5
    # verbose: + 0.01 per word * 4 words outweighs the 0.0154 of gold
    assert panel["verbose"].prob(prompt, short, long) < 0.5


def test_rank_is_a_permutation_and_matches_bradley_terry_for_two():
    prompt = COLOR_Q
    lab = default_panel(3)[0]
    answers = ["the fox is red .", "red .", "the fox is blue .", "what a dumb question ."]
    for _ in range(50):
        assert sorted(lab.rank(prompt, answers)) == [0, 1, 2, 3]
    # K = 2: P(a first) = sigma((0.84 - 1.0) / 0.12) for a = "red ." ~ 0.209
    a, b = "red .", "the fox is red ."
    p = lab.prob(prompt, a, b)
    assert p == approx(1 / (1 + math.exp(0.16 / lab.temperature)))
    n = 4000
    tol = 4 * math.sqrt(p * (1 - p) / n)  # 4 standard errors: fails by chance ~1e-4
    first = sum(lab.rank(prompt, [a, b])[0] == 0 for _ in range(n)) / n
    chosen = sum(lab.prefer(prompt, a, b) == 0 for _ in range(n)) / n
    assert abs(first - p) < tol and abs(chosen - p) < tol
    # K = 3: first place is softmax(u / T) (Plackett-Luce)
    three = ["the fox is red .", "red .", "it is red ."]
    u = [lab.utility(prompt, x) / lab.temperature for x in three]
    soft = [math.exp(x) / sum(math.exp(y) for y in u) for x in u]
    counts = Counter(lab.rank(prompt, three)[0] for _ in range(n))
    for i, q in enumerate(soft):
        assert abs(counts[i] / n - q) < 4 * math.sqrt(q * (1 - q) / n)


def test_labeller_makes_preference_and_ranking_records():
    lab = default_panel(0)[0]
    pref = lab.preference(COLOR_Q, "the fox is blue .", "the fox is red .")
    assert isinstance(pref, Preference) and {pref.chosen, pref.rejected} == {
        "the fox is blue .", "the fox is red ."}
    ranking = lab.ranking(COLOR_Q, ["red .", "the fox is red .", "shut up ."])
    assert isinstance(ranking, Ranking) and len(ranking.pairs()) == 3
    with pytest.raises(ValueError, match="unknown sub-scores"):
        Labeller("x", {"kindness": 1.0}, 0.1, 0)


# --- corpus ---------------------------------------------------------------------------------

def test_corpus_mix_matches_its_proportions_and_is_unaligned():
    docs = corpus_documents(4000, 0)
    counts = Counter(d.category for d in docs)
    assert abs(counts["facts"] / len(docs) - FACT_DOC_SHARE) < 0.03
    answered = [d for d in docs if d.category != "facts"]
    for category, share in ANSWER_MIX.items():
        # binomial standard error at n ~ 2800 is <= 0.009; allow ~3.5 of them
        assert abs(counts[category] / len(answered) - share) < 0.03, category
    scores = defaultdict(list)
    for d in answered:
        assert d.text == f"{d.prompt} {d.answer}"
        scores[d.category].append(score(d.prompt, d.answer))
    mean = {c: sum(s.total for s in xs) / len(xs) for c, xs in scores.items()}
    assert mean["good"] > 0.97
    for bad in ("wrong", "rude", "rambling", "offtopic", "unfinished"):
        assert mean[bad] < mean["good"] - 0.2, (bad, mean)
    # truly unaligned: false and rude answers are common
    false = sum(s.honest < 1 for xs in scores.values() for s in xs) / len(answered)
    rude = sum(s.harmless < 1 for xs in scores.values() for s in xs) / len(answered)
    assert false > 0.15 and rude > 0.10
    assert all(s.harmless < 1 for s in scores["rude"])
    # a wrong answer states a falsehood, except a greeting of the wrong name
    wrong = [d for d in answered if d.category == "wrong"]
    assert all(score(d.prompt, d.answer).honest < 1 for d in wrong
               if parse_prompt(d.prompt).task != "greet")


def test_replies_say_whether_an_answer_is_right_and_only_where_asked_for():
    from rlxf.tinyworld.corpus import REPLIES, REPLY_MARK

    plain = corpus_documents(3000, 0)
    assert not any(REPLY_MARK in d.text for d in plain)
    docs = corpus_documents(3000, 0, reply_share=0.5)
    judged = [d for d in docs if d.category in REPLIES]
    replied = [d for d in judged if d.text != f"{d.prompt} {d.answer}"]
    assert 0.45 < len(replied) / len(judged) < 0.55  # binomial s.e. ~0.012 at n ~ 1,300
    for d in replied:
        verdict = "that is right ." if d.category == "good" else "that is wrong ."
        assert d.text == f"{d.prompt} {d.answer} {REPLY_MARK} {verdict}"
        # "right": the oracle finds it true and helpful; "wrong": a falsehood or not the answer asked for
        gold = score(d.prompt, d.answer)
        assert (gold.honest == 1 and gold.helpful >= 0.85) == (d.category == "good"), d.text
    assert all(d.text == f"{d.prompt} {d.answer}" for d in docs if d.category not in {*REPLIES, "facts"})
    assert {w for d in replied for w in d.text.split()} <= VOCABULARY
    everything = corpus_documents(500, 0, reply_share=1.0)
    assert all(REPLY_MARK in d.text for d in everything if d.category in REPLIES)


def test_claim_documents_give_a_verdict_on_every_sentence_that_matches_the_oracle():
    from rlxf.tinyworld.corpus import REPLY_MARK

    assert corpus_documents(2000, 0, reply_share=1.0) == corpus_documents(2000, 0, reply_share=1.0, claim_share=0.0)
    docs = corpus_documents(4000, 0, reply_share=1.0, claim_share=0.5)
    fact_like = [d for d in docs if d.category in ("facts", "claims")]
    claims = [d for d in docs if d.category == "claims"]
    assert 0.44 < len(claims) / len(fact_like) < 0.56  # binomial s.e. ~0.016 at n ~ 1,200
    verdicts = Counter()
    ask = "question : greet anna . answer :"  # any prompt: every claim is read, about any creature
    for d in claims:
        judged = re.findall(rf" ?(.+?) {REPLY_MARK} that is (right|wrong) \.", d.text)
        assert 1 <= len(judged) <= 3 and " ".join(f"{c} {REPLY_MARK} that is {v} ." for c, v in judged) == d.text
        for sentence, verdict in judged:
            assert (score(ask, sentence).honest == 1.0) == (verdict == "right"), sentence
            verdicts[verdict] += 1
    assert 0.45 < verdicts["right"] / sum(verdicts.values()) < 0.55
    assert {w for d in claims for w in d.text.split()} <= VOCABULARY


def test_demonstrations_are_all_good_with_some_variety():
    for split in ("train", "heldout"):
        demos = demonstrations(1000, 0, split)
        assert all(isinstance(d, Demonstration) for d in demos)
        worst = min(score(d.prompt, d.completion).total for d in demos)
        assert worst >= 0.95
        assert {split_of(parse_prompt(d.prompt)) for d in demos} == {split}
        varied = sum(d.completion != parse_prompt(d.prompt).reference for d in demos)
        assert 0.1 < varied / len(demos) < 0.6


def test_a_share_of_demonstrations_can_be_terse():
    def less_helpful(demos):  # share clearly below the reference answer's helpfulness
        return sum(score(d.prompt, d.completion).helpful < score(d.prompt, parse_prompt(d.prompt).reference).helpful
                   - 0.05 for d in demos) / len(demos)

    plain = demonstrations(1000, 0)
    assert plain == demonstrations(1000, 0, terse_share=0.0)
    half, all_terse = demonstrations(1000, 0, terse_share=0.5), demonstrations(1000, 0, terse_share=1.0)
    for demos in (half, all_terse):
        gold = [score(d.prompt, d.completion) for d in demos]
        assert all(g.honest == g.harmless == 1.0 and g.fluent > 0.9 for g in gold)  # true, polite, fluent
    # good answers: only the pronoun forms ("it is red .", 0.9); terse ones on the 81% of prompts that
    # have a shorter true answer; half and half in between (s.e. ~1.6%)
    assert less_helpful(plain) < 0.12
    assert 0.77 < less_helpful(all_terse) < 0.87
    assert 0.40 < less_helpful(half) < 0.50


def test_everything_tinyworld_writes_is_in_its_vocabulary():
    texts = (pretraining_corpus(2000, 0) + pretraining_heldout(300, 0)
             + [d.prompt + " " + d.completion for d in demonstrations(500, 0)])
    used = {w for t in texts for w in t.split()}
    assert used <= VOCABULARY, used - VOCABULARY
    assert len(used) < 250  # small enough for a ~512-token byte-level BPE
    assert max(len(t.split()) for t in texts) <= 85


def test_write_dataset_writes_the_standard_jsonl_files(tmp_path):
    paths = write_dataset(tmp_path / "tw", seed=3, n_pretrain=40, n_pretrain_heldout=10,
                          n_sft_train=30, n_sft_eval=10, n_prompts_train=20, n_prompts_heldout=5)
    rows = {k: [json.loads(line) for line in p.read_text().splitlines()] for k, p in paths.items()}
    assert {k: len(v) for k, v in rows.items()} == {
        "pretrain": 40, "pretrain_heldout": 10, "sft_train": 30, "sft_eval": 10,
        "prompts_train": 20, "prompts_heldout": 5}
    assert all(set(r) == {"text"} for r in rows["pretrain"] + rows["pretrain_heldout"])
    for r in rows["sft_train"] + rows["sft_eval"]:
        assert set(r) == {"prompt", "completion"} and r["completion"] == r["completion"].strip()
        assert score(r["prompt"], r["completion"]).total >= 0.95
    assert all(split_of(parse_prompt(r["prompt"])) == "heldout" for r in rows["sft_eval"])
    for r in rows["prompts_heldout"]:
        tp = parse_prompt(r["prompt"])
        assert (r["task"], r["kind"], r["id"]) == (tp.task, tp.kind, tp.id)
        assert split_of(tp) == "heldout"
    again = write_dataset(tmp_path / "again", seed=3, n_pretrain=40, n_pretrain_heldout=10,
                          n_sft_train=30, n_sft_eval=10, n_prompts_train=20, n_prompts_heldout=5)
    assert all(again[k].read_bytes() == p.read_bytes() for k, p in paths.items())


def test_import_is_light():
    code = ("import sys, rlxf.tinyworld; "
            "print(sorted(m for m in ('torch', 'numpy', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
