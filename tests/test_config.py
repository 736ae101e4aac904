"""The typed config system: YAML + dotted overrides, unknown keys, types, validation, help."""

from __future__ import annotations

import os
from typing import Literal

import pytest

from rlxf.config import dump_yaml, field_docs, help_text, load_config
from rlxf.errors import ConfigError
from rlxf.stages import sft


def _cfg(tmp_path, text: str, *overrides: str) -> sft.Config:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_config(sft.Config, path, list(overrides))


BASE = "out: runs/x\nmodel: {name_or_path: m}\ndata: {train: d.jsonl}\n"


def test_yaml_then_overrides_win(tmp_path):
    cfg = _cfg(tmp_path, BASE + "lr: 0.1\n", "lr=1e-4", "data.max_length=256", "model.lora.enabled=true")
    assert cfg.lr == 1e-4  # PyYAML reads 1e-4 as a string: it must still become a float
    assert cfg.data.max_length == 256
    assert cfg.model.lora.enabled is True
    assert cfg.model.lora.r == 8  # nested defaults survive a partial section


def test_unknown_key_suggests_the_closest(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'data.max_lenght'; did you mean 'data.max_length'"):
        _cfg(tmp_path, BASE, "data.max_lenght=3")
    with pytest.raises(ConfigError, match=r"unknown config key 'nonsense'"):
        _cfg(tmp_path, BASE + "nonsense: 1\n")
    # a misspelt key is named even while required keys are missing (they would hide it)
    with pytest.raises(ConfigError, match=r"unknown config key 'model.lora.rr'; did you mean 'model.lora.r'"):
        load_config(sft.Config, None, ["model.lora.rr=4"])


@pytest.mark.parametrize("override, message", [
    ("batch_size=two", r"'batch_size' must be int, got 'two'"),
    ("batch_size=1.5", r"'batch_size' must be int"),
    ("data.packing=maybe", r"'data.packing' must be true or false"),
    ("lr_schedule=exp", r"'lr_schedule' must be one of 'constant', 'linear', 'cosine'"),
    ("model=3", r"model: expected a mapping"),
    ("lr=fast", r"'lr' must be a number"),
])
def test_wrong_types_name_the_key(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(tmp_path, BASE, override)


@pytest.mark.parametrize("override, message", [
    ("batch_size=0", "batch_size must be ≥ 1"),
    ("data.max_length=1", "data.max_length must be ≥ 2"),
    ("model.lora.r=0", "^model.lora.r must be ≥ 1, got 0$"),
    ("data.eval_fraction=1.5", r"data.eval_fraction must be in \[0, 1\)"),
    ("max_steps=null", None),
])
def test_validation_runs_before_any_work(tmp_path, override, message):
    if message is None:
        assert _cfg(tmp_path, BASE, override).max_steps is None
        return
    with pytest.raises(ConfigError, match=message):
        _cfg(tmp_path, BASE, override)


def test_missing_required_key_says_what_it_is(tmp_path):
    with pytest.raises(ConfigError, match=r"missing required config key 'data.train' \(Demonstrations"):
        _cfg(tmp_path, "out: x\nmodel: {name_or_path: m}\ndata: {}\n")


def test_bad_yaml_and_bad_override_forms(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        _cfg(tmp_path, "out: [unclosed\n")
    with pytest.raises(ConfigError, match="not found"):
        load_config(sft.Config, tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="dotted.key=value"):
        _cfg(tmp_path, BASE, "lr")


def test_resolved_config_round_trips(tmp_path):
    cfg = _cfg(tmp_path, BASE, "adam_betas=[0.8, 0.9]")
    again = tmp_path / "again.yaml"
    again.write_text(dump_yaml(cfg))
    assert load_config(sft.Config, again) == cfg


def test_text_keys_take_the_command_line_as_written_and_numbers_must_be_finite(tmp_path):
    # YAML would read 0123 as 83 (octal), 1.10 as 1.1 and 2024-06-01 as a date
    for written in ("0123", "1.10", "2024-06-01"):
        assert _cfg(tmp_path, BASE, f"out={written}").out == written
    assert _cfg(tmp_path, BASE, "model.revision=0123").model.revision == "0123"  # str | None
    assert _cfg(tmp_path, BASE, "model.revision=null").model.revision is None
    assert _cfg(tmp_path, BASE, "out='a b'").out == "a b"  # quotes are YAML's, as before
    for bad in ("nan", "inf", "-inf", ".nan"):
        with pytest.raises(ConfigError, match=r"config key 'lr' must be a finite number"):
            _cfg(tmp_path, BASE, f"lr={bad}")


def test_a_fixed_length_tuple_takes_exactly_its_values(tmp_path):
    assert _cfg(tmp_path, BASE, "adam_betas=[0.8, 0.9]").adam_betas == (0.8, 0.9)
    for wrong in ("[0.9]", "[0.9, 0.99, 0.999]"):
        with pytest.raises(ConfigError, match=r"'adam_betas' must be a list of 2 values"):
            _cfg(tmp_path, BASE, f"adam_betas={wrong}")
    with pytest.raises(ConfigError, match=r"'adam_betas' must be a list, got 0.9"):
        _cfg(tmp_path, BASE, "adam_betas=0.9")


def test_help_comes_from_field_docstrings():
    docs = field_docs(sft.Config)
    assert docs["lr"] == "Peak learning rate (AdamW)."
    assert "Run directory" in docs["out"]  # inherited from TrainConfig
    text = help_text(sft.Config)
    assert "data.max_length (int, default 512)" in text
    assert "model.lora.r (int, default 8)" in text
    assert "out (str, required)" in text


def test_a_run_made_before_a_key_existed_resumes_when_the_key_keeps_its_default(tmp_path):
    import yaml

    from rlxf.runs import Run

    cfg = load_config(sft.Config, overrides=[f"out={tmp_path / 'run'}", "model.name_or_path=m", "data.train=t.jsonl"])
    (Run.open(cfg.out, cfg).checkpoints / "step-000001").mkdir(parents=True)  # the run has begun
    saved = tmp_path / "run" / "config.yaml"
    old = yaml.safe_load(saved.read_text())
    del old["mixed_precision"], old["model"]["lora"]["r"]  # as written by an older rlxf
    saved.write_text(yaml.safe_dump(old))
    Run.open(cfg.out, cfg)  # same behaviour: accepted

    saved.write_text(yaml.safe_dump(old))
    changed = load_config(sft.Config, overrides=[f"out={tmp_path / 'run'}", "model.name_or_path=m",
                                                 "data.train=t.jsonl", "mixed_precision=bf16", "model.lora.r=4"])
    with pytest.raises(ConfigError, match=r"different config \(mixed_precision, model.lora.r changed\)"):
        Run.open(changed.out, changed)


def test_a_resumed_run_may_change_only_what_cannot_change_its_results(tmp_path, monkeypatch):
    import yaml

    from rlxf.feedback.ai import label
    from rlxf.runs import Run

    def cfg(*more):
        return load_config(label.Config, overrides=[f"out={tmp_path / 'run'}", "data=pairs.jsonl", "judge.model=m",
                                                    *more])

    Run.open(cfg().out, cfg())
    Run.open(cfg().out, cfg("template=harmless"))  # nothing saved yet: a new config is taken
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["template"] == "harmless"
    (tmp_path / "run" / "preferences.jsonl").write_bytes(b"")  # now it has begun
    relaxed = cfg("template=harmless", "progress=false", "judge.concurrency=2", "judge.max_retries=9",
                  "judge.timeout=5")
    Run.open(relaxed.out, relaxed)
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["judge"]["max_retries"] == 9
    monkeypatch.chdir(tmp_path)
    relative = load_config(label.Config, overrides=["out=run", "data=pairs.jsonl", "judge.model=m",
                                                     "template=harmless"])
    Run.open(relative.out, relative)  # the same run, its folder written another way
    with pytest.raises(ConfigError, match=r"different config \(template changed\)"):
        Run.open(cfg().out, cfg())


def test_a_run_killed_before_its_first_checkpoint_takes_the_corrected_command(tmp_path):
    """Metrics logged before the first checkpoint are dropped by a resume (it starts from
    step 0), so they do not make the run one that may no longer change its config."""
    from rlxf.runs import Run

    def cfg(*more):
        return load_config(sft.Config, overrides=[f"out={tmp_path / 'run'}", "model.name_or_path=m",
                                                  "data.train=t.jsonl", *more])

    run = Run.open(cfg().out, cfg())
    run.truncate_metrics(0)  # what resume() does before step 1: writes no empty metrics.jsonl
    assert not run.metrics_path.exists()
    run.log(10, {"loss": 1.0})  # killed after its first log, before a checkpoint
    Run.open(cfg().out, cfg("batch_size=4"))
    (run.checkpoints / "step-000020").mkdir(parents=True)  # once a checkpoint is saved, the config is fixed
    with pytest.raises(ConfigError, match=r"different config \(batch_size changed\)"):
        Run.open(cfg().out, cfg("batch_size=2"))


def test_a_run_directory_is_locked_while_a_process_uses_it(tmp_path):
    import subprocess
    import sys

    from rlxf.runs import Run

    cfg = load_config(sft.Config, overrides=[f"out={tmp_path / 'run'}", "model.name_or_path=m", "data.train=t.jsonl"])
    Run.open(cfg.out, cfg)
    Run.open(cfg.out, cfg)  # this process already holds it
    other = subprocess.run([sys.executable, "-c", "import sys; from rlxf.config import load_config; "
                            "from rlxf.runs import Run; from rlxf.stages import sft; "
                            "cfg = load_config(sft.Config, overrides=sys.argv[1:]); Run.open(cfg.out, cfg)",
                            f"out={tmp_path / 'run'}", "model.name_or_path=m", "data.train=t.jsonl"],
                           capture_output=True, text=True)
    assert other.returncode != 0 and f"is in use by another rlxf process (pid {os.getpid()})" in other.stderr


def test_an_empty_out_or_a_folder_that_is_no_run_is_refused(tmp_path):
    from rlxf.runs import Run

    cfg = load_config(sft.Config, overrides=["out=", "model.name_or_path=m", "data.train=t.jsonl"])
    with pytest.raises(ConfigError, match="out is empty"):
        Run.open(cfg.out, cfg)
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "summary.json").write_text('{"x": 1}')
    with pytest.raises(ConfigError, match="holds a summary.json but no config.yaml: it is not an rlxf run"):
        Run.open(tmp_path / "proj", cfg)


def test_a_cache_alone_does_not_make_a_run_begun(tmp_path):
    from rlxf.feedback.ai import label
    from rlxf.runs import Run

    def cfg(*more):
        return load_config(label.Config, overrides=[f"out={tmp_path / 'run'}", "data=pairs.jsonl", "judge.model=m",
                                                    *more])

    Run.open(cfg().out, cfg())
    (tmp_path / "run" / "judge_cache.sqlite").write_bytes(b"SQLite format 3")  # made before a check failed
    Run.open(cfg().out, cfg("judge.model=n"))  # the corrected command is taken


def test_metrics_rows_leave_out_a_last_line_cut_short_and_name_a_bad_line(tmp_path, caplog):
    from rlxf.errors import DataError
    from rlxf.evaluate.curves import read_metrics
    from rlxf.runs import read_metrics_rows

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert read_metrics_rows(path) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    assert "metrics.jsonl:3: the last line is cut short" in caplog.text
    assert read_metrics(path)["loss"].tolist() == [2.0, 1.5]
    path.write_text('{"step": 1}\n{"step": 2, \n{"step": 3}\n')
    with pytest.raises(DataError, match=r"metrics\.jsonl:2: not valid JSON"):
        read_metrics_rows(path)


def test_yaml_booleans_read_as_the_literal_choice_written(tmp_path):
    """YAML 1.1 parses `no` as false; `mixed_precision: no` still means the choice 'no'."""
    assert _cfg(tmp_path, BASE + "mixed_precision: no\n").mixed_precision == "no"
    assert _cfg(tmp_path, BASE, "mixed_precision=no").mixed_precision == "no"
    with pytest.raises(ConfigError, match="mixed_precision"):
        _cfg(tmp_path, BASE + "mixed_precision: yes\n")


def test_nested_sections_name_their_keys_in_full():
    """A section's validate() speaks of its own keys ('lora.r'); where the section sits
    deeper ('model.lora') the message names the whole path, and
    a message that names no key of its section is put after the section's name."""
    from rlxf.config import _keyed
    from rlxf.stages import ppo

    assert _keyed("lora.r must be ≥ 1, got 0", "model.lora.") == "model.lora.r must be ≥ 1, got 0"
    assert _keyed("rollout.temperature must be > 0", "ppo.rollout.") == "ppo.rollout.temperature must be > 0"
    assert _keyed("set exactly one of a and b", "reward.") == "reward: set exactly one of a and b"
    assert _keyed("batch_size must be ≥ 1", "") == "batch_size must be ≥ 1"
    with pytest.raises(ConfigError, match=r"^reward: set exactly one of reward.model"):
        load_config(ppo.Config, None, ["model.name_or_path=m", "rollout.prompts=p.jsonl", "out=o",
                                       "reward.function=m:f", "reward.model=rm"])
    with pytest.raises(ConfigError, match=r"^model.lora.dropout must be in \[0, 1\), got 1.5$"):
        load_config(ppo.Config, None, ["model.name_or_path=m", "rollout.prompts=p.jsonl", "out=o",
                                       "reward.model=rm", "model.lora.dropout=1.5"])


def test_help_lists_a_sections_own_keys_before_its_subsections():
    from rlxf.stages import ppo

    text = help_text(ppo.Config)
    assert text.index("  ppo_epochs (") < text.index("\nmodel: ") < text.index("\neval: ")
    assert text.index("\neval: ") < text.index("  eval.lm_data (")
    assert "PPO steps to run" in text.split("  max_steps (")[1].split("\n  ")[1]


def test_a_list_key_given_one_value_takes_it_as_a_one_item_list():
    """`rlxf report runs=DIR` failed with "must be a list"; `runs=[DIR]` was needed."""
    from dataclasses import dataclass, field

    @dataclass(kw_only=True)
    class Listed:
        paths: list[str] = field(default_factory=list)
        ids: list[int] | None = None
        betas: tuple[float, float] = (0.9, 0.99)

    cfg = load_config(Listed, None, ["paths=runs/a", "ids=7"])
    assert (cfg.paths, cfg.ids) == (["runs/a"], [7])
    assert load_config(Listed, None, ["paths=[a,b]"]).paths == ["a", "b"]
    with pytest.raises(ConfigError, match=r"'ids' must be list of int or null, got 'seven'"):
        load_config(Listed, None, ["ids=seven"])
    with pytest.raises(ConfigError, match="'betas' must be a list"):  # a tuple has a length: no one-item form
        load_config(Listed, None, ["betas=0.9"])
    # a list of texts takes one value as written, as a text key does (YAML would read a bool, a mapping)
    assert load_config(Listed, None, ["paths=true"]).paths == ["true"]
    assert load_config(Listed, None, ["paths=Human:"]).paths == ["Human:"]
    assert load_config(Listed, None, ["paths=['Human:', 'x']"]).paths == ["Human:", "x"]


def test_a_choice_of_texts_is_taken_as_written_on_the_command_line():
    """YAML reads yes/no/on/off as booleans: mixed_precision=yes was refused as 'got True'."""
    from dataclasses import dataclass

    @dataclass(kw_only=True)
    class Chosen:
        mixed_precision: Literal["no", "bf16", "auto"] = "no"
        mode: Literal["a", "b"] | None = None

    assert load_config(Chosen, None, ["mixed_precision=no"]).mixed_precision == "no"
    with pytest.raises(ConfigError, match=r"'mixed_precision' must be one of 'no', 'bf16', 'auto'; got 'yes'"):
        load_config(Chosen, None, ["mixed_precision=yes"])
    assert load_config(Chosen, None, ["mode=b"]).mode == "b" and load_config(Chosen, None, ["mode=null"]).mode is None


def test_a_diverged_metric_is_written_as_json_null_and_warned_of(tmp_path, caplog):
    import json
    import logging

    from rlxf.runs import Run

    cfg = load_config(sft.Config, overrides=[f"out={tmp_path / 'run'}", "model.name_or_path=m", "data.train=t.jsonl"])
    run = Run.open(cfg.out, cfg)
    with caplog.at_level(logging.WARNING, logger="rlxf"):
        run.log(3, {"loss": float("nan"), "grad_norm": float("inf"), "lr": 1e-3})
    line = run.metrics_path.read_text()
    assert json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} is not JSON")) == {
        "step": 3, "loss": None, "grad_norm": None, "lr": 1e-3}
    assert "step 3: loss=nan, grad_norm=inf not a finite number (written as null)" in caplog.text
    run.write_summary({"final_train_loss": float("nan"), "heldout": {"margin": float("-inf")}, "steps": 3})
    assert json.loads(run.summary_path.read_text(), parse_constant=lambda c: pytest.fail(c)) == {
        "final_train_loss": None, "heldout": {"margin": None}, "steps": 3}


def test_a_resumed_runs_clock_starts_from_the_seconds_it_had_trained():
    from rlxf.runs import Timer

    assert 7.5 <= Timer(before=7.5).elapsed() < 8.5 and Timer().elapsed() < 1.0


def test_a_wrong_value_in_a_config_file_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: fast\nmodel:\n  name_or_path: m\n")
    with pytest.raises(ConfigError, match=rf"^{path}: config key 'lr' must be a number, got 'fast'"):
        load_config(sft.Config, path, ["data.train=d.jsonl", "out=o"])
    with pytest.raises(ConfigError, match=r"^config key 'batch_size' must be int"):  # set after it: not the file's
        load_config(sft.Config, path, ["data.train=d.jsonl", "out=o", "lr=1", "batch_size=many"])


def test_a_missing_section_says_how_to_set_it(tmp_path):
    from rlxf.stages import ppo

    with pytest.raises(ConfigError, match=r"missing required config key 'reward' \(The reward, reward.model=DIR .* "
                                          r"shaped; a section: set its keys as reward.KEY=VALUE\)"):
        load_config(ppo.Config, None, ["model.name_or_path=m", "rollout.prompts=p.jsonl", f"out={tmp_path}"])
