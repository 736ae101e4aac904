"""Tinyworld preference data: a policy's answers, ranked by simulated labellers.

``rlxf tinyworld preferences policy=DIR out=DIR`` does what InstructGPT's comparison
data collection does (Ouyang et al. 2022, §3.5): for each prompt it samples K answers
from a policy (typically the SFT model) and has one labeller, drawn from the panel
(:func:`rlxf.tinyworld.labellers.default_panel`), rank them best to worst.

    OUT/
      rankings_train.jsonl   {prompt, completions, ranking} + gold, ended, policy, labeller, task, kind, id
      rankings_heldout.jsonl the same on held-out prompts (no train prompt asks the same thing)
      pairs_train.jsonl      {prompt, chosen, rejected} + gold_chosen, gold_rejected, ended_chosen,
      pairs_heldout.jsonl    ended_rejected, labeller, task, kind, id: ALL C(K, 2) pairs of each
                             ranking (the same labels, flattened; for the pairwise loss)
      config.yaml, summary.json
      samples/               the sampled answers, batch by batch, until summary.json is written: a
                             re-run after a crash samples only the rest (and writes what an
                             uninterrupted run writes)

``gold`` is the gold oracle's total score of each answer, so a reward model can be
checked against the true order as well as against the noisy labels; ``ended`` says
whether the policy ended the answer (an unended answer is scored as not fluent);
``policy`` which of the policies wrote it (an index into the ``policy`` list: with
several policies, as InstructGPT did, the comparisons span more kinds of answer,
e.g. the base model's rude and rambling ones next to the SFT model's).
Duplicate or empty answers to one prompt are re-sampled a few times; a prompt left
with fewer than two different answers is dropped (counted in the summary). The
summary reports how often the labels agree with the gold order and how often two
labellers of the panel would agree (InstructGPT's 72.6%).
"""

from __future__ import annotations

import logging
import random
import shutil
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from rlxf.errors import ConfigError
from rlxf.runs import Run, Timer
from rlxf.tinyworld.labellers import TEMPERATURE

log = logging.getLogger("rlxf")

RESAMPLE_ROUNDS = 4  # extra sampling rounds for prompts with duplicate or empty answers


@dataclass(kw_only=True)
class Config:
    """``rlxf tinyworld preferences``: sample answers from a policy, have simulated labellers rank them."""

    policy: str | list[str]
    """The model that writes the answers (e.g. the Tinyworld SFT model), Hugging Face format with its
    tokenizer; or a list of models: answer j of each prompt comes from model j mod len(list)
    (InstructGPT sampled comparisons from several policies)."""
    out: str
    """Output directory (rankings_*.jsonl, pairs_*.jsonl, summary.json)."""
    n_train: int = 1000
    """Train prompts to label."""
    n_heldout: int = 200
    """Held-out prompts to label (for evaluating reward models)."""
    k: int = 4
    """Answers sampled and ranked per prompt (InstructGPT: 4 to 9)."""
    max_new_tokens: int = 48
    """Longest answer the policy may write; longer ones count as never ended."""
    temperature: float | list[float] = 1.0
    """Sampling temperature (1.0 samples the policy's own distribution); one for every policy, or a list
    with one per policy (Llama 2 sampled its comparisons from model variants at varying temperatures)."""
    labeller_temperature: float = TEMPERATURE
    """Bradley-Terry noise of the simulated labellers (0.12: ~73% inter-labeller agreement)."""
    seed: int = 0
    """Seed for prompts, sampling and labellers."""
    batch_size: int = 256
    """Answers generated per batch."""
    device: str = "auto"
    """'auto' (CUDA when available, else CPU), 'cpu', 'cuda', ..."""
    progress: bool = True
    """Show progress bars."""

    def validate(self) -> None:
        if not _policy_paths(self):
            raise ConfigError("policy must name at least one model")
        if self.k < 2:
            raise ConfigError(f"k must be ≥ 2 (a ranking compares answers), got {self.k}")
        if min(self.n_train, self.n_heldout, self.max_new_tokens, self.batch_size) < 1:
            raise ConfigError("n_train, n_heldout, max_new_tokens and batch_size must be ≥ 1")
        temps = _temperatures(self)
        if len(temps) != len(_policy_paths(self)):
            raise ConfigError(f"temperature: give one value or one per policy ({len(_policy_paths(self))}), "
                              f"got {len(temps)}")
        if min(temps) <= 0 or self.labeller_temperature <= 0:
            raise ConfigError("temperature and labeller_temperature must be > 0")


def run(cfg: Config) -> dict:
    """Sample, label and write both splits; a finished ``out`` is returned as is."""
    from rlxf.data.readers import write_jsonl
    from rlxf.models.loading import ModelConfig, load_causal_lm, load_tokenizer
    from rlxf.tinyworld.labellers import default_panel
    from rlxf.tinyworld.prompts import sample_prompts
    from rlxf.training import resolve_device

    run_dir = Run.open(cfg.out, cfg)
    if run_dir.complete:
        return run_dir.summary()
    timer = Timer()
    device = resolve_device(cfg.device)
    loaded = {path: (load_causal_lm(ModelConfig(name_or_path=path)).to(device).eval(),
                     load_tokenizer(path, padding_side="left")) for path in dict.fromkeys(_policy_paths(cfg))}
    policies = [(*loaded[path], temperature) for path, temperature in zip(_policy_paths(cfg), _temperatures(cfg))]
    panel = default_panel(cfg.seed, temperature=cfg.labeller_temperature)
    summary = {"stage": "tinyworld preferences", "policy": cfg.policy, "k": cfg.k}
    for split, n in (("train", cfg.n_train), ("heldout", cfg.n_heldout)):
        prompts = sample_prompts(n, cfg.seed, split)
        answers = _sample_distinct(policies, prompts, cfg, split, run_dir.out / "samples")
        pick = random.Random(f"tinyworld/preferences/{cfg.seed}/{split}")
        rankings = []
        for tp, sampled in zip(prompts, answers):
            if len(sampled) < 2:
                continue
            labeller = pick.choice(panel)  # one labeller ranks all of a prompt's answers
            rankings.append(_ranking_row(tp, sampled, labeller))
        pairs = [pair for row in rankings for pair in _pair_rows(row)]
        write_jsonl(run_dir.out / f"rankings_{split}.jsonl", rankings)
        write_jsonl(run_dir.out / f"pairs_{split}.jsonl", pairs)
        summary[split] = {"prompts": n, "dropped_prompts": n - len(rankings), "rankings": len(rankings),
                          "pairs": len(pairs), **_report(rankings, pairs, panel)}
        agree = summary[split]["labels_vs_gold"]
        log.info("tinyworld preferences %s: %d rankings, %d pairs; labels agree with gold on %s of them",
                 split, len(rankings), len(pairs), "no pair" if agree is None else f"{agree:.1%}")
    summary["seconds"] = timer.elapsed()
    summary["files"] = {p.stem: str(p) for p in sorted(run_dir.out.glob("*.jsonl"))}
    run_dir.write_summary(summary)
    shutil.rmtree(run_dir.out / "samples", ignore_errors=True)  # in the rankings now
    return summary


def _policy_paths(cfg: Config) -> list[str]:
    return [cfg.policy] if isinstance(cfg.policy, str) else list(cfg.policy)


def _temperatures(cfg: Config) -> list[float]:
    """One sampling temperature per policy (a policy may be listed twice at two temperatures)."""
    temps = [cfg.temperature] if isinstance(cfg.temperature, (int, float)) else list(cfg.temperature)
    return [float(t) for t in temps] * (len(_policy_paths(cfg)) if len(temps) == 1 else 1)


def _sample_distinct(policies, prompts, cfg: Config, split: str, samples: Path
                     ) -> list[list[tuple[str, bool, int]]]:
    """Up to K different, non-empty ``(answer, ended, policy index)`` per prompt, re-sampling clashes.

    Slot j of a prompt is always sampled from policy j mod len(policies). The answers are
    kept in ``samples`` batch by batch as they come, so a re-run after a crash samples only
    the rest, and gets the answers of an uninterrupted run.
    """
    from rlxf.models.generation import generate_stored
    from rlxf.models.loading import fingerprint

    samples.mkdir(parents=True, exist_ok=True)
    slots = [(i, j) for i in range(len(prompts)) for j in range(cfg.k)]
    got: list[list[tuple[str, bool, int]]] = [[] for _ in prompts]
    for round_ in range(1 + RESAMPLE_ROUNDS):
        if not slots:
            break
        seed = random.Random(f"tinyworld/preferences/{cfg.seed}/{split}/{round_}").randrange(2**31)
        out = {}
        for p, (path, (model, tokenizer, temperature)) in enumerate(zip(_policy_paths(cfg), policies)):
            mine = [slot for slot in slots if slot[1] % len(policies) == p]
            if not mine:
                continue
            identity = {"model": path, "weights": fingerprint(path), "temperature": temperature,
                        "max_new_tokens": cfg.max_new_tokens}
            texts = generate_stored(model, tokenizer, [prompts[i].text for i, _ in mine],
                                    samples / f"{split}-round{round_}-policy{p}.jsonl", identity=identity,
                                    max_new_tokens=cfg.max_new_tokens, temperature=temperature,
                                    batch_size=cfg.batch_size, chunk_batches=1, seed=seed + p,
                                    progress=cfg.progress, desc=f"{split} answers, policy {p}")
            out.update(zip(mine, texts))
        missing = []
        for (i, j), g in ((slot, out[slot]) for slot in slots):
            text = g.text.strip()
            if text and all(text != a for a, _, _ in got[i]):
                got[i].append((text, g.ended, j % len(policies)))
            else:
                missing.append((i, j))
        slots = missing
    return got


def _ranking_row(tp, sampled: list[tuple[str, bool, int]], labeller) -> dict:
    from rlxf.tinyworld.oracle import score

    completions = [a for a, _, _ in sampled]
    ended = [e for _, e, _ in sampled]
    return {"prompt": tp.text, "completions": completions,
            "ranking": list(labeller.rank(tp, completions, ended)),
            "gold": [score(tp, a, e).total for a, e, _ in sampled], "ended": ended,
            "policy": [p for _, _, p in sampled],
            "labeller": labeller.name, "task": tp.task, "kind": tp.kind, "id": tp.id}


def _pair_rows(row: dict) -> list[dict]:
    """All C(K, 2) (better, worse) pairs of one labelled ranking."""
    pairs = []
    for b, w in combinations(row["ranking"], 2):
        pairs.append({"prompt": row["prompt"], "chosen": row["completions"][b], "rejected": row["completions"][w],
                      "gold_chosen": row["gold"][b], "gold_rejected": row["gold"][w],
                      "ended_chosen": row["ended"][b], "ended_rejected": row["ended"][w],
                      "labeller": row["labeller"], "task": row["task"], "kind": row["kind"], "id": row["id"]})
    return pairs


def _report(rankings: list[dict], pairs: list[dict], panel) -> dict:
    """How good the labels are: agreement with gold and between labellers; the answers' gold."""
    def mean(xs) -> float | None:
        xs = list(xs)
        return sum(xs) / len(xs) if xs else None  # None: nothing to measure (e.g. every pair a gold tie)

    ordered = [p for p in pairs if p["gold_chosen"] != p["gold_rejected"]]
    # expected agreement of two different labellers of the panel on each pair (Bradley-Terry choices)
    inter = []
    for p in pairs:
        ended = (p["ended_chosen"], p["ended_rejected"])
        probs = [lab.prob(p["prompt"], p["chosen"], p["rejected"], ended) for lab in panel]
        inter.append(mean(a * b + (1 - a) * (1 - b) for a, b in combinations(probs, 2)))
    answers = [(g, e) for r in rankings for g, e in zip(r["gold"], r["ended"])]
    return {
        "labels_vs_gold": mean(p["gold_chosen"] > p["gold_rejected"] for p in ordered),
        "gold_ties": len(pairs) - len(ordered),
        "inter_labeller_expected": mean(inter),
        "mean_answers_per_prompt": mean(len(r["completions"]) for r in rankings),
        "answer_gold_mean": mean(g for g, _ in answers),
        "answer_gold_mean_by_policy": [mean(g for r in rankings for g, q in zip(r["gold"], r["policy"]) if q == p)
                                       for p in range(1 + max((q for r in rankings for q in r["policy"]), default=0))],
        "answers_ended": mean(e for _, e in answers),
    }
