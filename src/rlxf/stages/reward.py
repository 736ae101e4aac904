"""Reward-model training: learn a scalar reward from pairwise, K-wise or soft preferences.

InstructGPT §3.5: a causal LM with a scalar head is trained so that the preferred
answer scores higher, ``loss = -log σ(r(x, y_w) - r(x, y_l))``. Three variants, each a
pure function in :mod:`rlxf.rl.reward_loss`:

- **pairs** (``bradley_terry``): each comparison is one batch element; an optional
  per-row margin asks the chosen answer to win by at least that much (Llama 2, eq. 2);
- **K-wise** (``kwise``): a ranking of K answers is one batch element; its K answers are
  scored in one forward pass and the loss is averaged over its C(K, 2) pairs, the
  paper's fix for the overfitting of shuffling a ranking's pairs as independent rows;
- **soft labels** (``soft``): cross-entropy against a preference probability
  ``prob_chosen`` (RLAIF, Lee et al. 2023, §2.3).

``data.loss=auto`` derives the loss from the data: rankings are kept whole (K-wise),
pairs use soft labels if any row has ``prob_chosen`` ≠ 1, else Bradley-Terry.

After training the reward is shifted so that reference answers (by default the
held-out split's chosen answers) score mean 0, optionally scaled to std 1 (InstructGPT
§3.5); the shift and scale are saved in the model's ``config.json`` (see
:mod:`rlxf.models.reward`). Held-out metrics (accuracy, mean margin ``r_w - r_l``,
calibration error of ``σ(r_w - r_l)``) are measured on the raw, unnormalised rewards.
"""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch

from rlxf.data.tokenize import check_prompts
from rlxf.distributed import (TokenValues, configure_deepspeed, gather_lists, make_accelerator, refuse_sharded_lora,
                              save_final, share, start_stage, sum_over_processes)
from rlxf.errors import ConfigError, DataError
from rlxf.models.loading import ModelConfig, fit_length, load_model_tokenizer, settle_attention
from rlxf.models.reward import (add_reward_lora, encode_answers, init_reward_model, last_token_index, pad_right,
                                score_texts, set_reward_normalization, shared_length, shared_prefix_batch)
from rlxf.progress import progress
from rlxf.rl.reward_loss import (bradley_terry_loss, expected_calibration_error, kwise_ranking_loss,
                                 pairwise_accuracy, soft_label_loss)
from rlxf.runs import Timer
from rlxf.training import (TrainConfig, autocast, grad_sync, make_optimizer, micro_batch_indices, resume,
                            save_checkpoint, total_steps)

log = logging.getLogger("rlxf")

LossChoice = Literal["auto", "bradley_terry", "kwise", "soft"]


@dataclass(kw_only=True)
class DataConfig:
    train: str
    """Comparisons: JSONL/JSON/Parquet/CSV file or saved HF dataset dir (TRL pairs, Vertex AI,
    Anthropic HH, rankings, soft labels)."""
    eval: str | None = None
    """Held-out comparisons; null holds out eval_fraction of the train prompts."""
    eval_fraction: float = 0.1
    """Share of train prompts held out when eval is null (all rows of a prompt go to one side; 0 disables)."""
    split: str | None = None
    """Split of data.train to read from a saved HF DatasetDict (data.eval names its own: FOLDER:test)."""
    max_length: int = 512
    """Maximum tokens of prompt + answer; longer ones lose prompt tokens from the start first."""
    separator: str = " "
    """Text put between a plain-text prompt and its answer."""
    skip_bad_rows: bool = False
    """Skip malformed rows (counted and reported) instead of stopping at the first one."""
    loss: LossChoice = "auto"
    """auto: rankings K-wise, pairs soft if any prob_chosen ≠ 1 else Bradley-Terry;
    bradley_terry: every pair its own row (rankings flattened), hard labels;
    kwise: each ranking one batch element, hard labels;
    soft: every pair its own row (rankings flattened), cross-entropy with prob_chosen."""
    margin: bool = False
    """Use each row's 'margin' in the Bradley-Terry loss: -log σ(r_w - r_l - margin)."""

    def validate(self) -> None:
        if self.max_length < 2:
            raise ConfigError(f"data.max_length must be ≥ 2, got {self.max_length}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ConfigError(f"data.eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.margin and self.loss == "soft":
            raise ConfigError("data.margin applies to the Bradley-Terry loss, not to loss=soft; "
                              "set data.margin=false or data.loss=bradley_terry")


@dataclass(kw_only=True)
class NormalizeConfig:
    enabled: bool = True
    """After training, shift rewards so that the reference answers score mean 0."""
    reference: str = "chosen"
    """'chosen': the held-out split's chosen (best-ranked) answers, the train split's when
    nothing is held out; or a demonstrations file ({prompt, completion})."""
    scale: bool = False
    """Also divide by the reference answers' standard deviation (std 1)."""

    def validate(self) -> None:
        if self.scale and not self.enabled:
            raise ConfigError("normalize.scale=true needs normalize.enabled=true")
        if self.enabled and self.reference != "chosen" and not Path(self.reference).exists():
            raise ConfigError(f"normalize.reference must be 'chosen' or a demonstrations file; "
                              f"{self.reference} does not exist")


@dataclass(kw_only=True)
class Config(TrainConfig):
    """``rlxf reward``: train a reward model on preference data."""

    model: ModelConfig
    """The causal LM (e.g. the SFT model) whose backbone the reward model starts from."""
    data: DataConfig
    """The comparisons."""
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    """Bias normalisation after training."""
    batch_size: int = 8
    """Comparisons per micro-batch: pairs, or whole rankings under the K-wise loss."""
    share_prompt: bool = True
    """Run the tokens a comparison's answers share (its prompt) once, through the KV cache,
    instead of once per answer (same result; false for models without a KV cache)."""
    lm_coef: float = 0.0
    """Weight of a language-modelling loss on each comparison's preferred answer, read from
    the reward model's hidden states through the starting model's frozen LM head (GRM,
    Yang et al. 2024): keeps the hidden states able to predict text, a regulariser
    reported to help most with little preference data. 0 disables."""

    def validate(self) -> None:
        super().validate()
        if self.lm_coef < 0:
            raise ConfigError(f"lm_coef must be ≥ 0, got {self.lm_coef}")


@dataclass
class Group:
    """One batch element: answers to one prompt, best first, scored in one forward pass.

    A ranking (``is_ranking``; loss averaged over its C(K, 2) pairs) or a pair
    (chosen, rejected) with its soft label ``prob_chosen`` and ``margin``.
    """

    sequences: list[list[int]]  # K token-id lists, best first
    is_ranking: bool
    prob_chosen: float = 1.0
    margin: float = 0.0


@dataclass(frozen=True)
class LossPlan:
    """How the loss treats the data: rankings ``kwise`` (grouped) or ``pairs`` (flattened);
    pairs ``bradley_terry`` (optionally with margin) or ``soft``."""

    rankings: Literal["kwise", "pairs"]
    pairs: Literal["bradley_terry", "soft"]
    margin: bool = False


def run(cfg: Config) -> dict:
    """Train, evaluate, normalise and save; resume from the newest checkpoint of ``cfg.out`` if any.

    Under ``accelerate launch`` every process runs this; see :mod:`rlxf.distributed`.
    """
    acc = make_accelerator(cfg.device)
    refuse_sharded_lora(acc, cfg.model.lora.enabled)
    run_dir, device, cfg = start_stage(cfg, acc)
    if run_dir.complete:
        return run_dir.summary()
    tokenizer = load_model_tokenizer(cfg.model)
    model = settle_attention(init_reward_model(cfg.model), cfg.model.attn_implementation, device, cfg.mixed_precision)
    cfg = replace(cfg, data=replace(cfg.data, max_length=fit_length("data.max_length", cfg.data.max_length, model)))
    data = _load_data(cfg, tokenizer)
    if cfg.model.lora.enabled:
        model = add_reward_lora(model, cfg.model.lora)
    model.to(device).train()
    lm_head = _frozen_lm_head(cfg.model, device) if cfg.lm_coef > 0 else None

    train_set, eval_set, plan = data["train"], data["eval"], data["plan"]
    n_steps = total_steps(cfg, len(train_set))
    optimizer, scheduler = make_optimizer(model.parameters(), cfg, n_steps)
    # the forward pass DDP/FSDP must see is token_values'; the scheduler is not prepared
    # (accelerate would step it once per process)
    configure_deepspeed(acc, cfg.batch_size, cfg.grad_accum)
    scorer, optimizer = acc.prepare(TokenValues(model), optimizer)
    start, extra = resume(run_dir, accelerator=acc, modules=(model,), optimizer=optimizer, scheduler=scheduler)
    window, eval_metrics = (extra["window"], extra["eval"]) if extra else (_empty_window(), None)

    batches = micro_batch_indices(len(train_set), cfg.batch_size, cfg.seed, start=start * cfg.grad_accum)
    pad_id = tokenizer.pad_token_id
    timer = Timer(before=(extra or {}).get("seconds", 0.0))  # a resumed run counts its earlier segments too
    bar = progress(range(start, n_steps), desc="reward", initial=start, total=n_steps,
                   enabled=cfg.progress and acc.is_main_process)
    for step in bar:
        micro = [[train_set[i] for i in next(batches)] for _ in range(cfg.grad_accum)]  # the global step
        n_groups = sum(len(groups) for groups in micro)
        step_loss = step_lm = 0.0
        for i, groups in enumerate(micro):
            mine, weight = share(groups, acc)
            with grad_sync(acc, scorer, last=i == len(micro) - 1):
                with autocast(cfg.mixed_precision, device):
                    loss, diffs, outcomes, lm_nll = _forward(scorer, mine, plan, pad_id, device, cfg.share_prompt,
                                                             lm_head)
                if lm_head is not None:
                    loss = loss + cfg.lm_coef * lm_nll
                    step_lm += weight * lm_nll.item() * len(mine) / n_groups
                # the step's loss is the mean over its groups; × N: DDP averages the processes' gradients
                acc.backward(loss * weight * len(mine) / n_groups * acc.num_processes)
            step_loss += weight * loss.item() * len(mine) / n_groups
            window["diffs"] += gather_lists(diffs.tolist() if weight else [], acc)
            window["outcomes"] += gather_lists(outcomes.tolist() if weight else [], acc)
        step_loss, step_lm = sum_over_processes([step_loss, step_lm], acc)
        grad_norm = _clip(acc, scorer, cfg.max_grad_norm)
        optimizer.step()
        lr = scheduler.get_last_lr()[0]  # the rate this step used (the scheduler then moves to the next)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        window["losses"].append(step_loss)
        window.setdefault("lm", []).append(step_lm)
        done = step + 1
        bar.set_postfix(loss=f"{step_loss:.4f}")
        row = {}
        if done % cfg.log_every == 0 or done == n_steps:
            row.update(loss=sum(window["losses"]) / len(window["losses"]),
                       **_pair_metrics(torch.tensor(window["diffs"]), torch.tensor(window["outcomes"])),
                       grad_norm=grad_norm, lr=lr)
            if lm_head is not None:  # the loss above includes lm_coef × lm_loss
                row["lm_loss"] = sum(window["lm"]) / len(window["lm"])
            window = _empty_window()
        if eval_set and ((cfg.eval_every and done % cfg.eval_every == 0) or done == n_steps):
            with autocast(cfg.mixed_precision, device):
                eval_metrics = _evaluate_shared(scorer, eval_set, plan, pad_id, device, cfg.batch_size, acc,
                                                cfg.share_prompt)
            row.update({f"eval_{k}": v for k, v in eval_metrics.items()})
            scorer.train()
        if row and acc.is_main_process:
            run_dir.log(done, row)
        if (cfg.save_every and done % cfg.save_every == 0) or done == n_steps:
            save_checkpoint(run_dir, done, accelerator=acc, modules=(model,), optimizer=optimizer,
                            scheduler=scheduler, keep=cfg.keep_checkpoints,
                            extra={"window": window, "eval": eval_metrics, "seconds": timer.elapsed()})
    bar.close()

    normalization = None
    if cfg.normalize.enabled:
        # every process scores the whole reference set (FSDP needs them all in each forward pass),
        # in the weights' dtype: the precision the saved model is loaded with
        normalization = _normalize(acc.unwrap_model(scorer).model, tokenizer, cfg, data["reference"])
    save_final(scorer, tokenizer, run_dir.final, acc)
    last = [r for r in run_dir.metrics() if "loss" in r]
    summary = {
        "stage": "reward",
        "steps": n_steps,
        "resumed_from_step": start,
        "loss": {"rankings": plan.rankings, "pairs": plan.pairs, "margin": plan.margin},
        "train_comparisons": len(train_set),
        "train_pairs": sum(_n_pairs(g) for g in train_set),
        "eval_comparisons": len(eval_set),
        "eval_pairs": sum(_n_pairs(g) for g in eval_set),
        "skipped_rows": data["skipped"],
        "sequences_cut": data["sequences_cut"],
        "final_train_loss": last[-1]["loss"] if last else None,
        "final_train_accuracy": last[-1]["accuracy"] if last else None,
        "heldout": eval_metrics,
        "normalization": normalization,
        "seconds": timer.elapsed(),
        "final": str(run_dir.final),
    }
    if acc.is_main_process:
        run_dir.write_summary(summary)
    return summary


# ----------------------------------------------------------------------------- the loss

def _forward(scorer, groups: list[Group], plan: LossPlan, pad_id: int, device, share_prompt: bool = True,
             lm_head: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Mean ranking loss over ``groups``, every pair's ``r_w - r_l`` and label (for the
    metrics), and with ``lm_head`` the mean over groups of :func:`_lm_nll` (else None).

    ``scorer`` is the reward model wrapped in :class:`rlxf.distributed.TokenValues` (or
    its DDP/FSDP wrapper). All answers of all groups go through it in one call; with
    ``share_prompt`` the tokens a group's answers share (their prompt) run once.
    """
    hidden = lm_head is not None
    if share_prompt:
        batch = {k: v.to(device) for k, v in shared_prefix_batch([g.sequences for g in groups], pad_id).items()}
        ids, mask = batch["suffix_ids"], batch["suffix_mask"]  # (N, S) each
        out = scorer(batch["prefix_ids"], batch["prefix_mask"], ids, mask, batch["owner"], return_hidden=hidden)
        starts = [0] * len(groups)  # the suffix starts where the group's answers part
    else:
        batch = pad_right([s for g in groups for s in g.sequences], pad_id)
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)  # (N, T) each
        out = scorer(ids, mask, return_hidden=hidden)
        starts = [shared_length(g.sequences) for g in groups]
    values, lm_nll = (out[0], _lm_nll(out[1], ids, mask, groups, starts, lm_head)) if hidden else (out, None)
    rewards = values.gather(1, last_token_index(mask).unsqueeze(1)).squeeze(1)  # (N,) as rm.raw_score
    per_group = list(torch.split(rewards, [len(g.sequences) for g in groups]))  # each (K_g,), best first
    rankings = [r for r, g in zip(per_group, groups) if g.is_ranking]
    pairs = [(r, g) for r, g in zip(per_group, groups) if not g.is_ranking]
    loss = rewards.new_zeros(())
    if rankings:
        padded = torch.nn.utils.rnn.pad_sequence(rankings, batch_first=True)  # (R, K)
        k_mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(r, dtype=torch.bool) for r in rankings],
                                                 batch_first=True)  # (R, K)
        loss = loss + kwise_ranking_loss(padded, k_mask) * len(rankings)
    if pairs:
        r_w = torch.stack([r[0] for r, _ in pairs])  # (P,)
        r_l = torch.stack([r[1] for r, _ in pairs])  # (P,)
        if plan.pairs == "soft":
            prob = torch.tensor([g.prob_chosen for _, g in pairs], device=r_w.device)
            pair_loss = soft_label_loss(r_w, r_l, prob)
        else:
            margin = torch.tensor([g.margin for _, g in pairs], device=r_w.device) if plan.margin else None
            pair_loss = bradley_terry_loss(r_w, r_l, margin)
        loss = loss + pair_loss * len(pairs)
    diffs, outcomes = [], []
    for r, g in zip(per_group, groups):
        i, j = torch.triu_indices(len(r), len(r), offset=1)  # all (better, worse) index pairs
        diffs.append((r[i] - r[j]).detach().float().cpu())
        outcomes.append(torch.full((len(i),), 1.0 if g.is_ranking else g.prob_chosen))
    return loss / len(groups), torch.cat(diffs), torch.cat(outcomes), lm_nll


def _lm_nll(hidden: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, groups: list[Group], starts: list[int],
            lm_head: tuple) -> torch.Tensor:
    """Mean over groups of the next-token NLL of each group's preferred answer.

    ``hidden``, ``ids``, ``mask``: (N, T, H), (N, T), (N, T), the rows of all answers in
    group order; a group's answer tokens start at ``starts[g]`` in its rows (its first
    token is predicted from the shared prefix and not counted). Logits come from
    ``hidden`` through the frozen ``lm_head = (weight (V, H), bias or None)``.
    """
    first = torch.tensor([0] + [len(g.sequences) for g in groups]).cumsum(0)[:-1]  # each group's first row
    # best first, unless a soft label prefers the second
    preferred = [0 if g.is_ranking or g.prob_chosen >= 0.5 else 1 for g in groups]
    rows = first + torch.tensor(preferred)  # (G,)
    h, y = hidden[rows, :-1], ids[rows, 1:]  # (G, T-1, H): position t predicts token t+1
    positions = torch.arange(1, ids.shape[1], device=ids.device)  # (T-1,) the predicted tokens' positions
    targets = mask[rows, 1:].bool() & (positions[None] > torch.tensor(starts, device=ids.device)[:, None])
    weight, bias = lm_head
    logits = torch.nn.functional.linear(h, weight.to(h.dtype), None if bias is None else bias.to(h.dtype))
    nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), y, reduction="none")  # (G, T-1)
    per_group = (nll * targets).sum(1) / targets.sum(1).clamp(min=1)  # (G,)
    return per_group.mean()


def _frozen_lm_head(cfg: ModelConfig, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The output embedding (LM head) of the causal LM at ``cfg.name_or_path``: weight (V, H) and bias."""
    from transformers import AutoModelForCausalLM

    try:
        lm, info = AutoModelForCausalLM.from_pretrained(cfg.name_or_path, revision=cfg.revision,
                                                        trust_remote_code=cfg.trust_remote_code,
                                                        output_loading_info=True, use_safetensors=True)
    except (OSError, ValueError) as err:
        raise ConfigError(f"lm_coef > 0 needs the LM head of '{cfg.name_or_path}': {err}") from None
    head = lm.get_output_embeddings()
    if head is None or any(k.startswith(("lm_head", "embed_out")) for k in info["missing_keys"]):
        raise ConfigError(f"lm_coef > 0 needs a causal LM with its LM head; '{cfg.name_or_path}' has none "
                          "(start from the SFT model, or set lm_coef=0)")
    bias = head.bias.detach().clone().to(device) if getattr(head, "bias", None) is not None else None
    return head.weight.detach().clone().to(device), bias


def _pair_metrics(diffs: torch.Tensor, outcomes: torch.Tensor) -> dict[str, float]:
    """accuracy (the label's favourite scored higher), margin (mean r_w - r_l), ECE of σ(r_w - r_l)."""
    if diffs.numel() == 0:
        return {}
    favoured = torch.where(outcomes >= 0.5, diffs, -diffs)  # r(label's favourite) - r(other)
    return {
        "accuracy": pairwise_accuracy(favoured, torch.zeros_like(favoured)).item(),
        "margin": diffs.mean().item(),
        "ece": expected_calibration_error(torch.sigmoid(diffs), outcomes).item(),
    }


@torch.no_grad()
def evaluate(model, groups: list[Group], plan: LossPlan, pad_id: int, device, batch_size: int,
             share_prompt: bool = True) -> dict[str, float]:
    """Held-out loss, pairwise accuracy, mean margin and calibration error (raw rewards)."""
    model.eval()
    total, diffs, outcomes = 0.0, [], []
    for i in range(0, len(groups), batch_size):
        chunk = groups[i:i + batch_size]
        loss, d, o, _ = _forward(TokenValues(model), chunk, plan, pad_id, device, share_prompt)
        total += loss.item() * len(chunk)
        diffs.append(d)
        outcomes.append(o)
    return {"loss": total / len(groups), **_pair_metrics(torch.cat(diffs), torch.cat(outcomes))}


@torch.no_grad()
def _evaluate_shared(scorer, groups: list[Group], plan: LossPlan, pad_id: int, device, batch_size: int,
                     acc, share_prompt: bool = True) -> dict[str, float]:
    """:func:`evaluate` with each batch shared out over the processes (the same with one)."""
    scorer.eval()
    total, diffs, outcomes = 0.0, [], []
    for i in range(0, len(groups), batch_size):
        mine, weight = share(groups[i:i + batch_size], acc)
        loss, d, o, _ = _forward(scorer, mine, plan, pad_id, device, share_prompt)
        total += weight * loss.item() * len(mine)
        diffs += gather_lists(d.tolist() if weight else [], acc)
        outcomes += gather_lists(o.tolist() if weight else [], acc)
    total = sum_over_processes([total], acc)[0]
    return {"loss": total / len(groups), **_pair_metrics(torch.tensor(diffs), torch.tensor(outcomes))}


def _empty_window() -> dict[str, list[float]]:
    return {"losses": [], "diffs": [], "outcomes": [], "lm": []}


def _n_pairs(group: Group) -> int:
    k = len(group.sequences)
    return k * (k - 1) // 2


def _clip(acc, model, max_norm: float | None) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    if max_norm is None:
        return float(torch.norm(torch.stack([p.grad.norm() for p in params]))) if params else 0.0
    norm = acc.clip_grad_norm_(model.parameters(), max_norm)
    return float(norm) if norm is not None else float("nan")  # DeepSpeed clips inside its engine


# ----------------------------------------------------------------------------- data

def _load_data(cfg: Config, tokenizer) -> dict:
    """Read, split by prompt, choose the loss and tokenize; also the normalisation reference.

    ``sequences_cut`` counts the answers, train and eval, whose sequence (prompt and
    answer) loses tokens to ``data.max_length``, each once per comparison whatever the
    loss: encoded with all its comparison's answers, the prompt loses as many tokens as
    the longest answer needs (the same for each), then an answer longer than
    ``max_length`` loses its end; a sequence is cut when it is shorter than its prompt
    and answer together. A ranking trained as C(K, 2) pairs cuts the same answers (the pairs
    with its longest answer lose the same prompt tokens), so K-wise and pairwise runs agree.
    """
    from rlxf.data.formats import load_comparisons
    from rlxf.data.records import Ranking

    d = cfg.data
    loaded = load_comparisons(d.train, split=d.split, skip_bad=d.skip_bad_rows)
    skipped = loaded.skipped
    if d.eval is not None:
        held = load_comparisons(d.eval, skip_bad=d.skip_bad_rows)  # its split in its path
        skipped += held.skipped
        train = list(loaded)
    else:
        train, held = _split_by_prompt(list(loaded), d.eval_fraction, cfg.seed)
    if not train:
        raise ConfigError(f"data.train ({d.train}) holds no comparisons")
    check_prompts([c.prompt for c in train], tokenizer, key="data.train", tokenizer_key="model.tokenizer")
    check_prompts([c.prompt for c in held], tokenizer, key="data.eval" if d.eval else "data.train",
                  tokenizer_key="model.tokenizer")
    plan = _plan_loss(d.loss, d.margin, train + list(held))

    sequences_cut = 0  # see _load_data's docstring

    def encode(prompt, answers) -> tuple[list[list[int]], int]:
        return encode_answers(prompt, answers, tokenizer, separator=d.separator, max_length=d.max_length)

    def groups(comparisons) -> list[Group]:
        nonlocal sequences_cut
        out = []
        for c in comparisons:
            answers = list(c.ordered) if isinstance(c, Ranking) else [c.chosen, c.rejected]  # distinct (formats)
            if isinstance(c, Ranking) and plan.rankings == "kwise":
                ids, cut = encode(c.prompt, answers)
                out.append(Group(ids, is_ranking=True))
            else:
                pairs = c.pairs() if isinstance(c, Ranking) else [c]
                cut = 0
                for pair in pairs:
                    ids, n = encode(pair.prompt, [pair.chosen, pair.rejected])
                    cut += n
                    out.append(Group(ids, is_ranking=False, prob_chosen=pair.prob_chosen, margin=pair.margin))
                if cut and len(pairs) > 1:  # a flattened ranking: each answer once, not once per pair it is in
                    cut = encode(c.prompt, answers)[1]
            sequences_cut += cut
        return out

    train_groups, eval_groups = groups(train), groups(held)
    if sequences_cut:
        log.warning("sequences_cut: %d answer sequences (train and eval, each counted once per comparison) lost "
                    "tokens to data.max_length=%d: prompt tokens from the start, then answer tokens from the end",
                    sequences_cut, d.max_length)
    log.info("reward data: %d train and %d eval comparisons; loss: rankings %s, pairs %s%s",
             len(train_groups), len(eval_groups), plan.rankings, plan.pairs, " with margin" if plan.margin else "")
    return {"train": train_groups, "eval": eval_groups, "plan": plan, "skipped": skipped,
            "sequences_cut": sequences_cut,
            "reference": _reference_answers(cfg, tokenizer, train, held) if cfg.normalize.enabled else None}


def _prompt_key(prompt) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


def _split_by_prompt(comparisons: list, fraction: float, seed: int) -> tuple[list, list]:
    """Hold out ``fraction`` of the distinct prompts (seeded), with all their rows."""
    if fraction <= 0:
        return comparisons, []
    prompts = list(dict.fromkeys(_prompt_key(c.prompt) for c in comparisons))
    if len(prompts) < 2:
        return comparisons, []
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(prompts), generator=g).tolist()
    held_prompts = {prompts[i] for i in order[:max(1, round(fraction * len(prompts)))]}
    train = [c for c in comparisons if _prompt_key(c.prompt) not in held_prompts]
    held = [c for c in comparisons if _prompt_key(c.prompt) in held_prompts]
    return train, held


def _plan_loss(choice: LossChoice, margin: bool, comparisons: list) -> LossPlan:
    """Resolve ``data.loss`` against the data; refuse soft labels where hard ones are needed."""
    from rlxf.data.records import Preference

    soft = next((c for c in comparisons if isinstance(c, Preference) and c.prob_chosen != 1.0), None)
    if choice == "auto":
        plan = LossPlan("kwise", "soft" if soft else "bradley_terry", margin)
    elif choice == "soft":
        plan = LossPlan("pairs", "soft", margin)
    else:
        plan = LossPlan("kwise" if choice == "kwise" else "pairs", "bradley_terry", margin)
        if soft is not None:
            raise DataError(f"is {soft.prob_chosen} (a soft label), but data.loss={choice} needs hard labels "
                            "(prob_chosen = 1); use data.loss=soft or auto", path=soft.source, field="prob_chosen")
    if plan.margin and plan.pairs == "soft":
        raise DataError(f"is {soft.prob_chosen} (a soft label); data.margin=true needs hard labels, or set "
                        "data.margin=false to train on the soft labels", path=soft.source, field="prob_chosen")
    return plan


def _chosen_answers(comparisons: list) -> list[tuple]:
    """Distinct (prompt, preferred answer): a pair's chosen, a ranking's best."""
    from rlxf.data.records import Ranking

    seen = {}
    for c in comparisons:
        best = c.ordered[0] if isinstance(c, Ranking) else c.chosen
        seen.setdefault((_prompt_key(c.prompt), best), (c.prompt, best))
    return list(seen.values())


def _reference_answers(cfg: Config, tokenizer, train: list, held: list) -> tuple[str, list[tuple]]:
    """``(name, [(prompt, answer), ...])``: the answers normalisation scores after training,
    read and checked now so that a bad reference stops the run before it trains."""
    from rlxf.data.formats import load_demonstrations

    path = cfg.normalize.reference
    if path == "chosen":
        name, answers = (("chosen answers of the held-out split", _chosen_answers(held)) if held
                         else ("chosen answers of the train split", _chosen_answers(train)))
    else:
        name, answers = f"demonstrations in {path}", [(x.prompt, x.completion) for x in load_demonstrations(path)]
        check_prompts([p for p, _ in answers], tokenizer, key="normalize.reference", tokenizer_key="model.tokenizer")
    if len(answers) < 2:
        raise ConfigError(f"normalisation needs at least 2 reference answers; {name} has {len(answers)} "
                          "(set normalize.reference to a demonstrations file, or normalize.enabled=false)")
    return name, answers


def _normalize(model, tokenizer, cfg: Config, reference: tuple[str, list[tuple]]) -> dict:
    """Shift (and scale) so the reference answers score mean 0 (std 1); InstructGPT §3.5."""
    name, answers = reference
    raw = score_texts(model, tokenizer, [p for p, _ in answers], [a for _, a in answers],
                      batch_size=cfg.batch_size * 2, separator=cfg.data.separator,
                      max_length=cfg.data.max_length)
    shift = statistics.fmean(raw)
    scale = statistics.stdev(raw) if cfg.normalize.scale else 1.0
    if scale <= 0:
        raise ConfigError(f"the reference answers ({name}) all score the same; cannot scale to std 1")
    reference = f"{name} ({len(answers)} answers)"
    set_reward_normalization(model, shift, scale, reference)
    log.info("normalised rewards: shift %.4f, scale %.4f on %s", shift, scale, reference)
    return {"shift": shift, "scale": scale, "reference": reference}
