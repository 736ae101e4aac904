"""PPO on Tinyworld: over-optimisation, PPO-ptx, LoRA memory, gold win rate (the numbers in docs/ppo.md).

    OMP_NUM_THREADS=1 python benchmarks/ppo_tinyworld_experiments.py \\
        --sft DEMO/sft/final --reward DEMO/reward/final --data DEMO/tinyworld/data --out runs/ppo-bench

Every run is ``rlxf.stages.ppo.run`` on the same config, started from the same SFT
model and reward model, with the gold oracle *tracked* on each step's rollouts
(``track.gold``, logged, never optimised) and sampled held-out prompts scored at the
end. The runs differ in one setting each:

1. ``kl0`` (β = 0) vs ``kl005`` (the default β = 0.05) on a long schedule: does the
   gold score peak and fall while the reward-model score keeps rising (Gao et al. 2022,
   arXiv 2210.10760)? Read with ``rlxf.evaluate.curves.diagnose``.
2. ``ptx`` = ``kl005`` plus the pre-training loss (ptx.coef = γ > 0, InstructGPT eq. 2):
   LM loss on held-out pre-training text for SFT, ``kl005`` (γ = 0) and ``ptx`` (and,
   for scale, the pre-trained base model SFT started from).
3. ``memory-full`` vs ``memory-lora``: the ``kl005`` config for a few steps, each in its
   own process (peak RSS is per process), full fine-tuning vs ``model.lora.enabled``.
4. Gold win rate over the SFT model on the held-out prompts, same sampling seed.

Results: OUT/results.json and OUT/results.md; figures under --img (one per β run and
one with both). A finished run is reused when the script is run again.

The memory runs go first, while this process is still small: Linux carries a process's
peak RSS (``ru_maxrss``, what the summary reports) across fork and exec, so a child
started after this process has loaded torch and three runs' models would report this
process's peak, not its own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

GOLD = "rlxf.tinyworld.evaluate:gold_totals"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft", required=True, help="SFT model folder (the policy's start and the reference)")
    parser.add_argument("--reward", required=True, help="reward model folder")
    parser.add_argument("--data", required=True, help="Tinyworld data folder (prompts_*.jsonl, pretrain*.jsonl)")
    parser.add_argument("--out", required=True, help="where the runs and results go")
    parser.add_argument("--base", default=None,
                        help="the pre-trained model SFT started from, for its LM loss (default: the shipped one)")
    parser.add_argument("--img", default="docs/img", help="where the figures go")
    parser.add_argument("--steps", type=int, default=100, help="PPO steps of the long runs")
    parser.add_argument("--memory-steps", type=int, default=3, help="PPO steps of each memory run")
    parser.add_argument("--ptx-coef", type=float, default=1.0, help="γ of the ptx run")
    parser.add_argument("--eval-every", type=int, default=25, help="held-out evaluation every this many steps")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out, data = Path(args.out), Path(args.data)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"command": " ".join(["python"] + sys.argv), "settings": vars(args)}
    results["memory"] = {mode: memory_run(args, out, mode) for mode in ("full", "lora")}  # first: see above

    import torch

    torch.set_num_threads(args.threads)
    from rlxf.progress import setup_logging

    setup_logging()
    runs = variants(args)
    summaries = {name: train(shared_config(args, out / name, overrides)) for name, overrides in runs.items()}
    results["runs"] = {name: read_run(out / name, summaries[name]) for name in runs}
    results["lm_loss"] = lm_losses(args, summaries)
    results["gold_eval"] = gold_comparison(args, data, summaries)
    results["figures"] = draw_figures(out, Path(args.img), runs)

    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results))
    print(markdown(results))


# ----------------------------------------------------------------------------- runs

def variants(args) -> dict[str, dict]:
    """Run name -> the settings (dotted keys) in which it differs from :func:`shared_config`."""
    return {"kl0": {"kl.coef": 0.0},
            "kl005": {},  # kl.coef keeps its default, 0.05
            "ptx": {"ptx.coef": args.ptx_coef}}


def shared_config(args, out: Path, overrides: dict) -> dict:
    """The PPO config every run starts from (as plain data), with ``overrides`` applied."""
    data = Path(args.data)
    raw = {
        "out": str(out), "seed": args.seed, "progress": False,
        "max_steps": args.steps, "lr": 1e-4, "warmup_steps": 5, "batch_size": 16,
        "log_every": 1, "eval_every": args.eval_every,
        "model": {"name_or_path": args.sft},
        "rollout": {"prompts": str(data / "prompts_train.jsonl"), "batch_size": 32, "max_prompt_length": 96,
                    "max_new_tokens": 32},
        "reward": {"model": args.reward, "max_length": 128},
        "ptx": {"data": str(data / "pretrain.jsonl"), "batch_size": 8},
        "eval": {"prompts": str(data / "prompts_heldout.jsonl"), "n": 200,
                 "lm_data": str(data / "pretrain_heldout.jsonl")},
        "track": {"gold": GOLD},
    }
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return raw


def train(raw: dict) -> dict:
    from rlxf.config import from_dict
    from rlxf.stages import ppo

    return ppo.run(from_dict(ppo.Config, raw))


def read_run(run_dir: Path, summary: dict) -> dict:
    """A run's summary, plus where its smoothed gold peaked and what the diagnostics say."""
    from rlxf.evaluate.curves import Thresholds, diagnose_frame, moving_average, read_metrics, series

    frame = read_metrics(run_dir / "metrics.jsonl")
    steps, gold = series(frame, "gold")
    _, score = series(frame, "score")
    window = max(1, round(Thresholds().smooth * len(gold)))  # the diagnostics' own smoothing
    gold_s, score_s = moving_average(gold, window), moving_average(score, window)
    peak = int(gold_s.argmax())
    return {
        "steps": summary["steps"],
        "seconds_per_step": summary["seconds"] / summary["steps"],
        "score_first": float(score_s[0]), "score_final": summary["score.final"],
        "gold_first": float(gold_s[0]), "gold_peak_step": steps[peak], "gold_peak": float(gold_s[peak]),
        "gold_final": summary["gold.final"], "kl_final": summary["kl.final"],
        "response_length_first": series(frame, "response_length")[1][0],
        "response_length_final": _tail_mean(series(frame, "response_length")[1]),
        "entropy_first": series(frame, "entropy")[1][0], "entropy_final": _tail_mean(series(frame, "entropy")[1]),
        "eval_score": summary.get("eval_score"), "eval_gold": summary.get("eval_gold"),
        "eval_lm_loss": summary.get("eval_lm_loss"), "smoothing_window": window,
        "diagnoses": [{"verdict": d.verdict, "severity": d.severity, "message": d.message}
                      for d in diagnose_frame(frame)],
    }


def _tail_mean(values: list[float]) -> float:
    """Mean of the last tenth of the values: how the summary's ``*.final`` numbers are made."""
    tail = values[-max(1, len(values) // 10):]
    return sum(tail) / len(tail)


def lm_losses(args, summaries: dict) -> dict:
    """LM loss (nats per token) on held-out pre-training text: the base and SFT models',
    and each run's at its end (measured by the run itself, ``eval_lm_loss``)."""
    from rlxf.models.loading import ModelConfig, load_causal_lm, load_tokenizer
    from rlxf.stages.ppo import PtxConfig, lm_loss
    from rlxf.tinyworld.build import SHIPPED

    path = str(Path(args.data) / "pretrain_heldout.jsonl")
    out = {}
    for name, model_dir in (("base", args.base or str(SHIPPED)), ("sft", args.sft)):
        model = load_causal_lm(ModelConfig(name_or_path=model_dir))
        out[name] = lm_loss(model, load_tokenizer(model_dir), path, PtxConfig().max_length, "cpu")
    out.update({name: s.get("eval_lm_loss") for name, s in summaries.items()})
    return out


def memory_run(args, out: Path, mode: str) -> dict:
    """The ``kl005`` config for a few steps in a fresh process, so its peak RSS is its own
    (``rlxf ppo`` validates the config; this process must not import torch first)."""
    import resource

    import yaml

    run_dir = out / f"memory-{mode}"
    raw = shared_config(args, run_dir, {"max_steps": args.memory_steps, "model.lora.enabled": mode == "lora"})
    config_path = out / f"memory-{mode}.yaml"
    config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    subprocess.run([sys.executable, "-m", "rlxf.cli", "ppo", "--config", str(config_path)], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    summary = json.loads((run_dir / "summary.json").read_text())
    launcher_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # a floor under the child's reading
    return {**summary["memory"], "launcher_peak_rss_mb": launcher_mb, "steps": summary["steps"],
            "seconds_per_step": summary["seconds"] / summary["steps"]}


def gold_comparison(args, data: Path, summaries: dict) -> dict:
    """Gold sub-scores of SFT and every PPO policy on the held-out prompts, and each
    policy's win rate over SFT (ties half), all sampled with the same seed."""
    from rlxf.data.formats import load_prompts
    from rlxf.models.loading import ModelConfig, load_causal_lm, load_tokenizer
    from rlxf.tinyworld.evaluate import gold_eval, win_rate

    prompts = list(load_prompts(str(data / "prompts_heldout.jsonl")))[:200]
    models = {"sft": args.sft, **{name: s["final"] for name, s in summaries.items()}}
    reports = {}
    for name, path in models.items():
        model = load_causal_lm(ModelConfig(name_or_path=path))
        reports[name] = gold_eval(model, load_tokenizer(path), prompts, seed=args.seed + 23, max_new_tokens=32)
    sft = reports["sft"].totals()
    return {"prompts": len(prompts),
            "subscores": {name: r.means() for name, r in reports.items()},
            "eos_rate": {name: sum(r.ended) / len(r.ended) for name, r in reports.items()},
            "win_rate_over_sft": {name: win_rate(r.totals(), sft) for name, r in reports.items() if name != "sft"},
            "examples": [{"prompt": str(prompts[i]), **{name: {"answer": r.answers[i], "ended": r.ended[i],
                                                               "gold": r.scores[i]}
                                                        for name, r in reports.items()}}
                         for i in range(8)]}


# ----------------------------------------------------------------------------- figures

LABELS = {"kl0": "β = 0 (no KL penalty)", "kl005": "β = 0.05 (default)", "ptx": "β = 0.05, ptx γ > 0",
          "base": "pre-trained base", "sft": "SFT"}
TITLES = {"score": "reward-model score (proxy)", "gold": "gold score (oracle)", "kl": "KL to SFT (nats/answer)"}


def draw_figures(out: Path, img: Path, runs: dict) -> list[str]:
    from rlxf.evaluate.curves import read_metrics

    img.mkdir(parents=True, exist_ok=True)
    frames = {name: read_metrics(out / name / "metrics.jsonl") for name in runs}
    paths = []
    for name in ("kl0", "kl005"):
        paths.append(draw({name: frames[name]}, ("score", "gold"), img / f"ppo_{name}.png",
                          f"PPO on Tinyworld, {LABELS[name]}: proxy vs gold per step"))
    paths.append(draw({n: frames[n] for n in ("kl0", "kl005")}, ("score", "gold", "kl"),
                      img / "ppo_overoptimisation.png", "Over-optimisation: β = 0 vs β = 0.05"))
    return [str(p) for p in paths]


def draw(frames: dict, keys: tuple[str, ...], path: Path, title: str) -> Path:
    """One panel per metric, one colour per run: the raw per-step values faint, smoothed bold."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from rlxf.evaluate.curves import Thresholds, moving_average, series

    fig = Figure(figsize=(4.2 * len(keys), 3.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(title, fontsize=11)
    colors = {"kl0": "#c0392b", "kl005": "#1f5f99", "ptx": "#2e8540"}
    for i, key in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), i + 1)
        for name, frame in frames.items():
            x, y = series(frame, key)
            ax.plot(x, y, color=colors[name], alpha=0.25, linewidth=1)
            window = max(1, round(Thresholds().smooth * len(y)))
            ax.plot(x, moving_average(y, window), color=colors[name], linewidth=2, label=LABELS[name])
        ax.set_title(TITLES[key], fontsize=10)
        ax.set_xlabel("PPO step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.savefig(path, format="png")
    return path


# ----------------------------------------------------------------------------- report

def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(r: dict) -> str:
    f = _num
    lines = [f"Command: `{r['command']}`", "",
             "| run | proxy score first → final | gold first | gold peak (step) | gold final | "
             "held-out gold (end) | KL final | answer length first → final | over-optimisation? |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, run in r["runs"].items():
        over = any(d["verdict"] == "over-optimisation" for d in run["diagnoses"])
        lines.append(f"| {LABELS[name]} | {f(run['score_first'])} → {f(run['score_final'])} | "
                     f"{f(run['gold_first'])} | {f(run['gold_peak'])} ({run['gold_peak_step']:g}) | "
                     f"{f(run['gold_final'])} | {f(run['eval_gold'])} | {f(run['kl_final'], 2)} | "
                     f"{f(run['response_length_first'], 1)} → {f(run['response_length_final'], 1)} | "
                     f"{'yes' if over else 'no'} |")
    lines += ["", "Diagnostics (rlxf.evaluate.curves.diagnose):", ""]
    for name, run in r["runs"].items():
        lines += [f"- {LABELS[name]}: " + " / ".join(f"[{d['verdict']}] {d['message']}" for d in run["diagnoses"])]
    lines += ["", "| model | LM loss on pretrain_heldout (nats/token) |", "|---|---|"]
    lines += [f"| {LABELS.get(n, n)} | {f(v, 4)} |" for n, v in r["lm_loss"].items()]
    lines += ["", "| mode | peak RSS (MB) | parameters (MB) | steps | s/step (with load and eval) |",
              "|---|---|---|---|---|"]
    lines += [f"| {mode} | {f(m['peak_rss_mb'], 0)} | {f(m['parameters_mb'], 2)} | {m['steps']} | "
              f"{f(m['seconds_per_step'], 1)} |" for mode, m in r["memory"].items()]
    g = r["gold_eval"]
    lines += ["", f"Gold on {g['prompts']} held-out prompts (same sampling seed for every model):", "",
              "| model | win rate over SFT | total | helpful | honest | harmless | fluent | EOS rate |",
              "|---|---|---|---|---|---|---|---|"]
    for name, s in g["subscores"].items():
        rate = g["win_rate_over_sft"].get(name)
        lines.append(f"| {LABELS[name]} | {f(rate)} | {f(s['total'])} | "
                     f"{f(s['helpful'])} | {f(s['honest'])} | {f(s['harmless'])} | {f(s['fluent'])} | "
                     f"{f(g['eos_rate'][name], 2)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
