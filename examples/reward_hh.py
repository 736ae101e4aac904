"""A reward model on real human preferences (Anthropic HH, harmless-base test split), on a CPU.

No download: a byte-level BPE tokenizer is trained on the data's own text and a small
GPT-2-shaped model starts from random weights, optionally pre-trained for a few
hundred steps on the training dialogues (``rlxf sft`` on ``{text}`` rows) before the
reward model is trained (``rlxf reward``). 2,312 pairs are far too few to teach a
model from scratch what "harmless" means; expect held-out accuracy near chance, and
compare it with the length baseline printed next to it (a shorter answer is chosen
about 55% of the time in this split).

    python examples/reward_hh.py --out /tmp/rm-hh [--pretrain-steps 300] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(HH), help="Anthropic HH JSONL(.gz) file")
    parser.add_argument("--out", default="runs/rm-hh")
    parser.add_argument("--heldout", type=float, default=0.1, help="share of prompts held out")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--pretrain-steps", type=int, default=300, help="0 trains the reward model from scratch")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from rlxf.config import from_dict
    from rlxf.data.formats import load_preferences
    from rlxf.data.readers import read_rows, write_jsonl
    from rlxf.progress import setup_logging
    from rlxf.stages import reward, sft

    setup_logging()
    out = Path(args.out)
    pairs = load_preferences(args.data)
    raw = [row for _, row in read_rows(args.data)]  # kept as they are: HH allows an empty final answer
    prompts = sorted({p.prompt for p in pairs})
    random.Random(args.seed).shuffle(prompts)
    held_prompts = set(prompts[:round(args.heldout * len(prompts))])
    train = [p for p in pairs if p.prompt not in held_prompts]
    heldout = [p for p in pairs if p.prompt in held_prompts]
    write_jsonl(out / "data" / "train.jsonl", [r for r, p in zip(raw, pairs) if p.prompt not in held_prompts])
    write_jsonl(out / "data" / "heldout.jsonl", [r for r, p in zip(raw, pairs) if p.prompt in held_prompts])

    init = out / "init"
    if not (init / "config.json").exists():
        _initial_model(train, init, args)
    start = str(init)
    if args.pretrain_steps:
        texts = [{"text": f"{p.prompt} {answer}"} for p in train for answer in (p.chosen, p.rejected) if answer]
        write_jsonl(out / "data" / "pretrain.jsonl", texts)
        start = sft.run(from_dict(sft.Config, {
            "out": str(out / "pretrain"), "seed": args.seed, "lr": 3e-3, "warmup_steps": 30, "batch_size": 16,
            "weight_decay": 0.01, "max_steps": args.pretrain_steps, "log_every": 25, "progress": False,
            "model": {"name_or_path": str(init)},
            "data": {"train": str(out / "data" / "pretrain.jsonl"), "eval_fraction": 0.0,
                     "max_length": args.max_length, "packing": True}}))["final"]
    summary = reward.run(from_dict(reward.Config, {
        "out": str(out / "rm"), "seed": args.seed, "lr": args.lr, "warmup_steps": 20, "batch_size": 16,
        "epochs": args.epochs, "log_every": 20, "eval_every": max(1, len(train) // 32), "progress": False,
        "model": {"name_or_path": start},
        "data": {"train": str(out / "data" / "train.jsonl"), "eval": str(out / "data" / "heldout.jsonl"),
                 "max_length": args.max_length}}))
    shorter = sum((len(p.chosen) < len(p.rejected)) + 0.5 * (len(p.chosen) == len(p.rejected)) for p in heldout)
    result = {"train_pairs": len(train), "heldout_pairs": len(heldout), "pretrain_steps": args.pretrain_steps,
              "heldout": summary["heldout"], "final_train_accuracy": summary["final_train_accuracy"],
              "length_baseline_heldout": shorter / len(heldout), "seconds": summary["seconds"]}
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _initial_model(train, init: Path, args) -> None:
    """A BPE tokenizer trained on the training pairs' text, and a small random GPT-2."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from rlxf.models.tokenizer import train_bpe_tokenizer

    texts = [t for p in train for t in (p.prompt, p.chosen, p.rejected)]
    tokenizer = train_bpe_tokenizer(texts, args.vocab_size, model_max_length=args.max_length)
    torch.manual_seed(args.seed)
    model = GPT2LMHeadModel(GPT2Config(
        vocab_size=len(tokenizer), n_positions=args.max_length, n_embd=128, n_layer=4, n_head=4,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    model.save_pretrained(init)
    tokenizer.save_pretrained(init)


if __name__ == "__main__":
    main()
