"""The commands end to end: `rlxf label` on a tiny local model, `label-eval`, `critique`, the Tinyworld judge."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import write_jsonl
from fake_openai_server import FakeOpenAI

from rlxf.config import load_config
from rlxf.data import load_demonstrations, load_preferences
from rlxf.errors import DataError
from rlxf.evaluate.agreement import binary_report
from rlxf.feedback.ai import critique, label, label_eval
from rlxf.feedback.ai.scoring import swap_average


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_label_with_a_local_model_writes_soft_labels_and_resumes_from_cache(tmp_path, tiny_model_dir):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": "question : what color is the fox ? answer :", "chosen": "the fox is red .",
         "rejected": "the fox is blue ."},
        {"input_text": "say hello to tom .", "candidate_0": "hello tom !", "candidate_1": "go away .", "choice": 1},
        {"prompt": "question : what does the bear eat ? answer :", "completions": ["fish .", "seeds .", "grass ."],
         "ranking": [0, 2, 1]},
    ])
    args = [f"out={tmp_path / 'run'}", f"data={pairs}", f"judge.model={tiny_model_dir}", "template=tinyworld",
            "progress=false", "chunk_size=2", "constitution=default"]
    summary = label.run(load_config(label.Config, None, args))
    assert (summary["pairs"], summary["labelled"], summary["judgements"]) == (5, 5, 10)  # 1 + 1 + C(3, 2)
    rows = read(tmp_path / "run" / "preferences.jsonl")
    for row in rows:
        # chosen is the judge's pick, with its swap-averaged probability
        p_a = swap_average(row["p_first_ab"], row["p_first_ba"])
        assert row["prob_chosen"] == pytest.approx(max(p_a, 1 - p_a)) and row["prob_chosen"] >= 0.5
        assert row["principle"] is not None
    assert len(load_preferences(tmp_path / "run" / "preferences.jsonl")) == 5
    assert read(tmp_path / "run" / "unlabelled.jsonl") == []
    assert label.run(load_config(label.Config, None, args)) == summary  # complete: not redone

    # a crashed run (outputs gone, cache kept) is redone from the cache alone: no forward pass
    for name in ("summary.json", "preferences.jsonl"):
        (tmp_path / "run" / name).unlink()
    again = label.run(load_config(label.Config, None, args))
    assert again["judge_stats"]["forward_rows"] == 0 and again["cache_hits"] == 10
    assert read(tmp_path / "run" / "preferences.jsonl") == rows


def test_answer_lists_give_all_pairs_and_bad_rows_name_their_line(tmp_path):
    good = write_jsonl(tmp_path / "answers.jsonl", [{"prompt": "q", "answers": ["a", "b", "c"]},
                                                    {"prompt": [{"role": "user", "content": "hi"}],
                                                     "answers": ["x", "y"]}])
    pairs, skipped = label.read_pairs(str(good))
    assert [(p.a, p.b) for p in pairs] == [("a", "b"), ("a", "c"), ("b", "c"), ("x", "y")] and skipped == 0
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "q", "answers": ["a", "b"]},
                                               {"prompt": "q", "answers": ["a", "a"]}])
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'answers': has identical answers"):
        label.read_pairs(str(bad))
    assert len(label.read_pairs(str(bad), skip_bad=True)[0]) == 1


def test_label_eval_against_human_labels(tmp_path):
    # Humans pick the "good" answer in 6 pairs and the "bad" one in 2; one pair is a human tie.
    # The fake judge always prefers "good", so it agrees on exactly 6 of the 8: accuracy 0.75.
    rows = []
    for i in range(8):
        good, bad = f"a good answer {i}", f"a bad answer {i}"
        chosen, rejected = (good, bad) if i < 6 else (bad, good)
        rows.append({"prompt": f"User: q{i}", "chosen": chosen, "rejected": rejected})
    rows.append({"prompt": "User: tie", "chosen": "a good one", "rejected": "a bad one", "prob_chosen": 0.5})
    data = write_jsonl(tmp_path / "human.jsonl", rows)
    with FakeOpenAI() as fake:
        summary = label_eval.run(load_config(label_eval.Config, None, [
            f"out={tmp_path / 'eval'}", f"data={data}", "judge.backend=openai", "judge.model=fake",
            f"judge.base_url={fake.url}", "progress=false"]))
    assert (summary["pairs"], summary["human_ties"], summary["evaluated"]) == (9, 1, 8)
    assert summary["agreement"]["accuracy"] == 0.75
    judged = read(tmp_path / "eval" / "judged.jsonl")
    truth = [r["human_prefers"] == "a" for r in judged]
    predicted = [r["judge_prefers"] == "a" for r in judged]
    assert 0 < sum(truth) < 8  # the seeded coin put the humans' pick in both positions
    assert summary["agreement"] == binary_report(truth, predicted)
    # P(judge's choice = human's) averaged: sigma(2) on the 6 agreeing pairs, 1 - sigma(2) on 2
    s2 = 1 / (1 + math.exp(-2))
    assert summary["mean_judge_prob_of_human_choice"] == pytest.approx((6 * s2 + 2 * (1 - s2)) / 8)


def test_critique_and_revise_writes_sft_demonstrations(tmp_path):
    data = write_jsonl(tmp_path / "answers.jsonl", [
        {"prompt": "User: how do I greet a neighbour?", "completion": "Whatever, go away."},
        {"messages": [{"role": "user", "content": "case-empty"}, {"role": "assistant", "content": "No."}]},
    ])
    with FakeOpenAI({"case-empty": ["text:*"]}) as fake:
        summary = critique.run(load_config(critique.Config, None, [
            f"out={tmp_path / 'rev'}", f"data={data}", "judge.backend=openai", "judge.model=fake",
            f"judge.base_url={fake.url}", "rounds=2", "progress=false"]))
    assert (summary["answers"], summary["revised"], summary["unrevised"], summary["empty_revisions"]) == (2, 1, 1, 1)
    [demo] = read(tmp_path / "rev" / "demonstrations.jsonl")
    # the stop strings cut what the model wrote after its critique and its revision
    assert demo["completion"] == "Here is a polite answer." and demo["original"] == "Whatever, go away."
    assert demo["critiques"] == ["The reply is rude."] * 2 and len(demo["principles"]) == 2
    [undone] = read(tmp_path / "rev" / "unrevised.jsonl")
    assert undone["reason"] == "empty revision" and undone["prompt"] == [{"role": "user", "content": "case-empty"}]
    assert [d.completion for d in load_demonstrations(tmp_path / "rev" / "demonstrations.jsonl")] == \
        ["Here is a polite answer."]


def test_tinyworld_judge_demonstrations_by_hand():
    from rlxf.tinyworld.judge import demonstrations, gold_rating, rationale

    q = "question : what color is the fox ? answer :"  # the fox is red
    # honest is the worst flaw of a false answer; an insult costs harmless; a right answer is "right"
    assert rationale(q, "the fox is red .", "the fox is blue .") == "1 is right . 2 is false ."
    assert rationale(q, "the fox is red , you idiot .", "the fox is red .") == "1 is rude . 2 is right ."
    # gold totals 1.0 and 0.35 (0 + 0 + 0.2 + 0.15): ratings 1 + 9 * 1.0 = 10 and 1 + round(3.15) = 4
    assert (gold_rating(q, "the fox is red ."), gold_rating(q, "the fox is blue .")) == (10, 4)
    rows = demonstrations(40, seed=3)
    assert rows == demonstrations(40, seed=3) and len(rows) == 50  # 40 pairwise + 25% ratings
    labels = [r["completion"][-1] for r in rows if r["prompt"].endswith("good answer :") or "why :" in r["prompt"]]
    assert set(labels) == {"1", "2"}


def test_tinyworld_judge_builds_and_reports(tmp_path, tiny_model_dir):
    from rlxf.config import from_dict
    from rlxf.tinyworld import judge

    cfg = from_dict(judge.Config, {"out": str(tmp_path / "j"), "base": str(tiny_model_dir), "n_pairs": 40,
                                   "steps": 2, "batch_size": 8, "n_eval": 4, "n_eval_cot": 1, "max_length": 192,
                                   "progress": False})
    summary = judge.run(cfg)
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(summary["judge"]).config.n_positions == 192
    assert summary["eval_pairs"] == 4 and summary["pairwise"]["labelled"] == 4
    for key in ("swap_averaged_accuracy", "order_ab_only_accuracy", "flip_rate"):
        assert 0.0 <= summary["pairwise"][key] <= 1.0
    assert summary["judge_vs_human"]["n"] == 4 and "base_model_as_judge" in summary
    assert judge.run(cfg) == summary  # a finished build is reused


def test_tinyworld_judge_starts_from_the_shipped_base_by_default(tmp_path, monkeypatch):
    from rlxf.config import from_dict
    from rlxf.tinyworld import build, judge

    seen = []

    class Stop(Exception):
        pass

    def extend_context(base, out, n_positions):
        seen.append(base)
        raise Stop

    monkeypatch.setattr(judge, "extend_context", extend_context)
    cfg = from_dict(judge.Config, {"out": str(tmp_path / "j"), "n_pairs": 8, "progress": False})
    with pytest.raises(Stop):
        judge.run(cfg)
    assert seen == [build.SHIPPED] and (build.SHIPPED / "model.safetensors").exists()
    assert not (tmp_path / "j" / "build").exists()  # no base model was pre-trained for it
