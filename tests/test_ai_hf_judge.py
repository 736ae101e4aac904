"""HFJudge on tiny local models: its log-probs against manual forward passes."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_model

from rlxf.feedback.ai.cache import ResponseCache
from rlxf.feedback.ai.hf_judge import HFJudge
from rlxf.feedback.ai.labeller import DirectScoreReward, JudgeSettings, judge_pairs
from rlxf.feedback.ai.scoring import logsumexp
from rlxf.feedback.ai.templates import load_template, pairwise_prompt, rating_prompt

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


def test_cache_serves_a_second_judge_and_long_prompts_are_cut(tmp_path, tokenizer):
    model = make_model("gpt2", len(tokenizer)).eval()
    cache = ResponseCache(tmp_path / "c.sqlite")
    first = HFJudge(model, tokenizer, cache=cache, identity="tiny")
    a = first.answer_logprobs(PROMPTS, ["1", "2"])
    second = HFJudge(model, tokenizer, cache=ResponseCache(tmp_path / "c.sqlite"), identity="tiny")
    b = second.answer_logprobs(PROMPTS, ["1", "2"])
    assert [x.logprobs for x in a] == [x.logprobs for x in b]
    assert second.stats()["forward_rows"] == 0 and second.stats()["cache_hits"] == 3
    long = " ".join(["the fox is red ."] * 60)  # ~300 tokens, the model has 128 positions
    [scores] = first.answer_logprobs([long], ["1", "2"])
    # three rows were cut: the prompt alone, and with " " + "1" and " " + "2" (two-token answers)
    assert first.stats()["truncated"] == 3 and all(math.isfinite(v) for v in scores.logprobs)
    [[text]] = first.generate([long], max_tokens=5, temperature=0.0)  # cut to fit, not an index error
    assert first.stats()["truncated"] == 4 and isinstance(text, str)


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
