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
