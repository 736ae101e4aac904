"""report.html: what it holds, that it is self-contained, that nothing in it is unescaped,
and that `rlxf report` finds the stages, the sxs table and the win rates in a pipeline folder."""

from __future__ import annotations

import base64
import json
import re

import pytest
import yaml
from test_evaluate_curves import write_ppo_metrics

from rlxf.config import load_config
from rlxf.errors import ConfigError
from rlxf.evaluate import report, sxs

XSS = "<script>alert('x')</script>"


def make_run(folder, config: dict, summary: dict | None, metrics=None):
    """A run directory as the stages leave it."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))
    if metrics == "ppo":
        write_ppo_metrics(folder / "metrics.jsonl")
    elif metrics == "sft":
        (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 2 / s}) + "\n"
                                                      for s in range(5, 105, 5)))
    return folder


def make_pipeline(root):
    """A pipeline OUT: sft, ppo (with gold), an sxs run and an autosxs run, and a headline summary."""
    make_run(root / "sft", {"model": {"name_or_path": "base"}, "data": {"train": "demos.jsonl"}, "max_steps": 100,
                            "lr": 1e-3}, {"stage": "sft", "steps": 100, "final_eval_loss": 0.25}, "sft")
    make_run(root / "ppo", {"model": {"name_or_path": "sft/final"}, "reward": {"model": "rm/final"},
                            "rollout": {"prompts": "prompts.jsonl"}, "kl": {"coef": 0.05}, "max_steps": 60},
             {"stage": "ppo", "steps": 60, "score.final": 0.9, "note": XSS}, "ppo")
    make_run(root / "sxs", {"data": "answers.jsonl"}, {"command": "sxs", "name_a": "sft", "name_b": "ppo",
                                                        "scores": {"gold": {"n": 2, "mean_a": 0.5, "mean_b": 0.7,
                                                                            "win_rate_a": 0.25, "win_rate_b": 0.75}}})
    table = sxs.side_by_side(["say hi", "name a bird"], ["hi", XSS], ["hello!", "owl"],
                             scorers={"gold": lambda p, a, e: [0.1 * len(x) for x in a]}, name_a="sft", name_b="ppo")
    table.to_csv(root / "sxs" / "sxs.csv", index=False)
    make_run(root / "autosxs", {"judge": {"model": "judge"}},
             {"command": "autosxs", "name_a": "ppo", "name_b": "sft", "judge": "judge@1",
              "win_rate_a": {"rate": 0.7, "low": 0.6, "high": 0.78, "n": 100, "wins": 65, "ties": 10,
                             "level": 0.95, "method": "wilson"}})
    (root / "summary.json").write_text(json.dumps({"win_rate": {"ppo_vs_sft": 0.75}, "gold": {"ppo": 0.7}}))
    return root


def test_report_of_a_pipeline_folder_is_complete_self_contained_and_escaped(tmp_path):
    root = make_pipeline(tmp_path / "demo")
    out = report.run(load_config(report.Config, None, [f"runs=[{root}]", f"out={root}"]))
    assert out["stages"] == ["sft", "ppo"] and out["win_rates"] == 2 and out["sxs_rows"] == 2
    page = (root / "report.html").read_text()
    for heading in ("What was trained", "Headline numbers", "Win rates", "Stage: sft", "Stage: ppo", "Side by side",
                    "How to read this report"):
        assert f">{heading}</h2>" in page
    assert "supervised fine-tuning of base on the demonstrations in demos.jsonl for 100 steps" in page
    assert "win_rate.ppo_vs_sft" in page and "0.75" in page  # headline from the pipeline's summary.json
    assert "ppo over sft (AI judge)" in page and "60.0% – 78.0% (95%)" in page
    assert "ppo over sft (gold score)" in page
    # curves: sft loss, ppo reward/kl/gold/overoptimisation, all embedded PNGs, also written as files
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 5 and all(base64.b64decode(i)[:4] == b"\x89PNG" for i in images)
    assert sorted(p.name for p in (root / "curves").iterdir()) == [
        "01-sft_loss.png", "02-ppo_gold.png", "02-ppo_kl.png", "02-ppo_overoptimisation.png", "02-ppo_reward.png"]
    assert "reward-hacking" in page  # the ppo curve's diagnosis is written out
    # self-contained: no scripts, no external URLs, no links out
    assert "<script" not in page and not re.search(r'(src|href)="(?!data:|#)', page)
    assert "http://" not in page and "https://" not in page
    # model output and summary values are escaped text
    assert page.count("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;") == 2
    # the side-by-side run named on its own brings its win rates too
    alone = report.run(load_config(report.Config, None, ["runs=[]", f"sxs={root / 'sxs'}", f"out={tmp_path / 'o'}"]))
    assert alone["win_rates"] == 1 and alone["sxs_rows"] == 2


def test_write_report_takes_plain_structures(tmp_path):
    metrics = write_ppo_metrics(tmp_path / "metrics.jsonl", gold=False)
    path = report.write_report(
        tmp_path / "out",
        [{"name": "ppo", "config": {"model": {"name_or_path": "m"}, "kl": {"coef": 0.1}},
          "summary": {"stage": "ppo", "steps": 60}, "metrics": metrics},
         report.Stage("eval only")],
        win_rates={"tuned over sft": 0.6, "bootstrapped": {"win_rate": 0.55, "ci": [0.5, 0.6], "n": 40}},
        title="My <run>")
    page = path.read_text()
    assert "<title>My &lt;run&gt;</title>" in page
    assert len(re.findall(r"<img ", page)) == 2  # reward and kl; no gold was logged
    assert "60.0%" in page and "50.0% – 60.0%" in page
    assert "No per-step metrics were logged for this stage." in page


def test_report_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="nothing to report"):
        load_config(report.Config, None, ["runs=[]", "out=o"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a run directory"):
        report.run(load_config(report.Config, None, [f"runs=[{tmp_path / 'empty'}]", f"out={tmp_path}"]))
    with pytest.raises(ConfigError, match=r"nosuch: no such run directory \(current folder: "):
        report.run(load_config(report.Config, None, [f"runs=[{tmp_path / 'nosuch'}]", f"out={tmp_path}"]))
    (tmp_path / "sxs").mkdir()
    (tmp_path / "sxs" / "summary.json").write_text('{"command": "sxs"}')
    with pytest.raises(ConfigError, match=r"autosxs=.*sxs: not an rlxf autosxs run .* command 'sxs'"):
        report.run(load_config(report.Config, None, ["runs=[]", f"autosxs=[{tmp_path / 'sxs'}]", f"out={tmp_path}"]))


def test_report_takes_one_run_directory_or_a_pipeline_folder_alone(tmp_path, capsys):
    """`rlxf report runs=DIR`, as its help says, without the brackets of a list."""
    from rlxf.cli import main

    root = make_pipeline(tmp_path / "demo")
    assert main(["report", f"runs={root}", f"out={tmp_path / 'all'}"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["stages"] == ["sft", "ppo"] and printed["win_rates"] == 2 and printed["sxs_rows"] == 2
    one = report.run(load_config(report.Config, None, [f"runs={root / 'sft'}", f"out={tmp_path / 'sft'}"]))
    assert one["stages"] == ["sft"] and (tmp_path / "sft" / "report.html").is_file()
    with pytest.raises(ConfigError, match=r"no such run directory .*; several directories go in brackets: "
                                          r"runs=\[DIR1,DIR2\]"):
        report.run(load_config(report.Config, None, [f"runs={root / 'sft'},{root / 'ppo'}", f"out={tmp_path}"]))


def test_an_unfinished_run_is_named_by_its_stage_and_says_how_far_it_got(tmp_path):
    """A run killed before summary.json: its stage is read from its config's sections, and the
    description says it did not finish and the last step it logged (not the configured
    max_steps); LoRA and a reward function are named for what they are."""
    sft_dir = make_run(tmp_path / "unf", {"model": {"name_or_path": "base", "lora": {"enabled": True, "r": 8}},
                                          "data": {"train": "demos.jsonl", "packing": False}, "max_steps": 300},
                       None, "sft")
    ppo_dir = make_run(tmp_path / "fn", {"model": {"name_or_path": "sft/final"},
                                         "reward": {"model": None, "function": "my.mod:score"},
                                         "rollout": {"prompts": "p.jsonl"}, "kl": {"coef": 0.05}},
                       {"stage": "ppo", "steps": 60}, "ppo")
    found = report.discover([sft_dir, ppo_dir])
    unfinished, with_function = (report._stage_view(s, "gold") for s in found.stages)
    assert unfinished["description"] == ("supervised fine-tuning of base (LoRA) on the demonstrations in demos.jsonl."
                                         " It did not finish (no summary.json); its metrics reach step 100.")
    assert ("max steps", "300") in unfinished["facts"] and ("LoRA rank", "8") in unfinished["facts"]
    assert with_function["description"].startswith("PPO on sft/final against the reward my.mod:score")
    captions = " ".join(f["caption"] for f in with_function["figures"])
    assert "reward-function score" in captions and "reward-model" not in captions


def _finished_pipeline(out, monkeypatch) -> dict:
    """A finished pipeline's OUT: the stage runs, and OUT/eval written by the pipeline's own
    evaluation (``pipeline._evaluate``; sampling and the reward model stubbed); returns what
    ``pipeline.run_stages`` returns for it."""
    import os
    from types import SimpleNamespace

    from conftest import write_jsonl

    from rlxf import pipeline

    stages = {"sft": ({"model": {"name_or_path": "base"}, "data": {"train": "demos.jsonl", "packing": False},
                       "max_steps": 100}, {"stage": "sft", "steps": 100, "final": str(out / "sft" / "final")}, "sft"),
              "reward": ({"model": {"name_or_path": str(out / "sft" / "final")}, "data": {"train": "prefs.jsonl"},
                          "normalize": {"enabled": True}}, {"stage": "reward", "steps": 50}, None),
              "ppo": ({"model": {"name_or_path": str(out / "sft" / "final")}, "reward": {"model": "rm"},
                       "rollout": {"prompts": "prompts.jsonl"}, "kl": {"coef": 0.05}},
                      {"stage": "ppo", "steps": 60, "kl.final": 1.5}, "ppo")}
    for i, (name, (config, summary, metrics)) in enumerate(stages.items()):
        make_run(out / name, config, summary, metrics)
        os.utime(out / name / "config.yaml", (1e9 + i, 1e9 + i))  # the order they ran in
    answers = {"sft": ["hi", XSS, "NA", "a, b"], "ppo": ['hello, "you"\nthere', "owl", "", "c"]}
    monkeypatch.setattr("rlxf.models.loading.load_causal_lm", lambda cfg: cfg.name_or_path)
    monkeypatch.setattr("rlxf.models.loading.load_tokenizer", lambda path: None)
    monkeypatch.setattr("rlxf.models.generation.generate", lambda model, tokenizer, prompts, **kw: [
        SimpleNamespace(text=text, ended=i % 2 == 0) for i, text in enumerate(answers[model])])
    monkeypatch.setattr(sxs, "reward_scorer", lambda path: lambda p, a, e: [float(len(x)) for x in a])
    prompts = write_jsonl(out.parent / "eval.jsonl", [{"prompt": f"question {i}"} for i in range(4)])
    cfg = load_config(pipeline.Config, None, [f"out={out}", "base_model=base", f"prompts={prompts}",
                                              f"eval_prompts={prompts}", "demonstrations=demos.jsonl",
                                              "preferences=prefs.jsonl"])
    evaluation = pipeline._evaluate(cfg, "sft", "ppo", "rm", str(prompts), out / "eval")
    summary = {"models": {"base": "base", "sft": "sft", "reward": "rm", "ppo": "ppo"}, "kl": {"final": 1.5},
               "reward_model": {}, "sxs": evaluation["summary"], "seconds": {"sft": 1.0}}
    return {"summary": summary, "stages": {name: s for name, (_, s, _) in stages.items()} | {"preferences": None},
            "evaluation": evaluation, "out": out}


@pytest.mark.parametrize("command", ["pipeline", "demo"])
def test_report_of_a_pipeline_out_is_the_page_the_pipeline_wrote(tmp_path, monkeypatch, capsys, command):
    """`rlxf report runs=OUT` on a finished `rlxf pipeline` or `rlxf demo` rewrites the page they
    wrote: its evaluation folder OUT/eval (no config.yaml) gives the side-by-side table of sft
    and ppo and the win rates, and the title is theirs."""
    from rlxf import pipeline
    from rlxf.cli import main
    from rlxf.config import from_dict
    from rlxf.tinyworld import build, demo

    out = tmp_path / "out"
    result = _finished_pipeline(out, monkeypatch)
    monkeypatch.setattr(pipeline, "run_stages", lambda cfg: result)
    if command == "pipeline":
        pipeline.run(load_config(pipeline.Config, None, [f"out={out}", "base_model=base", "prompts=p.jsonl",
                                                          "eval_prompts=p.jsonl", "demonstrations=d.jsonl",
                                                          "preferences=prefs.jsonl"]))
        rates = ["PPO over SFT by reward"]
    else:
        monkeypatch.setattr(build, "write_data", lambda world, path: path)
        monkeypatch.setattr(demo, "_print_table", lambda summary, out: None)
        monkeypatch.setattr(demo, "_gold_report", lambda cfg, files, result, n: {
            "gold": {"base": 0.4, "sft": 0.6, "ppo": 0.65},
            "win_rate": {"sft_vs_base": 0.8, "ppo_vs_sft": 0.55, "ppo_vs_base": 0.85}, "eval_prompts": 4})
        demo.run(from_dict(demo.Config, {"out": str(out), "progress": False}))
        rates = ["SFT over base (gold)", "PPO over SFT (gold)", "PPO over base (gold)"]
    own = (out / "report.html").read_text()

    assert main(["report", f"runs={out}", f"out={tmp_path / 'again'}"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["stages"] == ["sft", "reward", "ppo"]
    assert printed["win_rates"] == len(rates) and printed["sxs_rows"] == 4
    again = (tmp_path / "again" / "report.html").read_text()
    for label in rates:
        assert f"<td>{label}</td>" in again
    for heading in ("Win rates", "Side by side"):
        assert f">{heading}</h2>" in again
    assert "<th>answer of sft</th><th>answer of ppo</th><th>reward (sft)</th><th>reward (ppo)</th>" in again
    assert "<td class=\"text\">hello, &#34;you&#34;\nthere</td>" in again and '<td class="text">NA</td>' in again

    def undated(page):
        return re.sub(r"Generated [0-9-]+ [0-9:]+ by rlxf", "Generated by rlxf", page)

    assert undated(again) == undated(own)
    # OUT/eval given alone is the pipeline's evaluation too
    alone = report.discover([out / "eval"])
    assert alone.sxs.attrs == {"name_a": "sft", "name_b": "ppo"} and alone.title == report.PIPELINE_TITLE
