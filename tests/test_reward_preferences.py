"""`rlxf tinyworld preferences`: a policy's answers ranked by simulated labellers, in standard formats."""

from __future__ import annotations

import json
from itertools import combinations

from rlxf.config import load_config
from rlxf.data.formats import load_comparisons, load_preferences
from rlxf.data.records import Ranking
from rlxf.tinyworld import parse_prompt, score
from rlxf.tinyworld import preferences
from rlxf.tinyworld.prompts import split_of


def test_preferences_are_ranked_with_gold_and_load_as_standard_data(tmp_path, tiny_model_dir):
    cfg = load_config(preferences.Config, None, [f"policy={tiny_model_dir}", f"out={tmp_path / 'prefs'}",
                                                 "n_train=8", "n_heldout=4", "k=3", "max_new_tokens=6",
                                                 "progress=false"])
    summary = preferences.run(cfg)
    out = tmp_path / "prefs"
    for split, n in (("train", 8), ("heldout", 4)):
        rows = [json.loads(line) for line in (out / f"rankings_{split}.jsonl").read_text().splitlines()]
        assert len(rows) == summary[split]["rankings"] == n - summary[split]["dropped_prompts"] >= n - 1
        rankings = load_comparisons(out / f"rankings_{split}.jsonl")
        assert all(isinstance(r, Ranking) for r in rankings)  # the loader's checks pass: distinct, a permutation
        pairs = load_preferences(out / f"pairs_{split}.jsonl")
        assert len(pairs) == summary[split]["pairs"] == sum(len(r.completions) * (len(r.completions) - 1) // 2
                                                            for r in rankings)
        # the pairs file is the rankings flattened, best first
        assert [(p.chosen, p.rejected) for p in pairs] == [pair for r in rankings
                                                           for pair in combinations(r.ordered, 2)]
        for row in rows:
            assert split_of(parse_prompt(row["prompt"])) == split
            assert row["gold"] == [score(row["prompt"], a, e).total for a, e in zip(row["completions"], row["ended"])]
        report = summary[split]
        raw = [json.loads(line) for line in (out / f"pairs_{split}.jsonl").read_text().splitlines()]
        ordered = [p for p in raw if p["gold_chosen"] != p["gold_rejected"]]
        assert report["gold_ties"] == len(raw) - len(ordered)
        assert report["labels_vs_gold"] == (sum(p["gold_chosen"] > p["gold_rejected"] for p in ordered) / len(ordered)
                                            if ordered else None)
        assert 0.5 <= report["inter_labeller_expected"] <= 1.0
    assert preferences.run(cfg) == summary  # a finished run is reused


def test_a_crash_while_sampling_resumes_with_the_data_of_an_uninterrupted_run(tmp_path, tiny_model_dir, monkeypatch):
    """Answers are kept in OUT/samples/ batch by batch until summary.json is written: a
    re-run after a crash samples only the batches not written and writes the files an
    uninterrupted run writes; the folder is gone once the run is complete."""
    import pytest

    from rlxf.models import generation

    args = [f"policy={tiny_model_dir}", "n_train=8", "n_heldout=6", "k=3", "max_new_tokens=6", "batch_size=4",
            "progress=false"]
    real, calls = generation.generate, []

    def counted(*a, **k):
        calls.append(len(a[2]))
        return real(*a, **k)

    monkeypatch.setattr(generation, "generate", counted)
    preferences.run(load_config(preferences.Config, None, args + [f"out={tmp_path / 'whole'}"]))
    batches = len(calls)
    assert batches >= 11  # 24 train and 18 held-out answers in batches of 4, and clashes sampled again

    def crash_in_the_ninth_batch(*a, **k):
        if len(calls) == 8:
            raise KeyboardInterrupt
        return counted(*a, **k)

    calls.clear()
    monkeypatch.setattr(generation, "generate", crash_in_the_ninth_batch)
    cfg = load_config(preferences.Config, None, args + [f"out={tmp_path / 'run'}"])
    with pytest.raises(KeyboardInterrupt):
        preferences.run(cfg)
    calls.clear()
    monkeypatch.setattr(generation, "generate", counted)
    preferences.run(cfg)
    assert len(calls) == batches - 8  # the 8 batches written were read back
    whole, run = tmp_path / "whole", tmp_path / "run"
    for name in ("rankings_train", "rankings_heldout", "pairs_train", "pairs_heldout"):
        assert (run / f"{name}.jsonl").read_text() == (whole / f"{name}.jsonl").read_text()
    assert not (run / "samples").exists() and not (whole / "samples").exists()


def test_answers_come_from_several_policies_slot_by_slot(tmp_path, tiny_model_dir, tokenizer):
    """With policy=[A, B], answer j of a prompt is written by policy j mod 2, and the rows say which."""
    import torch

    from conftest import make_model

    # B always writes the same word: its final layer norm outputs a large copy of that word's embedding
    parrot = make_model("gpt2", len(tokenizer), seed=1)
    word = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(" red"))[0]
    with torch.no_grad():
        parrot.transformer.ln_f.weight.zero_()
        parrot.transformer.ln_f.bias.copy_(5000 * parrot.transformer.wte.weight[word])
    parrot_dir = tmp_path / "parrot"
    parrot.save_pretrained(parrot_dir)
    tokenizer.save_pretrained(parrot_dir)

    cfg = load_config(preferences.Config, None, [f"policy=[{tiny_model_dir},{parrot_dir}]", f"out={tmp_path / 'p'}",
                                                 "n_train=6", "n_heldout=2", "k=3", "max_new_tokens=4",
                                                 "progress=false"])
    summary = preferences.run(cfg)
    rows = [json.loads(line) for line in (tmp_path / "p" / "rankings_train.jsonl").read_text().splitlines()]
    assert rows
    for row in rows:
        by_b = [a for a, p in zip(row["completions"], row["policy"]) if p == 1]
        assert by_b == [tokenizer.decode([word] * 4).strip()]  # slot 1 of 3; never ended (no EOS)
        assert row["policy"].count(0) == len(row["completions"]) - 1
    assert len(summary["train"]["answer_gold_mean_by_policy"]) == 2


def test_one_sampling_temperature_per_policy(tmp_path, tiny_model_dir):
    """temperature=[1e-5, 1] with the same model twice: slot 0 is greedy, slot 1 samples."""
    import pytest

    from rlxf.errors import ConfigError
    from rlxf.models.generation import generate
    from rlxf.models.loading import ModelConfig, load_causal_lm, load_tokenizer

    args = [f"policy=[{tiny_model_dir},{tiny_model_dir}]", f"out={tmp_path / 'p'}", "n_train=6", "n_heldout=2",
            "k=2", "max_new_tokens=5", "progress=false"]
    with pytest.raises(ConfigError, match="one value or one per policy"):
        load_config(preferences.Config, None, args + ["temperature=[1,1,1]"])
    with pytest.raises(ConfigError, match="must be > 0"):
        load_config(preferences.Config, None, args + ["temperature=[1,0]"])
    assert preferences._temperatures(load_config(preferences.Config, None, args + ["temperature=[0.7]"])) == [0.7, 0.7]
    preferences.run(load_config(preferences.Config, None, args + ["temperature=[1e-5,1]"]))

    model = load_causal_lm(ModelConfig(name_or_path=str(tiny_model_dir))).eval()
    tokenizer = load_tokenizer(str(tiny_model_dir), padding_side="left")
    rows = [json.loads(line) for line in (tmp_path / "p" / "rankings_train.jsonl").read_text().splitlines()]
    greedy = generate(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=5, greedy=True)
    cold = [a for r in rows for a, p in zip(r["completions"], r["policy"]) if p == 0]
    hot = [a for r in rows for a, p in zip(r["completions"], r["policy"]) if p == 1]
    assert cold == [g.text.strip() for g in greedy]  # at the global temperature 1 these would be samples
    # had slot 1 been near-greedy too, its answers would clash with slot 0's and the prompts be dropped
    assert len(rows) == 6 and len(hot) == 6


def test_reward_gold_accuracy_counts_gold_order_leaves_out_gold_ties_and_halves_reward_ties(tmp_path):
    from rlxf.tinyworld.evaluate import reward_gold_accuracy

    def pair(chosen, rejected, g_c, g_r, task):
        return {"prompt": "p", "chosen": chosen, "rejected": rejected, "gold_chosen": g_c, "gold_rejected": g_r,
                "ended_chosen": True, "ended_rejected": True, "task": task}

    rows = [pair("aaa", "b", 0.9, 0.1, "add"),      # reward (length) agrees with gold: 1
            pair("c", "dddd", 0.8, 0.2, "add"),     # disagrees: 0
            pair("ee", "ff", 0.7, 0.3, "greet"),    # reward tie: 1/2
            pair("gg", "h", 0.5, 0.5, "greet")]     # gold tie: left out
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def length(prompts, answers, ended):
        return [float(len(a)) for a in answers]

    assert reward_gold_accuracy(length, str(path), by_task=True) == {
        "accuracy": 0.5, "pairs": 3, "by_task": {"add": {"accuracy": 0.5, "labels": 1.0, "pairs": 2},
                                                 "greet": {"accuracy": 0.5, "labels": 1.0, "pairs": 1}}}
    path.write_text(json.dumps(rows[-1]) + "\n")
    assert reward_gold_accuracy(length, str(path)) is None


def test_reward_gold_accuracy_by_gold_gap_and_by_the_aspect_that_differs_most(tmp_path):
    from rlxf.tinyworld.evaluate import reward_gold_accuracy

    prompt, right = "question : where does the hen live ? answer :", "the hen lives in the river ."  # gold 1
    rows = [  # (chosen, ended, gold) vs (rejected, ended, gold); weights helpful .4 honest .25 harmless .2 fluent .15
        ((right, True, 1.0), ("the hen lives in the farm .", True, 0.35)),  # helpful 1 → 0, honest 1 → 0: helpful
        ((right, True, 1.0), (right + " the fox is green .", True, 0.845)),  # honest 1 → 1/2, helpful 1 → 1/1.08
        ((right, True, 1.0), ("the hen lives in the river , idiot .", True, 0.867)),  # harmless 1 → 1/3
        ((right, True, 1.0), (right, False, 0.8875)),  # never ended: fluent 1 → 0.25
        (("the hen lives in the river", True, 0.94), (right, True, 1.0)),  # the labeller chose the worse: fluent
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({
        "prompt": prompt, "chosen": c, "ended_chosen": ce, "gold_chosen": cg, "rejected": r, "ended_rejected": re_,
        "gold_rejected": rg, "task": "home"}) + "\n" for (c, ce, cg), (r, re_, rg) in rows))

    def shorter(prompts, answers, ended):  # right on pairs 2 and 3, a tie on 4, wrong on 1 and 5
        return [-float(len(a)) for a in answers]

    got = reward_gold_accuracy(shorter, str(path), by_gap=True, by_aspect=True)
    assert got["accuracy"] == (0 + 1 + 1 + 0.5 + 0) / 5 and got["pairs"] == 5
    assert got["by_gap"] == {"0.05-0.10": {"accuracy": 0.0, "labels": 0.0, "pairs": 1},  # 0.06
                             "0.10-0.20": {"accuracy": 2.5 / 3, "labels": 1.0, "pairs": 3},  # 0.155, 0.133, 0.1125
                             "0.30-1.00": {"accuracy": 0.0, "labels": 1.0, "pairs": 1}}  # 0.65
    assert got["by_aspect"] == {"fluent": {"accuracy": 0.25, "labels": 0.5, "pairs": 2},
                                "harmless": {"accuracy": 1.0, "labels": 1.0, "pairs": 1},
                                "helpful": {"accuracy": 0.0, "labels": 1.0, "pairs": 1},
                                "honest": {"accuracy": 1.0, "labels": 1.0, "pairs": 1}}


def test_win_rate_ceiling_is_one_where_an_answer_can_be_beaten_and_a_half_where_it_is_already_best():
    import pytest

    from rlxf.tinyworld.evaluate import gold_totals, win_rate, win_rate_ceiling

    prompts = ["question : what color is the fox ? answer :",   # reference: the fox is red .
               "question : what is two plus three ? answer :",  # reference: two plus three is five .
               "user : say hello to anna . assistant :",        # reference: hello anna !
               "the owl is brown . the fox is"]                 # reference: red .
    answers = ["the fox is red .", "two plus three is six .", "hello anna !", "red , you idiot ."]
    totals = gold_totals(prompts, answers, [True] * 4)
    assert totals[0] == totals[2] == 1.0 and max(totals[1], totals[3]) < 1.0
    assert win_rate_ceiling(prompts, totals) == (0.5 + 1 + 0.5 + 1) / 4
    # the reference answers themselves reach it
    references = gold_totals(prompts, ["the fox is red .", "two plus three is five .", "hello anna !", "red ."],
                             [True] * 4)
    assert win_rate(references, totals) == 0.75
    with pytest.raises(ValueError, match="one total per prompt"):
        win_rate_ceiling(prompts, totals[:3])


def test_pipeline_names_its_own_base_and_sft_model_as_preference_writers(monkeypatch, tmp_path):
    """reward.tinyworld.policy=[run:base, run:sft] follows the run's models wherever its output goes."""
    from rlxf import pipeline
    from rlxf.config import from_dict

    seen = {}
    monkeypatch.setattr(preferences, "run", lambda cfg: seen.setdefault("policy", cfg.policy))
    base = {"out": str(tmp_path), "base_model": "models/base", "prompts": "p.jsonl", "eval_prompts": "e.jsonl",
            "demonstrations": "d.jsonl", "labeller": "tinyworld"}
    cfg = from_dict(pipeline.Config, {**base, "reward": {"tinyworld": {"policy": ["run:base", "run:sft", "other/m"]}}})
    pipeline._tinyworld_preferences(cfg, "runs/x/sft/final", tmp_path / "prefs")
    assert seen.pop("policy") == ["models/base", "runs/x/sft/final", "other/m"]
    pipeline._tinyworld_preferences(from_dict(pipeline.Config, base), "runs/x/sft/final", tmp_path / "prefs")
    assert seen.pop("policy") == "runs/x/sft/final"  # no policy given: the run's SFT model
