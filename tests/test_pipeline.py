"""`rlxf pipeline`'s own work before and between the stages: its config checks and the
instruction it puts before every prompt. (The stages themselves run end to end in
test_demo.py.)"""

from __future__ import annotations

import pytest
from conftest import write_jsonl

from rlxf import pipeline
from rlxf.config import load_config
from rlxf.data import load_comparisons, load_demonstrations, load_prompts
from rlxf.errors import ConfigError

HH = "\n\nHuman: how do I boil rice?\n\nAssistant:"


def _files(tmp_path):
    return {
        "prompts": write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "say hello ."}, {"prompt": HH}]),
        "eval_prompts": write_jsonl(tmp_path / "eval.jsonl", [{"prompt": "two plus three is"}]),
        "demonstrations": write_jsonl(tmp_path / "demos.jsonl", [{"prompt": "say hello .", "completion": "hello ."},
                                                                 {"text": "the fox is red ."}]),
        "preferences": write_jsonl(tmp_path / "prefs.jsonl", [
            {"chosen": HH + " boil water first .", "rejected": HH + " no idea ."},
            {"prompt": "pick a colour", "completions": ["red", "blue", "green"], "ranking": [2, 0, 1]}]),
    }


def _config(tmp_path, *overrides):
    files = _files(tmp_path)
    return load_config(pipeline.Config, None, [f"out={tmp_path / 'run'}", "base_model=base",
                                               *(f"{k}={v}" for k, v in files.items()), *overrides])


def test_the_instruction_goes_before_the_prompts_of_every_stage(tmp_path):
    cfg = _config(tmp_path, "instruction=Answer harmlessly.")
    files = pipeline._with_instruction(cfg, tmp_path / "run")
    assert all(path.startswith(str(tmp_path / "run" / "data")) for path in files.values())
    assert list(load_prompts(files["prompts"])) == ["Answer harmlessly.\n\nsay hello .",
                                                    "Answer harmlessly.\n\nHuman: how do I boil rice?\n\nAssistant:"]
    assert list(load_prompts(files["eval_prompts"])) == ["Answer harmlessly.\n\ntwo plus three is"]
    demos = list(load_demonstrations(files["demonstrations"]))
    assert [(d.prompt, d.completion) for d in demos] == [("Answer harmlessly.\n\nsay hello .", "hello ."),
                                                         ("", "the fox is red .")]  # text stays text
    pair, ranking = load_comparisons(files["preferences"])
    assert (pair.prompt, pair.chosen, pair.rejected) == (
        "Answer harmlessly.\n\nHuman: how do I boil rice?\n\nAssistant:", "boil water first .", "no idea .")
    assert (ranking.prompt, ranking.ordered) == ("Answer harmlessly.\n\npick a colour", ("green", "red", "blue"))
    # without an instruction the user's files are used as they are
    assert pipeline._with_instruction(_config(tmp_path), tmp_path / "run")["preferences"] == str(tmp_path /
                                                                                                 "prefs.jsonl")


def test_a_mistake_in_a_later_stage_section_stops_the_pipeline_before_any_stage_runs(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(pipeline, "_sft", lambda *a, **k: ran.append("sft"))
    with pytest.raises(ConfigError, match=r"in the pipeline's 'ppo' section: .*rollout.batch_sise"):
        pipeline.run_stages(_config(tmp_path, "ppo={rollout: {batch_sise: 4}}"))
    with pytest.raises(ConfigError, match=r"in the pipeline's 'reward' section: .*lrr"):
        pipeline.run_stages(_config(tmp_path, "reward={lrr: 0.1}"))
    with pytest.raises(ConfigError, match=r"in the pipeline's 'reward.tinyworld' section: .*'n_trian'"):
        pipeline.run_stages(_config(tmp_path, "preferences=null", "labeller=tinyworld",
                                    "reward={tinyworld: {n_trian: 20}}"))
    assert ran == []
    with pytest.raises(ConfigError, match="reinforcement_learning_rate_multiplier must be > 0, got -1"):
        _config(tmp_path, "reinforcement_learning_rate_multiplier=-1")


def test_the_stages_see_the_same_paths_however_out_is_written(tmp_path, monkeypatch):
    class Stop(Exception):
        pass

    seen = []

    def sft(cfg, demonstrations, out):
        seen.append((demonstrations, str(out)))
        raise Stop

    monkeypatch.setattr(pipeline, "_sft", sft)
    monkeypatch.chdir(tmp_path)
    for out in ("other", str(tmp_path / "other"), "./other/"):
        with pytest.raises(Stop):
            pipeline.run_stages(_config(tmp_path, f"out={out}", "instruction=Be kind."))
    assert len(set(seen)) == 1 and seen[0][1] == str(tmp_path / "other" / "sft")


def test_another_instruction_gives_the_stages_other_data_files(tmp_path):
    """The instruction reaches the stages only through the data files the pipeline writes:
    each instruction gets files of its own, so a stage that has begun sees its data change
    (and refuses it, as any changed config) instead of reading rewritten files."""
    first = pipeline._with_instruction(_config(tmp_path, "instruction=Answer briefly."), tmp_path / "run")
    again = pipeline._with_instruction(_config(tmp_path, "instruction=Answer briefly."), tmp_path / "run")
    other = pipeline._with_instruction(_config(tmp_path, "instruction=Answer at length."), tmp_path / "run")
    assert first == again
    assert all(first[k] != other[k] for k in first)
    assert list(load_prompts(first["prompts"]))[0].startswith("Answer briefly.")  # not overwritten


def test_the_evaluation_is_done_again_when_what_it_depends_on_changed(tmp_path, monkeypatch):
    from rlxf.evaluate import sxs

    sampled = []

    class Gen:
        def __init__(self, text):
            self.text, self.ended = text, True

    monkeypatch.setattr("rlxf.models.loading.load_causal_lm", lambda cfg: None)
    monkeypatch.setattr("rlxf.models.loading.load_tokenizer", lambda path: None)
    monkeypatch.setattr("rlxf.models.generation.generate",
                        lambda model, tok, prompts, **kw: sampled.append(len(prompts)) or [Gen("hi")] * len(prompts))
    monkeypatch.setattr(sxs, "reward_scorer", lambda path: lambda p, a, e: [0.0] * len(a))
    prompts = write_jsonl(tmp_path / "five.jsonl", [{"prompt": f"q{i}"} for i in range(5)])

    def evaluate(*overrides):
        cfg = _config(tmp_path, *overrides)
        return pipeline._evaluate(cfg, "sft", "ppo", "rm", str(prompts), tmp_path / "run" / "eval")

    assert evaluate("eval_n=4")["summary"]["rows"] == 4 and sampled == [4, 4]
    assert evaluate("eval_n=4")["summary"]["rows"] == 4 and sampled == [4, 4]  # reused
    assert evaluate("eval_n=3")["summary"]["rows"] == 3 and sampled == [4, 4, 3, 3]  # done again


def test_a_stage_built_on_an_earlier_run_is_refused_once_that_run_is_redone(tmp_path):
    """reward/ trained on the SFT run in sft/; SFT deleted and trained again: resuming or
    reusing reward/ would pair the old reward model with the new SFT model, silently."""
    out = tmp_path / "out"
    (out / "sft").mkdir(parents=True)
    (out / "sft" / "summary.json").write_text('{"steps": 10, "seconds": 1.0}')
    pipeline._check_lineage(out, "reward", ["sft", "preferences"])  # reward starts on it
    (out / "reward" / "checkpoints" / "step-000005").mkdir(parents=True)  # and saves a checkpoint
    pipeline._check_lineage(out, "reward", ["sft", "preferences"])  # resumed on the same SFT run: fine
    (out / "sft" / "summary.json").write_text('{"steps": 10, "seconds": 1.2}')  # SFT run again
    with pytest.raises(ConfigError, match=r"reward was built on the sft run that was in .* run again since"):
        pipeline._check_lineage(out, "reward", ["sft", "preferences"])
    (out / "reward" / "checkpoints" / "step-000005").rmdir()  # reward deleted by the user: it starts anew
    (out / "reward" / "checkpoints").rmdir()
    pipeline._check_lineage(out, "reward", ["sft", "preferences"])
