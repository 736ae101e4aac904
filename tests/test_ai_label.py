"""The commands end to end: `rlxf label` on a tiny local model, `label-eval`, `critique`, the Tinyworld judge."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
from conftest import write_jsonl
from fake_openai_server import FakeOpenAI

from rlxf.config import load_config
from rlxf.data import load_demonstrations, load_preferences
from rlxf.errors import ConfigError, DataError, RlxfError
from rlxf.evaluate.agreement import binary_report
from rlxf.feedback.ai import critique, label, label_eval
from rlxf.feedback.ai.judge import Completion
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
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"prompt": "q", "answers": ["a", " ", "c"]}])
    with pytest.raises(DataError, match=r"empty.jsonl:1: field 'answers\[1\]': is empty; an answer needs some text"):
        label.read_pairs(str(empty))


def test_a_pair_with_an_empty_answer_is_a_bad_row_as_the_reward_stage_would_say(tmp_path):
    # Anthropic HH has rows whose final answer is empty (the labeller preferred saying nothing);
    # `rlxf reward` would refuse a label for such a pair, so the reader refuses the pair first.
    def hh(question, answer):
        return f"\n\nHuman: {question}\n\nAssistant:{answer}"

    rows = [{"chosen": hh("hi", " Hello!"), "rejected": hh("hi", " Go away.")},
            {"chosen": hh("how to steal?", ""), "rejected": hh("how to steal?", " Easy.")},
            {"chosen": hh("bye", " Bye!"), "rejected": hh("bye", "  ")}]
    data = write_jsonl(tmp_path / "hh.jsonl", rows)
    with pytest.raises(DataError) as err:
        label.read_pairs(str(data))
    assert str(err.value) == f"{data}:2: field 'chosen': is empty; an answer needs some text" + \
        " (skip_bad_rows=true skips such rows)"
    # the words the data loader uses for the same answer in a file `rlxf reward` reads
    trl = write_jsonl(tmp_path / "trl.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"},
                                               {"prompt": "p", "chosen": "  ", "rejected": "b"}])
    with pytest.raises(DataError) as loader_err:
        load_preferences(trl)
    hint = " (skip_bad_rows=true skips such rows)"
    assert (err.value.line, err.value.field, err.value.problem) == \
        (loader_err.value.line, loader_err.value.field, loader_err.value.problem + hint)
    pairs, skipped = label.read_pairs(str(data), skip_bad=True)
    assert [(p.a, p.b) for p in pairs] == [("Hello!", "Go away.")] and skipped == 2


def test_limit_labels_the_first_pairs_without_reading_past_them(tmp_path):
    """`rlxf label limit=N` (a trial on a large file) takes the first N pairs and stops
    reading there: a bad row further on does not stop it, an empty answer before counts
    as the bad row it is."""
    def hh(question, answer):
        return f"\n\nHuman: {question}\n\nAssistant:{answer}"

    rows = [{"chosen": hh("hi", " Hello!"), "rejected": hh("hi", " Go away.")},
            {"chosen": hh("how to steal?", ""), "rejected": hh("how to steal?", " Easy.")},
            {"chosen": hh("bye", " Bye!"), "rejected": hh("bye", " Get lost.")},
            {"chosen": "no dialogue here", "rejected": 3}]
    data = write_jsonl(tmp_path / "hh.jsonl", rows)
    with pytest.raises(DataError, match="hh.jsonl:2: field 'chosen': is empty"):
        label.read_pairs(str(data), limit=2)
    pairs, skipped = label.read_pairs(str(data), limit=2, skip_bad=True)
    assert [p.a for p in pairs] == ["Hello!", "Bye!"] and skipped == 1
    pairs, skipped = label.read_pairs(str(data), limit=3, skip_bad=True)  # more than the file holds
    assert len(pairs) == 2 and skipped == 2  # row 4 was read, and was bad
    answers = write_jsonl(tmp_path / "answers.jsonl", [{"prompt": "q", "answers": ["a", "b", "c"]},
                                                       {"prompt": "q", "answers": "not a list"}])
    pairs, _ = label.read_pairs(str(answers), limit=2)
    assert [(p.a, p.b) for p in pairs] == [("a", "b"), ("a", "c")]


def test_a_file_with_no_readable_row_reports_its_first_error(tmp_path):
    csv = tmp_path / "csv_as.jsonl"
    csv.write_text("prompt,chosen,rejected\nhi,a,b\n")
    for skip in (False, True):
        with pytest.raises(DataError, match=r"csv_as.jsonl:1: not valid JSON"):
            label.read_pairs(str(csv), skip_bad=skip)


def test_label_eval_against_human_labels(tmp_path, caplog, monkeypatch):
    # Humans pick the "good" answer in 6 pairs and the "bad" one in 2; one pair is a human tie.
    # The fake judge always prefers "good", so it agrees on exactly 6 of the 8: accuracy 0.75.
    rows = []
    for i in range(8):
        good, bad = f"a good answer {i}", f"a bad answer {i}"
        chosen, rejected = (good, bad) if i < 6 else (bad, good)
        rows.append({"prompt": f"User: q{i}", "chosen": chosen, "rejected": rejected})
    rows.append({"prompt": "User: tie", "chosen": "a good one", "rejected": "a bad one", "prob_chosen": 0.5})
    data = write_jsonl(tmp_path / "human.jsonl", rows)
    monkeypatch.setattr(logging.getLogger("rlxf"), "propagate", True)  # the CLI's setup turns it off
    with FakeOpenAI() as fake, caplog.at_level(logging.INFO, logger="rlxf"):
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
    # the log line rounds to 3 places; summary.json keeps every digit
    kappa = summary["agreement"]["cohen_kappa"]
    assert kappa != round(kappa, 3)  # the premise: this kappa has more digits than the log shows
    assert f"accuracy 0.75, kappa {round(kappa, 3):g} (" in caplog.text


def test_label_eval_refuses_and_skips_the_rows_label_refuses(tmp_path, caplog, monkeypatch):
    # an HH row whose preferred answer is empty: `rlxf label` refuses it, so must `rlxf label-eval`
    def hh(question, answer):
        return f"\n\nHuman: {question}\n\nAssistant:{answer}"

    rows = [{"chosen": hh(f"q{i}", " a good answer"), "rejected": hh(f"q{i}", " a bad answer")} for i in range(3)]
    rows.insert(1, {"chosen": hh("how to steal?", ""), "rejected": hh("how to steal?", " Easy.")})
    data = write_jsonl(tmp_path / "hh.jsonl", rows)
    monkeypatch.setattr(logging.getLogger("rlxf"), "propagate", True)  # the CLI's setup turns it off
    with FakeOpenAI() as fake:
        args = [f"data={data}", "judge.backend=openai", "judge.model=fake", f"judge.base_url={fake.url}",
                "progress=false"]
        for command in (label, label_eval):
            with pytest.raises(DataError) as err:
                command.run(load_config(command.Config, None, [f"out={tmp_path / command.__name__}", *args]))
            assert str(err.value) == (f"{data}:2: field 'chosen': is empty; an answer needs some text "
                                      "(skip_bad_rows=true skips such rows)")
        args.append("skip_bad_rows=true")
        labelled = label.run(load_config(label.Config, None, [f"out={tmp_path / 'l'}", *args]))
        judged = label_eval.run(load_config(label_eval.Config, None, [f"out={tmp_path / 'le'}", *args]))
        assert labelled["skipped_rows"] == judged["skipped_rows"] == 1
        assert (judged["pairs"], judged["evaluated"]) == (3, 3)
        assert all(r["answer_a"] and r["answer_b"] for r in read(tmp_path / "le" / "judged.jsonl"))
        # a re-run of a complete directory returns its summary and says so, as label does
        with caplog.at_level(logging.INFO, logger="rlxf"):
            again = label_eval.run(load_config(label_eval.Config, None, [f"out={tmp_path / 'le'}", *args]))
        assert again == judged and f"{tmp_path / 'le'} is already complete" in caplog.text
        assert fake.requests == 2 * 3 * 2  # both commands, 3 pairs, both orders; the re-run asked nothing


def test_label_eval_help_names_the_files_it_writes(capsys):
    """`out` of label-eval is documented with what label-eval writes, not what label writes."""
    from rlxf.cli import main

    def out_key(command: str) -> str:
        assert main([command, "--help"]) == 0
        return capsys.readouterr().out.split("\n  out (str, required)\n", 1)[1].split("\n", 1)[0].strip()

    assert out_key("label-eval") == "Run directory (judged.jsonl, summary.json, judge_cache.sqlite, config.yaml)."
    assert out_key("label").startswith("Run directory (preferences.jsonl, unlabelled.jsonl, summary.json")


def test_label_says_order_flips_were_not_measured_with_one_order(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("rlxf"), "propagate", True)
    data = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "User: q", "chosen": "a good one", "rejected": "meh"}])
    with FakeOpenAI() as fake, caplog.at_level(logging.INFO, logger="rlxf"):
        summary = label.run(load_config(label.Config, None, [
            f"out={tmp_path / 'run'}", f"data={data}", "judge.backend=openai", "judge.model=fake",
            f"judge.base_url={fake.url}", "progress=false", "both_orders=false"]))
    assert summary["flip_rate"] is None
    assert "order flips not measured" in caplog.text and "0.0%" not in caplog.text


def test_the_shortened_warning_counts_the_pairs_left_unlabelled_for_being_too_long(caplog, monkeypatch):
    from types import SimpleNamespace

    from rlxf.feedback.ai.fit import Room
    from rlxf.feedback.ai.labeller import JudgeSettings, PairJudgement
    from rlxf.feedback.ai.templates import Template

    class Words:  # one token per word
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": text.split()}

    class Judge:  # only its room is asked for: the verdicts below stand in for judge_pairs
        def room(self, *, new_tokens=0, answers=()):
            return Room(256, 2, Words())

    # require_both_orders=false: the first pair is labelled from order AB though BA was too long; only the
    # second stays unlabelled for being too long
    verdicts = [PairJudgement(0.7, 0.7, None, ("logprobs", "too_long"), shortened=2),
                PairJudgement(None, None, None, ("too_long", "too_long"), shortened=2)]
    monkeypatch.setattr(label, "judge_pairs", lambda judge, chunk, s: verdicts[:len(chunk)])
    monkeypatch.setattr(logging.getLogger("rlxf"), "propagate", True)
    settings = JudgeSettings(template=Template(preamble="p", sample="{context} {response1} {response2}",
                                               ending=" ="), require_both_orders=False)
    pairs = [SimpleNamespace(prompt="q", a="a", b="b")] * 2
    with caplog.at_level(logging.WARNING, logger="rlxf"):
        results = label.label_all(Judge(), pairs, settings, chunk_size=2, max_failed=0, progress=False)
    assert label.label_summary(results)["too_long_pairs"] == 1
    assert "4 judge prompts were longer" in caplog.text and "; 1 pairs could not fit even so" in caplog.text


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


def test_an_empty_later_revision_keeps_the_earlier_one(tmp_path):
    # Round 0 revises "Whatever." into the fake's polite answer; every prompt that shows that answer
    # (round 1's critique and revision) gets empty text back: round 1 revises nothing.
    data = write_jsonl(tmp_path / "answers.jsonl", [{"prompt": "User: hi", "completion": "Whatever."}])
    with FakeOpenAI({"Here is a polite answer": ["text:*"]}) as fake:
        summary = critique.run(load_config(critique.Config, None, [
            f"out={tmp_path / 'rev'}", f"data={data}", "judge.backend=openai", "judge.model=fake",
            f"judge.base_url={fake.url}", "rounds=2", "progress=false"]))
    assert (summary["revised"], summary["unrevised"], summary["empty_revisions"]) == (1, 0, 0)
    [demo] = read(tmp_path / "rev" / "demonstrations.jsonl")
    assert demo["completion"] == "Here is a polite answer." and demo["revisions"] == ["Here is a polite answer.", ""]


def test_critique_bad_rows_name_its_own_key_and_are_counted(tmp_path):
    # the preferred answer of this HH row is empty: no demonstration
    rows = [{"chosen": "\n\nHuman: how to steal?\n\nAssistant:",
             "rejected": "\n\nHuman: how to steal?\n\nAssistant: Easy."},
            {"prompt": "User: hi", "completion": "Whatever."}]
    data = write_jsonl(tmp_path / "answers.jsonl", rows)
    with FakeOpenAI() as fake:
        args = [f"out={tmp_path / 'rev'}", f"data={data}", "judge.backend=openai", "judge.model=fake",
                f"judge.base_url={fake.url}", "progress=false"]
        with pytest.raises(DataError, match=r"answers.jsonl:1: .*\(skip_bad_rows=true skips such rows\)") as err:
            critique.run(load_config(critique.Config, None, args))
        assert "data.skip_bad_rows" not in str(err.value)
        summary = critique.run(load_config(critique.Config, None, args + ["skip_bad_rows=true"]))
    assert (summary["skipped_rows"], summary["answers"], summary["revised"]) == (1, 1, 1)


def test_a_failed_critique_leaves_the_run_incomplete_until_a_rerun_retries_it(tmp_path):
    data = write_jsonl(tmp_path / "answers.jsonl", [{"prompt": "User: hi", "completion": "Whatever."},
                                                    {"prompt": "User: case-down", "completion": "No."}])
    with FakeOpenAI({"case-down": ["500*"]}) as fake:
        args = [f"out={tmp_path / 'rev'}", f"data={data}", "judge.backend=openai", "judge.model=fake",
                f"judge.base_url={fake.url}", "judge.backoff=0.01", "judge.max_retries=1", "progress=false"]
        with pytest.raises(RlxfError, match=r"1 of 2 answers failed after all retries .* Re-run the same command"):
            critique.run(load_config(critique.Config, None, args))
        assert fake.count("500") == 2  # 1 + max_retries, not again "answer by answer"
        assert not (tmp_path / "rev" / "summary.json").exists()
        assert read(tmp_path / "rev" / "unrevised.jsonl")[0]["reason"].startswith("failed: ")
        fake.script, before = {}, fake.requests
        summary = critique.run(load_config(critique.Config, None, args))
        assert fake.requests - before == 2  # the failed item's critique and revision; the other one is cached
    assert (summary["revised"], summary["unrevised"]) == (2, 0)


def test_critique_of_a_long_conversation_shortens_it_and_keeps_the_requests(tmp_path, tokenizer):
    from conftest import make_model

    from rlxf.feedback.ai.constitution import Constitution, Principle
    from rlxf.feedback.ai.hf_judge import HFJudge

    class Recording(HFJudge):
        def complete(self, prompts, **kw):  # generate (the critiques) calls it too
            self.asked = getattr(self, "asked", []) + list(prompts)
            return super().complete(prompts, **kw)

    judge = Recording(make_model("gpt2", len(tokenizer)).eval(), tokenizer)
    # words this tiny tokenizer knows: the bare critique prompt is 43 tokens, the revision request 29
    c = Constitution(principles=[Principle(name="p", judge="x", critique="what is wrong ?",
                                           revision="say it better .")])
    cfg = critique.Config(out=str(tmp_path), data="-", judge=None, critique_max_tokens=8, revision_max_tokens=8)
    context = " ".join(["question : what does the bear eat ? answer : the bear eats fish ."] * 10)  # ~160 tokens
    item = critique.Revision(context, "the fox is red .", "the fox is red .", [], [], [])
    critique.revise(judge, [item], c, cfg)
    ask, revision_ask = judge.asked
    principle = c.sample(cfg.seed, "round-0", context, item.original)
    assert item.shortened == 1 and len(item.revisions) == 1
    # the answer and the critique request are whole; the conversation lost its start, not its end
    assert ask.endswith(f"\nAssistant: the fox is red .\n\nCritique request: {principle.critique}\nCritique:")
    assert context.endswith(ask.split("\nAssistant: ")[0]) and len(ask) < len(context)
    assert revision_ask.startswith(ask) and revision_ask.endswith("Revision:")
    assert len(tokenizer(revision_ask)["input_ids"]) + 8 <= 128
    # revision_max_tokens too large for the model: the error names the keys that were set
    big = critique.Config(out=str(tmp_path), data="-", judge=None, revision_max_tokens=200)
    with pytest.raises(ConfigError, match=r"critique_max_tokens \(128\) \+ revision_max_tokens \(200\) leave no room"):
        critique.revise(judge, [critique.Revision("hi", "a", "a", [], [], [])], c, big)


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


def test_a_label_run_that_could_read_no_answer_fails_and_stays_incomplete(tmp_path):
    # the judge answers every prompt of case-garbage with text no "1"/"2" can be read from
    rows = [{"prompt": f"User: case-garbage {i}", "chosen": "a good one", "rejected": "meh"} for i in range(4)]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    with FakeOpenAI({"case-garbage": ["text:Both replies have merit.*"]}) as fake:
        args = [f"out={tmp_path / 'run'}", f"data={data}", "judge.backend=openai", "judge.model=fake",
                f"judge.base_url={fake.url}", "progress=false"]
        for _ in range(2):  # a re-run is not "already complete": it fails the same way
            with pytest.raises(label.NothingLabelled, match=r"none of the 4 pairs it was asked about: 4 unparseable"
                               r".*unlabelled\.jsonl holds what it wrote \(field 'unparsed'\).*another template.*cot="):
                label.run(load_config(label.Config, None, args))
            assert not (tmp_path / "run" / "summary.json").exists()
            assert read(tmp_path / "run" / "preferences.jsonl") == []
            unlabelled = read(tmp_path / "run" / "unlabelled.jsonl")
            assert [r["reason"] for r in unlabelled] == ["unparseable"] * 4
            assert all(r["unparsed"] == ["Both replies have merit."] * 2 for r in unlabelled)  # both orders
        # one pair the judge can read: a label, so the run completes with the rest counted
        rows[0]["prompt"] = "User: q"
        data = write_jsonl(tmp_path / "pairs.jsonl", rows)
        summary = label.run(load_config(label.Config, None, [f"out={tmp_path / 'run2'}", *args[1:]]))
    assert (summary["labelled"], summary["unparseable_pairs"]) == (1, 3)


def test_a_label_eval_run_that_could_read_no_answer_fails_and_stays_incomplete(tmp_path):
    rows = [{"prompt": f"User: case-garbage {i}", "chosen": "a good one", "rejected": "meh"} for i in range(3)]
    data = write_jsonl(tmp_path / "human.jsonl", rows)
    with FakeOpenAI({"case-garbage": ["text:Hard to say.*"]}) as fake:
        with pytest.raises(label.NothingLabelled, match=r"none of the 3 pairs .* 3 unparseable.*judged\.jsonl holds"):
            label_eval.run(load_config(label_eval.Config, None, [
                f"out={tmp_path / 'eval'}", f"data={data}", "judge.backend=openai", "judge.model=fake",
                f"judge.base_url={fake.url}", "progress=false"]))
    assert not (tmp_path / "eval" / "summary.json").exists()
    assert [r["unparsed"] for r in read(tmp_path / "eval" / "judged.jsonl")] == [["Hard to say."] * 2] * 3


def test_a_critique_longer_once_tokenized_is_cut_to_fit_and_counted(tmp_path, tokenizer):
    from conftest import make_model

    from rlxf.feedback.ai.constitution import Constitution, Principle
    from rlxf.feedback.ai.hf_judge import HFJudge

    class Overlong(HFJudge):
        """Critiques that take more tokens, tokenized again, than the max_tokens they were generated in
        (as a generation stopped inside a character does: each U+FFFD is 3 byte tokens here)."""

        def complete(self, prompts, *, max_tokens, **kw):  # generate (the critiques) calls it too
            self.asked = getattr(self, "asked", []) + list(prompts)
            if max_tokens == 8:  # the critique
                return [[Completion("\ufffd" * max_tokens, False)] for _ in prompts]
            return [[Completion("the fox is brown .", True)] for _ in prompts]

    judge = Overlong(make_model("gpt2", len(tokenizer)).eval(), tokenizer)
    assert len(tokenizer("\ufffd" * 8)["input_ids"]) == 24  # 8 tokens generated, 24 once tokenized again
    c = Constitution(principles=[Principle(name="p", judge="x", critique="what is wrong ?",
                                           revision="say it better .")])
    cfg = critique.Config(out=str(tmp_path), data="-", judge=None, critique_max_tokens=8, revision_max_tokens=9)
    context = " ".join(["question : what does the bear eat ? answer : the bear eats fish ."] * 10)  # ~160 tokens
    item = critique.Revision(context, "the fox is red .", "the fox is red .", [], [], [])
    critique.revise(judge, [item], c, cfg)
    # the critique prompt was fitted for 8 critique tokens (+ 1): the 24 would overflow; cut, the answer is
    # revised, never dropped as too long
    assert not item.too_long and item.revisions == ["the fox is brown ."] and item.cut_critiques == 1
    [crit] = item.critiques
    ask, revision_ask = judge.asked
    assert ("\ufffd" * 8).startswith(crit) and crit and f"Critique: {crit}" in revision_ask
    assert len(tokenizer(revision_ask)["input_ids"]) + 9 <= 128


def test_a_critique_prompt_that_cannot_fit_fails_before_any_request(tmp_path, tiny_model_dir, monkeypatch):
    from rlxf.feedback.ai.hf_judge import HFJudge

    asked = []
    monkeypatch.setattr(HFJudge, "generate", lambda self, prompts, **kw: asked.append(prompts))
    data = write_jsonl(tmp_path / "answers.jsonl", [{"prompt": "say hello to tom .", "completion": "go away ."}])
    principles = tmp_path / "c.yaml"
    principles.write_text('principles:\n'
                          '  - {name: p, judge: x, critique: "what is wrong ?", revision: "say it better ."}\n')
    # words this tiny tokenizer knows: the critique prompt with an empty conversation and answer is 39 tokens,
    # the revision request 29; of the 128 positions, 8 go to the revision, 60 to the critique and 29 + 1 to the
    # request (and its boundary): 30 are left, fewer than 39, so no answer could ever be revised
    with pytest.raises(ConfigError, match=r"critique prompt alone \(no conversation, no answer\) is 39 tokens "
                                          r"under principle 'p', more than the 30 the model's 128 positions"):
        critique.run(load_config(critique.Config, None, [
            f"out={tmp_path / 'rev'}", f"data={data}", f"judge.model={tiny_model_dir}", "judge.device=cpu",
            f"constitution={principles}", "critique_max_tokens=60", "revision_max_tokens=8", "progress=false"]))
    assert asked == [] and not (tmp_path / "rev" / "summary.json").exists()


def test_critique_says_what_it_did_and_refuses_a_principle_that_never_fits(tmp_path, tiny_model_dir, monkeypatch,
                                                                          caplog):
    from rlxf.feedback.ai.hf_judge import HFJudge

    asked = []

    def complete(self, prompts, **kw):
        asked.extend(prompts)
        return [[Completion("the fox is brown .", True)] for _ in prompts]

    monkeypatch.setattr(HFJudge, "complete", complete)
    monkeypatch.setattr(logging.getLogger("rlxf"), "propagate", True)  # the CLI's setup turns it off
    data = write_jsonl(tmp_path / "answers.jsonl", [{"prompt": f"say hello to tom {i} .", "completion": "go away ."}
                                                    for i in range(8)])
    principles = tmp_path / "c.yaml"
    # of the 128 positions, 8 go to the revision, 20 to the critique and ~30 to the revision request: the
    # critique prompt may have ~70 tokens. "short" asks in ~39 of them; "long" (~39 + 12 * 4) never fits
    short = '  - {name: short, judge: x, critique: "what is wrong ?", revision: "say it better ."}\n'
    principles.write_text('principles:\n' + short +
                          f'  - {{name: long, judge: x, critique: "{" ".join(["what is wrong ?"] * 12)}", '
                          'revision: "say it better ."}\n')
    args = [f"out={tmp_path / 'rev'}", f"data={data}", f"judge.model={tiny_model_dir}", "judge.device=cpu",
            f"constitution={principles}", "critique_max_tokens=20", "revision_max_tokens=8", "progress=false"]
    # any answer may draw "long", and none that does could be revised: refused before any request (before,
    # the answers that drew it came out "too long for the model" after the others had been revised)
    with pytest.raises(ConfigError, match=r"under principle 'long', more than the \d+ the model's 128 positions .* "
                                          r"shorten or drop that principle"):
        critique.run(load_config(critique.Config, None, args))
    assert asked == []
    principles.write_text('principles:\n' + short)
    with caplog.at_level(logging.INFO, logger="rlxf"):
        summary = critique.run(load_config(critique.Config, None, args))
    assert (summary["revised"], summary["unrevised"], summary["too_long"]) == (8, 0, 0)
    assert len(asked) == 16  # a critique and a revision per answer
    assert read(tmp_path / "rev" / "unrevised.jsonl") == []
    assert ("revised 8 of 8 answers (8 changed; 0 unrevised: 0 empty revisions, 0 cut revisions, 0 too long for the "
            "model, 0 refused)") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rlxf"):
        assert critique.run(load_config(critique.Config, None, args)) == summary
    assert f"{tmp_path / 'rev'} is already complete" in caplog.text and "revised" not in caplog.text


def test_a_revision_cut_at_revision_max_tokens_is_never_the_answer(tmp_path):
    """Round by round: a cut revision is kept in ``revisions`` and counted, the answer stays the
    round before's; an item whose every revision was cut is unrevised, with that reason."""
    from rlxf.feedback.ai.constitution import Constitution, Principle

    class Scripted:
        identity = "scripted"

        def __init__(self, revisions):
            self.revisions = iter(revisions)

        def generate(self, prompts, **kw):
            return [["it is rude ."] for _ in prompts]

        def complete(self, prompts, **kw):
            return [[next(self.revisions)] for _ in prompts]

    # round 0 for items a, b, c, then round 1 for a, b, c
    judge = Scripted([Completion("the fox", False), Completion("the fox is red .", True), Completion("the", False),
                      Completion("the fox is red .", True), Completion("the fox is red . and", False),
                      Completion("the fox is", False)])
    c = Constitution(principles=[Principle(name="p", judge="x", critique="what is wrong ?", revision="say it better .")])
    cfg = critique.Config(out=str(tmp_path), data="-", judge=None, rounds=2)
    items = [critique.Revision("what color is the fox ?", "go away .", "go away .", [], [], []) for _ in range(3)]
    critique.revise(judge, items, c, cfg)
    a, b, cut = items
    assert (a.answer, a.revisions, a.cut_revisions, a.problem) == (
        "the fox is red .", ["the fox", "the fox is red ."], 1, None)
    assert (b.answer, b.revisions, b.cut_revisions, b.problem) == (
        "the fox is red .", ["the fox is red .", "the fox is red . and"], 1, None)
    assert (cut.answer, cut.revisions, cut.cut_revisions, cut.problem) == (
        "go away .", ["the", "the fox is"], 2, "revision cut at revision_max_tokens")
