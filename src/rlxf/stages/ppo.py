"""PPO with a KL penalty and a pre-training mix: InstructGPT's RL stage (`rlxf ppo`).

Maximises, per InstructGPT (arXiv 2203.02155) eq. 2,

    E_{x~D, y~π}[ r(x, y) − β · log(π(y|x) / π_SFT(y|x)) ] + γ · E_{x~D_pretrain}[ log π(x) ]

One *step* is: sample a batch of answers from the policy (a rollout), score them with
the reward model, spread a per-token KL penalty against the frozen reference model
over the tokens (score added at the last one), estimate advantages with GAE, then
run several epochs of clipped-PPO updates over shuffled minibatches (PPO, arXiv
1707.06347, eq. 7) — with a language-modelling loss on pre-training text mixed in
when γ > 0 (PPO-ptx). The implementation follows "The N implementation details of
RLHF with PPO" (Huang et al. 2024): the value function starts as a copy of the
reward model, dropout is off, log-probs use the sampling temperature, answers are
cut at EOS and answers that never end are penalised.

With LoRA, the policy is the SFT model plus an adapter and the reference is the same
model with the adapter switched off; the value function is likewise an adapter on
the reward model, which scores with its adapter off — one copy of each base model.
"""

from __future__ import annotations

import logging
import math
import resource
from dataclasses import dataclass, field, replace
from typing import Literal

import torch

from rlxf.config import import_scorer
from rlxf.data.tokenize import (IGNORE, Example, check_prompts, collate, n_targets, prompt_text,
                                tokenize_demonstrations)
from rlxf.distributed import (TokenValues, check_divisible, gather_lists, gather_rows, global_masked_whiten, is_sharded,
                              make_accelerator, save_final, share, start_stage, sum_over_processes)
from rlxf.errors import ConfigError, DataError
from rlxf.models import reward as rm
from rlxf.models.generation import AnswerStop, check_stop, cut_at_stop
from rlxf.models.loading import (ModelConfig, add_lora, attention_kernel, auto_eager, fit_length, keeps_logits,
                                 load_causal_lm, load_model_tokenizer, load_tokenizer, max_positions, settle_attention,
                                 store_matmul_weights)
from rlxf.models.rollout_backends import make_backend, plain_generation_config, suppress
from rlxf.progress import progress
from rlxf.rl import (AdaptiveKLController, FixedKLController, entropy_from_logits, gae, kl_k1, kl_k3,
                     logprobs_from_logits, masked_mean, penalised_rewards, policy_loss, value_loss)
from rlxf.runs import Timer
from rlxf.training import (TrainConfig, autocast, full_batch_indices, grad_sync, make_optimizer, precision_for,
                            resume, save_checkpoint)

log = logging.getLogger("rlxf")


@dataclass(kw_only=True)
class RolloutConfig:
    prompts: str
    """Prompts to sample answers for: any file rlxf.data.load_prompts reads."""
    batch_size: int = 64
    """Answers sampled per PPO step."""
    max_prompt_length: int = 256
    """Prompts longer than this lose tokens from their start."""
    max_new_tokens: int = 64
    """Longest answer; an answer that reaches it without EOS never ended."""
    temperature: float = 1.0
    """Sampling temperature, also applied to the logits when computing log-probs."""
    separator: str = " "
    """Text between a plain-text prompt and its answer (as in SFT)."""
    backend: Literal["hf", "rlxf", "vllm"] = "hf"
    """What samples the answers: 'hf' (the policy's generate), 'rlxf' (rlxf's KV-cache loop: the same
    distribution, faster), or 'vllm' (pip install 'rlxf[vllm]', GPU)."""
    vllm_gpu_memory: float = 0.3
    """With backend=vllm: the share of each GPU vLLM may use; training needs the rest."""
    suppress_tokens: list[int] = field(default_factory=list)
    """Token ids the policy never samples (a pad or unknown token, say): their logits are set
    to the lowest float when sampling and in every log-prob PPO takes, so the policy trained
    is the one that samples. The checkpoint's generation_config.json is not read for this."""
    stop: list[str] = field(default_factory=list)
    """Strings that end an answer as EOS does, e.g. ["\\n\\nHuman:"] (as YAML writes it)
    for a policy that runs on into the next turn of an Anthropic HH dialogue: the answer
    ends with the token that completes the first one (the policy's last action; later
    tokens are masked), counts as ended (no missing-EOS penalty) and is scored and logged
    without it; backends hf and rlxf stop sampling it there. [] (default): answers end at
    EOS only."""

    def validate(self) -> None:
        check_stop(self.stop, "rollout.stop")
        if not 0 < self.vllm_gpu_memory < 1:
            raise ConfigError(f"rollout.vllm_gpu_memory must be in (0, 1), got {self.vllm_gpu_memory}")
        if self.suppress_tokens and self.backend == "vllm":
            raise ConfigError("rollout.suppress_tokens is applied by the hf and rlxf backends, not vllm")
        if any(t < 0 for t in self.suppress_tokens):
            raise ConfigError(f"rollout.suppress_tokens must be token ids ≥ 0, got {self.suppress_tokens}")
        if self.temperature <= 0:
            raise ConfigError(f"rollout.temperature must be > 0, got {self.temperature}")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ConfigError("rollout.batch_size and rollout.max_new_tokens must be ≥ 1")


@dataclass(kw_only=True)
class RewardConfig:
    model: str | None = None
    """Reward model directory (the final/ of `rlxf reward`); its normalisation is applied."""
    function: str | None = None
    """Instead of a model: 'module:function(prompts, answers, ended) -> list[float]' (rules, an AI judge, an oracle)."""
    value_model: str | None = None
    """Where the value function starts; null = the reward model (needed with reward.function)."""
    max_length: int = 512
    """Tokens of prompt + answer the reward model reads."""
    missing_eos_penalty: float | None = 1.0
    """Subtracted from the score of an answer that never emitted EOS; null disables."""
    whiten: bool = False
    """Whiten the per-token rewards each step (variance only; the mean is kept)."""

    def validate(self) -> None:
        if (self.model is None) == (self.function is None):
            raise ConfigError("set exactly one of reward.model (a reward model) and reward.function ('module:fn')")
        if self.function is not None and ":" not in self.function:
            raise ConfigError(f"reward.function must be 'module:function', got {self.function!r}")
        if self.function is not None and self.value_model is None:
            raise ConfigError("reward.function needs reward.value_model: a causal LM or reward model "
                              "to start the value function from (e.g. the policy's path)")


@dataclass(kw_only=True)
class KLConfig:
    coef: float = 0.05
    """β: weight of the per-token KL penalty against the reference model (initial value if adaptive)."""
    estimator: Literal["k1", "k3"] = "k1"
    """Per-token KL estimator: k1 = log π − log π_ref (unbiased), k3 = (r − 1) − log r (non-negative)."""
    adaptive: bool = False
    """Adapt β to keep the KL near target (Ziegler et al. 2019)."""
    target: float = 6.0
    """Target KL per answer (nats) for the adaptive controller."""
    horizon: int = 10000
    """Adaptive controller horizon, in answers."""

    def validate(self) -> None:
        if self.coef < 0:
            raise ConfigError(f"kl.coef must be ≥ 0, got {self.coef}")
        if self.adaptive and (self.target <= 0 or self.horizon < 1):
            raise ConfigError("kl.target must be > 0 and kl.horizon ≥ 1 with kl.adaptive=true")


@dataclass(kw_only=True)
class PtxConfig:
    coef: float = 0.0
    """γ: weight of the language-modelling loss on pre-training text (0 = plain PPO)."""
    data: str | None = None
    """Pre-training text ({text} rows) or demonstrations for the PPO-ptx loss."""
    batch_size: int = 8
    """Sequences of pre-training text per PPO minibatch."""
    max_length: int = 256
    """Tokens per pre-training sequence."""

    def validate(self) -> None:
        if self.coef < 0:
            raise ConfigError(f"ptx.coef must be ≥ 0, got {self.coef}")
        if self.coef > 0 and not self.data:
            raise ConfigError("ptx.coef > 0 needs ptx.data (pre-training text or demonstrations)")


@dataclass(kw_only=True)
class EvalConfig:
    prompts: str | None = None
    """Held-out prompts scored every eval_every steps and at the end; null skips."""
    n: int = 128
    """How many held-out prompts to use."""
    lm_data: str | None = None
    """Held-out pre-training text whose LM loss is tracked (to see what PPO-ptx preserves)."""


@dataclass(kw_only=True)
class Config(TrainConfig):
    """``rlxf ppo``: RLHF with PPO against a reward model."""

    model: ModelConfig
    """The policy to tune (usually the SFT model); it is also the frozen reference."""
    rollout: RolloutConfig
    """How answers are sampled."""
    reward: RewardConfig
    """The reward, reward.model=DIR (a trained reward model) or reward.function=module:fn (a Python
    scorer), and how its score is shaped."""
    kl: KLConfig = field(default_factory=KLConfig)
    """The KL penalty against the reference (SFT) model."""
    ptx: PtxConfig = field(default_factory=PtxConfig)
    """PPO-ptx: the pre-training language-modelling loss mixed into each update."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Held-out evaluation during training."""
    lr: float = 1e-5
    """Peak learning rate of the policy (AdamW)."""
    lr_schedule: Literal["constant", "linear", "cosine"] = "linear"
    """Learning-rate decay after warm-up."""
    warmup_steps: int = 0
    """PPO steps of linear learning-rate warm-up (each step is ppo_epochs × minibatches updates)."""
    batch_size: int = 16
    """Answers per PPO minibatch (one optimiser step per model)."""
    max_steps: int | None = None
    """PPO steps to run (each a rollout batch and its ppo_epochs × minibatches updates); null derives them
    from epochs over the prompts."""
    grad_accum: int = 1
    """Micro-batches each minibatch is run in (batch_size / grad_accum answers per forward/backward; their
    gradients add up before the step): less memory, the same update."""
    ppo_epochs: int = 4
    """Passes over each rollout batch."""
    clip_range: float = 0.2
    """ε of the clipped policy ratio."""
    value_clip_range: float = 0.2
    """ε of the clipped value update."""
    vf_coef: float = 0.1
    """Weight of the value loss."""
    value_lr_multiplier: float = 1.0
    """The value function's learning rate is lr × this."""
    gamma: float = 1.0
    """GAE discount γ."""
    lam: float = 0.95
    """GAE λ."""
    whiten_advantages: bool = True
    """Normalise advantages to mean 0, std 1 over each rollout batch."""
    track: dict[str, str] = field(default_factory=dict)
    """Extra scores to log but not optimise, name → 'module:function(prompts, answers, ended) -> list[float]'."""

    def validate(self) -> None:
        super().validate()
        if not 0 < self.clip_range < 1 or self.value_clip_range <= 0:
            raise ConfigError("clip_range must be in (0, 1) and value_clip_range > 0")
        if not 0 <= self.lam <= 1 or not 0 <= self.gamma <= 1:
            raise ConfigError("gamma and lam must be in [0, 1]")
        if self.batch_size > self.rollout.batch_size:
            raise ConfigError(f"batch_size ({self.batch_size}) is a minibatch of one rollout and cannot exceed "
                              f"rollout.batch_size ({self.rollout.batch_size})")
        _check_micro_batches(self, processes=1)
        for name, target in self.track.items():
            if ":" not in target:
                raise ConfigError(f"track.{name} must be 'module:function', got {target!r}")
        if self.rollout.backend == "vllm" and self.model.lora.enabled:
            raise ConfigError("rollout.backend=vllm loads full weights into vLLM after each update; with "
                              "model.lora.enabled=true use rollout.backend=hf")


@dataclass
class Rollout:
    """One batch of sampled answers and everything PPO needs about them.

    B answers; P prompt tokens (left-padded); R answer tokens (right-padded after EOS).
    """

    query: torch.Tensor  # (B, P) prompt ids, left-padded
    response: torch.Tensor  # (B, R) sampled ids, pad after EOS
    attention_mask: torch.Tensor  # (B, P+R) 1 on real prompt and answer tokens
    mask: torch.Tensor  # (B, R) 1 on real answer tokens, EOS included
    ended: torch.Tensor  # (B,) True where the answer emitted EOS or wrote a stop string
    logp: torch.Tensor  # (B, R) log π_old of each answer token (temperature applied)
    ref_logp: torch.Tensor  # (B, R) log π_ref of each answer token
    values: torch.Tensor  # (B, R) V_old before each answer token
    score: torch.Tensor  # (B,) reward-model score, EOS penalty included
    kl: torch.Tensor  # (B, R) per-token KL estimate
    rewards: torch.Tensor  # (B, R) −β·kl per token, + score at the last token
    advantages: torch.Tensor  # (B, R)
    returns: torch.Tensor  # (B, R)
    texts: list[str]  # the B answers, decoded (cut before a stop string)
    prompts: list  # the B prompts
    stopped: torch.Tensor | None = None  # (B,) True where the answer ended at a stop string


class PPO:
    """The models, optimiser and state of one PPO run: :meth:`rollout` samples and scores
    a batch, :meth:`update` trains on it.

    With several processes each one holds every model, samples its share of the prompts
    and trains on its rows; statistics that whiten or are logged are taken over all
    processes (see :mod:`rlxf.distributed`). ``policy`` and ``value`` are the plain
    models; ``policy_fwd`` and ``value_fwd`` are what :meth:`prepare` made of them
    (DDP wrappers, the models themselves with one process), used for every forward pass
    that trains.
    """

    def __init__(self, cfg: Config, device: torch.device, accelerator=None) -> None:
        cfg = replace(cfg, mixed_precision=precision_for(cfg.mixed_precision, device))
        self.cfg, self.device = cfg, device
        self.acc = accelerator or make_accelerator(cfg.device)
        self.tokenizer = load_model_tokenizer(cfg.model, padding_side="left")
        lora = cfg.model.lora.enabled
        fast = lambda m: settle_attention(m, cfg.model.attn_implementation, device, cfg.mixed_precision)  # noqa: E731
        policy = fast(load_causal_lm(cfg.model))
        self.policy = add_lora(policy, cfg.model.lora) if lora else policy
        # LoRA: the reference is the policy with its adapter off; else a frozen copy
        self.ref = None if lora else self._frozen(fast(load_causal_lm(cfg.model)))
        value_path = cfg.reward.value_model or cfg.reward.model
        value = fast(rm.init_reward_model(ModelConfig(name_or_path=value_path, dtype=cfg.model.dtype)))
        # a value function started from the reward model predicts on its normalised scale
        self.value_shift, self.value_scale = _normalization_at(value_path)
        # LoRA with a reward model: the value function is an adapter on it, and the
        # reward model is the same weights with the adapter off
        self.shared_reward = lora and cfg.reward.model is not None and value_path == cfg.reward.model
        self.value = rm.add_reward_lora(value, cfg.model.lora) if self.shared_reward else value
        self.reward = None
        if cfg.reward.model is not None and not self.shared_reward:
            self.reward = self._frozen(fast(rm.load_reward_model(cfg.reward.model, dtype=cfg.model.dtype)))
        self.reward_fn = import_scorer(cfg.reward.function, "reward.function") if cfg.reward.function else None
        self.rm_tokenizer = load_tokenizer(cfg.reward.model) if cfg.reward.model else self.tokenizer
        if load_tokenizer(value_path).get_vocab() != self.tokenizer.get_vocab():
            raise ConfigError(f"the value function starts from {value_path}, whose tokenizer differs from the "
                              "policy's; it must read the policy's tokens: set reward.value_model to a model with "
                              "the policy's tokenizer (the reward model may keep its own)")
        for m in (self.policy, self.value, self.ref, self.reward):
            if m is not None:
                m.to(device)
        from rlxf.models.loading import disable_dropout

        disable_dropout(self.policy)
        self.cfg = cfg = self._fit_lengths(cfg)
        self.kl_ctl = (AdaptiveKLController(cfg.kl.coef, cfg.kl.target, cfg.kl.horizon) if cfg.kl.adaptive
                       else FixedKLController(cfg.kl.coef))
        self.kl_estimator = kl_k3 if cfg.kl.estimator == "k3" else kl_k1
        self.track = {name: import_scorer(target, f"track.{name}") for name, target in cfg.track.items()}
        self.ptx = (_text_examples("ptx.data", cfg.ptx.data, self.tokenizer, cfg.ptx.max_length,
                                   separator=cfg.rollout.separator, unset="set ptx.coef=0")
                    if cfg.ptx.coef > 0 else [])
        # held-out text for eval_lm_loss, read now: a bad file must not wait for the end of training
        self.lm_eval = (_text_examples("eval.lm_data", cfg.eval.lm_data, self.tokenizer, cfg.ptx.max_length,
                                       unset="leave eval.lm_data out")
                        if cfg.eval.lm_data else [])
        self.ptx_used = 0  # pre-training batches consumed: where the ptx stream resumes
        self.ptx_batches = full_batch_indices(len(self.ptx), cfg.ptx.batch_size, cfg.seed + 1) if self.ptx else None
        # sampling (one query token against a growing key length) keeps SDPA where rlxf chose
        # eager for itself: eager would build a oneDNN matmul for every key length, +37 MB
        # peak in PPO-S for no speed
        self.sampling_attention = "sdpa" if auto_eager(cfg.model.attn_implementation, device,
                                                       cfg.mixed_precision) else None
        self.policy_fwd, self.value_fwd = self.policy, TokenValues(self.value)
        vocab = self.policy.get_output_embeddings().weight.shape[0]
        if any(t >= vocab for t in cfg.rollout.suppress_tokens):
            raise ConfigError(f"rollout.suppress_tokens {cfg.rollout.suppress_tokens}: the policy has {vocab} tokens")
        self.suppressed = torch.tensor(cfg.rollout.suppress_tokens, dtype=torch.long, device=device)
        self.backend = make_backend(cfg.rollout.backend, self.policy, self.tokenizer, model_path=cfg.model.name_or_path,
                                    dtype=cfg.model.dtype, seed=cfg.seed + self.acc.process_index,
                                    gpu_memory_utilization=cfg.rollout.vllm_gpu_memory,
                                    num_processes=self.acc.num_processes,
                                    suppress_tokens=cfg.rollout.suppress_tokens)

    def _fit_lengths(self, cfg: Config) -> Config:
        """``cfg`` with each sequence length cut to the positions of the models that read
        it (a warning each time): prompt + answer go through the policy and the value model,
        the reward model reads ``reward.max_length``, the policy ``ptx.max_length``."""
        limit = min(filter(None, (max_positions(self.policy), max_positions(self.value))), default=None)
        rollout = cfg.rollout
        if limit is not None and rollout.max_prompt_length + rollout.max_new_tokens > limit:
            if rollout.max_new_tokens >= limit:
                raise ConfigError(f"rollout.max_new_tokens ({rollout.max_new_tokens}) leaves no room for a prompt in "
                                  f"the {limit} positions the policy and value model read; lower it")
            log.warning("rollout.max_prompt_length=%d + rollout.max_new_tokens=%d is more than the %d positions the "
                        "policy and value model read: prompts keep their last %d tokens", rollout.max_prompt_length,
                        rollout.max_new_tokens, limit, limit - rollout.max_new_tokens)
            rollout = replace(rollout, max_prompt_length=limit - rollout.max_new_tokens)
        scorer = self.value if self.shared_reward else self.reward
        reward = cfg.reward
        if scorer is not None:
            reward = replace(reward, max_length=fit_length("reward.max_length", reward.max_length, scorer))
        ptx = cfg.ptx
        if ptx.coef > 0 or cfg.eval.lm_data:
            ptx = replace(ptx, max_length=fit_length("ptx.max_length", ptx.max_length, self.policy))
        return replace(cfg, rollout=rollout, reward=reward, ptx=ptx)

    def _frozen(self, model):
        """``model`` in eval mode without gradients; under bf16 autocast its matmul weights
        are stored in bf16 (:func:`store_matmul_weights`: the same outputs, PPO-S peak −12 MB)."""
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        if self.cfg.mixed_precision == "bf16":
            store_matmul_weights(model, torch.bfloat16)
        return model

    def prepare(self, optimizer):
        """Wrap the trained models for the launch (DDP, or nothing with one process);
        returns the optimiser to step. PPO runs unsharded, without gradient accumulation
        or a loss scaler, where accelerate's optimiser wrapper would only add its checks to
        each of the 2 × ppo_epochs × minibatches steps of an update, so the optimiser stays
        plain (its state dict is the same either way)."""
        self.policy_fwd, self.value_fwd = self.acc.prepare(self.policy, self.value_fwd)
        return optimizer

    # -- rollout ------------------------------------------------------------------------

    def autocast(self):
        """The context of every forward pass (:func:`rlxf.training.autocast`)."""
        return autocast(self.cfg.mixed_precision, self.device)

    @torch.no_grad()
    def rollout(self, prompts: list) -> Rollout:
        with self.autocast():
            return self._rollout(prompts)

    def _rollout(self, prompts: list) -> Rollout:
        cfg, tok = self.cfg, self.tokenizer
        query, query_mask = _left_pad([self._encode_prompt(p) for p in prompts], tok.pad_token_id)  # (B, P) each
        query, query_mask = query.to(self.device), query_mask.to(self.device)
        self.policy.eval()
        # a stop string is looked for in an answer's text without the separator, as the reward model reads it
        stop = AnswerStop(tok, cfg.rollout.stop, [_separator(p, tok, cfg.rollout.separator) for p in prompts]) \
            if cfg.rollout.stop else None
        with attention_kernel(self.policy, self.sampling_attention):
            response = self.backend.generate(query, query_mask, max_new_tokens=cfg.rollout.max_new_tokens,
                                             temperature=cfg.rollout.temperature, stop=stop)  # (B, R)
        mask, ended = _truncate_at_eos(response, tok.eos_token_id)  # (B, R), (B,)
        stopped = _truncate_at_stop(response, mask, stop)  # (B,); mask shortened in place
        ended = ended | stopped
        response = response.masked_fill(mask == 0, tok.pad_token_id)
        attention_mask = torch.cat([query_mask, mask], dim=1)  # (B, P+R)

        logits = self._logits(self.policy_fwd, query, response, attention_mask)  # (B, R, V)
        logp = logprobs_from_logits(logits, response)  # (B, R)
        del logits
        ref_logp = logprobs_from_logits(self._ref_logits(query, response, attention_mask), response)  # (B, R)
        values = self._values(query, response, attention_mask)  # (B, R)
        texts = [tok.decode(r[m.bool()].tolist(), skip_special_tokens=True) for r, m in zip(response, mask)]
        texts = [cut_at_stop(_strip_separator(t, p, tok, cfg.rollout.separator), cfg.rollout.stop)[0]
                 for t, p in zip(texts, prompts)]
        score = self._penalised_score(prompts, texts, ended.tolist())  # (B,)
        rewards, kl = penalised_rewards(score, logp, ref_logp, mask.float(), self.kl_ctl.value, self.kl_estimator)
        # whitening statistics are over all processes' rows: N processes whiten as one does
        if cfg.reward.whiten:
            rewards = global_masked_whiten(rewards, mask.float(), self.acc, shift_mean=False)
        advantages, returns = gae(rewards, values, mask.float(), cfg.gamma, cfg.lam)  # (B, R) each
        if cfg.whiten_advantages:
            advantages = global_masked_whiten(advantages, mask.float(), self.acc)
        return Rollout(query, response, attention_mask, mask.float(), ended, logp, ref_logp, values, score, kl,
                       rewards, advantages, returns, texts, list(prompts), stopped)

    def _encode_prompt(self, prompt) -> list[int]:
        text, _ = prompt_text(prompt, self.tokenizer, self.cfg.rollout.separator)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids[-self.cfg.rollout.max_prompt_length:]

    def _logits(self, model, query, response, attention_mask) -> torch.Tensor:
        """Logits predicting each answer token, divided by the sampling temperature: (B, R, V)."""
        seq = torch.cat([query, response], dim=1)  # (B, P+R)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, P+R)
        r = response.shape[1]
        # the LM head only where an answer token is predicted: the last R + 1 positions
        keep = {"logits_to_keep": r + 1} if keeps_logits(model) else {}
        logits = model(input_ids=seq, attention_mask=attention_mask, position_ids=position_ids,
                       use_cache=False, **keep).logits  # (B, R+1, V), or (B, P+R, V)
        logits = suppress(logits[:, -r - 1:-1].float(), self.suppressed)
        t = self.cfg.rollout.temperature
        return logits if t == 1.0 else logits / t

    def _ref_logits(self, query, response, attention_mask) -> torch.Tensor:
        if self.ref is not None:
            return self._logits(self.ref, query, response, attention_mask)
        with self.policy.disable_adapter():
            return self._logits(self.policy_fwd, query, response, attention_mask)

    def _values(self, query, response, attention_mask) -> torch.Tensor:
        """V before each answer token, read at the position that predicts it: (B, R)."""
        seq = torch.cat([query, response], dim=1)
        values = self.value_fwd(seq, attention_mask)  # (B, P+R): rm.token_values of the value model
        return (values[:, query.shape[1] - 1:-1] - self.value_shift) / self.value_scale

    def _penalised_score(self, prompts, texts, ended: list[bool]) -> torch.Tensor:
        """The reward (B,), minus the fixed penalty for answers that never emitted EOS."""
        score = self._score(prompts, texts, ended)
        if self.cfg.reward.missing_eos_penalty is not None:
            never = torch.tensor([not e for e in ended], dtype=torch.float, device=self.device)
            score = score - self.cfg.reward.missing_eos_penalty * never
        return score

    def _score(self, prompts, texts, ended) -> torch.Tensor:
        if self.reward_fn is not None:
            return torch.tensor(self.reward_fn(prompts, texts, ended), dtype=torch.float, device=self.device)
        kwargs = dict(batch_size=self.cfg.rollout.batch_size, separator=self.cfg.rollout.separator, ended=ended,
                      max_length=self.cfg.reward.max_length)
        if self.shared_reward:
            with self.value.disable_adapter():
                raw = rm.score_texts(self.value, self.rm_tokenizer, prompts, texts, **kwargs)
            # init_reward_model dropped the normalisation stored with these weights (training the
            # value function would make it stale): apply it here, as load_reward_model's model does
            scores = [(s - self.value_shift) / self.value_scale for s in raw]
        else:
            scores = rm.score_texts(self.reward, self.rm_tokenizer, prompts, texts, **kwargs)
        return torch.tensor(scores, device=self.device)

    # -- update -------------------------------------------------------------------------

    def update(self, ro: Rollout, optimizer, scheduler) -> dict[str, float]:
        """``ppo_epochs`` passes of clipped PPO over shuffled minibatches of ``ro``.

        With N processes each shuffles its own rows into minibatches of ``batch_size / N``;
        together they make minibatches of ``batch_size`` (a different random partition of
        the rollout than one process would draw). Losses are token means over the whole
        minibatch: a process weighs its mean by its share of the minibatch's tokens. With
        ``grad_accum`` = G a process runs its rows as G micro-batches, each weighed by its
        own share in the same way, whose gradients add up before each model's one clip and
        step: the update of G = 1 (up to float rounding) with a G-th of the activations. Under
        DDP only the last micro-batch of each model's step all-reduces (:func:`grad_sync`).
        """
        cfg, n_proc = self.cfg, self.acc.num_processes
        self.policy.train()
        self.value.train()
        stats: dict[str, list[float]] = {}  # this process's part of each minibatch's value
        grad_norms: dict[str, list[float]] = {"policy_grad_norm": [], "value_grad_norm": []}
        n = ro.query.shape[0]
        held: list[torch.Tensor] = []  # the last minibatch's policy losses (see below)
        rates: list[float] = []  # the learning rate each minibatch's steps used
        for _ in range(cfg.ppo_epochs):
            for idx in torch.randperm(n).split(cfg.batch_size // n_proc):
                n_tokens = sum_over_processes([float(ro.mask[idx].sum())], self.acc)[0]  # the minibatch's
                micro = idx.split(cfg.batch_size // (n_proc * cfg.grad_accum))
                ptx = self._ptx_micro_batches(len(micro)) if self.ptx else [None] * len(micro)
                mb: dict[str, float] = {}  # this process's part of this minibatch's statistics
                # the two models share no weights: each one's loss goes backward, is clipped and
                # steps on its own, so only one model's activations and gradients are held at a
                # time (PPO-S peak memory −17 MB, then −8 to −10 MB)
                # under DDP only each model's last micro-batch all-reduces (the sum of all of them)
                last = len(micro) - 1
                losses = []
                for i, (rows, ptx_rows) in enumerate(zip(micro, ptx)):
                    with grad_sync(self.acc, self.policy_fwd, last=i == last):
                        losses.append(self._policy_backward(ro, rows, n_tokens, ptx_rows, mb))
                # the policy's losses (their graphs) stay referenced until the next minibatch's have
                # gone backward: freed at once, they let glibc hand the heap's top back, and the
                # next allocations fault it in again (PPO-S: 60k instead of 16k page faults per
                # update, 12% slower)
                held[:] = losses
                grad_norms["policy_grad_norm"].append(_clip_and_step(optimizer, cfg.max_grad_norm))
                for i, rows in enumerate(micro):
                    with grad_sync(self.acc, self.value_fwd, last=i == last):
                        self._value_backward(ro, rows, n_tokens, mb)
                grad_norms["value_grad_norm"].append(_clip_and_step(optimizer, cfg.max_grad_norm))
                rates.append(scheduler.get_last_lr()[0])
                scheduler.step()  # one learning-rate step per minibatch: both steps above used the same rate
                for key in ("ptx_loss", "policy_loss", "value_loss", "clip_frac", "value_clip_frac", "approx_kl",
                            "entropy"):
                    if key in mb:
                        _add(stats, key, mb[key])
        keys = list(stats)
        totals = sum_over_processes([v for k in keys for v in stats[k]], self.acc)  # each minibatch's value
        per_key = len(totals) // max(len(keys), 1)
        out = {k: totals[i * per_key:(i + 1) * per_key] for i, k in enumerate(keys)}
        out.update(grad_norms)  # the same on every process (gradients are all-reduced)
        out["lr"] = rates  # the policy's; the value function's is value_lr_multiplier times it
        return {k: sum(v) / len(v) for k, v in out.items()}

    def _policy_backward(self, ro: Rollout, rows: torch.Tensor, n_tokens: float, ptx: tuple | None,
                         mb: dict[str, float]) -> torch.Tensor:
        """Backward of the clipped policy loss on ``rows`` of ``ro`` (plus γ × the LM loss on
        ``ptx``, a :meth:`_ptx_micro_batches` part), weighed by the rows' share of the
        minibatch's ``n_tokens`` answer tokens; adds their part of the statistics to ``mb``
        and returns the loss (gone backward)."""
        cfg = self.cfg
        query, response, mask = ro.query[rows], ro.response[rows], ro.mask[rows]
        part = float(mask.sum()) / n_tokens  # 1.0 with one process and grad_accum=1
        scale = part * self.acc.num_processes  # × N: DDP averages the processes' gradients, the loss is their sum
        with self.autocast():  # logits come out float32
            logits = self._logits(self.policy_fwd, query, response, ro.attention_mask[rows])  # (b, R, V)
            ptx_loss, ptx_part = self._ptx_loss(*ptx) if ptx is not None else (None, 0.0)
        logp = logprobs_from_logits(logits, response)  # (b, R)
        with torch.no_grad():
            entropy = masked_mean(entropy_from_logits(logits), mask)
        del logits  # the graph keeps what backward needs
        pg = policy_loss(logp, ro.logp[rows], ro.advantages[rows], mask, cfg.clip_range)
        loss = pg.loss * scale
        if ptx is not None:
            loss = loss + cfg.ptx.coef * (ptx_loss * (ptx_part * self.acc.num_processes))
            mb["ptx_loss"] = mb.get("ptx_loss", 0.0) + ptx_loss.item() * ptx_part
        self.acc.backward(loss)
        for key, value in (("policy_loss", pg.loss), ("clip_frac", pg.clip_frac), ("approx_kl", pg.approx_kl),
                           ("entropy", entropy)):
            mb[key] = mb.get(key, 0.0) + float(value.detach()) * part
        return loss

    def _value_backward(self, ro: Rollout, rows: torch.Tensor, n_tokens: float, mb: dict[str, float]) -> None:
        """Backward of the clipped value loss on ``rows`` of ``ro``, weighed as in :meth:`_policy_backward`."""
        cfg = self.cfg
        mask = ro.mask[rows]
        part = float(mask.sum()) / n_tokens
        with self.autocast():  # values come out float32
            values = self._values(ro.query[rows], ro.response[rows], ro.attention_mask[rows])  # (b, R)
        vf = value_loss(values, ro.values[rows], ro.returns[rows], mask, cfg.value_clip_range)
        self.acc.backward(cfg.vf_coef * vf.loss * (part * self.acc.num_processes))
        for key, value in (("value_loss", vf.loss), ("value_clip_frac", vf.clip_frac)):
            mb[key] = mb.get(key, 0.0) + float(value.detach()) * part

    def _ptx_micro_batches(self, n_micro: int) -> list[tuple[list, int]]:
        """This process's share of the next batch of pre-training text, dealt into
        ``n_micro`` parts, each with the target tokens of the whole (global) batch."""
        examples = [self.ptx[i] for i in next(self.ptx_batches)]  # the global batch
        self.ptx_used += 1
        mine, _ = share(examples, self.acc)
        total = max(sum(map(n_targets, examples)), 1)
        return [(mine[i::n_micro], total) for i in range(n_micro)]

    def _ptx_loss(self, examples: list, total: int) -> tuple[torch.Tensor, float]:
        """Mean next-token NLL on ``examples`` of pre-training text (the γ term of eq. 2),
        and their part of the ``total`` target tokens of the batch they come from."""
        batch = collate(examples, self.tokenizer.pad_token_id)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        labels = batch.pop("labels")
        logits = self.policy_fwd(**batch, use_cache=False).logits[:, :-1]  # (b, T-1, V)
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)),
                                                 labels[:, 1:].reshape(-1), ignore_index=IGNORE)
        return loss, sum(map(n_targets, examples)) / total

    # -- bookkeeping --------------------------------------------------------------------

    def trainable_modules(self) -> tuple[torch.nn.Module, ...]:
        return (self.policy, self.value)

    def parameter_groups(self, cfg: Config) -> list[dict]:
        return [{"params": [p for p in self.policy.parameters() if p.requires_grad]},
                {"params": [p for p in self.value.parameters() if p.requires_grad],
                 "lr": cfg.lr * cfg.value_lr_multiplier}]

    def rollout_stats(self, ro: Rollout) -> dict[str, float]:
        """Means over the whole rollout batch: every process's rows."""
        rows = lambda x: gather_rows(x, self.acc)  # noqa: E731  (B_r,) here -> (B,) over processes
        kl = rows((ro.kl * ro.mask).sum(1))  # (B,) KL summed over each answer
        score = rows(ro.score)  # (B,)
        non_score = -self.kl_ctl.value * kl  # (B,) −β·KL summed (before reward whitening)
        stats = {
            "score": score.mean().item(),
            "kl": kl.mean().item(),
            "non_score_reward": non_score.mean().item(),
            "reward": (score + non_score).mean().item(),
            "response_length": rows(ro.mask.sum(1)).mean().item(),
            "eos_rate": rows(ro.ended.float()).mean().item(),
            "kl_coef": self.kl_ctl.value,
        }
        if self.cfg.rollout.stop:
            stats["stop_rate"] = rows(ro.stopped.float()).mean().item()  # of eos_rate, the answers ended by a stop
        for name, fn in self.track.items():
            values = gather_lists(list(fn(ro.prompts, ro.texts, ro.ended.tolist())), self.acc)
            stats[name] = sum(values) / len(values)
        return stats


def run(cfg: Config) -> dict:
    """Train with PPO; resume from the newest checkpoint of ``cfg.out`` if any.

    Under ``accelerate launch`` (DDP) every process runs this and samples its share of
    each rollout batch; see :mod:`rlxf.distributed`.
    """
    from rlxf.data.formats import load_prompts

    acc = make_accelerator(cfg.device)
    if is_sharded(acc):
        raise ConfigError("PPO runs under DDP (examples/accelerate/ddp_gpu.yaml), not FSDP or DeepSpeed; "
                          "for a policy too large for one GPU use model.lora.enabled=true")
    check_divisible(acc, **{"rollout.batch_size": cfg.rollout.batch_size, "batch_size": cfg.batch_size},
                    **({"ptx.batch_size": cfg.ptx.batch_size} if cfg.ptx.coef > 0 else {}))
    _check_micro_batches(cfg, acc.num_processes)
    run_dir, device, cfg = start_stage(cfg, acc)
    if run_dir.complete:
        return run_dir.summary()
    prompts = list(load_prompts(cfg.rollout.prompts))
    if not prompts:
        raise ConfigError(f"rollout.prompts ({cfg.rollout.prompts}) holds no prompts")
    eval_prompts = list(load_prompts(cfg.eval.prompts, limit=cfg.eval.n)) if cfg.eval.prompts and cfg.eval.n > 0 else []
    ppo = PPO(cfg, device, acc)
    cfg = ppo.cfg  # its lengths fitted to the models
    # every prompt is rendered now, by the tokenizer that samples for it and the one that scores
    # it: the evaluation's would first fail after training had run
    for key, some in (("rollout.prompts", prompts), ("eval.prompts", eval_prompts)):
        check_prompts(some, ppo.tokenizer, key=key, tokenizer_key="model.tokenizer")
        if ppo.rm_tokenizer is not ppo.tokenizer:
            check_prompts(some, ppo.rm_tokenizer, key=key, tokenizer_key="reward.model")
    n_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(prompts) / cfg.rollout.batch_size))
    updates_per_step = cfg.ppo_epochs * math.ceil(cfg.rollout.batch_size / cfg.batch_size)
    # the scheduler steps once per minibatch update; warm-up is given in PPO steps
    sched_cfg = replace(cfg, warmup_steps=cfg.warmup_steps * updates_per_step)
    optimizer, scheduler = make_optimizer(ppo.parameter_groups(cfg), sched_cfg, n_steps * updates_per_step)
    optimizer = ppo.prepare(optimizer)  # the scheduler is not prepared: accelerate would step it N times

    start, extra = resume(run_dir, accelerator=acc, modules=ppo.trainable_modules(), optimizer=optimizer,
                          scheduler=scheduler)
    last: dict[str, float] = {}  # the newest step's statistics
    if extra:
        ppo.kl_ctl.load_state_dict(extra["kl_controller"])
        # a run resumed from its last checkpoint has no step left to evaluate at
        last = dict(extra.get("eval", {}))
        if ppo.ptx:
            ppo.ptx_used = extra["ptx_batches_used"]
            ppo.ptx_batches = full_batch_indices(len(ppo.ptx), cfg.ptx.batch_size, cfg.seed + 1, start=ppo.ptx_used)
    if start:
        ppo.backend.sync_weights(ppo.policy)  # the engine still holds the starting weights

    batches = full_batch_indices(len(prompts), cfg.rollout.batch_size, cfg.seed, start=start)
    timer = Timer(before=(extra or {}).get("seconds", 0.0))  # a resumed run counts its earlier segments too
    bar = progress(range(start, n_steps), desc="ppo", initial=start, total=n_steps,
                   enabled=cfg.progress and acc.is_main_process)
    for step in bar:
        mine, _ = share(next(batches), acc)  # this process's rollout.batch_size / N prompts
        ro = ppo.rollout([prompts[i] for i in mine])
        stats = ppo.rollout_stats(ro)
        stats.update(ppo.update(ro, optimizer, scheduler))
        ppo.backend.sync_weights(ppo.policy)
        ppo.kl_ctl.update(stats["kl"], cfg.rollout.batch_size)
        done = step + 1
        bar.set_postfix(score=f"{stats['score']:.3f}", kl=f"{stats['kl']:.3f}")
        # held-out evaluation runs on the main process alone (a forked RNG, plain models)
        if eval_prompts and acc.is_main_process and ((cfg.eval_every and done % cfg.eval_every == 0)
                                                     or done == n_steps):
            with ppo.autocast():
                stats.update(evaluate(ppo, eval_prompts, cfg))
        if acc.is_main_process and (done % cfg.log_every == 0 or done == n_steps or "eval_score" in stats):
            run_dir.log(done, stats)
        last = stats
        if (cfg.save_every and done % cfg.save_every == 0) or done == n_steps:
            save_checkpoint(run_dir, done, accelerator=acc, modules=ppo.trainable_modules(), optimizer=optimizer,
                            scheduler=scheduler, keep=cfg.keep_checkpoints,
                            extra={"kl_controller": ppo.kl_ctl.state_dict(), "ptx_batches_used": ppo.ptx_used,
                                   "eval": {k: v for k, v in stats.items() if k.startswith("eval_")},
                                   "seconds": timer.elapsed()})
    bar.close()

    save_final(ppo.policy_fwd, _plain_tokenizer(ppo.tokenizer), run_dir.final, acc)
    if ppo.lm_eval and "eval_lm_loss" not in last and acc.is_main_process:
        with ppo.autocast():
            last.update(evaluate(ppo, [], cfg))
    rows = run_dir.metrics()
    tail = rows[-max(1, len(rows) // 10):]  # the last tenth of the logged steps
    summary = {
        "stage": "ppo",
        "steps": n_steps,
        "resumed_from_step": start,
        "score.final": _mean(tail, "score"),
        "kl.final": _mean(tail, "kl"),
        "reward.final": _mean(tail, "reward"),
        "eos_rate.final": _mean(tail, "eos_rate"),
        **{f"{name}.final": _mean(tail, name) for name in cfg.track},
        **{k: v for k, v in last.items() if k.startswith("eval_")},
        "memory": {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   "parameters_mb": _parameter_mb(ppo.policy, ppo.ref, ppo.value, ppo.reward)},
        "seconds": timer.elapsed(),
        "final": str(run_dir.final),
    }
    if acc.is_main_process:
        run_dir.write_summary(summary)
    return summary


@torch.no_grad()
def evaluate(ppo: PPO, prompts: list, cfg: Config) -> dict[str, float]:
    """Reward-model score (and tracked scores) of sampled answers to held-out prompts;
    the LM loss on held-out pre-training text when configured."""
    from rlxf.models.generation import generate

    out: dict[str, float] = {}
    if prompts:
        # a forked RNG: evaluating must not change the rollouts that follow it; sampled as the
        # rollouts are, from softmax(logits / T) with the checkpoint's generation_config set aside
        # (its repetition penalty, its own end tokens)
        with (torch.random.fork_rng(devices=[ppo.device] if ppo.device.type == "cuda" else []),
              attention_kernel(ppo.policy, ppo.sampling_attention), plain_generation_config(ppo.policy)):
            gens = generate(ppo.policy, ppo.tokenizer, prompts, max_new_tokens=cfg.rollout.max_new_tokens,
                            temperature=cfg.rollout.temperature, separator=cfg.rollout.separator,
                            batch_size=cfg.rollout.batch_size, seed=cfg.seed + 7, stop=cfg.rollout.stop)
        texts, ended = [g.text for g in gens], [g.ended for g in gens]
        # the same score as training's: EOS penalty included
        out["eval_score"] = sum(ppo._penalised_score(prompts, texts, ended).tolist()) / len(prompts)
        for name, fn in ppo.track.items():
            values = fn(prompts, texts, ended)
            out[f"eval_{name}"] = sum(values) / len(values)
    if ppo.lm_eval:
        from rlxf.stages.sft import evaluate as sft_evaluate

        # as lm_loss, on the examples read before training
        out["eval_lm_loss"] = sft_evaluate(ppo.policy, ppo.lm_eval, ppo.tokenizer.pad_token_id, ppo.device,
                                           batch_size=16)
    return out


def lm_loss(model, tokenizer, path: str, max_length: int, device) -> float:
    """Mean NLL per token of ``model`` on the text (or demonstrations) at ``path``: PPO's
    ``eval_lm_loss``, for any model."""
    from rlxf.stages.sft import evaluate as sft_evaluate

    examples = _text_examples("eval.lm_data", path, tokenizer, max_length, unset="give another file")
    return sft_evaluate(model, examples, tokenizer.pad_token_id, device, batch_size=16)


# ----------------------------------------------------------------------------- helpers

def _truncate_at_eos(response: torch.Tensor, eos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask (B, R) of tokens up to and including the first EOS, and whether there was one (B,)."""
    is_eos = response == eos  # (B, R)
    ended = is_eos.any(1)  # (B,)
    first = torch.where(ended, is_eos.float().argmax(1), torch.full_like(ended, response.shape[1], dtype=torch.long))
    positions = torch.arange(response.shape[1], device=response.device)  # (R,)
    return (positions[None, :] <= first[:, None]).long(), ended


def _truncate_at_stop(response: torch.Tensor, mask: torch.Tensor, stop: AnswerStop | None) -> torch.Tensor:
    """End each answer (B, R) whose text holds a stop string (``stop``; None: none) with the
    token completing the first: ``mask`` (B, R) is cut after it, in place. Returns which
    answers were (B,)."""
    stopped = torch.zeros(response.shape[0], dtype=torch.bool, device=response.device)
    if stop is None:
        return stopped
    for b, n in enumerate(mask.sum(1).tolist()):
        ids = response[b, :n].tolist()
        if not stop.holds(ids, b):
            continue
        lo, hi = 1, n  # the shortest prefix that holds a stop string: a prefix's text only grows
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if stop.holds(ids[:mid], b) else (mid + 1, hi)
        mask[b, lo:] = 0
        stopped[b] = True
    return stopped


def _left_pad(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and their attention mask, both (B, P)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    return ids, mask


def _separator(prompt, tokenizer, separator: str) -> str:
    """What stands between ``prompt`` and its answer (``separator``; nothing after a chat template)."""
    return prompt_text(prompt, tokenizer, separator)[1]


def _strip_separator(text: str, prompt, tokenizer, separator: str) -> str:
    sep = _separator(prompt, tokenizer, separator)
    return text.removeprefix(sep) if sep else text


def _normalization_at(path: str) -> tuple[float, float]:
    """``(shift, scale)`` stored with a reward model at ``path``; ``(0, 1)`` for any other model."""
    from transformers import AutoConfig

    norm = getattr(AutoConfig.from_pretrained(path), rm.NORMALIZATION_KEY, None) or {}
    return float(norm.get("shift", 0.0)), float(norm.get("scale", 1.0))


def _text_examples(key: str, path: str, tokenizer, max_length: int, *, separator: str = " ",
                   unset: str) -> list[Example]:
    """Pre-training text (or demonstrations) at ``path``, read for the LM loss of config key
    ``key``: a missing or empty file is an error naming the key and the fixes (``unset``:
    how to do without it), raised before training."""
    from rlxf.data.formats import load_demonstrations

    try:
        demonstrations = list(load_demonstrations(path))
    except DataError as err:
        raise ConfigError(f"{key}: {err} (point {key} at a file of {{text}} rows or demonstrations, or "
                          f"{unset})") from None
    examples = tokenize_demonstrations(demonstrations, tokenizer, max_length=max_length, separator=separator,
                                       length_key="ptx.max_length")
    if not examples:
        raise ConfigError(f"{key} ({path}) holds no text; give it {{text}} rows or demonstrations, or {unset}")
    return examples


def _check_micro_batches(cfg: Config, processes: int) -> None:
    """Refuse minibatches that ``grad_accum`` micro-batches on each of ``processes`` cannot split evenly."""
    sizes = {"batch_size": cfg.batch_size, **({"ptx.batch_size": cfg.ptx.batch_size} if cfg.ptx.coef > 0 else {})}
    for key, size in sizes.items():
        if size % (cfg.grad_accum * processes):
            raise ConfigError(f"{key} ({size}) must be a multiple of grad_accum × processes ({cfg.grad_accum} × "
                              f"{processes}): each forward/backward takes {key} / (grad_accum × processes); "
                              f"change {key} or grad_accum")


def _plain_tokenizer(tokenizer):
    tokenizer.padding_side = "right"
    return tokenizer


def _clip_and_step(optimizer, max_norm: float | None) -> float:
    """Clip the gradients the optimiser's parameters hold now to ``max_norm`` (their
    norm before clipping is returned), step those parameters alone and drop the
    gradients. AdamW skips parameters without a gradient, so the policy and the value
    function step one after the other as they would together."""
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    norm = 0.0
    if max_norm is not None and params:
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    optimizer.step()
    for p in params:  # the others hold none: cheaper than zero_grad's walk over every parameter
        p.grad = None
    return norm


def _add(stats: dict[str, list[float]], key: str, value: float) -> None:
    stats.setdefault(key, []).append(value)


def _mean(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if key in r]
    return sum(values) / len(values) if values else None


def _parameter_mb(*models) -> float:
    """Megabytes of distinct parameter storage across ``models`` (shared weights counted once)."""
    seen, total = set(), 0
    for m in models:
        if m is None:
            continue
        for p in m.parameters():
            key = p.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += p.untyped_storage().nbytes()
    return total / 2**20
