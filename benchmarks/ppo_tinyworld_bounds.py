"""What bounds PPO's gold win rate over SFT on Tinyworld (the numbers in docs/ppo.md §4).

    python benchmarks/ppo_tinyworld_bounds.py --demo runs/demo --out runs/ppo-bounds

``--demo`` is a finished ``rlxf demo`` (its sft/, reward/, ppo/, preferences/ and
tinyworld/data/). Every PPO run below is the demo's own PPO config (``DEMO/ppo/config.yaml``)
with a few keys changed, started from the demo's SFT model, and every final policy is
scored as the demo scores its own: one sampled answer to each of the first 200 held-out
prompts, sampling seed 23, gold win rate over the SFT model with ties counting half.

1. **A perfect reward.** PPO against the gold oracle itself
   (``reward.function=rlxf.tinyworld.evaluate:gold_totals``; the value function starts
   from the demo's reward model): the demo's 40 steps, 120 steps, β = 0.01, lr 3e-5, the
   value function from the SFT model, 128 rollouts per step, and 300 steps on the fast
   path (bf16, ``rollout.backend=rlxf``).
2. **Prompts with headroom.** Fresh training-split prompts on which the SFT model's
   sampled answer scores below ``--hard-below`` gold (chosen with the oracle: an upper
   bound on what curating prompts can do), PPO against gold and against the demo's RM.
3. **A reward-model ensemble.** ``--ensemble`` more RMs trained as the demo's (seeds 1, 2,
   …), each one's and the ensemble's accuracy against gold on the demo's held-out pairs,
   and PPO against their mean, mean − std (Coste et al. 2023) and minimum.
4. **One round of iterated RLHF.** Preferences over answers of the SFT and the demo's PPO
   policy, an RM on both rounds' rankings, PPO against it.
5. **A weaker SFT model.** The demo's pipeline with SFT on the demonstrations of one half
   of the training questions (by a hash of task and arguments), its own preference data
   and reward model (rankings of the other half's questions) and PPO on the other half's
   prompts (seeds 0 and 1), on all prompts, and against gold; scored against that SFT model.

Results: OUT/results.json and OUT/results.md. A finished run is reused when the script is
run again (each stage resumes or returns its summary).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

GOLD = "rlxf.tinyworld.evaluate:gold_totals"
MEMBERS = "RLXF_BOUNDS_REWARD_MODELS"  # the ensemble's reward-model folders, comma-separated


def study_parser(doc: str) -> argparse.ArgumentParser:
    """The arguments every study of a finished demo takes: --demo, --out, --eval-n."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--demo", required=True, help="a finished `rlxf demo` output folder")
    parser.add_argument("--out", required=True, help="where the runs and results go")
    parser.add_argument("--eval-n", type=int, default=200, help="held-out prompts scored at the end")
    return parser


def start_study(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, Path, Path]:
    """Parse, create the output folder and turn rlxf's logging on; (args, demo, out)."""
    from rlxf.progress import setup_logging

    args = parser.parse_args()
    demo, out = Path(args.demo), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    setup_logging()
    return args, demo, out


def main() -> None:
    parser = study_parser(__doc__)
    parser.add_argument("--ensemble", type=int, default=4, help="reward models trained besides the demo's")
    parser.add_argument("--hard-pool", type=int, default=8000, help="fresh training-split prompts to choose from")
    parser.add_argument("--hard-below", type=float, default=0.95, help="gold score under which a prompt is hard")
    args, demo, out = start_study(parser)
    rm = str(demo / "reward" / "final")
    gold = {"reward.model": None, "reward.function": GOLD, "reward.value_model": rm}
    runs = {
        "demo": None,  # the demo's own PPO policy
        "gold-40": gold,
        "gold-120": {**gold, "max_steps": 120},
        "gold-beta-0.01": {**gold, "kl.coef": 0.01},
        "gold-lr-3e-5": {**gold, "lr": 3e-5},
        "gold-value-from-sft": {**gold, "reward.value_model": str(demo / "sft" / "final")},
        "gold-128-rollouts": {**gold, "rollout.batch_size": 128, "batch_size": 32},
        "gold-300-fast": {**gold, "max_steps": 300, "eval_every": 50, "save_every": 100,
                          "mixed_precision": "bf16", "rollout.backend": "rlxf"},
    }
    hard = hard_prompts(demo, out / "prompts_hard.jsonl", args.hard_pool, args.hard_below)
    runs["hard-gold"] = {**gold, "rollout.prompts": hard["file"]}
    runs["hard-rm"] = {"rollout.prompts": hard["file"]}

    members = [rm] + [train_reward(demo, out / f"rm-seed{s}", {"seed": s}) for s in range(1, args.ensemble + 1)]
    os.environ[MEMBERS] = ",".join(members)
    ensemble = {"members": {m: gold_accuracy(m, demo) for m in members},
                **{f: gold_accuracy(f"ppo_tinyworld_bounds:{f}", demo) for f in ("mean", "mean_minus_std", "minimum")}}
    for f in ("mean", "mean_minus_std", "minimum"):
        runs[f"ensemble-{f}"] = {"reward.model": None, "reward.function": f"ppo_tinyworld_bounds:{f}",
                                 "reward.value_model": rm}

    round2 = iterated_round(demo, out)
    runs["iterated"] = {"reward.model": round2["reward_model"]}

    policies = {name: str(demo / "ppo" / "final") if keys is None else train_ppo(demo, out / name, keys)
                for name, keys in runs.items()}
    weaker = weaker_sft(demo, out / "weaker-sft")
    results = {"command": " ".join(["python"] + sys.argv), "hard_prompts": hard, "ensemble": ensemble,
               "iterated": round2, "runs": {k: {"changes": v} for k, v in runs.items()},
               "eval": win_rates(demo, str(demo / "sft" / "final"), policies, args.eval_n),
               "weaker_sft": {**weaker, "eval": win_rates(demo, weaker["sft"], weaker["policies"], args.eval_n)}}
    for name, path in policies.items():
        results["runs"][name].update(training_trend(Path(path).parent))
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results))
    print(markdown(results))


# ----------------------------------------------------------------------------- stages

def train_ppo(demo: Path, out: Path, changes: dict) -> str:
    from rlxf.config import load_config
    from rlxf.stages import ppo

    overrides = [f"out={out}", "progress=false"] + [f"{k}={'null' if v is None else v}" for k, v in changes.items()]
    return ppo.run(load_config(ppo.Config, demo / "ppo" / "config.yaml", overrides))["final"]


def train_reward(demo: Path, out: Path, changes: dict) -> str:
    from rlxf.config import load_config
    from rlxf.stages import reward

    overrides = [f"out={out}", "progress=false"] + [f"{k}={v}" for k, v in changes.items()]
    reward.run(load_config(reward.Config, demo / "reward" / "config.yaml", overrides))
    return str(out / "final")


def hard_prompts(demo: Path, path: Path, pool: int, below: float) -> dict:
    """Fresh training-split prompts on which the SFT model's sampled answer scores below ``below``."""
    from rlxf.models.loading import ModelConfig, load_causal_lm, load_tokenizer
    from rlxf.tinyworld.evaluate import gold_eval
    from rlxf.tinyworld.prompts import sample_prompts

    sft = str(demo / "sft" / "final")
    texts = [p.text for p in sample_prompts(pool, 7, "train")]  # seed 7: not the demo's prompt stream
    report = gold_eval(load_causal_lm(ModelConfig(name_or_path=sft)), load_tokenizer(sft), texts, seed=5,
                       max_new_tokens=32, batch_size=256)
    hard = [t for t, g in zip(texts, report.totals()) if g < below]
    if not path.exists():
        path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in hard))
    return {"file": str(path), "pool": pool, "hard": len(hard), "sft_gold_on_pool": report.mean()}


def iterated_round(demo: Path, out: Path) -> dict:
    """Preferences over SFT and PPO answers to 1,000 new prompts; an RM on both rounds' rankings."""
    from rlxf.config import load_config
    from rlxf.tinyworld import preferences
    from rlxf.tinyworld.evaluate import reward_gold_accuracy

    prefs = out / "preferences-round2"
    preferences.run(load_config(preferences.Config, None, [
        f"policy=[{demo / 'sft' / 'final'},{demo / 'ppo' / 'final'}]", f"out={prefs}", "n_train=1000",
        "n_heldout=200", "k=4", "seed=1", "progress=false"]))
    both = out / "rankings-rounds-1-2.jsonl"
    both.write_text((demo / "preferences" / "rankings_train.jsonl").read_text()
                    + (prefs / "rankings_train.jsonl").read_text())
    rm = train_reward(demo, out / "rm-round2", {"data.train": both, "max_steps": 800})
    return {"reward_model": rm,
            "gold_accuracy": {"round-1 held-out pairs": gold_accuracy(rm, demo),
                              "round-2 held-out pairs": reward_gold_accuracy(rm, prefs / "pairs_heldout.jsonl")},
            "demo_rm_on_round-2 pairs": reward_gold_accuracy(str(demo / "reward" / "final"),
                                                             prefs / "pairs_heldout.jsonl")}


def question_half(prompt: str) -> int:
    """0 or 1: which half of the training questions (task and arguments) ``prompt`` asks."""
    import hashlib

    from rlxf.tinyworld.prompts import parse_prompt

    asked = parse_prompt(prompt)
    return int(hashlib.sha1(repr((asked.task, asked.args)).encode()).hexdigest(), 16) % 2


def keep_half(src: Path, dst: Path, half: int) -> Path:
    """The JSONL rows of ``src`` whose prompt asks a question of ``half``, written to ``dst``."""
    rows = [line for line in src.read_text().splitlines() if question_half(json.loads(line)["prompt"]) == half]
    dst.write_text("".join(row + "\n" for row in rows))
    return dst


def weaker_sft(demo: Path, out: Path) -> dict:
    """SFT on one half of the training questions; preferences, reward model and PPO on the other."""
    from rlxf.config import load_config
    from rlxf.stages import sft
    from rlxf.tinyworld import preferences
    from rlxf.tinyworld.evaluate import reward_gold_accuracy

    out.mkdir(parents=True, exist_ok=True)
    demos = keep_half(demo_data(demo, "demonstrations"), out / "sft_train_half0.jsonl", 0)
    prompts = keep_half(demo_data(demo, "prompts"), out / "prompts_train_half1.jsonl", 1)
    model = sft.run(load_config(sft.Config, demo / "sft" / "config.yaml",
                                [f"out={out / 'sft'}", f"data.train={demos}", "progress=false"]))["final"]
    prefs = out / "preferences"
    base = load_config(preferences.Config, demo / "preferences" / "config.yaml", []).policy[0]
    preferences.run(load_config(preferences.Config, None, [
        f"policy=[{base},{model}]", f"out={prefs}", "n_train=2000", "n_heldout=200", "k=4", "seed=0",
        "progress=false"]))
    rankings = keep_half(prefs / "rankings_train.jsonl", out / "rankings_train_half1.jsonl", 1)
    rm = train_reward(demo, out / "reward", {"model.name_or_path": model, "data.train": rankings,
                                             "data.eval": prefs / "rankings_heldout.jsonl"})
    own = {"model.name_or_path": model, "reward.model": rm, "rollout.prompts": prompts}
    runs = {"rm": own, "rm-seed1": {**own, "seed": 1},
            "rm-all-prompts": {**own, "rollout.prompts": demo_data(demo, "prompts")},
            "gold": {**own, "reward.model": None, "reward.function": GOLD, "reward.value_model": rm}}
    return {"sft": model, "demonstrations": sum(1 for _ in demos.open()), "prompts": sum(1 for _ in prompts.open()),
            "rm_gold_accuracy": reward_gold_accuracy(rm, prefs / "pairs_heldout.jsonl"),
            "policies": {name: train_ppo(demo, out / f"ppo-{name}", keys) for name, keys in runs.items()}}


def gold_accuracy(reward: str, demo: Path) -> dict:
    """A reward model (folder) or a ``module:function`` scorer against gold on the demo's held-out pairs."""
    from rlxf.config import import_target
    from rlxf.tinyworld.evaluate import reward_gold_accuracy

    scorer = import_target(reward) if ":" in reward else reward
    return reward_gold_accuracy(scorer, demo / "preferences" / "pairs_heldout.jsonl", by_aspect=True)


# ----------------------------------------------------------------------------- the ensemble's rewards

_scorers: dict[str, list] = {}


def _member_scores(prompts, answers, ended):
    import torch

    from rlxf.evaluate.sxs import reward_scorer

    paths = os.environ[MEMBERS]
    if paths not in _scorers:
        _scorers[paths] = [reward_scorer(p) for p in paths.split(",")]
    return torch.tensor([score(prompts, answers, ended) for score in _scorers[paths]])  # (members, B)


def mean(prompts, answers, ended):
    return _member_scores(prompts, answers, ended).mean(0).tolist()


def mean_minus_std(prompts, answers, ended):
    scores = _member_scores(prompts, answers, ended)
    return (scores.mean(0) - scores.std(0)).tolist()


def minimum(prompts, answers, ended):
    return _member_scores(prompts, answers, ended).min(0).values.tolist()


# ----------------------------------------------------------------------------- evaluation

def demo_data(demo: Path, key: str) -> Path:
    """A data file of a finished demo, as its pipeline.yaml names it (the demo's own
    tinyworld/data, or a build's with ``rlxf demo world=DIR``)."""
    import yaml

    return Path(yaml.safe_load((demo / "pipeline.yaml").read_text())[key])


def win_rates(demo: Path, sft_path: str, policies: dict[str, str], n: int) -> dict:
    from rlxf.data.formats import load_prompts
    from rlxf.models.loading import ModelConfig, load_causal_lm, load_tokenizer
    from rlxf.tinyworld.evaluate import gold_eval, win_rate, win_rate_ceiling

    prompts = list(load_prompts(demo_data(demo, "eval_prompts")))[:n]

    def sample(path):
        return gold_eval(load_causal_lm(ModelConfig(name_or_path=str(path))), load_tokenizer(str(path)), prompts,
                         seed=23, max_new_tokens=32)

    sft = sample(sft_path)
    results = {"sft": {"gold": sft.means(), "win_rate_ceiling": win_rate_ceiling(prompts, sft.totals())}}
    for name, path in policies.items():
        report = sample(path)
        results[name] = {"win_rate_over_sft": win_rate(report.totals(), sft.totals()), "gold": report.means()}
    return results


def training_trend(run: Path) -> dict:
    """The training rollouts' score and KL at the start and the end, and the held-out gold per evaluation."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "score" in r]
    k = max(1, len(train) // 10)

    def avg(key, part):
        return sum(r[key] for r in part) / len(part)

    return {"score_first_tenth": avg("score", train[:k]), "score_last_tenth": avg("score", train[-k:]),
            "kl_last_tenth": avg("kl", train[-k:]), "steps": len(train),
            "eval_gold": {r["step"]: r["eval_gold"] for r in rows if "eval_gold" in r}}


def markdown(results: dict) -> str:
    ev = results["eval"]
    sft = ev["sft"]["gold"]
    lines = ["| run | win rate over SFT | gold | helpful | honest | training score, first → last tenth | KL |",
             "|---|---|---|---|---|---|---|",
             f"| SFT | – | {sft['total']:.3f} | {sft['helpful']:.3f} | {sft['honest']:.3f} | | |"]
    for name, run in results["runs"].items():
        g = ev[name]["gold"]
        lines.append(f"| {name} | {ev[name]['win_rate_over_sft']:.1%} | {g['total']:.3f} | {g['helpful']:.3f} | "
                     f"{g['honest']:.3f} | {run['score_first_tenth']:.3f} → {run['score_last_tenth']:.3f} | "
                     f"{run['kl_last_tenth']:.2f} |")
    ens = results["ensemble"]
    hard, it = results["hard_prompts"], results["iterated"]
    lines += ["", "Reward models against gold on the demo's held-out pairs: "
              + ", ".join(f"{Path(m).parent.name} {v['accuracy']:.3f}" for m, v in ens["members"].items())
              + "; ensemble " + ", ".join(f"{f} {ens[f]['accuracy']:.3f}" for f in ("mean", "mean_minus_std",
                                                                                   "minimum")) + ".",
              f"Hard prompts: {hard['hard']} of {hard['pool']} (SFT gold on the pool {hard['sft_gold_on_pool']:.3f}).",
              "Iterated round's RM against gold: "
              + ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in it["gold_accuracy"].items())
              + f" (the demo's RM on round-2 pairs: {it['demo_rm_on_round-2 pairs']['accuracy']:.3f})."]
    weak = results["weaker_sft"]
    ev = weak["eval"]
    lines += ["", f"Weaker SFT model ({weak['demonstrations']} demonstrations, gold {ev['sft']['gold']['total']:.3f}; "
              f"its RM against gold {weak['rm_gold_accuracy']['accuracy']:.3f}; PPO on {weak['prompts']} prompts): "
              + ", ".join(f"{name} {ev[name]['win_rate_over_sft']:.1%} (gold {ev[name]['gold']['total']:.3f})"
                          for name in weak["policies"]) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
