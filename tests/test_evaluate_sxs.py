"""`rlxf sxs`: the side-by-side table from a file of answers or from two real (tiny) models."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
from conftest import save_scripted_models, write_jsonl

from rlxf.config import load_config
from rlxf.errors import ConfigError, RlxfError, DataError
from rlxf.evaluate import sxs

XSS = "<script>alert('x')</script>"


def answer_length(prompts, answers, ended):
    """A gold-like scorer for the tests: longer answers score higher; unended ones 0."""
    return [float(len(a)) if e else 0.0 for a, e in zip(answers, ended)]


def test_side_by_side_table_columns_scores_and_summary():
    prompts = ["say hi", ({"role": "user", "content": "name a bird"},), "add 2 and 2"]
    table = sxs.side_by_side(prompts, ["hi", "owl", "4"], ["hello", "an owl", "4"], ended_b=[True, False, True],
                             scorers={"length": answer_length}, name_a="sft", name_b="ppo")
    assert list(table.columns) == ["prompt", "answer_a", "answer_b", "ended_a", "ended_b", "length_a", "length_b"]
    assert table["prompt"][1] == "User: name a bird"  # conversations shown as Role: content lines
    assert table["length_a"].tolist() == [2.0, 3.0, 1.0] and table["length_b"].tolist() == [5.0, 0.0, 1.0]
    summary = sxs.summarise(table)
    # B wins row 1, A wins row 2 (B never ended), row 3 ties: B = (1 + 0 + 0.5) / 3
    length = summary["scores"]["length"]
    assert {k: length[k] for k in ("n", "mean_a", "mean_b", "win_rate_a", "win_rate_b", "ties")} == \
        pytest.approx({"n": 3, "mean_a": 2.0, "mean_b": 2.0, "win_rate_a": 0.5, "win_rate_b": 0.5, "ties": 1})
    assert length["interval_b"] == pytest.approx(list(sxs.wilson_interval(1.5, 3)))
    assert sxs.display_columns(table)["answer_b"] == "answer of ppo"
    with pytest.raises(ValueError, match="3 prompts but 2 A answers"):
        sxs.side_by_side(prompts, ["a", "b"], ["a", "b", "c"])


def test_html_escapes_model_output_and_the_terminal_shows_it_as_text():
    table = sxs.side_by_side(["p <b>"], [XSS], ["[bold]fine[/bold] & done"], name_a="<i>a</i>")
    page = sxs.to_html(table, title="A <vs> B")
    assert "<script>" not in page and "&lt;script&gt;alert('x')&lt;/script&gt;" in page
    assert "<b>" not in page and "<i>" not in page and "<vs>" not in page
    assert "&amp; done" in page
    from rich.console import Console

    out = io.StringIO()
    sxs.print_table(table, width=20, console=Console(file=out, width=200, color_system=None))
    shown = out.getvalue()
    assert "[bold]fine[/bold]" in shown  # rich markup in an answer is printed, not applied
    assert "<script>alert('x')<…" in shown  # cells are cut to 20 characters, the last an ellipsis
    # a terminal control sequence in an answer is shown escaped, not sent to the terminal
    out = io.StringIO()
    sxs.print_table(sxs.side_by_side(["p"], ["\x1b[31mred\x1b[0m"], ["\x07bell"]), width=40,
                    console=Console(file=out, width=200, color_system=None))
    assert "\x1b" not in out.getvalue() and "\x07" not in out.getvalue()
    assert "\\x1b[31mred\\x1b[0m" in out.getvalue() and "\\x07bell" in out.getvalue()


def test_run_from_a_file_writes_csv_html_and_summary(tmp_path):
    data = write_jsonl(tmp_path / "answers.jsonl", [
        {"prompt": "say hi", "sft": "hi", "ppo": "hello there"},
        {"prompt": "name a bird", "sft": XSS, "ppo": "owl", "ppo_ended": False},
        {"prompt": "add 2 and 2", "sft": "four", "ppo": "4"},
    ])
    cfg = load_config(sxs.Config, None, [f"data={data}", "column_a=sft", "column_b=ppo", "name_a=sft",
                                         "name_b=ppo", f"gold={__name__}:answer_length", f"out={tmp_path / 'out'}"])
    summary = sxs.run(cfg)
    assert summary["rows"] == 3 and summary["scores"]["gold"]["win_rate_b"] == pytest.approx(1 / 3)
    csv = pd.read_csv(tmp_path / "out" / "sxs.csv", keep_default_na=False)
    assert csv["answer_a"].tolist() == ["hi", XSS, "four"]  # the CSV keeps the raw text
    assert csv["ended_b"].tolist() == [True, False, True] and csv["gold_b"].tolist() == [11.0, 0.0, 1.0]
    page = (tmp_path / "out" / "sxs.html").read_text()
    assert "<script>" not in page and "gold (ppo)" in page
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["name_b"] == "ppo"


def test_bad_rows_name_their_line_and_field(tmp_path):
    data = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "p", "answer_a": "x", "answer_b": "y"},
                                              {"prompt": "q", "answer_a": "x"}])
    with pytest.raises(DataError, match=r"a\.jsonl:2: field 'answer_b': must be the answer text"):
        sxs.read_answers(str(data))
    answers = sxs.read_answers(str(data), skip_bad=True)
    assert (answers.a, answers.skipped) == (["x"], 1)
    # a column the first row lacks is a misspelt key, named once for the file (not a bad row each)
    with pytest.raises(DataError, match=r"a\.jsonl: has no column 'answr_a' \(column_a\); its first row has "
                                        r"\['answer_a', 'answer_b', 'prompt'\]; did you mean column_a=answer_a\?"):
        sxs.read_answers(str(data), column_a="answr_a", skip_bad=True)


def test_mistakes_are_found_before_any_answer_is_sampled_or_scored(tmp_path, tiny_model_dir, monkeypatch, caplog):
    data = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "p", "answer_a": "x", "answer_b": "y", "human": "A"},
                                              {"prompt": "q", "answer_a": "x"}])
    with pytest.raises(DataError, match=r"a\.jsonl: no row has a column 'Human'; the rows have \['answer_a', "):
        sxs.read_answers(str(data), extra_columns=["Human"], skip_bad=True)
    assert sxs.read_answers(str(data), extra_columns=["human"], skip_bad=True).extra["human"] == ["A"]
    assert "skipped " in caplog.text and "a.jsonl:2: field 'answer_b'" in caplog.text  # the skipped row, named

    sampled = []
    monkeypatch.setattr(sxs, "sample_answers", lambda path, *a, **k: sampled.append(path))
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "say hi"}])
    for more in ([f"model_b={tmp_path / 'nope'}"], [f"model_b={tiny_model_dir}", "gold=os.path:nope"],
                 [f"model_b={tiny_model_dir}", f"reward_model={tmp_path / 'no-rm'}"]):
        cfg = load_config(sxs.Config, None, [f"out={tmp_path / 'out'}", f"model_a={tiny_model_dir}",
                                             f"prompts={prompts}", *more])
        with pytest.raises(ConfigError, match="no folder|cannot import 'os.path:nope'"):
            sxs.run(cfg)
    cfg = load_config(sxs.Config, None, [f"out={tmp_path / 'out'}", f"model_a={tiny_model_dir}", f"prompts={prompts}",
                                         f"model_b={tiny_model_dir}", f"reward_model={tiny_model_dir}"])
    with pytest.raises(ConfigError, match="has 2 output labels; a reward model has 1"):  # a causal LM
        sxs.run(cfg)
    assert sampled == []
    with pytest.raises(RlxfError, match=r"gold \('os.path:join'\) failed on these answers: TypeError"):
        sxs.run(load_config(sxs.Config, None, [f"out={tmp_path / 'out2'}", f"data={data}", "skip_bad_rows=true",
                                               "gold=os.path:join"]))


def test_a_tokenizer_without_chat_template_is_named_by_its_sxs_key(tmp_path, tiny_model_dir, monkeypatch):
    """Conversations need a chat template; the error named model.tokenizer, a key rlxf sxs
    lacks. It names the sxs key that chose the tokenizer, before any answer is sampled."""
    import dataclasses
    import re

    from rlxf.models.loading import ModelConfig
    from rlxf.models.reward import init_reward_model

    sampled = []
    monkeypatch.setattr(sxs, "sample_answers", lambda path, *a, **k: sampled.append(path))
    chat = [{"role": "user", "content": "say hi"}]
    prompts = write_jsonl(tmp_path / "chat.jsonl", [{"messages": chat}])
    init_reward_model(ModelConfig(name_or_path=str(tiny_model_dir))).save_pretrained(tmp_path / "rm")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "rm" / f).write_text((tiny_model_dir / f).read_text())
    answers = write_jsonl(tmp_path / "answers.jsonl", [{"prompt": chat, "answer_a": "hi", "answer_b": "hello"}])
    keys = {f.name for f in dataclasses.fields(sxs.Config)}
    for args, key in ([f"model_a={tiny_model_dir}", f"model_b={tiny_model_dir}", f"prompts={prompts}"], "model_a"), \
                     ([f"data={answers}", f"reward_model={tmp_path / 'rm'}"], "reward_model"):
        pattern = r"no chat template; use a chat model's tokenizer \((\w+)=\.\.\.\)"
        with pytest.raises(ConfigError, match=pattern) as err:
            sxs.run(load_config(sxs.Config, None, [f"out={tmp_path / key}", *args]))
        named = re.search(r"\((\w+)=\.\.\.\)", str(err.value)).group(1)
        assert named == key and named in keys, str(err.value)
    assert sampled == []


def test_config_needs_one_source_of_answers():
    with pytest.raises(ConfigError, match="model_b, prompts missing"):
        load_config(sxs.Config, None, ["out=x", "model_a=m"])
    with pytest.raises(ConfigError, match="not both"):
        load_config(sxs.Config, None, ["out=x", "data=d.jsonl", "model_a=m"])


def test_run_from_two_models_samples_seeded_answers_and_scores_them(tmp_path, tiny_model_dir, tokenizer):
    from rlxf.models.loading import ModelConfig
    from rlxf.models.reward import init_reward_model

    rm = init_reward_model(ModelConfig(name_or_path=str(tiny_model_dir)))
    rm.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "question : what color is the fox ? answer :"},
                                                       {"prompt": "say hello to tom ."},
                                                       {"prompt": "two plus three is"}])
    args = [f"model_a={tiny_model_dir}", f"model_b={tiny_model_dir}", f"prompts={prompts}",
            f"reward_model={tmp_path / 'rm'}", "generation.max_new_tokens=6", "generation.device=cpu",
            "progress=false"]
    summary = sxs.run(load_config(sxs.Config, None, args + [f"out={tmp_path / 'out'}"]))
    table = pd.read_csv(tmp_path / "out" / "sxs.csv", keep_default_na=False)
    assert len(table) == 3 and summary["scores"]["reward"]["n"] == 3
    # the same model with the same seed writes the same answers, which get the same reward
    assert table["answer_a"].tolist() == table["answer_b"].tolist()
    assert table["reward_a"].tolist() == pytest.approx(table["reward_b"].tolist())
    assert summary["scores"]["reward"]["win_rate_b"] == 0.5  # all ties
    # a different seed samples different answers
    from rlxf.data import load_prompts

    other, _ = sxs.sample_answers(str(tiny_model_dir), list(load_prompts(prompts)),
                                  sxs.GenerationConfig(max_new_tokens=6, device="cpu", seed=1))
    assert other != table["answer_a"].tolist()


def test_sampled_answers_stop_at_the_next_dialogue_turn(tmp_path, tokenizer, one_thread):
    prompt = "\n\nHuman: say hello to tom .\n\nAssistant:"
    # Model a runs on into a turn it made up, past max_new_tokens (no EOS); model b ends
    # with EOS and has no stop string in its answer.
    scripts = {"a": ("I will not insult you .\n\nHuman: you insult me" + " ." * 8, False),
               "b": ("hello tom .", True)}
    folders, lengths = save_scripted_models(tmp_path, tokenizer, prompt, scripts)
    max_new_tokens = lengths["a"] - 4  # a is cut by max_new_tokens (inside the " ." run), not by EOS
    assert lengths["b"] <= max_new_tokens
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": prompt}])

    def sampled(*overrides: str) -> dict[str, tuple[str, bool]]:
        cfg = load_config(sxs.AnswersConfig, None, [
            f"model_a={folders['a']}", f"model_b={folders['b']}", f"prompts={prompts}", "generation.device=cpu",
            f"generation.max_new_tokens={max_new_tokens}", "progress=false", *overrides])
        answers = sxs.collect_answers(cfg)
        return {"a": (answers.a[0], answers.ended_a[0]), "b": (answers.b[0], answers.ended_b[0])}

    got = sampled()
    # Cut before "\n\nHuman:" and counted as ended though it never emitted EOS.
    assert got == {"a": ("I will not insult you .", True), "b": ("hello tom .", True)}

    got = sampled("generation.stop=[]")
    text, ended = got["a"]
    assert text.startswith("I will not insult you .\n\nHuman: you insult me") and not ended
    assert got["b"] == ("hello tom .", True)

    with pytest.raises(ConfigError, match="generation.stop must not hold an empty string"):
        load_config(sxs.AnswersConfig, None, [f"model_a={folders['a']}", f"model_b={folders['b']}",
                                              f"prompts={prompts}", "generation.stop=['']"])


def test_a_crash_while_sampling_resumes_with_the_answers_of_an_uninterrupted_run(tmp_path, tiny_model_dir,
                                                                                monkeypatch, caplog):
    """Sampled answers are kept in the run folder chunk by chunk (8 batches each); a re-run
    after a crash samples only the chunks not written, and writes the table an
    uninterrupted run writes."""
    import os
    import shutil

    from rlxf.models import generation

    model = shutil.copytree(tiny_model_dir, tmp_path / "model")  # its weights' time is changed below
    prompts = write_jsonl(tmp_path / "prompts.jsonl",
                          [{"prompt": f"question : what color is the {w} ? answer :"} for w in
                           ("fox", "owl", "cat", "dog", "hen", "cow", "pig", "bee", "ant", "elk")] +
                          [{"prompt": f"say hello to {n} ."} for n in ("tom", "ann", "bob", "eve", "sam", "kim")] +
                          [{"prompt": "two plus three is"}, {"prompt": "one plus one is"}])
    args = [f"model_a={model}", f"model_b={model}", f"prompts={prompts}",
            "generation.max_new_tokens=6", "generation.device=cpu", "generation.batch_size=1", "generation.seed=4",
            "progress=false"]  # 18 prompts: chunks of 8, 8 and 2 per model
    whole = sxs.run(load_config(sxs.Config, None, args + [f"out={tmp_path / 'whole'}"]))
    expected = pd.read_csv(tmp_path / "whole" / "sxs.csv", keep_default_na=False)

    real, calls = generation.generate, []

    def counted(*a, **k):
        calls.append(len(a[2]))
        return real(*a, **k)

    def crash_in_the_fifth_chunk(*a, **k):  # model b's second
        if len(calls) == 4:
            raise KeyboardInterrupt
        return counted(*a, **k)

    monkeypatch.setattr(generation, "generate", crash_in_the_fifth_chunk)
    cfg = load_config(sxs.Config, None, args + [f"out={tmp_path / 'run'}"])
    with pytest.raises(KeyboardInterrupt):
        sxs.run(cfg)
    assert calls == [8, 8, 2, 8]
    with open(tmp_path / "run" / "samples_b.jsonl", "a") as fh:
        fh.write('{"chunk": 1, "answers": [{"te')  # the crash cut a line short
    calls.clear()
    monkeypatch.setattr(generation, "generate", counted)
    with caplog.at_level("INFO", logger="rlxf"):
        resumed = sxs.run(cfg)
    assert calls == [8, 2]  # model a: nothing; model b: its last two chunks
    assert "samples_b.jsonl:3: cut short" in caplog.text
    assert "8 of 18 answers were sampled before" in caplog.text
    assert pd.read_csv(tmp_path / "run" / "sxs.csv", keep_default_na=False).equals(expected)
    assert resumed["scores"] == whole["scores"]

    # a model trained again into the same folder is sampled again, not read back
    weights = next(model.glob("*.safetensors"))
    calls.clear()
    (tmp_path / "run" / "summary.json").unlink()
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1))
    with caplog.at_level("WARNING", logger="rlxf"):
        sxs.run(cfg)
    assert calls == [8, 8, 2, 8, 8, 2]
    assert "holds answers sampled for another model, settings or prompts" in caplog.text
