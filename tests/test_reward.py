"""The reward model: head, scoring contract, the training stage end to end, normalisation, resume."""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import sys

import pytest
import torch
from conftest import kill_and_resume, make_model, write_jsonl

from rlxf.config import load_config
from rlxf.errors import ConfigError, DataError
from rlxf.models.loading import ModelConfig, load_tokenizer
from rlxf.models.reward import (encode_answers, init_reward_model, load_reward_model, reward_inputs, score,
                                score_texts, set_reward_normalization, token_values)
from rlxf.stages import reward

ANIMALS = ["fox", "owl", "bear", "cat", "dog", "frog", "duck", "wolf"]
COLORS = ["red", "blue", "green", "black"]


def _answers(rng: random.Random, a: str) -> list[str]:
    """Three answers, best first: a complete sentence, a cut-off one, a loop."""
    c = rng.choice(COLORS)
    return [f"the {a} is {c} .", f"the {a} is", f"the {a} is {c} . the {a} is {c} . the {a} is {c} ."]


def _prompts() -> list[str]:
    return [f"question : what color is the {a} and the {b} ? answer :" for a in ANIMALS for b in ANIMALS if a != b]


def pair_rows(seed: int = 0) -> list[dict]:
    """56 prompts, one pair each: the complete answer is preferred to a cut-off or looping one."""
    rng = random.Random(seed)
    rows = []
    for p in _prompts():
        good, *bad = _answers(rng, p.split()[5])
        rows.append({"prompt": p, "chosen": good, "rejected": rng.choice(bad)})
    return rows


def ranking_rows(seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for p in _prompts():
        ordered = _answers(rng, p.split()[5])
        shuffled = rng.sample(range(3), 3)  # completions[shuffled[i]] = ordered[i]
        completions = [None] * 3
        for rank, slot in enumerate(shuffled):
            completions[slot] = ordered[rank]
        rows.append({"prompt": p, "completions": completions, "ranking": shuffled})
    return rows


def soft_rows(seed: int = 0) -> list[dict]:
    """Soft AI-style labels; a third of the rows list the better answer as 'rejected' with p < 1/2."""
    rows = []
    for i, row in enumerate(pair_rows(seed)):
        if i % 3 == 0:
            rows.append({"prompt": row["prompt"], "chosen": row["rejected"], "rejected": row["chosen"],
                         "prob_chosen": 0.1})
        else:
            rows.append({**row, "prob_chosen": 0.85})
    return rows


@pytest.fixture(scope="module")
def reward_base(tmp_path_factory, tokenizer):
    out = tmp_path_factory.mktemp("rm-base")
    make_model("gpt2", len(tokenizer)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _config(tmp_path, model_dir, rows, *overrides: str, name: str = "run") -> reward.Config:
    data = write_jsonl(tmp_path / f"{name}.jsonl", rows)
    base = [f"model.name_or_path={model_dir}", f"data.train={data}", f"out={tmp_path / name}", "lr=3e-3",
            "max_steps=60", "batch_size=8", "progress=false", "eval_every=30", "log_every=10",
            "data.eval_fraction=0.25"]
    return load_config(reward.Config, None, base + list(overrides))


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ----------------------------------------------------------------------------- the model contract


def test_head_is_initialised_small_and_dropout_is_off(tmp_path, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=512, n_layer=1, n_head=4,
                               resid_pdrop=0.3)).save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    model = init_reward_model(ModelConfig(name_or_path=str(tmp_path / "lm")))
    w = model.score.weight  # (1, 512)
    # N(0, 1/sqrt(513)) = N(0, 0.0441); the sample std of 512 draws is within ~3% (1/sqrt(2*512)) of it
    assert w.shape == (1, 512)
    assert abs(w.std().item() - 1 / math.sqrt(513)) < 0.1 / math.sqrt(513)
    assert abs(w.mean().item()) < 4 * (1 / math.sqrt(513)) / math.sqrt(512)
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    # the backbone came from the checkpoint
    lm = GPT2LMHeadModel.from_pretrained(tmp_path / "lm")
    assert torch.equal(lm.transformer.wte.weight, model.transformer.wte.weight)

    # an existing reward model keeps its trained head, but not its (now stale) normalisation
    with torch.no_grad():
        model.score.weight.fill_(0.5)
    set_reward_normalization(model, 1.0, 2.0, "test")
    model.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    again = init_reward_model(ModelConfig(name_or_path=str(tmp_path / "rm")))
    assert torch.equal(again.score.weight, torch.full((1, 512), 0.5))
    assert not hasattr(again.config, "rlxf_reward_normalization")


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_token_values_at_last_token_equal_the_pooled_logit(tmp_path, tokenizer, arch):
    make_model(arch, len(tokenizer)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model = init_reward_model(ModelConfig(name_or_path=str(tmp_path))).eval()
    batch = reward_inputs(["question : what color is the fox ? answer :", "say hello to tom ."],
                          ["the fox is red .", "hello tom ! hello"], tokenizer)
    with torch.no_grad():
        values = token_values(model, **batch)  # (B, T)
        pooled = model(**batch).logits[:, 0]  # HF's own pooling (pad != eos here, right padding)
    last = batch["attention_mask"].sum(1) - 1
    assert values.shape == batch["input_ids"].shape
    torch.testing.assert_close(values[torch.arange(2), last], pooled, atol=1e-6, rtol=1e-5)
    assert values[0, last[0]] != values[1, last[1]]  # not a constant head


def test_left_and_right_padding_and_pad_equal_to_eos_give_the_same_score(tmp_path, tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.pad_token = tok.eos_token  # like GPT-2 and Llama tokenizers: pad is EOS
    make_model("llama", len(tok)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model = init_reward_model(ModelConfig(name_or_path=str(tmp_path))).eval()
    prompts = ["question : what color is the fox ? answer :", "hi", "say hello to tom ."]
    answers = ["the fox is red .", "hello tom ! hello tom ! hello tom !", "hello tom"]
    with torch.no_grad():
        alone = torch.cat([score(model, **reward_inputs([p], [a], tok)) for p, a in zip(prompts, answers)])
        right = reward_inputs(prompts, answers, tok)
        ids, mask = right["input_ids"], right["attention_mask"]
        last = mask.sum(1) - 1
        assert (ids[torch.arange(3), last] != tok.eos_token_id).all()  # pad is EOS: inputs end at the answer
        left_ids, left_mask = torch.full_like(ids, tok.pad_token_id), torch.zeros_like(mask)
        for i, n in enumerate(mask.sum(1).tolist()):
            left_ids[i, -n:], left_mask[i, -n:] = ids[i, :n], 1
        torch.testing.assert_close(score(model, ids, mask), alone, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(score(model, left_ids, left_mask), alone, atol=1e-5, rtol=1e-5)
        # HF's pooling reads the last token != pad: the same token, so plain transformers agrees
        torch.testing.assert_close(model(ids, attention_mask=mask).logits[:, 0], alone, atol=1e-5, rtol=1e-5)


def test_an_answer_that_never_ended_gets_no_eos(tokenizer):
    ended = reward_inputs(["hi"], ["hello tom"], tokenizer)["input_ids"][0].tolist()
    cut = reward_inputs(["hi"], ["hello tom"], tokenizer, ended=[False])["input_ids"][0].tolist()
    assert ended[-1] == tokenizer.eos_token_id and ended[:-1] == cut


# ----------------------------------------------------------------------------- the stage


def test_reward_learns_and_saves_a_normalised_plain_hf_model(tmp_path, reward_base):
    rows = pair_rows()
    random.Random(0).shuffle(rows)
    train, heldout = rows[:42], rows[42:]
    evals = write_jsonl(tmp_path / "heldout.jsonl", heldout)
    summary = reward.run(_config(tmp_path, reward_base, train, f"data.eval={evals}"))
    out = tmp_path / "run"
    rows = _rows(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(10, 61, 10))
    assert rows[-1]["loss"] < 0.5 * rows[0]["loss"]
    assert {"loss", "accuracy", "margin", "ece", "eval_loss", "eval_accuracy", "eval_margin",
            "eval_ece"} <= set(rows[-1])
    assert summary["loss"] == {"rankings": "kwise", "pairs": "bradley_terry", "margin": False}
    assert (summary["train_comparisons"], summary["eval_comparisons"]) == (42, 14)
    held = summary["heldout"]
    assert held["accuracy"] >= 0.85 and held["margin"] > 1.0, held  # chance is 0.5 and 0
    assert held == {k.removeprefix("eval_"): v for k, v in rows[-1].items() if k.startswith("eval_")}

    from transformers import AutoModelForSequenceClassification

    tok = load_tokenizer(summary["final"])
    plain = AutoModelForSequenceClassification.from_pretrained(summary["final"])  # raw scores
    rm = load_reward_model(summary["final"])  # normalised scores
    norm = json.loads((out / "final" / "config.json").read_text())["rlxf_reward_normalization"]
    assert norm["shift"] == summary["normalization"]["shift"] and norm["scale"] == 1.0
    assert norm["reference"] == "chosen answers of the held-out split (14 answers)"

    # the held-out chosen answers (the default reference) score mean 0 after normalisation
    prompts, chosen = [r["prompt"] for r in heldout], [r["chosen"] for r in heldout]
    normalised = score_texts(rm, tok, prompts, chosen, batch_size=5)
    assert abs(sum(normalised) / len(normalised)) < 0.05
    with torch.no_grad():
        raw = plain(**reward_inputs(prompts, chosen, tok)).logits[:, 0]  # pad != eos here: HF pools right
    torch.testing.assert_close(torch.tensor(normalised), raw - norm["shift"], atol=1e-5, rtol=1e-5)
    assert abs(norm["shift"]) > 0.05  # the shift mattered
    # the rejected answers, which the model learnt to dislike, now score below 0
    assert sum(score_texts(rm, tok, prompts, [r["rejected"] for r in heldout])) < 0


def test_kwise_rankings_train_and_group_each_prompt(tmp_path, reward_base):
    summary = reward.run(_config(tmp_path, reward_base, ranking_rows(), "batch_size=4"))
    assert summary["loss"]["rankings"] == "kwise"
    assert (summary["train_comparisons"], summary["train_pairs"]) == (42, 126)  # 42 rankings of K=3
    assert summary["heldout"]["accuracy"] >= 0.85, summary["heldout"]
    flat = reward.run(_config(tmp_path, reward_base, ranking_rows(), "data.loss=bradley_terry", "max_steps=5",
                              name="flat"))
    assert flat["loss"]["rankings"] == "pairs"
    assert (flat["train_comparisons"], flat["train_pairs"]) == (126, 126)  # every pair its own row


@pytest.mark.parametrize("loss", ["kwise", "bradley_terry"])
def test_sequences_cut_counts_each_answer_once_per_comparison_whatever_the_loss(tmp_path, reward_base, tokenizer,
                                                                                loss, caplog):
    prompt = "question : what color is the fox ? answer :"  # 10 tokens
    # prompt + answer + EOS: A 16, B 14, C 13 tokens fit data.max_length=18; L1 21 and L2 26 do not, so
    # the prompt loses tokens for every answer compared with them (all answers of a ranking, K-wise;
    # as pairs, every answer meets the longest in one pair)
    a, b, c = "the fox is red .", "the fox is", "red ."
    l1, l2 = "the fox is red . the fox is red .", "the fox is red . the fox is red . the fox is red ."
    rows = [{"prompt": prompt, "chosen": a, "rejected": b},  # 0
            {"prompt": prompt, "chosen": a, "rejected": l1},  # 2
            {"prompt": prompt, "completions": [a, b, c], "ranking": [0, 1, 2]},  # 0
            {"prompt": prompt, "completions": [a, l1, b], "ranking": [0, 1, 2]},  # 3 (as pairs: in 2 of 3, 4 cuts)
            {"prompt": prompt, "completions": [l1, l2, a, b], "ranking": [2, 3, 0, 1]}]  # 4 (5 of 6 pairs, 10 cuts)
    cfg = _config(tmp_path, reward_base, rows, f"data.loss={loss}", "data.max_length=18", "data.eval_fraction=0",
                  "normalize.enabled=false")
    assert [len(encode_answers(prompt, [x], tokenizer, max_length=99)[0][0]) for x in (a, b, c, l1, l2)] == [
        16, 14, 13, 21, 26]
    with caplog.at_level(logging.WARNING, logger="rlxf"):
        data = reward._load_data(cfg, tokenizer)
    assert data["plan"].rankings == ("kwise" if loss == "kwise" else "pairs")
    assert data["sequences_cut"] == 0 + 2 + 0 + 3 + 4
    assert "sequences_cut: 9 answer sequences" in caplog.text


def test_kwise_loss_is_the_mean_of_each_rankings_pair_losses(reward_base, tokenizer):
    """One ranking of K answers as one element = the mean BT loss of its C(K, 2) pairs."""
    model = init_reward_model(ModelConfig(name_or_path=str(reward_base)))
    rng = random.Random(1)
    groups, pairs = [], []
    for p in _prompts()[:6]:
        ids = [reward_inputs([p], [a], tokenizer)["input_ids"][0].tolist() for a in _answers(rng, p.split()[5])]
        groups.append(reward.Group(ids, is_ranking=True))
        pairs += [reward.Group([ids[i], ids[j]], is_ranking=False) for i, j in ((0, 1), (0, 2), (1, 2))]
    pad = tokenizer.pad_token_id
    kwise = reward.evaluate(model, groups, reward.LossPlan("kwise", "bradley_terry"), pad, "cpu", batch_size=4)
    flat = reward.evaluate(model, pairs, reward.LossPlan("pairs", "bradley_terry"), pad, "cpu", batch_size=5)
    assert kwise["loss"] == pytest.approx(flat["loss"], rel=1e-5)  # same K for all: mean of means = mean
    assert kwise["accuracy"] == pytest.approx(flat["accuracy"])
    assert kwise["loss"] != pytest.approx(math.log(2), abs=1e-3)  # a real, non-constant model


def test_soft_labels_train(tmp_path, reward_base):
    summary = reward.run(_config(tmp_path, reward_base, soft_rows()))
    assert summary["loss"] == {"rankings": "kwise", "pairs": "soft", "margin": False}
    assert summary["heldout"]["accuracy"] >= 0.85, summary["heldout"]
    # the soft loss cannot go below the labels' entropy; a model that learned sits near it
    rows = _rows(tmp_path / "run" / "metrics.jsonl")
    assert rows[-1]["loss"] < rows[0]["loss"]
    with pytest.raises(DataError, match=r"hard.jsonl:1: field 'prob_chosen'.*data.loss=bradley_terry needs hard"):
        reward.run(_config(tmp_path, reward_base, soft_rows(), "data.loss=bradley_terry", name="hard"))


def test_margin_and_scaled_normalisation_on_demonstrations(tmp_path, reward_base):
    rows = [{**r, "margin": 2.0} for r in pair_rows()]
    demos = write_jsonl(tmp_path / "demos.jsonl",
                        [{"prompt": r["prompt"], "completion": r["chosen"]} for r in pair_rows(seed=7)[:20]])
    summary = reward.run(_config(tmp_path, reward_base, rows, "data.margin=true", f"normalize.reference={demos}",
                                 "normalize.scale=true", "max_steps=30"))
    assert summary["loss"]["margin"] is True
    norm = summary["normalization"]
    assert norm["reference"] == f"demonstrations in {demos} (20 answers)" and norm["scale"] != 1.0
    rm, tok = load_reward_model(summary["final"]), load_tokenizer(summary["final"])
    demo_rows = _rows(demos)
    scores = torch.tensor(score_texts(rm, tok, [d["prompt"] for d in demo_rows], [d["completion"] for d in demo_rows]))
    assert abs(scores.mean().item()) < 0.05 and abs(scores.std().item() - 1.0) < 0.05


def test_lora_keeps_the_head_trainable_and_saves_a_merged_model(tmp_path, reward_base):
    summary = reward.run(_config(tmp_path, reward_base, pair_rows(), "model.lora.enabled=true", "model.lora.r=4",
                                 "max_steps=20", "eval_every=20"))
    from safetensors.torch import load_file

    ckpt = load_file(str(tmp_path / "run" / "checkpoints" / "step-000020" / "trainable.safetensors"))
    assert any("lora_" in k for k in ckpt) and any("score" in k for k in ckpt)
    assert all("lora_" in k or "score" in k for k in ckpt)
    from transformers import AutoModelForSequenceClassification

    plain = AutoModelForSequenceClassification.from_pretrained(summary["final"])
    assert not any("lora" in n for n, _ in plain.named_parameters())
    base_head = init_reward_model(ModelConfig(name_or_path=str(reward_base))).score.weight
    assert not torch.allclose(plain.score.weight, base_head)  # the head trained and was saved


@pytest.mark.parametrize("row, field, message", [
    ({"prompt": "hi"}, "chosen", "missing or null"),
    ({"prompt": "hi", "chosen": " ", "rejected": "hello tom ."}, "chosen", "is empty"),
    ({"prompt": "hi", "chosen": "hello tom .", "rejected": "hello tom . "}, "rejected", "identical"),
    ({"prompt": "hi", "completions": ["a .", "b .", "c ."], "ranking": [0, 2, 2]}, "ranking", "duplicate index 2"),
    ({"prompt": "hi", "completions": ["a .", "b ."], "ranking": [0, 1, 2]}, "ranking", "wrong length"),
    ({"prompt": "hi", "chosen": "a .", "rejected": "b .", "prob_chosen": 1.5}, "prob_chosen", r"in \[0, 1\]"),
])
def test_malformed_rows_are_reported_with_file_line_and_field(tmp_path, reward_base, row, field, message, capsys,
                                                              monkeypatch):
    rows = pair_rows()[:6]
    rows[3] = row
    cfg = _config(tmp_path, reward_base, rows)
    with pytest.raises(DataError, match=rf"run.jsonl:4: field '{field}': .*{message}"):
        reward.run(cfg)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    from rlxf import cli

    monkeypatch.setitem(cli.COMMANDS, ("reward",), "rlxf.stages.reward")  # the CLI line, as registered
    assert cli.main(["reward", f"model.name_or_path={reward_base}", f"data.train={cfg.data.train}",
                     f"out={tmp_path / 'cli'}", "progress=false"]) == 2
    assert f"run.jsonl:4: field '{field}'" in capsys.readouterr().err


def test_bad_rows_can_be_skipped_and_are_counted(tmp_path, reward_base):
    rows = pair_rows()
    rows[3] = {"prompt": "hi", "chosen": "a .", "rejected": "a ."}
    rows[9] = {"prompt": "hi", "completions": ["a .", "b ."], "ranking": [1, 1]}
    summary = reward.run(_config(tmp_path, reward_base, rows, "data.skip_bad_rows=true", "max_steps=5"))
    assert summary["skipped_rows"] == 2
    assert summary["train_comparisons"] + summary["eval_comparisons"] == 54


def test_impossible_settings_fail_before_any_work(tmp_path, reward_base):
    with pytest.raises(ConfigError, match="data.margin applies to the Bradley-Terry loss"):
        _config(tmp_path, reward_base, pair_rows(), "data.loss=soft", "data.margin=true")
    with pytest.raises(ConfigError, match="normalize.reference must be 'chosen' or a demonstrations file"):
        _config(tmp_path, reward_base, pair_rows(), "normalize.reference=nowhere.jsonl")
    with pytest.raises(ConfigError, match="unknown config key 'data.losss'; did you mean 'data.loss'"):
        _config(tmp_path, reward_base, pair_rows(), "data.losss=kwise")


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tmp_path, reward_base):
    """SIGKILL mid-run, re-run the same command: same metrics, same summary numbers, same final weights."""
    data = write_jsonl(tmp_path / "rankings.jsonl", ranking_rows())
    args = [f"model.name_or_path={reward_base}", f"data.train={data}", "lr=3e-3", "max_steps=60", "batch_size=4",
            "grad_accum=2", "log_every=5", "save_every=5", "progress=false", "eval_every=20"]
    # the CLI with `reward` registered (a no-op once rlxf.cli lists it)
    launcher = ("import sys; from rlxf import cli; cli.COMMANDS.setdefault(('reward',), 'rlxf.stages.reward'); "
                "sys.exit(cli.main(sys.argv[1:]))")
    cmd = [sys.executable, "-c", launcher, "reward", *args]
    summary = kill_and_resume(cmd, tmp_path, checkpoint=15)
    assert 15 <= summary["resumed_from_step"] < 60
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    for key in ("final_train_loss", "final_train_accuracy", "heldout", "normalization"):
        assert summary[key] == whole[key], key
    assert (tmp_path / "killed" / "metrics.jsonl").read_text() == (tmp_path / "whole" / "metrics.jsonl").read_text()
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "whole" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- one prompt, many answers


def test_shared_prefix_batch_splits_each_group_at_its_common_tokens():
    from rlxf.models.reward import shared_prefix_batch

    batch = shared_prefix_batch([[[1, 2, 3, 4], [1, 2, 5]], [[7, 8], [7, 9, 9]], [[1, 2], [1, 2, 3]]], pad_id=0)
    # the last group: one answer is a prefix of the other, yet each keeps a token of its own
    assert batch["prefix_ids"].tolist() == [[1, 2], [0, 7], [0, 1]]
    assert batch["prefix_mask"].tolist() == [[1, 1], [0, 1], [0, 1]]
    assert batch["suffix_ids"].tolist() == [[3, 4], [5, 0], [8, 0], [9, 9], [2, 0], [2, 3]]
    assert batch["suffix_mask"].tolist() == [[1, 1], [1, 0], [1, 0], [1, 1], [1, 0], [1, 1]]
    assert batch["owner"].tolist() == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_shared_prompt_values_and_gradients_equal_one_forward_per_answer(tmp_path, tokenizer, arch):
    from rlxf.models.reward import pad_right, shared_prefix_batch, shared_prefix_values

    make_model(arch, len(tokenizer)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model = init_reward_model(ModelConfig(name_or_path=str(tmp_path)))
    groups = [[list(range(5, 15)) + [20, 21, 22], list(range(5, 15)) + [30, 31]],
              [list(range(40, 44)) + [50, 51, 52, 53], list(range(40, 44)) + [60], list(range(40, 44)) + [70, 71]]]
    full = pad_right([s for g in groups for s in g], tokenizer.pad_token_id)
    shared = shared_prefix_batch(groups, tokenizer.pad_token_id)
    assert shared["prefix_mask"].sum(1).tolist() == [10, 4]

    r_full = token_values(model, full["input_ids"], full["attention_mask"])
    r_full = r_full.gather(1, (full["attention_mask"].sum(1) - 1)[:, None])[:, 0]  # (N,) at each last token
    values = shared_prefix_values(model, shared["prefix_ids"], shared["prefix_mask"], shared["suffix_ids"],
                                  shared["suffix_mask"], shared["owner"])
    r_shared = values.gather(1, (shared["suffix_mask"].sum(1) - 1)[:, None])[:, 0]
    torch.testing.assert_close(r_shared, r_full, atol=1e-5, rtol=1e-5)
    params = [p for p in model.parameters() if p.requires_grad]
    g_full = torch.autograd.grad((r_full * torch.arange(1.0, 6.0)).sum(), params, allow_unused=True)
    g_shared = torch.autograd.grad((r_shared * torch.arange(1.0, 6.0)).sum(), params, allow_unused=True)
    for a, b in zip(g_full, g_shared):
        if a is not None:
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


def test_training_with_and_without_prompt_sharing_gives_the_same_run(tmp_path, reward_base):
    runs = {}
    for share in (True, False):
        name = f"share-{share}"
        reward.run(_config(tmp_path, reward_base, ranking_rows(), "max_steps=12", "batch_size=4",
                           f"share_prompt={str(share).lower()}", name=name))
        runs[share] = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in runs[True]] == [r["step"] for r in runs[False]]
    for a, b in zip(runs[True], runs[False]):
        for key in ("loss", "eval_loss", "eval_accuracy"):
            if key in b:
                assert a[key] == pytest.approx(b[key], abs=1e-4), (key, a, b)


# ----------------------------------------------------------------------------- LM regulariser (GRM)

@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_lm_term_at_start_is_the_causal_lms_nll_of_the_preferred_answers(tmp_path, tokenizer, arch):
    """Before training the reward model's backbone is the LM's, so the regulariser must
    equal the LM's own next-token NLL on each preferred answer (after its first token),
    averaged per comparison, with and without prompt sharing."""
    from transformers import AutoModelForCausalLM

    from rlxf.distributed import TokenValues

    make_model(arch, len(tokenizer)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model = init_reward_model(ModelConfig(name_or_path=str(tmp_path))).eval()
    lm = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    head = reward._frozen_lm_head(ModelConfig(name_or_path=str(tmp_path)), "cpu")
    prompt = list(range(5, 15))
    groups = [reward.Group([prompt + [20, 21, 22, 23], prompt + [30, 31]], is_ranking=False),
              reward.Group([prompt + [40], prompt + [50, 51, 52]], is_ranking=False, prob_chosen=0.2),
              reward.Group([prompt[:4] + [60, 61, 62], prompt[:4] + [70], prompt[:4] + [80, 81]], is_ranking=True)]
    expected = []
    for seq, start in ((groups[0].sequences[0], 10), (groups[1].sequences[1], 10), (groups[2].sequences[0], 4)):
        with torch.no_grad():
            logp = torch.log_softmax(lm(torch.tensor([seq])).logits[0], -1)  # (T, V)
        expected.append(-sum(logp[t - 1, seq[t]] for t in range(start + 1, len(seq))) / (len(seq) - start - 1))
    expected = float(sum(expected) / 3)
    plan = reward.LossPlan("kwise", "soft")
    for share in (True, False):
        with torch.no_grad():
            *_, nll = reward._forward(TokenValues(model), groups, plan, tokenizer.pad_token_id, "cpu", share, head)
        assert float(nll) == pytest.approx(expected, rel=1e-5), share


def test_lm_regulariser_keeps_the_backbone_predicting_text(tmp_path, reward_base):
    """Trained with lm_coef > 0 the reward model ranks as well, and its hidden states
    predict the preferred answers' tokens better than without the term."""
    from rlxf.distributed import TokenValues

    head = reward._frozen_lm_head(ModelConfig(name_or_path=str(reward_base)), "cpu")
    rows = pair_rows()
    runs = {}
    for coef in (0.0, 5.0):
        summary = reward.run(_config(tmp_path, reward_base, rows, f"lm_coef={coef}", name=f"lm-{coef}"))
        model = load_reward_model(summary["final"])
        tok = load_tokenizer(summary["final"])
        groups = [reward.Group([reward_inputs([r["prompt"]], [a], tok)["input_ids"][0].tolist()
                                for a in (r["chosen"], r["rejected"])], is_ranking=False) for r in rows[:16]]
        with torch.no_grad():
            *_, nll = reward._forward(TokenValues(model), groups, reward.LossPlan("kwise", "bradley_terry"),
                                      tok.pad_token_id, "cpu", True, head)
        metrics = [json.loads(line) for line in (tmp_path / f"lm-{coef}" / "metrics.jsonl").read_text().splitlines()]
        runs[coef] = (float(nll), summary["heldout"]["accuracy"], [m.get("lm_loss") for m in metrics if "loss" in m])
    (nll_off, acc_off, logged_off), (nll_on, acc_on, logged_on) = runs[0.0], runs[5.0]
    assert acc_on >= 0.8 and acc_off >= 0.8
    assert nll_on < nll_off - 0.1  # measured 2.64 against 2.91 nats (a random tiny model; colours are random)
    assert all(v is None for v in logged_off) and all(v is not None for v in logged_on)  # logged only when on


def test_lm_coef_must_be_non_negative(tmp_path, reward_base):
    with pytest.raises(ConfigError, match="lm_coef must be ≥ 0"):
        _config(tmp_path, reward_base, pair_rows(), "lm_coef=-1")


@pytest.mark.parametrize("file, message", [
    ("chat.jsonl", r"normalize.reference: .* has no chat template; .*model.tokenizer="),
    ("one.jsonl", r"at least 2 reference answers; demonstrations in .*one.jsonl has 1 \(set normalize.reference"),
])
def test_normalisation_reference_is_checked_before_training(tmp_path, reward_base, file, message):
    """A reference that could only fail after training (conversations for a tokenizer without
    a chat template, fewer than 2 answers) stops the run before its first step, naming the key."""
    write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "user", "content": f"what color is the {a} ?"},
                      {"role": "assistant", "content": f"the {a} is red ."}]} for a in ANIMALS])
    write_jsonl(tmp_path / "one.jsonl", [{"prompt": "what color is the fox ?", "completion": "red ."}])
    with pytest.raises(ConfigError, match=message):
        reward.run(_config(tmp_path, reward_base, pair_rows(), f"normalize.reference={tmp_path / file}"))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    assert not list(tmp_path.glob("run/checkpoints/step-*"))


def test_conversations_need_a_chat_template_and_the_error_names_the_key(tmp_path, reward_base):
    rows = [{"prompt": [{"role": "user", "content": f"what color is the {a} ?"}], "chosen": f"the {a} is red .",
             "rejected": "go away ."} for a in ANIMALS]
    with pytest.raises(ConfigError, match=r"data.train: .* has no chat template; .*\(model.tokenizer=\.\.\.\)"):
        reward.run(_config(tmp_path, reward_base, rows))
