"""Build Tinyworld's data, tokenizer and base model from a seed (`rlxf tinyworld build`).

    OUT/data/        pretrain, sft and prompt splits as JSONL (rlxf's standard formats)
    OUT/pretrain/    the pre-training run (an `rlxf sft` run on {text} rows: resumable)
    OUT/base/        the base model + tokenizer in Hugging Face format

The base model is a tiny GPT-2 (4 layers, 128 wide, ~0.9M parameters) with a
byte-level BPE tokenizer trained on the corpus, pre-trained on the *unaligned* corpus:
it answers with the corpus's mix of good, wrong, rude and rambling text, and has read
readers' replies saying which answers are right (``reply_share``).

Pre-training (4,000 steps on 100,000 documents) takes about seven minutes on two CPU
cores with native bf16, so the package ships the base model this command builds with
its defaults (``SHIPPED``, 3.5 MB, with the config that built it in ``build.json``);
the demo uses it and writes only the data, which takes seconds. Re-running a build
reuses whatever of it is finished.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from rlxf.config import dump_yaml, from_dict
from rlxf.errors import ConfigError
from rlxf.runs import Timer

log = logging.getLogger("rlxf")

SHIPPED = Path(__file__).parent / "assets" / "base"


@dataclass(kw_only=True)
class Config:
    """``rlxf tinyworld build``: data, tokenizer and pre-trained base model."""

    out: str = "tinyworld"
    """Output directory (data/, pretrain/, base/)."""
    seed: int = 0
    """Seed for the data, the initialisation and the training order."""
    n_pretrain: int = 100000
    """Pre-training documents."""
    reply_share: float = 1.0
    """Share of the corpus's right, wrong and off-topic answers followed by a reader's reply saying
    whether it is right (0: none). What the base model learns from them is what lets a reward model
    check answers (docs/reward.md (g))."""
    claim_share: float = 0.0
    """Share of the corpus's fact documents that are instead sentences of fact, each true or false at
    even odds and followed by a reader's verdict (``the pig is red . reply : that is wrong .``):
    what lets a base model learn to check a stated fact, not only whether an answer is on topic."""
    terse_share: float = 0.0
    """Share of the SFT demonstrations written by hurried demonstrators: true answers that do less than
    they could ("red ." for "the fox is red ."; ``rlxf.tinyworld.corpus.terse_answer``). They leave SFT
    room that comparisons can show and demonstrations do not (docs/ppo.md §4)."""
    n_sft_train: int = 2000
    """SFT demonstrations on train prompts."""
    n_sft_eval: int = 200
    """SFT demonstrations on held-out prompts (eval loss)."""
    n_prompts_train: int = 2000
    """Train prompts (PPO rollouts, preference data)."""
    n_prompts_heldout: int = 200
    """Held-out prompts (evaluation)."""
    vocab_size: int = 512
    """Byte-level BPE vocabulary size."""
    n_layer: int = 4
    """Transformer blocks."""
    n_embd: int = 128
    """Hidden width."""
    n_head: int = 4
    """Attention heads."""
    max_length: int = 128
    """Context length (and packed pre-training sequence length)."""
    steps: int = 4000
    """Pre-training optimiser steps."""
    batch_size: int = 32
    """Packed sequences per step."""
    lr: float = 3e-3
    """Peak pre-training learning rate."""
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"
    """Pre-train with bf16 matmuls (see ``rlxf sft``'s key of that name; float32 weights): about 2.5×
    faster where bf16 is native (recent GPUs, CPUs with AVX512-BF16 or AMX), 10-100× slower where it is
    emulated. 'auto' picks bf16 where it is native and 'no' elsewhere (the shipped base: bf16)."""
    progress: bool = True
    """Show progress bars."""

    def validate(self) -> None:
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if min(self.n_pretrain, self.n_sft_train, self.n_prompts_train, self.n_prompts_heldout) < 1:
            raise ConfigError("every split needs at least one row")
        for key in ("reply_share", "claim_share", "terse_share"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"{key} is a share, in [0, 1]; got {getattr(self, key)}")


def run(cfg: Config) -> dict:
    """Build (or reuse) everything under ``cfg.out``; returns paths and timings."""
    out = Path(cfg.out)
    timer = Timer()
    cfg = replace(cfg, mixed_precision=_precision(cfg.mixed_precision, out / "pretrain"))  # build.json says what ran
    data = write_data(cfg, out)
    init = out / "init"
    if not (init / "config.json").exists():
        _initial_model(cfg, data, init)
    summary = _pretrain(cfg, data, init, out / "pretrain")
    base = out / "base"
    if not (base / "config.json").exists():
        import shutil

        shutil.copytree(summary["final"], base, dirs_exist_ok=True)
        (base / "build.json").write_text(dump_yaml(cfg))
    return {"base": str(base), "data": str(data), "pretrain_eval_loss": summary["final_eval_loss"],
            "seconds": timer.elapsed()}


DATA_KEYS = ("seed", "n_pretrain", "reply_share", "claim_share", "terse_share", "n_sft_train", "n_sft_eval",
             "n_prompts_train", "n_prompts_heldout")


def heldout_documents(n_pretrain: int) -> int:
    """How many held-out pre-training documents a build writes: 500 (the shipped base's),
    or a tenth of a smaller corpus, so a small trial build does not spend longer
    evaluating than training."""
    return max(1, min(500, n_pretrain // 10))


def write_data(cfg: Config, out: Path) -> Path:
    """The data files alone (pure Python, seconds), into ``out/data``, with the keys that
    made them in ``recipe.yaml``. Data already there is reused if those keys match, and
    refused (ConfigError) if they do not."""
    import yaml

    from rlxf.tinyworld.corpus import write_dataset

    data = Path(out) / "data"
    recipe = {key: getattr(cfg, key) for key in DATA_KEYS}
    if (data / "prompts_heldout.jsonl").exists():
        written = yaml.safe_load((data / "recipe.yaml").read_text()) if (data / "recipe.yaml").exists() else None
        differ = {k: (written.get(k), v) for k, v in recipe.items() if written is not None and written.get(k) != v}
        if differ:
            raise ConfigError(f"{data} was written with other data settings ("
                              + ", ".join(f"{k}: {a} there, {b} asked" for k, (a, b) in differ.items())
                              + "); choose another out directory or delete that one")
        return data
    write_dataset(data, cfg.seed, n_pretrain=cfg.n_pretrain, n_pretrain_heldout=heldout_documents(cfg.n_pretrain),
                  n_sft_train=cfg.n_sft_train,
                  n_sft_eval=cfg.n_sft_eval, n_prompts_train=cfg.n_prompts_train,
                  n_prompts_heldout=cfg.n_prompts_heldout, reply_share=cfg.reply_share,
                  claim_share=cfg.claim_share, terse_share=cfg.terse_share)
    (data / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    return data


def paths(out: str | Path, base: str | Path | None = None) -> dict[str, Path]:
    """Where a build in ``out`` keeps each file (``base`` overrides the model's place)."""
    out = Path(out)
    files = {stem: out / "data" / f"{stem}.jsonl" for stem in
             ("pretrain", "pretrain_heldout", "sft_train", "sft_eval", "prompts_train", "prompts_heldout")}
    return {"base": Path(base) if base else out / "base", **files}


def _initial_model(cfg: Config, data: Path, init: Path) -> None:
    """Train the tokenizer on the corpus and save a seeded, randomly initialised GPT-2."""
    import json

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from rlxf.models.loading import save_model
    from rlxf.models.tokenizer import train_bpe_tokenizer

    texts = [json.loads(line)["text"] for line in (data / "pretrain.jsonl").read_text().splitlines()]
    tokenizer = train_bpe_tokenizer(texts, cfg.vocab_size, model_max_length=cfg.max_length)
    torch.manual_seed(cfg.seed)
    model = GPT2LMHeadModel(GPT2Config(
        vocab_size=len(tokenizer), n_positions=cfg.max_length, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    save_model(model, tokenizer, init)
    log.info("tinyworld: %d-token tokenizer, %.2fM-parameter GPT-2", len(tokenizer),
             sum(p.numel() for p in model.parameters()) / 1e6)


def _precision(mixed_precision: str, pretrain: Path) -> str:
    """``mixed_precision`` with 'auto' resolved for the device pre-training runs on; or, where
    the ``pretrain`` run is complete, as it ran (a build reopened on another machine reuses it)."""
    from rlxf.training import precision_for, resolve_device

    resolved = precision_for(mixed_precision, resolve_device("auto"), run=pretrain)
    if mixed_precision == "auto":
        log.info("tinyworld: mixed_precision=auto: %s", "bf16 (native here)" if resolved == "bf16" else
                 "float32 (bf16 is not native here)")
    return resolved


def _pretrain(cfg: Config, data: Path, init: Path, run_dir: Path) -> dict:
    from rlxf.stages import sft

    pretrain = from_dict(sft.Config, {
        "out": str(run_dir), "seed": cfg.seed, "lr": cfg.lr, "warmup_steps": min(50, cfg.steps // 10),
        "weight_decay": 0.01, "batch_size": cfg.batch_size, "max_steps": cfg.steps, "log_every": 25,
        "eval_every": max(1, cfg.steps // 4), "save_every": max(1, cfg.steps // 4), "progress": cfg.progress,
        "mixed_precision": cfg.mixed_precision,
        "model": {"name_or_path": str(init)},
        "data": {"train": str(data / "pretrain.jsonl"), "eval": str(data / "pretrain_heldout.jsonl"),
                 "max_length": cfg.max_length, "packing": True},
    })
    return sft.run(pretrain)
