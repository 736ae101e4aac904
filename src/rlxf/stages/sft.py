"""Supervised fine-tuning: teach a causal LM to give the demonstrated answers.

The loss is the mean negative log-likelihood of the answer tokens only (InstructGPT
§3.5, "Supervised fine-tuning"); prompt tokens are context, not targets. With an
empty prompt a record is plain text and every token is a target, so the same stage
also pre-trains (Tinyworld's base model is built this way).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import torch

from rlxf.data.tokenize import (IGNORE, Example, TokenizeStats, check_prompts, collate, n_targets, pack,
                                tokenize_demonstrations)
from rlxf.distributed import (configure_deepspeed, make_accelerator, refuse_sharded_lora, save_final, share,
                              start_stage, sum_over_processes)
from rlxf.errors import ConfigError
from rlxf.models.loading import (ModelConfig, add_lora, fit_length, keeps_logits, load_causal_lm, load_model_tokenizer,
                                 settle_attention)
from rlxf.progress import progress
from rlxf.runs import Timer
from rlxf.training import (TrainConfig, autocast, grad_sync, make_optimizer, micro_batch_indices, resume,
                            save_checkpoint, total_steps)

log = logging.getLogger("rlxf")


@dataclass(kw_only=True)
class DataConfig:
    train: str
    """Demonstrations: JSONL/JSON/Parquet/CSV file or saved HF dataset ({prompt, completion}, {messages}, {text})."""
    eval: str | None = None
    """Held-out demonstrations for the eval loss; null holds out eval_fraction of train."""
    eval_fraction: float = 0.05
    """Share of train held out for evaluation when eval is null (0 disables evaluation)."""
    split: str | None = None
    """Split of data.train to read from a saved HF DatasetDict (data.eval names its own: FOLDER:test)."""
    max_length: int = 512
    """Maximum tokens per training sequence (prompt + answer, or a packed sequence)."""
    packing: bool = False
    """Pack several examples into each sequence (no cross-attention between them)."""
    separator: str = " "
    """Text put between a plain-text prompt and its answer."""
    skip_bad_rows: bool = False
    """Skip malformed rows (counted and reported) instead of stopping at the first one."""

    def validate(self) -> None:
        if self.max_length < 2:
            raise ConfigError(f"data.max_length must be ≥ 2, got {self.max_length}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ConfigError(f"data.eval_fraction must be in [0, 1), got {self.eval_fraction}")


@dataclass(kw_only=True)
class Config(TrainConfig):
    """``rlxf sft``: supervised fine-tuning on demonstrations."""

    model: ModelConfig
    """The model to fine-tune."""
    data: DataConfig
    """The demonstrations."""
    lr: float = 1e-5
    """Peak learning rate (AdamW)."""


def run(cfg: Config) -> dict:
    """Train, evaluate and save; resume from the newest checkpoint of ``cfg.out`` if any.

    Under ``accelerate launch`` every process runs this; see :mod:`rlxf.distributed`.
    """
    acc = make_accelerator(cfg.device)
    refuse_sharded_lora(acc, cfg.model.lora.enabled)
    run_dir, device, cfg = start_stage(cfg, acc)
    if run_dir.complete:
        return run_dir.summary()
    tokenizer = load_model_tokenizer(cfg.model)
    model = settle_attention(load_causal_lm(cfg.model), cfg.model.attn_implementation, device, cfg.mixed_precision)
    cfg = replace(cfg, data=replace(cfg.data, max_length=fit_length("data.max_length", cfg.data.max_length, model)))
    train_set, eval_set, stats, skipped, demonstrations = _load_data(cfg, tokenizer)
    if cfg.model.lora.enabled:
        model = add_lora(model, cfg.model.lora)
    model.to(device).train()

    n_steps = total_steps(cfg, len(train_set))
    optimizer, scheduler = make_optimizer(model.parameters(), cfg, n_steps)
    # the scheduler is not prepared: accelerate would step it once per process
    configure_deepspeed(acc, cfg.batch_size, cfg.grad_accum)
    wrapped, optimizer = acc.prepare(model, optimizer)
    start, extra = resume(run_dir, accelerator=acc, modules=(model,), optimizer=optimizer, scheduler=scheduler)
    # the eval loss rides in the checkpoint: a run resumed from its last one has no step left to evaluate at
    window, eval_loss = (extra["loss_window"], extra.get("eval_loss")) if extra else ([], None)

    batches = micro_batch_indices(len(train_set), cfg.batch_size, cfg.seed, start=start * cfg.grad_accum)
    pad_id = tokenizer.pad_token_id
    timer = Timer(before=(extra or {}).get("seconds", 0.0))  # a resumed run counts its earlier segments too
    bar = progress(range(start, n_steps), desc="sft", initial=start, total=n_steps,
                   enabled=cfg.progress and acc.is_main_process)
    for step in bar:
        micro = [[train_set[i] for i in next(batches)] for _ in range(cfg.grad_accum)]  # the global step
        n_tokens = sum(n_targets(e) for examples in micro for e in examples)
        step_loss = 0.0
        for i, examples in enumerate(micro):
            mine, weight = share(examples, acc)
            with grad_sync(acc, wrapped, last=i == len(micro) - 1):
                with autocast(cfg.mixed_precision, device):
                    loss_sum, _ = _token_nll(wrapped, collate(mine, pad_id, packed=cfg.data.packing), device)
                # × N: DDP averages the N processes' gradients, the loss is their sum
                acc.backward(loss_sum * weight / n_tokens * acc.num_processes)
            step_loss += weight * loss_sum.item() / n_tokens
        step_loss = sum_over_processes([step_loss], acc)[0]
        grad_norm = _clip(acc, wrapped, cfg.max_grad_norm)
        optimizer.step()
        lr = scheduler.get_last_lr()[0]  # the rate this step used (the scheduler then moves to the next)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        window.append(step_loss)
        done = step + 1
        bar.set_postfix(loss=f"{step_loss:.4f}")
        row = {}
        if done % cfg.log_every == 0 or done == n_steps:
            row.update(loss=sum(window) / len(window), grad_norm=grad_norm, lr=lr,
                       tokens=n_tokens)
            window = []
        if eval_set and ((cfg.eval_every and done % cfg.eval_every == 0) or done == n_steps):
            with autocast(cfg.mixed_precision, device):
                eval_loss = _evaluate_shared(wrapped, eval_set, pad_id, device, cfg.batch_size, cfg.data.packing, acc)
            row["eval_loss"] = eval_loss
            wrapped.train()
        if row and acc.is_main_process:
            run_dir.log(done, row)
        if (cfg.save_every and done % cfg.save_every == 0) or done == n_steps:
            save_checkpoint(run_dir, done, accelerator=acc, modules=(model,), optimizer=optimizer,
                            scheduler=scheduler, keep=cfg.keep_checkpoints,
                            extra={"loss_window": window, "eval_loss": eval_loss, "seconds": timer.elapsed()})
    bar.close()

    save_final(wrapped, tokenizer, run_dir.final, acc)
    last = [r for r in run_dir.metrics() if "loss" in r]
    summary = {
        "stage": "sft",
        "steps": n_steps,
        "resumed_from_step": start,
        "train_examples": demonstrations[0],
        "eval_examples": demonstrations[1],
        "train_sequences": len(train_set),
        "eval_sequences": len(eval_set),
        "skipped_rows": skipped,
        "truncated_examples": stats.truncated,
        "final_train_loss": last[-1]["loss"] if last else None,
        "final_eval_loss": eval_loss,
        "eval_perplexity": math.exp(eval_loss) if eval_loss is not None else None,
        "seconds": timer.elapsed(),
        "final": str(run_dir.final),
    }
    if acc.is_main_process:
        run_dir.write_summary(summary)
    return summary


def _load_data(cfg: Config, tokenizer) -> tuple[list[Example], list[Example], TokenizeStats, int, tuple[int, int]]:
    """Train and eval sequences, the train set's tokenizer statistics, the bad rows skipped
    and the train and eval demonstrations (rows) the sequences hold.

    A sequence is what ``batch_size`` counts: with ``data.packing`` several demonstrations
    packed into one, else one demonstration (a plain-text row longer than ``max_length``:
    one per chunk).
    """
    from rlxf.data.formats import load_demonstrations

    d = cfg.data
    train = load_demonstrations(d.train, split=d.split, skip_bad=d.skip_bad_rows, skip_key="data.skip_bad_rows")
    skipped = train.skipped
    if d.eval is not None:
        held = load_demonstrations(d.eval, skip_bad=d.skip_bad_rows, skip_key="data.skip_bad_rows")  # split in its path
        skipped += held.skipped
    elif d.eval_fraction > 0 and len(train) > 1:
        g = torch.Generator().manual_seed(cfg.seed)
        order = torch.randperm(len(train), generator=g).tolist()
        n_eval = max(1, round(d.eval_fraction * len(train)))
        held, train = [train[i] for i in order[:n_eval]], [train[i] for i in sorted(order[n_eval:])]
    else:
        held = []
    if not train:
        raise ConfigError(f"data.train ({d.train}) holds no demonstrations")
    check_prompts([x.prompt for x in train], tokenizer, key="data.train", tokenizer_key="model.tokenizer")
    check_prompts([x.prompt for x in held], tokenizer, key="data.eval" if d.eval else "data.train",
                  tokenizer_key="model.tokenizer")
    stats = TokenizeStats()
    train_ex = tokenize_demonstrations(train, tokenizer, max_length=d.max_length, separator=d.separator, stats=stats,
                                       length_key="data.max_length")
    eval_ex = tokenize_demonstrations(held, tokenizer, max_length=d.max_length, separator=d.separator,
                                      length_key="data.max_length")
    if d.packing:
        train_ex, eval_ex = pack(train_ex, d.max_length), pack(eval_ex, d.max_length)
    log.info("sft data: %d train and %d eval demonstrations in %d and %d sequences (%d answer tokens)", len(train),
             len(held), len(train_ex), len(eval_ex), stats.answer_tokens)
    return train_ex, eval_ex, stats, skipped, (len(train), len(held))


def _token_nll(model, batch: dict, device) -> tuple[torch.Tensor, int]:
    """Summed next-token NLL over labelled tokens, and their count.

    The LM head (hidden × vocabulary per position) runs only where the next token is an
    answer token, when the model supports it (``logits_to_keep`` as a boolean mask): the
    prompt's logits would be thrown away by the loss anyway.
    """
    batch = {k: v.to(device) for k, v in batch.items()}
    labels = batch.pop("labels")
    targets = labels[:, 1:]  # (B, T-1)
    wanted = targets != IGNORE  # (B, T-1): positions that predict an answer token
    if keeps_logits(model):
        keep = torch.nn.functional.pad(wanted, (0, 1))  # (B, T): the last position predicts nothing
        logits = model(**batch, use_cache=False, logits_to_keep=keep).logits  # (n, V), answer positions only
        targets = targets[wanted]  # (n,)
    else:
        logits = model(**batch, use_cache=False).logits[:, :-1]  # (B, T-1, V); no cache: packed masks need it
    loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1),
                                             ignore_index=IGNORE, reduction="sum")
    return loss, int(wanted.sum())


@torch.no_grad()
def evaluate(model, examples: list[Example], pad_id: int, device, batch_size: int, *, packed: bool = False) -> float:
    """Mean NLL per answer token over ``examples``."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        loss, n = _token_nll(model, collate(examples[i:i + batch_size], pad_id, packed=packed), device)
        total, count = total + loss.item(), count + n
    return total / max(count, 1)


@torch.no_grad()
def _evaluate_shared(model, examples: list[Example], pad_id: int, device, batch_size: int, packed: bool,
                     acc) -> float:
    """:func:`evaluate` with each batch shared out over the processes (the same with one)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        mine, weight = share(examples[i:i + batch_size], acc)
        loss, n = _token_nll(model, collate(mine, pad_id, packed=packed), device)
        total, count = total + weight * loss.item(), count + weight * n
    total, count = sum_over_processes([total, count], acc)
    return total / max(count, 1)


def _clip(acc, model, max_norm: float | None) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    if max_norm is None:
        return float(torch.norm(torch.stack([p.grad.norm() for p in params]))) if params else 0.0
    norm = acc.clip_grad_norm_(model.parameters(), max_norm)
    return float(norm) if norm is not None else float("nan")  # DeepSpeed clips inside its engine
