"""Sequence lengths meet the model's positions: a default meant for large models (512
tokens) must not crash a small one (GPT-2 fails with an index error past
``n_positions``), and whatever is cut is reported."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from conftest import SENTENCES, make_model, write_jsonl

from rlxf.config import load_config
from rlxf.data.tokenize import encode_pair
from rlxf.errors import ConfigError
from rlxf.models import generation
from rlxf.models.generation import generate
from rlxf.models.loading import ModelConfig, fit_length, load_causal_lm, load_tokenizer, max_positions
from rlxf.models.reward import (encode_answer, encode_answers, init_reward_model, shared_prefix_batch,
                                shared_prefix_values, token_values)
from rlxf.stages import ppo, reward, sft

POSITIONS = 24
PROMPT = "question : what color is the fox ? answer :"
LONG_PROMPT = " ".join(SENTENCES[:8]) + " " + PROMPT  # far more than 24 tokens


@pytest.fixture(scope="module")
def small(tmp_path_factory, tokenizer):
    """A GPT-2 of 24 positions, its reward model, and files of long prompts."""
    from transformers import GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("positions")
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=POSITIONS, n_embd=32, n_layer=2, n_head=4,
                               bos_token_id=1, eos_token_id=1)).save_pretrained(root / "lm")
    tokenizer.save_pretrained(root / "lm")
    init_reward_model(ModelConfig(name_or_path=str(root / "lm"))).save_pretrained(root / "rm")
    tokenizer.save_pretrained(root / "rm")
    write_jsonl(root / "demos.jsonl", [{"prompt": LONG_PROMPT, "completion": "the fox is red ."}] * 8)
    write_jsonl(root / "pairs.jsonl", [{"prompt": LONG_PROMPT, "chosen": f"the fox is {c} .",
                                        "rejected": f"the fox is {c} . the owl is red . hello tom !"}
                                       for c in ("red", "blue", "green", "black") * 2])
    write_jsonl(root / "prompts.jsonl", [{"prompt": LONG_PROMPT}, {"prompt": PROMPT}] * 4)
    return root


def test_max_positions_reads_either_config_key(tokenizer):
    assert max_positions(make_model("gpt2", len(tokenizer))) == 128  # n_positions
    assert max_positions(make_model("llama", len(tokenizer))) == 128  # max_position_embeddings
    assert max_positions(SimpleNamespace(config=SimpleNamespace())) is None


def test_fit_length_cuts_only_past_the_limit(tokenizer, caplog):
    model = make_model("gpt2", len(tokenizer))
    with caplog.at_level(logging.WARNING, logger="rlxf"):
        assert fit_length("data.max_length", 128, model) == 128
        assert not caplog.text
        assert fit_length("data.max_length", 512, model) == 128
    assert "data.max_length=512 is more than the model's 128 positions" in caplog.text


def test_encode_answers_cuts_the_prompt_alike_for_every_answer(tokenizer):
    short, long = "the fox is red .", "the fox is blue . the owl is red ."
    prompt, a_short = encode_pair(PROMPT, short, tokenizer, " ")
    _, a_long = encode_pair(PROMPT, long, tokenizer, " ")
    assert len(a_long) > len(a_short)
    fits = len(prompt) + len(a_long)
    assert encode_answers(PROMPT, [short, long], tokenizer, max_length=fits) == ([prompt + a_short, prompt + a_long], 0)

    # three tokens too many: the prompt loses its first three for both answers, not only for the long one
    seqs, cut = encode_answers(PROMPT, [short, long], tokenizer, max_length=fits - 3)
    assert seqs == [prompt[3:] + a_short, prompt[3:] + a_long] and cut == 2
    # shorter than the long answer: no prompt is left, and the long answer loses its end (and EOS)
    seqs, cut = encode_answers(PROMPT, [short, long], tokenizer, max_length=len(a_long) - 2)
    assert seqs == [a_short, a_long[:-2]] and cut == 2
    # one answer alone: what fits beside it stays
    assert encode_answer(PROMPT, short, tokenizer, max_length=fits - 3) == (prompt + a_short, False)
    assert encode_answer(PROMPT, short, tokenizer, max_length=len(prompt) + len(a_short) - 2) == (prompt[2:] + a_short,
                                                                                                 True)


def test_shared_prefix_values_without_a_shared_token_is_token_values(tmp_path, tokenizer):
    make_model("gpt2", len(tokenizer)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model = init_reward_model(ModelConfig(name_or_path=str(tmp_path))).eval()
    groups = [[[5, 6, 7], [8, 9]], [[10, 11], [12, 13, 14, 15]]]  # no group's answers share a first token
    batch = shared_prefix_batch(groups, tokenizer.pad_token_id)
    assert batch["prefix_ids"].shape == (2, 0)
    with torch.no_grad():
        shared = shared_prefix_values(model, batch["prefix_ids"], batch["prefix_mask"], batch["suffix_ids"],
                                      batch["suffix_mask"], batch["owner"])
        plain = token_values(model, batch["suffix_ids"], batch["suffix_mask"])
    assert torch.equal(shared, plain)


def test_generate_keeps_the_end_of_prompts_too_long_for_the_model(small, caplog, monkeypatch):
    monkeypatch.setattr(generation, "_warned", set())
    model, tok = load_causal_lm(ModelConfig(name_or_path=str(small / "lm"))), load_tokenizer(str(small / "lm"))
    with caplog.at_level(logging.WARNING, logger="rlxf"):
        gens = generate(model, tok, [LONG_PROMPT, PROMPT], max_new_tokens=8, seed=0)
        generate(model, tok, [LONG_PROMPT, PROMPT], max_new_tokens=8, seed=0)  # a second model of the same shape
    assert all(len(g.token_ids) <= 8 for g in gens)
    assert caplog.text.count("1 of 2 prompts were longer than the 16 tokens the model's 24 positions leave") == 1
    with pytest.raises(ConfigError, match=r"^max_new_tokens \(24\) leaves no room for a prompt"):
        generate(model, tok, [PROMPT], max_new_tokens=24)
    with pytest.raises(ConfigError, match=r"generation.max_new_tokens \(24\) .*; set generation.max_new_tokens below"):
        generate(model, tok, [PROMPT], max_new_tokens=24, key="generation.max_new_tokens")


def test_sft_and_reward_fit_data_max_length_to_the_model(small, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="rlxf"):
        summary = sft.run(load_config(sft.Config, None, [
            f"model.name_or_path={small / 'lm'}", f"data.train={small / 'demos.jsonl'}", "data.eval_fraction=0",
            "max_steps=2", "batch_size=4", f"out={tmp_path / 'sft'}", "progress=false"]))
        assert summary["steps"] == 2
        summary = reward.run(load_config(reward.Config, None, [
            f"model.name_or_path={small / 'lm'}", f"data.train={small / 'pairs.jsonl'}", "data.eval_fraction=0",
            "max_steps=2", "batch_size=4", f"out={tmp_path / 'rm'}", "progress=false"]))
        assert summary["sequences_cut"] == 16  # both answers of all 8 pairs
    assert caplog.text.count("data.max_length=512 is more than the model's 24 positions") == 2


def test_ppo_fits_prompt_and_reward_lengths_to_the_models(small, tmp_path, caplog):
    args = [f"model.name_or_path={small / 'lm'}", f"reward.model={small / 'rm'}",
            f"rollout.prompts={small / 'prompts.jsonl'}", "rollout.batch_size=8", "batch_size=4", "max_steps=1",
            f"out={tmp_path / 'ppo'}", "progress=false"]
    with pytest.raises(ConfigError, match=r"rollout.max_new_tokens \(64\) leaves no room for a prompt in the 24"):
        ppo.PPO(load_config(ppo.Config, None, args), torch.device("cpu"))
    cfg = load_config(ppo.Config, None, args + ["rollout.max_new_tokens=8"])
    with caplog.at_level(logging.WARNING, logger="rlxf"):
        fitted = ppo.PPO(cfg, torch.device("cpu")).cfg
        assert fitted.rollout.max_prompt_length == 16 and fitted.reward.max_length == POSITIONS
        assert ppo.run(cfg)["steps"] == 1
    assert "prompts keep their last 16 tokens" in caplog.text
