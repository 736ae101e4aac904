"""SFT-S (issue #7): seconds per SFT epoch and peak memory, rlxf against TRL 1.16's SFTTrainer.

The workload, identical on both sides: a randomly initialised GPT-2 (4 layers, hidden
256, 4 heads, vocabulary 2048) fine-tuned for one epoch on 512 demonstrations of 128
tokens (a 64-token prompt, a 63-token answer and EOS; loss on the answer only, as both
libraries do by default for prompt/completion rows), 8 demonstrations per optimiser
step, AdamW, fp32, the same thread count. TRL runs from its own virtualenv,
benchmarks/.peers/trl-1.16.0.

    python benchmarks/sft_s.py                         # 2 rounds × 1 epoch per side
    python benchmarks/sft_s.py --rounds 3 --epochs 2   # longer

Time per epoch comes from step-end timestamps inside each training loop (rlxf: its
progress bar asking for the next step; TRL: ``on_step_end``), the first step of each
process excluded (see _common.epoch_seconds).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

PROMPT_TOKENS, ANSWER_TOKENS, LR = 64, 63, 1e-4  # + EOS = 128 tokens per demonstration


def demonstrations(rng, shape: c.Shape, n: int) -> list[dict]:
    # the answer starts with its own space: TRL joins prompt and completion as they are
    return [{"prompt": c.random_words(rng, PROMPT_TOKENS, shape),
             "completion": " " + c.random_words(rng, ANSWER_TOKENS, shape)} for _ in range(n)]


def flops(shape: c.Shape, n: int) -> tuple[float, str]:
    n_lm = shape.matmul_params(lm_head=True)
    tokens = n * (PROMPT_TOKENS + ANSWER_TOKENS + 1)
    return 6 * n_lm * tokens, (f"6·N·tokens, tokens = {n}·{PROMPT_TOKENS + ANSWER_TOKENS + 1}, "
                               f"N = 12·L·d² + V·d = {n_lm:,} (forward + backward over every token)")


def header(args, shape: c.Shape) -> list[str]:
    return [f"SFT-S: GPT-2 {shape.layers}×{shape.hidden}, {shape.heads} heads, V={shape.vocab}, random init; "
            f"{args.examples} demonstrations × {PROMPT_TOKENS + ANSWER_TOKENS + 1} tokens, batch {args.batch_size}, "
            f"AdamW, {c.precision_words(args.precision)}, {args.threads} threads",
            "seconds per epoch (first step of each process excluded); peak RSS = median over processes"]


def rlxf_side(spec: dict) -> None:
    """rlxf's real SFT stage (``rlxf.stages.sft.run``), configured as the CLI would be."""
    from rlxf.cli import keep_freed_memory

    keep_freed_memory()  # as the rlxf command does for its process
    out = c.fresh_side(spec)
    from rlxf.config import from_dict
    from rlxf.data.formats import load_demonstrations
    from rlxf.data.tokenize import tokenize_demonstrations
    from rlxf.models.loading import load_tokenizer
    from rlxf.stages import sft

    cfg = from_dict(sft.Config, {
        "out": str(out), "seed": spec["seed"], "device": "cpu", "progress": False,
        "mixed_precision": c.rlxf_mixed_precision(spec),
        "model": {"name_or_path": spec["policy"], "dtype": "float32"},
        "data": {"train": spec["data"], "eval_fraction": 0.0, "max_length": PROMPT_TOKENS + ANSWER_TOKENS + 1},
        "batch_size": spec["batch_size"], "epochs": spec["epochs"], "lr": LR,
    })
    clock = c.StepClock()
    sft.progress = clock.wrap(sft.progress)
    sft.run(cfg)
    examples = tokenize_demonstrations(load_demonstrations(spec["data"]), load_tokenizer(spec["policy"]),
                                       max_length=PROMPT_TOKENS + ANSWER_TOKENS + 1)
    c.write_result(spec, version=f"rlxf {c.versions('rlxf')['rlxf']}", step_ends=clock.ends,
                   sequence_tokens=sorted({len(e.input_ids) for e in examples}),
                   versions=c.versions("torch", "transformers"))


def trl_side(spec: dict) -> None:
    """TRL 1.16's ``SFTTrainer`` on the same model, rows and settings."""
    import torch

    out = c.fresh_side(spec)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(**c.trl_epoch_args(spec, out, lr=LR, max_length=PROMPT_TOKENS + ANSWER_TOKENS + 1))
    clock = c.trl_step_clock()
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(spec["policy"], dtype=torch.float32), args=args,
                         train_dataset=Dataset.from_list(c.read_jsonl(spec["data"])),
                         processing_class=AutoTokenizer.from_pretrained(spec["policy"]), callbacks=[clock])
    trainer.train()
    c.write_result(spec, version=f"trl {c.versions('trl')['trl']}", step_ends=clock.ends,
                   sequence_tokens=sorted({len(ids) for ids in trainer.train_dataset["input_ids"]}),
                   versions=c.versions("torch", "transformers"))


if __name__ == "__main__":
    c.epoch_benchmark(__file__, "SFT-S", about=__doc__.splitlines()[0], data_rows=demonstrations,
                      flops_of=flops, header_of=header)
