"""HFJudge on tiny local models: its log-probs against manual forward passes."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_model

from rlxf.feedback.ai.cache import ResponseCache
from rlxf.feedback.ai.fit import Room, fit_generated, fit_sample
from rlxf.feedback.ai.hf_judge import HFJudge
from rlxf.feedback.ai.judge import PromptTooLong
from rlxf.feedback.ai.labeller import (DirectScoreReward, JudgeSettings, PairJudgement, check_template_fits,
                                       judge_pairs)
from rlxf.feedback.ai.scoring import logsumexp
from rlxf.feedback.ai.templates import Template, load_template, pairwise_prompt, rating_choices, rating_prompt

PROMPTS = ["question : what color is the fox ? answer :", "say hello to tom .",
           "question : where does the owl live ? answer : the owl lives in the forest . question : what does "
           "the bear eat ? answer :"]


@torch.no_grad()
def next_logprobs(model, ids: list[int]) -> torch.Tensor:
    return torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), dim=-1)  # (V,)


def seq_logprob(model, prefix: list[int], cont: list[int]) -> float:
    """log P(cont | prefix), one token at a time (no batching, no padding)."""
    total = 0.0
    for t in cont:
        total += float(next_logprobs(model, prefix)[t])
        prefix = prefix + [t]
    return total


@pytest.fixture(scope="module")
def digit_tokenizer():
    """A tokenizer that learnt " 1" and "1" as different single tokens."""
    from rlxf.models.tokenizer import train_bpe_tokenizer

    text = ["score 1 . score 2 . item 1 and item 2 .", "1 2 1 2 12 21 1.", "answer : 1 answer : 2"] * 30
    return train_bpe_tokenizer(text, vocab_size=300, min_frequency=1)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_answer_logprobs_match_a_manual_forward_pass(tokenizer, arch):
    # The conftest tokenizer never saw digits: "1" is a byte token and " 1" is two tokens,
    # "Ġ" then "1". P(answer "1") = P(token "1") + P("Ġ") * P("1" | "Ġ").
    model = make_model(arch, len(tokenizer)).eval()
    judge = HFJudge(model, tokenizer, batch_size=2)  # batch 2 over 3 prompts: padding is exercised
    one, space = tokenizer.convert_tokens_to_ids(["1", "Ġ"])
    assert judge.answer_variants("1") == [(one,), (space, one)]
    got = judge.answer_logprobs(PROMPTS, ["1", "2"])
    for prompt, scores in zip(PROMPTS, got):
        ids = tokenizer(prompt)["input_ids"]
        lp = next_logprobs(model, ids)
        for answer, value in zip("12", scores.logprobs):
            tok = tokenizer.convert_tokens_to_ids(answer)
            manual = math.log(math.exp(lp[tok]) + math.exp(lp[space] + next_logprobs(model, ids + [space])[tok]))
            assert value == pytest.approx(manual, abs=1e-5)
        assert scores.method == "logprobs"


def test_every_single_token_variant_counts(digit_tokenizer):
    tok = digit_tokenizer
    plain, spaced = tok.convert_tokens_to_ids(["1", "Ġ1"])
    assert tok.unk_token_id not in (plain, spaced) and plain != spaced  # the premise of this test
    model = make_model("gpt2", len(tok), seed=3).eval()
    judge = HFJudge(model, tok)
    variants = judge.answer_variants("1")
    assert (plain,) in variants and (spaced,) in variants
    assert all(tok.decode(list(v)).strip() == "1" for v in variants)
    [scores] = judge.answer_logprobs(["answer :"], ["1", "2"])
    lp = next_logprobs(model, tok("answer :")["input_ids"])
    # both spellings add up: log(p("1") + p(" 1") + ...) exceeds either one alone
    assert scores.logprobs[0] > max(float(lp[plain]), float(lp[spaced])) + 1e-3
    manual = logsumexp([float(lp[v[0]]) if len(v) == 1 else seq_logprob(model, tok("answer :")["input_ids"], list(v))
                        for v in variants])
    assert scores.logprobs[0] == pytest.approx(manual, abs=1e-5)


def test_swap_averaged_label_from_the_two_orders(tokenizer):
    model = make_model("gpt2", len(tokenizer), seed=1).eval()
    judge = HFJudge(model, tokenizer)
    t = load_template("tinyworld")
    pair = ("question : what color is the fox ? answer :", "the fox is red .", "the fox is blue .")
    [verdict] = judge_pairs(judge, [pair], JudgeSettings(template=t))
    ab, ba = judge.answer_logprobs([pairwise_prompt(t, pair[0], pair[1], pair[2]),
                                    pairwise_prompt(t, pair[0], pair[2], pair[1])], ["1", "2"])
    p_ab = 1 / (1 + math.exp(ab.logprobs[1] - ab.logprobs[0]))
    p_ba = 1 / (1 + math.exp(ba.logprobs[1] - ba.logprobs[0]))
    assert verdict.p_first_ab == pytest.approx(p_ab, abs=1e-9)
    assert verdict.p_first_ba == pytest.approx(p_ba, abs=1e-9)
    assert verdict.prob_a == pytest.approx((p_ab + 1 - p_ba) / 2, abs=1e-9)
    assert verdict.flipped == ((p_ab - 0.5) * (p_ba - 0.5) > 0)


def test_direct_score_is_the_expected_rating_by_hand(tokenizer):
    # In this tokenizer " 10" is "Ġ" "1" "0", so P(" 1") includes P(" 10"):
    # P(exactly 1) = P(" 1") - P(" 10"); then renormalise over 1..10 and take the mean.
    model = make_model("gpt2", len(tokenizer), seed=2).eval()
    judge = HFJudge(model, tokenizer, batch_size=4)
    t = load_template("tinyworld")
    assert tokenizer(" 10")["input_ids"][:2] == tokenizer(" 1")["input_ids"]
    prompt, answer = "say hello to tom .", "hello tom !"
    text = rating_prompt(t, prompt, answer)
    ids = tokenizer(text)["input_ids"]
    probs = {k: math.exp(seq_logprob(model, ids, tokenizer(text + f" {k}")["input_ids"][len(ids):]))
             for k in range(1, 11)}
    probs[1] -= probs[10]
    expected = sum(k * p for k, p in probs.items()) / sum(probs.values())
    [score] = DirectScoreReward(judge, t)([prompt], [answer])
    assert score == pytest.approx(expected, abs=1e-6)
    [normalised] = DirectScoreReward(judge, t, normalize=True)([prompt], [answer])
    assert normalised == pytest.approx((expected - 5.5) / 4.5, abs=1e-6)


def test_cache_serves_a_second_judge(tmp_path, tokenizer):
    model = make_model("gpt2", len(tokenizer)).eval()
    cache = ResponseCache(tmp_path / "c.sqlite")
    first = HFJudge(model, tokenizer, cache=cache, identity="tiny")
    a = first.answer_logprobs(PROMPTS, ["1", "2"])
    second = HFJudge(model, tokenizer, cache=ResponseCache(tmp_path / "c.sqlite"), identity="tiny")
    b = second.answer_logprobs(PROMPTS, ["1", "2"])
    assert [x.logprobs for x in a] == [x.logprobs for x in b]
    assert second.stats()["forward_rows"] == 0 and second.stats()["cache_hits"] == 3


def test_a_prompt_too_long_for_the_judge_is_refused_never_cut(tokenizer):
    # Cutting from the start would drop a template's instructions without a word; callers
    # shorten the sample (fit_sample), and the judge refuses what still does not fit.
    judge = HFJudge(make_model("gpt2", len(tokenizer)).eval(), tokenizer)
    long = " ".join(["the fox is red ."] * 60)  # ~300 tokens, the model has 128 positions
    with pytest.raises(PromptTooLong, match=r"exceeds the judge's 128 positions"):
        judge.answer_logprobs([long], ["1", "2"])
    with pytest.raises(PromptTooLong, match=r"with 5 more after it"):
        judge.generate([long], max_tokens=5, temperature=0.0)
    # " 1" is two tokens in this tokenizer ("Ġ", "1"): 2 positions are kept for the answer
    room = judge.room(answers=["1", "2"])
    assert (room.positions, room.reserved, room.tokens) == (128, 2, 126)
    assert judge.room(new_tokens=24, answers=["1"]).tokens == 104


class Words:
    """A tokenizer with one token per word, so that lengths below can be counted by hand."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": text.split()}

    def decode(self, ids):
        return " ".join(ids)


def test_fit_sample_shortens_the_conversation_then_the_answers_by_hand():
    def render(context, answers):  # 6 words of template around the sample
        return f"Judge this. C: {context} R1: {answers[0]} R2: {answers[1]} Best="

    context, answers = "c1 c2 c3 c4 c5 c6", ["a1 a2 a3", "b1 b2"]
    # 6 + 6 + 3 + 2 = 17 words; room 15 - 2 = 13: the first 4 words of the conversation go
    assert fit_sample(render, Room(15, 2, Words()), context, answers) == \
        ("Judge this. C: c5 c6 R1: a1 a2 a3 R2: b1 b2 Best=", True)
    # room 8: without the conversation 6 + 3 + 2 = 11; both answers capped at k words:
    # k = 2 gives 6 + 2 + 2 = 10 > 8, k = 1 gives 6 + 1 + 1 = 8: each keeps its first word
    fitted = fit_sample(render, Room(10, 2, Words()), context, answers)
    assert fitted.prompt.split() == "Judge this. C: R1: a1 R2: b1 Best=".split() and fitted.shortened
    # room 5 < the 6 words of the template itself: nothing can be asked
    assert fit_sample(render, Room(7, 2, Words()), context, answers) == (None, True)
    # a prompt that fits (17 words in a room of 17), or a judge with no known context, is left as it is
    whole = render(context, answers)
    assert fit_sample(render, Room(19, 2, Words()), context, answers) == (whole, False)
    assert fit_sample(render, None, context, answers) == (whole, False)


def test_fit_generated_cuts_generated_text_from_its_end_by_hand():
    def follow(text):  # 4 words of prompt around the generated text
        return f"Prompt words here {text} Ending"

    text = "r1 r2 r3 r4 r5 r6"
    # 4 + 6 = 10 words in a room of 10 - 2 = 8: the last 2 words go
    assert fit_generated(follow, Room(10, 2, Words()), text) == ("r1 r2 r3 r4", True)
    # text that fits (10 words in 10), or a judge with no known context, is left as it is
    assert fit_generated(follow, Room(12, 2, Words()), text) == (text, False)
    assert fit_generated(follow, None, text) == (text, False)
    # room 3 < the 4 words of the prompt itself: too long whatever was generated
    assert fit_generated(follow, Room(5, 2, Words()), text) == (None, True)


class Overlong(HFJudge):
    """Generates text that takes more tokens, tokenized again, than the ``max_tokens`` it was
    generated in, as a generation stopped inside a character does: each U+FFFD it decodes to is
    3 byte tokens in this tokenizer."""

    def generate(self, prompts, *, max_tokens, n=1, **kw):
        return [["\ufffd" * max_tokens] * n for _ in prompts]


SHORT = Template(preamble="say hello to tom .", sample="question : {context} answer 1 : {response1} answer 2 : "
                 "{response2}", ending=" good answer :")


def test_a_long_pair_keeps_the_instructions_and_labels_and_shortens_its_sample(tokenizer):
    judge = HFJudge(make_model("gpt2", len(tokenizer), seed=1).eval(), tokenizer)
    context = " ".join(["question : what does the bear eat ? answer : the bear eats fish ."] * 12)  # ~190 tokens
    pair = (context, "the fox is red .", "the owl lives in the forest .")
    [verdict] = judge_pairs(judge, [pair], JudgeSettings(template=SHORT))
    assert verdict.shortened == 2 and verdict.methods == ("logprobs", "logprobs")
    room = judge.room(answers=["1", "2"])

    def render(context, answers):
        return pairwise_prompt(SHORT, context, answers[0], answers[1])

    ab = fit_sample(render, room, context, pair[1:]).prompt
    ba = fit_sample(render, room, context, pair[:0:-1]).prompt
    for prompt, first in ((ab, pair[1]), (ba, pair[2])):
        # the preamble, both labels, both answers and the ending are all there; the conversation lost its start
        assert prompt.startswith("say hello to tom .\n\nquestion : ") and prompt.endswith(" good answer :")
        assert f"answer 1 : {first} answer 2 : " in prompt
        whole = render(context, pair[1:])
        assert len(tokenizer(prompt)["input_ids"]) <= room.tokens < len(tokenizer(whole)["input_ids"])
        assert context.endswith(prompt.split("question : ", 1)[1].split(" answer 1 : ")[0])
    # what was judged is the fitted prompts, in both orders
    lp_ab, lp_ba = judge.answer_logprobs([ab, ba], ["1", "2"])
    assert verdict.p_first_ab == pytest.approx(1 / (1 + math.exp(lp_ab.logprobs[1] - lp_ab.logprobs[0])), abs=1e-9)
    assert verdict.p_first_ba == pytest.approx(1 / (1 + math.exp(lp_ba.logprobs[1] - lp_ba.logprobs[0])), abs=1e-9)


def test_a_pair_that_cannot_fit_is_counted_too_long_and_a_template_that_cannot_fails_first(tokenizer):
    from rlxf.errors import ConfigError
    from rlxf.feedback.ai.constitution import Constitution, Principle
    from rlxf.feedback.ai.label import label_summary

    judge = HFJudge(make_model("gpt2", len(tokenizer)).eval(), tokenizer)
    long = " ".join(["the fox is red ."] * 30)  # ~150 tokens: more than the 126 a prompt may have
    pair = ("say hello to tom .", "hello tom !", "go away .")
    # a template too long by itself: no pair could be judged, so it fails before any is; the commands
    # run the same check alone, before any slow work (check_template_fits)
    too_long = JudgeSettings(template=Template(preamble=long, sample=SHORT.sample))
    for check in (lambda: judge_pairs(judge, [pair], too_long), lambda: check_template_fits(judge, too_long)):
        with pytest.raises(ConfigError, match=r"template alone \(no conversation, no answers\) is \d+ tokens, "
                                              r"more than the 126 the judge's 128 positions"):
            check()
    # the template fits, but not with the constitution's longest principle in the preamble: the pairs that
    # draw it could never be judged, so that fails first too, naming the principle
    wordy = Constitution(principles=[Principle(name="brief", judge="be kind .", critique="x", revision="y"),
                                     Principle(name="wordy", judge=long, critique="x", revision="y")])
    with_wordy = JudgeSettings(template=SHORT, constitution=wordy)
    for check in (lambda: judge_pairs(judge, [pair], with_wordy), lambda: check_template_fits(judge, with_wordy)):
        with pytest.raises(ConfigError, match=r"template alone \(no conversation, no answers\) with principle "
                                              r"'wordy' \(the constitution's longest\) is \d+ tokens, more than "
                                              r"the 126 .* shorter principles"):
            check()
    assert judge.stats()["forward_rows"] == 0
    brief = Constitution(principles=wordy.principles[:1])
    check_template_fits(judge, JudgeSettings(template=SHORT, constitution=brief))  # fits without "wordy"
    # a pair that no shortening makes fit is never asked; counted as too long (a verdict as judge_pairs makes it)
    verdict = PairJudgement(None, None, None, ("too_long", "too_long"), shortened=2)
    assert verdict.problem == "too long for the judge"
    summary = label_summary([verdict])
    assert (summary["too_long_pairs"], summary["unparseable_pairs"], summary["shortened_prompts"]) == (1, 0, 2)
    # a rationale longer than the context: the error names the key that was set
    with pytest.raises(ConfigError, match=r"rationale_max_tokens \(200\) leaves no room"):
        judge_pairs(judge, [pair], JudgeSettings(template=SHORT, cot=True, rationale_max_tokens=200))


def test_direct_scores_of_long_answers_are_fitted(tokenizer):
    judge = HFJudge(make_model("gpt2", len(tokenizer), seed=2).eval(), tokenizer)
    t = load_template("tinyworld")
    prompt, answer = " ".join(["say hello to tom ."] * 40), "hello tom !"  # ~200 tokens
    reward = DirectScoreReward(judge, t)
    [score] = reward([prompt], [answer])
    fitted = fit_sample(lambda c, a: rating_prompt(t, c, a[0]), judge.room(answers=rating_choices(t)), prompt,
                        [answer]).prompt
    assert fitted.endswith("answer : hello tom ! score :") and reward.shortened == 1
    [same] = DirectScoreReward(judge, t)([fitted.removeprefix("rate : ").split(" answer : ")[0]], [answer])
    assert score == pytest.approx(same, abs=1e-9)


def test_cot_and_self_consistency_average_the_samples(tokenizer):
    model = make_model("gpt2", len(tokenizer), seed=4).eval()
    judge = HFJudge(model, tokenizer)
    t = load_template("tinyworld")
    pair = ("say hello to tom .", "hello tom !", "go away .")
    s = JudgeSettings(template=t, cot=True, samples=3, temperature=1.0, rationale_max_tokens=4, seed=5)
    [verdict] = judge_pairs(judge, [pair], s)
    assert len(verdict.rationales) == 6  # 3 samples x 2 orders
    # recompute order AB by hand: mean over its three rationales of P(first | rationale)
    cot_prompt = pairwise_prompt(t, *pair, cot=True)
    from rlxf.feedback.ai.templates import after_rationale

    scored = judge.answer_logprobs([after_rationale(t, cot_prompt, r) for r in verdict.rationales[:3]], ["1", "2"])
    p = [1 / (1 + math.exp(v.logprobs[1] - v.logprobs[0])) for v in scored]
    assert verdict.p_first_ab == pytest.approx(sum(p) / 3, abs=1e-9)


def test_cot_rationales_longer_once_tokenized_are_cut_to_fit_and_counted(tokenizer, caplog, monkeypatch):
    import logging

    from rlxf.feedback.ai.templates import after_rationale

    monkeypatch.setattr(logging.getLogger("rlxf"), "propagate", True)  # the CLI turns it off

    judge = Overlong(make_model("gpt2", len(tokenizer), seed=1).eval(), tokenizer)
    assert len(tokenizer("\ufffd" * 4)["input_ids"]) == 12  # 4 tokens generated, 12 once tokenized again
    context = " ".join(["question : what does the bear eat ? answer : the bear eats fish ."] * 12)  # ~190 tokens
    pair = (context, "the fox is red .", "the owl lives in the forest .")
    s = JudgeSettings(template=SHORT, cot=True, rationale_max_tokens=4)
    with caplog.at_level("WARNING", logger="rlxf"):
        [verdict] = judge_pairs(judge, [pair], s)
    # the prompts were fitted with room for 4 rationale tokens (+ 1): the 12 would overflow them; cut, both
    # orders are scored, nothing is dropped as too long
    assert verdict.methods == ("logprobs", "logprobs") and verdict.prob_a is not None
    assert verdict.cut_rationales == 2 and verdict.shortened == 2
    assert "2 of 2 rationales were more tokens re-tokenized than the 4 generated" in caplog.text
    room = judge.room(answers=["1", "2"])
    ask_room = room.less(4 + len(tokenizer(after_rationale(SHORT, "", ""))["input_ids"]) + 1)
    for rationale, (first, second) in zip(verdict.rationales, (pair[1:], pair[:0:-1])):
        prompt = fit_sample(lambda c, a: pairwise_prompt(SHORT, c, a[0], a[1], cot=True), ask_room, context,
                            (first, second)).prompt
        scored = after_rationale(SHORT, prompt, rationale)
        # as much of the rationale as fits: one token more would not
        assert ("\ufffd" * 4).startswith(rationale) and len(tokenizer(scored)["input_ids"]) <= room.tokens
        longer = tokenizer("\ufffd" * 4)["input_ids"][:len(tokenizer(rationale)["input_ids"]) + 1]
        assert len(tokenizer(after_rationale(SHORT, prompt, tokenizer.decode(longer)))["input_ids"]) > room.tokens


def test_a_local_judges_completion_ended_at_eos_or_a_stop_string_not_at_max_tokens(tmp_path, tokenizer):
    from conftest import scripted_model

    from rlxf.feedback.ai.hf_judge import HFJudge
    from rlxf.feedback.ai.judge import Completion

    prompt = "say hello to tom ."
    ends, n = scripted_model(tokenizer, prompt, "hello tom .", eos=True)
    judge = HFJudge(ends.eval(), tokenizer)
    # the judge writes after the prompt with no separator: the script's own " " comes first
    assert judge.complete([prompt], max_tokens=n, temperature=1.0) == [[Completion(" hello tom .", True)]]
    # one token short of its EOS: cut at max_tokens
    assert judge.complete([prompt], max_tokens=n - 1, temperature=1.0) == [[Completion(" hello tom .", False)]]
    # a stop string found in it: it ended there, whatever the length
    assert judge.complete([prompt], max_tokens=2, temperature=1.0, stop=[" tom"]) == [[Completion(" hello", True)]]
    assert judge.generate([prompt], max_tokens=n - 1, temperature=1.0) == [[" hello tom ."]]


def test_a_cached_completion_that_does_not_say_whether_it_ended_is_sampled_again(tmp_path, tokenizer):
    from conftest import scripted_model

    from rlxf.feedback.ai.cache import request_key
    from rlxf.feedback.ai.judge import Completion

    prompt, other = "say hello to tom .", "say hello to ann ."
    model, n = scripted_model(tokenizer, prompt, "hello tom .", eos=True)
    cache = ResponseCache(tmp_path / "cache.sqlite")
    judge = HFJudge(model.eval(), tokenizer, cache=cache)

    def key(p: str) -> str:  # what HFJudge.complete stores a request under
        return request_key(model=judge.identity, kind="generate", prompt=p, max_tokens=n - 1, temperature=1.0,
                           n=1, stop=[], seed=0)

    # an older rlxf stored the text only; this one was cut at max_tokens (one token short of its EOS)
    cache.put(key(prompt), {"texts": [" hello tom ."]})
    cache.put(key(other), {"texts": [" hello ann ."], "ended": [True]})  # a current entry: used as it is
    got = judge.complete([prompt, other], max_tokens=n - 1, temperature=1.0)
    assert got == [[Completion(" hello tom .", False)], [Completion(" hello ann .", True)]]
    assert judge.stats()["generated"] == 1  # the old entry only was sampled again ...
    assert cache.get(key(prompt)) == {"texts": [" hello tom ."], "ended": [False]}  # ... and replaced
    assert judge.complete([prompt], max_tokens=n - 1, temperature=1.0) == [got[0]]
    assert judge.stats()["generated"] == 1  # now a plain cache hit
