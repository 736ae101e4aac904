"""Making tasks by sampling answers from two tiny random GPT-2 models (built and saved
here with a tokenizer trained by ``tokenizers``; nothing is downloaded)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from annotate_helpers import sql
from conftest import make_model, save_scripted_models

from rlxf.config import load_config
from rlxf.errors import ConfigError
from rlxf.feedback.human import importer
from rlxf.feedback.human.store import open_store

PROMPTS = ["question : what color is the fox ? answer :", "say hello to tom .",
           "two plus three is", "question : where does the owl live ? answer :"]


def _two_models_and_prompts(tmp_path, tokenizer) -> tuple[list[str], object]:
    """Two tiny random GPT-2 folders (seeds 0 and 1) and a prompts file of PROMPTS."""
    models = []
    for seed in (0, 1):
        folder = tmp_path / f"gpt2-{seed}"
        make_model("gpt2", len(tokenizer), seed=seed).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        models.append(str(folder))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return models, prompts


def test_generated_answers_become_tasks_naming_their_models(tmp_path, tokenizer, one_thread):
    models, prompts = _two_models_and_prompts(tmp_path, tokenizer)
    db = f"sqlite:///{tmp_path / 'gen.db'}"
    cfg = load_config(importer.Config, None, [
        f"database={db}", f"generate.models=[{models[0]},{models[1]}]",
        f"generate.prompts={prompts}", "generate.answers_per_prompt=3",
        "generate.max_new_tokens=12", "seed=5"])
    summary = importer.run(cfg)

    rows = sql(open_store(db), "SELECT prompt, answers, meta FROM tasks")
    tasks = [(json.loads(p), json.loads(a), json.loads(m)["models"]) for p, a, m in rows]
    assert summary["added"] == len(tasks) and summary["added"] + summary["prompts_without_distinct_answers"] == 4
    assert summary["skipped_rows"] == 0
    assert len(tasks) >= 3  # random 12-token samples from a 400-token vocabulary differ
    for prompt, answers, names in tasks:
        assert prompt in PROMPTS and len(answers) == len(names) >= 2
        assert len({a.strip() for a in answers}) == len(answers) and all(a.strip() for a in answers)
        # K = 3 answers in turn from 2 models: model 0 gives two, model 1 one.
        counts = Counter(names)
        assert counts[models[0]] <= 2 and counts[models[1]] <= 1

    # The model named for an answer really wrote it: model 1's only turn uses seed
    # 5 + 1000 * 1 + 0, so sampling again with that seed gives the same answers (once
    # cleaned of control characters and cut at the default stop strings, as stored).
    from rlxf.models.generation import generate
    from rlxf.models.loading import ModelConfig, load_causal_lm, load_tokenizer

    again = generate(load_causal_lm(ModelConfig(name_or_path=models[1])),
                     load_tokenizer(models[1], padding_side="left"), PROMPTS,
                     max_new_tokens=12, batch_size=16, seed=1005)
    by_prompt = {g.prompt: importer.cut_at_stop(importer.clean_answer(g.text), list(importer.DIALOGUE_TURNS))[0]
                 for g in again}
    for prompt, answers, names in tasks:
        if models[1] in names:
            assert answers[names.index(models[1])] == by_prompt[prompt]


def test_an_import_that_crashed_while_sampling_samples_only_what_was_left(tmp_path, tokenizer, one_thread,
                                                                          monkeypatch):
    """Answers are kept in DB.samples/ (one file per model and turn) until their tasks are
    in the database: a re-run after a crash samples only the turns not written, adds the
    tasks an uninterrupted import adds, and removes the folder."""
    from rlxf.models import generation

    models, prompts = _two_models_and_prompts(tmp_path, tokenizer)

    def config(name: str):
        return load_config(importer.Config, None, [
            f"database=sqlite:///{tmp_path / name}", f"generate.models=[{models[0]},{models[1]}]",
            f"generate.prompts={prompts}", "generate.answers_per_prompt=3", "generate.max_new_tokens=12", "seed=5"])

    def tasks(name: str) -> list:
        return sorted(sql(open_store(f"sqlite:///{tmp_path / name}"), "SELECT prompt, answers, meta FROM tasks"))

    importer.run(config("whole.db"))
    real, calls = generation.generate, []

    def counted(*a, **k):
        calls.append(a[0].name_or_path)  # the model sampled
        return real(*a, **k)

    def crash_in_the_third_turn(*a, **k):  # model 1's only turn
        if len(calls) == 2:
            raise KeyboardInterrupt
        return counted(*a, **k)

    monkeypatch.setattr(generation, "generate", crash_in_the_third_turn)
    with pytest.raises(KeyboardInterrupt):
        importer.run(config("run.db"))
    samples = tmp_path / "run.db.samples"
    assert calls == [models[0]] * 2 and sorted(p.name for p in samples.iterdir()) == [
        "model0-turn0.jsonl", "model0-turn1.jsonl", "model1-turn0.jsonl"]  # the last one holds its header only
    calls.clear()
    monkeypatch.setattr(generation, "generate", counted)
    summary = importer.run(config("run.db"))
    assert calls == [models[1]]  # model 0's two turns were read back
    assert summary["tasks_in_database"] >= 3 and tasks("run.db") == tasks("whole.db")
    assert not samples.exists()


def test_generate_limit_samples_for_the_first_prompts_only(tmp_path, tokenizer, one_thread):
    folder = tmp_path / "gpt2"
    make_model("gpt2", len(tokenizer), seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    db = f"sqlite:///{tmp_path / 'gen.db'}"
    summary = importer.run(load_config(importer.Config, None, [
        f"database={db}", f"generate.models=[{folder}]", f"generate.prompts={prompts}", "generate.limit=2",
        "generate.max_new_tokens=12"]))
    asked = {json.loads(p) for (p,) in sql(open_store(db), "SELECT prompt FROM tasks")}
    assert summary["added"] + summary["prompts_without_distinct_answers"] == 2 and asked <= set(PROMPTS[:2])
    with pytest.raises(ConfigError, match="generate.limit must be >= 1"):
        load_config(importer.Config, None, [f"generate.models=[{folder}]", f"generate.prompts={prompts}",
                                            "generate.limit=0"])


def test_generated_answers_stop_at_the_next_turn_and_lose_control_characters(tmp_path, tokenizer, one_thread):
    prompt = "\n\nHuman: say hello to tom .\n\nAssistant:"
    # Model a runs on into a turn it made up, past max_new_tokens (no EOS); model b
    # ends with EOS and writes control characters: U+0014 (removed), a vertical tab
    # (a space) and CR LF (LF).
    runs_on = "I will not insult you .\n\nHuman: you insult me" + " ." * 8
    scripts = {"a": (runs_on, False), "b": ("no\u0014 way\u000bat all\r\nbye", True)}
    folders, lengths = save_scripted_models(tmp_path, tokenizer, prompt, scripts)
    max_new_tokens = lengths["a"] - 4  # a is cut by max_new_tokens (inside the " ." run), not by EOS
    assert lengths["b"] <= max_new_tokens
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": prompt}) + "\n")

    def stored(db: str, *overrides: str) -> dict[str, tuple[str, bool]]:
        importer.run(load_config(importer.Config, None, [
            f"database={db}", f"generate.models=[{folders['a']},{folders['b']}]",
            f"generate.prompts={prompts}", f"generate.max_new_tokens={max_new_tokens}", *overrides]))
        ((answers, meta),) = sql(open_store(db), "SELECT answers, meta FROM tasks")
        answers, meta = json.loads(answers), json.loads(meta)
        return {str(m)[-1]: (text, ended) for text, m, ended in zip(answers, meta["models"], meta["ended"])}

    got = stored(f"sqlite:///{tmp_path / 'stop.db'}")
    # Cut before "\n\nHuman:" and marked ended though it never emitted EOS.
    assert got["a"] == ("I will not insult you .", True)
    assert got["b"] == ("no way at all\nbye", True)

    got = stored(f"sqlite:///{tmp_path / 'no-stop.db'}", "generate.stop=[]")
    text, ended = got["a"]
    assert text.startswith("I will not insult you .\n\nHuman: you insult me") and not ended
    assert got["b"] == ("no way at all\nbye", True)  # cleaned with or without stop strings

    with pytest.raises(ConfigError, match="generate.stop must not hold an empty string"):
        load_config(importer.Config, None, [f"generate.models=[{folders['a']}]", f"generate.prompts={prompts}",
                                            "generate.stop=['']"])


def test_a_prompt_whose_answers_are_all_the_same_is_counted_apart_from_bad_rows(tmp_path, tokenizer, one_thread):
    """One scripted model writes the same answer on both turns: the prompt makes no task
    and is counted as such, not as a skipped (bad) row."""
    prompt = "say hello to tom ."
    folders, _ = save_scripted_models(tmp_path, tokenizer, prompt, {"same": ("hello tom .", True)})
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": prompt}) + "\n")
    summary = importer.run(load_config(importer.Config, None, [
        f"database=sqlite:///{tmp_path / 'same.db'}", f"generate.models=[{folders['same']}]",
        f"generate.prompts={prompts}", "generate.max_new_tokens=8"]))
    assert summary == {"added": 0, "duplicates": 0, "skipped_rows": 0, "prompts_without_distinct_answers": 1,
                       "tasks_in_database": 0}


def test_generate_device_defaults_to_auto_like_every_other_command():
    import torch

    from rlxf.training import resolve_device

    device = importer.GenerateConfig().device
    assert device == "auto"
    assert resolve_device(device).type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_clean_answer_and_cut_at_stop():
    assert importer.clean_answer("a\u0000b\u007fc\u0085d\u000ce\tf\rg\r\nh") == "abc d e\tf g\nh"
    # A byte-level tokenizer decodes an answer cut inside a character as U+FFFD.
    assert importer.clean_answer("zero six\ufffdive .\ufffd\ufffd") == "zero sixive ."
    assert importer.cut_at_stop("x\nUser: y\n\nHuman: z", list(importer.DIALOGUE_TURNS)) == ("x", True)
    assert importer.cut_at_stop("x Human: y", list(importer.DIALOGUE_TURNS)) == ("x Human: y", False)
