"""The Tinyworld judge: the base model fine-tuned to label answer pairs (`rlxf tinyworld judge`).

RLAIF needs a judge that runs offline, so Tinyworld builds one: the Tinyworld base
model, fine-tuned with ``rlxf sft`` on judgement demonstrations whose answers come
from the gold oracle (:mod:`rlxf.tinyworld.oracle`). The demonstrations use the
built-in ``tinyworld`` labelling template (``rlxf label template=tinyworld``):

- pairwise: two candidate answers to a train prompt in a random order; the completion
  is "1" or "2", the gold winner (near-ties, |gold gap| < ``min_gold_gap``, skipped);
- chain-of-thought (``cot_share`` of them): the completion is a short rationale naming
  each answer's worst flaw by the oracle ("1 is false . 2 is right .") and then the
  label, the two-step format of RLAIF §2.1.2;
- direct scoring (``rating_share`` extra): one answer, completion "1".."10" = 1 + 9 x
  gold total, rounded.

The base model's 128-token context is too short for two answers side by side, so
the judge gets ``max_length`` positions: the learned position embeddings are kept
and the new ones start as copies of the last, then trained.

Evaluation on held-out prompts (and another answer stream), written to summary.json:
agreement with the gold order with and without swap-averaging, the order-flip rate
and favoured position, the same for chain-of-thought on a subset, direct-score
agreement, and a judge-vs-human report against the simulated labellers
(:mod:`rlxf.tinyworld.labellers`), next to human-vs-gold and human-vs-human for scale.
The untuned base model as judge is the chance-level baseline.

    OUT/data/       judge_train.jsonl (SFT demonstrations)
    OUT/init/       the base model with the longer context
    OUT/sft/        the fine-tuning run; OUT/sft/final/ is the judge
    OUT/summary.json
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

from rlxf.config import from_dict
from rlxf.errors import ConfigError
from rlxf.runs import Timer
from rlxf.tinyworld import build

log = logging.getLogger("rlxf")

TEMPLATE = "tinyworld"
# Rationale words, worst flaw first: (gold sub-score, word, the score below which it is that flaw).
FLAWS = (("honest", "false", 1.0), ("harmless", "rude", 1.0), ("helpful", "unhelpful", 0.5),
         ("fluent", "rambling", 0.7))


@dataclass(kw_only=True)
class Config:
    """``rlxf tinyworld judge``: fine-tune the Tinyworld base model into an AI labeller."""

    out: str = "tinyworld/judge"
    """Output directory (data/, init/, sft/, summary.json)."""
    base: str | None = None
    """A built Tinyworld base model folder (rlxf tinyworld build's OUT/base); null: the shipped base model, as
    the demo uses (build one with another seed or recipe by `rlxf tinyworld build`)."""
    seed: int = 0
    """Seed for the demonstrations, the training order and the evaluation pairs."""
    n_pairs: int = 8000
    """Pairwise judgement demonstrations (train prompts)."""
    cot_share: float = 0.5
    """Share of pairwise demonstrations written with a rationale (chain-of-thought)."""
    rating_share: float = 0.25
    """Direct-scoring demonstrations, as a share of n_pairs (added to them)."""
    min_gold_gap: float = 0.02
    """Skip pairs whose gold totals differ by less than this (no clear winner to teach)."""
    max_length: int = 256
    """The judge's context length (the base model's is extended to it)."""
    steps: int = 1200
    """Fine-tuning optimiser steps."""
    batch_size: int = 32
    """Demonstrations per step."""
    lr: float = 2e-3
    """Peak fine-tuning learning rate."""
    n_eval: int = 400
    """Held-out pairs for the evaluation."""
    n_eval_cot: int = 100
    """Of those, how many are also judged with chain-of-thought (generation is slower)."""
    progress: bool = True
    """Show progress bars."""

    def validate(self) -> None:
        if not (0.0 <= self.cot_share <= 1.0 and self.rating_share >= 0.0):
            raise ConfigError("cot_share must be in [0, 1] and rating_share ≥ 0")
        if self.n_pairs < 1 or self.n_eval < 1 or self.steps < 1:
            raise ConfigError("n_pairs, n_eval and steps must be ≥ 1")
        if self.n_eval_cot > self.n_eval:
            raise ConfigError(f"n_eval_cot ({self.n_eval_cot}) cannot exceed n_eval ({self.n_eval})")


def run(cfg: Config) -> dict:
    """Build (or reuse) the judge under ``cfg.out`` and evaluate it; returns the summary."""
    out = Path(cfg.out)
    summary_path = out / "summary.json"
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    timer = Timer()
    base = Path(cfg.base) if cfg.base else build.SHIPPED
    data = out / "data" / "judge_train.jsonl"
    if not data.exists():
        from rlxf.data.readers import write_jsonl

        write_jsonl(data, demonstrations(cfg.n_pairs, cfg.seed, cot_share=cfg.cot_share,
                                          rating_share=cfg.rating_share, min_gold_gap=cfg.min_gold_gap))
    init = out / "init"
    if not (init / "config.json").exists():
        extend_context(base, init, cfg.max_length)
    sft_summary = _finetune(cfg, data, init, out / "sft")
    train_seconds = timer.elapsed()
    report = evaluate_judge(sft_summary["final"], cfg.seed, n=cfg.n_eval, n_cot=cfg.n_eval_cot,
                            baseline=str(base), progress=cfg.progress)
    summary = {"judge": sft_summary["final"], "template": TEMPLATE, "base": str(base),
               "train_examples": sft_summary["train_examples"], "final_eval_loss": sft_summary["final_eval_loss"],
               "build_seconds": train_seconds, **report, "seconds": timer.elapsed()}
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# --- demonstrations -------------------------------------------------------------------------

def rationale(prompt: str, first: str, second: str) -> str:
    """``"1 is rude . 2 is right ."``: each answer's worst flaw by the gold oracle (:data:`FLAWS`)."""
    from rlxf.tinyworld.oracle import score

    words = []
    for answer in (first, second):
        gold = score(prompt, answer)
        words.append(next((word for k, word, limit in FLAWS if getattr(gold, k) < limit), "right"))
    return f"1 is {words[0]} . 2 is {words[1]} ."


def gold_rating(prompt: str, answer: str) -> int:
    """1 + 9 x gold total, rounded: the rating the judge is taught for direct scoring."""
    from rlxf.tinyworld.oracle import score

    return max(1, min(10, 1 + round(9 * score(prompt, answer).total)))


def demonstrations(n_pairs: int, seed: int, *, cot_share: float = 0.5, rating_share: float = 0.25,
                   min_gold_gap: float = 0.02) -> list[dict]:
    """``{prompt, completion}`` judgement demonstrations (see the module docstring); deterministic."""
    from rlxf.feedback.ai.templates import load_template, pairwise_prompt, rating_prompt
    from rlxf.tinyworld.corpus import candidate_answers
    from rlxf.tinyworld.oracle import score
    from rlxf.tinyworld.prompts import sample_prompts

    t = load_template(TEMPLATE)
    rng = random.Random(f"tinyworld/judge/{seed}")
    rows = []
    prompts = sample_prompts(3 * n_pairs, seed + 7919, "train")
    for tp in prompts:
        if len(rows) >= n_pairs:
            break
        a, b = candidate_answers(tp, 2, seed + len(rows))
        gap = score(tp, a).total - score(tp, b).total
        if abs(gap) < min_gold_gap:
            continue
        first, second = (a, b) if rng.random() < 0.5 else (b, a)
        label = "1" if (first == a) == (gap > 0) else "2"
        if rng.random() < cot_share:
            prompt = pairwise_prompt(t, tp.text, first, second, cot=True)
            completion = f"{rationale(tp.text, first, second)}{t.rationale_end}{t.ending} {label}"
        else:
            prompt, completion = pairwise_prompt(t, tp.text, first, second), label
        rows.append({"prompt": prompt, "completion": completion.strip()})
    for tp in sample_prompts(round(rating_share * n_pairs), seed + 104729, "train"):
        answer = rng.choice(candidate_answers(tp, 2, seed))
        rows.append({"prompt": rating_prompt(t, tp.text, answer), "completion": str(gold_rating(tp.text, answer))})
    rng.shuffle(rows)
    return rows


# --- building -------------------------------------------------------------------------------

def extend_context(base: Path, out: Path, n_positions: int) -> None:
    """Save the GPT-2 at ``base`` with ``n_positions`` positions: the learned position
    embeddings kept, each new one a copy of the last (fine-tuning then separates them)."""
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from rlxf.models.loading import save_model

    model = GPT2LMHeadModel.from_pretrained(base, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(base)
    old = model.config.n_positions
    if n_positions > old:
        config = model.config
        config.n_positions = n_positions
        longer = GPT2LMHeadModel(config)
        state = model.state_dict()
        wpe = state["transformer.wpe.weight"]  # (old, C)
        state["transformer.wpe.weight"] = torch.cat([wpe, wpe[-1:].expand(n_positions - old, -1)])
        longer.load_state_dict(state)
        model = longer
    tokenizer.model_max_length = max(n_positions, old)
    save_model(model, tokenizer, out)


def _finetune(cfg: Config, data: Path, init: Path, run_dir: Path) -> dict:
    from rlxf.stages import sft

    return sft.run(from_dict(sft.Config, {
        "out": str(run_dir), "seed": cfg.seed, "lr": cfg.lr, "warmup_steps": min(50, cfg.steps // 10),
        "batch_size": cfg.batch_size, "max_steps": cfg.steps, "log_every": 25, "eval_every": max(1, cfg.steps // 4),
        "save_every": max(1, cfg.steps // 4), "progress": cfg.progress, "weight_decay": 0.01,
        "model": {"name_or_path": str(init)},
        "data": {"train": str(data), "max_length": cfg.max_length, "eval_fraction": 0.03},
    }))


# --- evaluation -----------------------------------------------------------------------------

def eval_pairs(n: int, seed: int) -> list[tuple[str, str, str]]:
    """Held-out (prompt, A, B) pairs with different gold totals, from an answer stream
    the demonstrations never used."""
    from rlxf.tinyworld.corpus import candidate_answers
    from rlxf.tinyworld.oracle import score
    from rlxf.tinyworld.prompts import sample_prompts

    out = []
    for i, tp in enumerate(sample_prompts(3 * n, seed + 65537, "heldout")):
        if len(out) == n:
            break
        a, b = candidate_answers(tp, 2, seed + 1_000_003 + i)
        if score(tp, a).total != score(tp, b).total:
            out.append((tp.text, a, b))
    return out


def evaluate_judge(judge_dir: str, seed: int, *, n: int = 400, n_cot: int = 100, baseline: str | None = None,
                   progress: bool = False) -> dict:
    """Gold agreement, position bias, chain-of-thought, direct scoring and judge-vs-human
    numbers of the judge at ``judge_dir`` on :func:`eval_pairs`."""
    from rlxf.evaluate.agreement import binary_report
    from rlxf.feedback.ai.hf_judge import HFJudge
    from rlxf.feedback.ai.labeller import DirectScoreReward, JudgeSettings, judge_pairs
    from rlxf.feedback.ai.templates import load_template
    from rlxf.models.loading import ModelConfig
    from rlxf.tinyworld.labellers import default_panel
    from rlxf.tinyworld.oracle import score

    t = load_template(TEMPLATE)
    pairs = eval_pairs(n, seed)
    gold_a = [score(p, a).total > score(p, b).total for p, a, b in pairs]
    judge = HFJudge.load(ModelConfig(name_or_path=judge_dir), device="auto", batch_size=32)
    report: dict = {"eval_pairs": len(pairs)}

    both = judge_pairs(judge, pairs, JudgeSettings(template=t))
    report["pairwise"] = _gold_agreement(both, gold_a)

    cot = judge_pairs(judge, pairs[:n_cot], JudgeSettings(template=t, cot=True, rationale_max_tokens=24))
    report["cot"] = _gold_agreement(cot, gold_a[:n_cot])
    report["cot"]["no_cot_same_pairs"] = _gold_agreement(both[:n_cot], gold_a[:n_cot])["swap_averaged_accuracy"]

    reward = DirectScoreReward(judge, t, batch_size=32)
    sa = reward([p for p, _, _ in pairs], [a for _, a, _ in pairs])
    sb = reward([p for p, _, _ in pairs], [b for _, _, b in pairs])
    report["direct_score"] = {
        "pairwise_accuracy": sum((x > y) == g for x, y, g in zip(sa, sb, gold_a)) / len(pairs),
        "pearson_with_gold": _pearson(sa + sb, [score(p, a).total for p, a, _ in pairs]
                                      + [score(p, b).total for p, _, b in pairs]),
    }

    # Judge vs simulated humans: one labeller of the default panel per pair (round robin).
    panel = default_panel(seed)
    human_a = [panel[i % len(panel)].prefer(p, a, b) == 0 for i, (p, a, b) in enumerate(pairs)]
    other_a = [panel[(i + 1) % len(panel)].prefer(p, a, b) == 0 for i, (p, a, b) in enumerate(pairs)]
    judge_a = [j.prob_a > 0.5 for j in both]
    report["judge_vs_human"] = binary_report(human_a, judge_a)
    report["gold_vs_human"] = binary_report(human_a, gold_a)
    report["human_vs_human"] = binary_report(human_a, other_a)

    if baseline:
        base = HFJudge.load(ModelConfig(name_or_path=baseline), device="auto", batch_size=32)
        report["base_model_as_judge"] = _gold_agreement(judge_pairs(base, pairs, JudgeSettings(template=t)), gold_a)
    return report


def _gold_agreement(judged, gold_a: list[bool]) -> dict:
    """Agreement with the gold order: swap-averaged, and each single order alone."""
    from rlxf.feedback.ai.scoring import mean

    ok = [(j, g) for j, g in zip(judged, gold_a) if j.prob_a is not None]
    flips = [j.flipped for j, _ in ok if j.flipped is not None]
    p_first = [p for j, _ in ok for p in (j.p_first_ab, j.p_first_ba) if p is not None]
    return {
        "labelled": len(ok),
        "swap_averaged_accuracy": mean([(j.prob_a > 0.5) == g for j, g in ok]),
        "order_ab_only_accuracy": mean([(j.p_first_ab > 0.5) == g for j, g in ok]),
        "order_ba_only_accuracy": mean([(j.p_first_ba < 0.5) == g for j, g in ok if j.p_first_ba is not None]),
        "flip_rate": mean([float(f) for f in flips]) if flips else None,
        "mean_prob_first_position": mean(p_first) if p_first else None,
        "mean_confidence": mean([max(j.prob_a, 1 - j.prob_a) for j, _ in ok]),
    }


def _pearson(x: list[float], y: list[float]) -> float:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / (sxx * syy) ** 0.5 if sxx and syy else float("nan")
