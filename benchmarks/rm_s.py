"""RM-S (issue #7): seconds per reward-model epoch and peak memory, rlxf against TRL 1.16's RewardTrainer.

The workload, identical on both sides: a reward model (a scalar head on a randomly
initialised GPT-2: 4 layers, hidden 256, 4 heads, vocabulary 2048) trained for one
epoch with the Bradley-Terry loss on 512 preference pairs whose answers are 128
tokens with their prompt (a 64-token prompt, a 63-token answer and EOS), 8 pairs (16
sequences, chosen and rejected in one forward pass) per optimiser step, AdamW, fp32,
the same thread count; no held-out split, and no reward normalisation on rlxf's side
(TRL has none). TRL runs from its own virtualenv, benchmarks/.peers/trl-1.16.0.

    python benchmarks/rm_s.py                          # 2 rounds × 1 epoch per side
    python benchmarks/rm_s.py --rounds 3 --epochs 2    # longer

Time per epoch comes from step-end timestamps inside each training loop (rlxf: its
progress bar asking for the next step; TRL: ``on_step_end``), the first step of each
process excluded (see _common.epoch_seconds).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

PROMPT_TOKENS, ANSWER_TOKENS, LR = 64, 63, 1e-4  # + EOS = 128 tokens per sequence


def pairs(rng, shape: c.Shape, n: int) -> list[dict]:
    # answers start with their own space: TRL joins prompt and answer as they are
    return [{"prompt": c.random_words(rng, PROMPT_TOKENS, shape),
             "chosen": " " + c.random_words(rng, ANSWER_TOKENS, shape),
             "rejected": " " + c.random_words(rng, ANSWER_TOKENS, shape)} for _ in range(n)]


def flops(shape: c.Shape, n: int) -> tuple[float, str]:
    n_rm = shape.matmul_params(lm_head=False)
    tokens = 2 * n * (PROMPT_TOKENS + ANSWER_TOKENS + 1)
    return 6 * n_rm * tokens, (f"6·N·tokens, tokens = 2·{n}·{PROMPT_TOKENS + ANSWER_TOKENS + 1} (chosen and "
                               f"rejected), N = 12·L·d² + d = {n_rm:,} (forward + backward over every token)")


def header(args, shape: c.Shape) -> list[str]:
    return [f"RM-S: reward model on GPT-2 {shape.layers}×{shape.hidden}, {shape.heads} heads, V={shape.vocab}, "
            f"random init; {args.examples} pairs × 2 × {PROMPT_TOKENS + ANSWER_TOKENS + 1} tokens, "
            f"{args.batch_size} pairs per step, Bradley-Terry, AdamW, {c.precision_words(args.precision)}, "
            f"{args.threads} threads",
            "seconds per epoch (first step of each process excluded); peak RSS = median over processes"]


def rlxf_side(spec: dict) -> None:
    """rlxf's real reward stage (``rlxf.stages.reward.run``), configured as the CLI would be."""
    from rlxf.cli import keep_freed_memory

    keep_freed_memory()  # as the rlxf command does for its process
    out = c.fresh_side(spec)
    from rlxf.config import from_dict
    from rlxf.models.loading import load_tokenizer
    from rlxf.models.reward import encode_answer
    from rlxf.stages import reward

    cfg = from_dict(reward.Config, {
        "out": str(out), "seed": spec["seed"], "device": "cpu", "progress": False,
        "mixed_precision": c.rlxf_mixed_precision(spec),
        "model": {"name_or_path": spec["policy"], "dtype": "float32"},
        "data": {"train": spec["data"], "eval_fraction": 0.0, "max_length": PROMPT_TOKENS + ANSWER_TOKENS + 1,
                 "loss": "bradley_terry"},
        "normalize": {"enabled": False},
        "batch_size": spec["batch_size"], "epochs": spec["epochs"], "lr": LR,
    })
    clock = c.StepClock()
    reward.progress = clock.wrap(reward.progress)
    reward.run(cfg)
    tokenizer = load_tokenizer(spec["policy"])
    lengths = {len(encode_answer(row["prompt"], row[side], tokenizer)[0])
               for row in c.read_jsonl(spec["data"]) for side in ("chosen", "rejected")}
    c.write_result(spec, version=f"rlxf {c.versions('rlxf')['rlxf']}", step_ends=clock.ends,
                   sequence_tokens=sorted(lengths), versions=c.versions("torch", "transformers"))


def trl_side(spec: dict) -> None:
    """TRL 1.16's ``RewardTrainer`` on the same backbone, pairs and settings."""
    import torch

    out = c.fresh_side(spec)
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    args = RewardConfig(**c.trl_epoch_args(spec, out, lr=LR, max_length=PROMPT_TOKENS + ANSWER_TOKENS + 1))
    clock = c.trl_step_clock()
    model = AutoModelForSequenceClassification.from_pretrained(spec["policy"], num_labels=1, dtype=torch.float32)
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(c.read_jsonl(spec["data"])),
                            processing_class=AutoTokenizer.from_pretrained(spec["policy"]), callbacks=[clock])
    trainer.train()
    lengths = {len(ids) for key in ("chosen_ids", "rejected_ids") for ids in trainer.train_dataset[key]}
    c.write_result(spec, version=f"trl {c.versions('trl')['trl']}", step_ends=clock.ends,
                   sequence_tokens=sorted(lengths), versions=c.versions("torch", "transformers"))


if __name__ == "__main__":
    c.epoch_benchmark(__file__, "RM-S", about=__doc__.splitlines()[0], data_rows=pairs, flops_of=flops,
                      header_of=header)
