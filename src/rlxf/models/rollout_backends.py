"""Where PPO's rollouts are sampled: Hugging Face ``generate`` (default), rlxf's own loop, or vLLM.

A backend turns left-padded prompt ids into sampled answer ids and is told after every
PPO update that the policy's weights changed (:meth:`sync_weights`). PPO computes every
log-prob it trains with from its own forward pass, never from the backend, so a
backend only has to sample from the current policy, ``softmax(logits / temperature)``
with the ``rollout.suppress_tokens`` taken out, and nothing else (no top-k, top-p or
repetition penalty: PPO's log-probs would not be those of the sampler).

- ``hf``: the policy's own ``generate``; it *is* the trained model, so syncing is a no-op.
  The checkpoint's ``generation_config.json`` is set aside while it samples: a
  repetition penalty or an n-gram ban in it would make the rollouts come from another
  distribution than the one PPO's log-probs assume.
- ``rlxf``: rlxf's own sampling loop over the policy's forward pass with a KV cache,
  drawing from the same distribution as ``hf`` with less work per token. For
  decoder-only transformers whose forward takes ``position_ids`` and a KV cache
  (GPT-2, Llama, Qwen, Mistral, ...).
- ``vllm`` (``pip install 'rlxf[vllm]'``, GPU only): a vLLM engine holding a copy of the
  policy; after each update the policy's state dict is loaded into the engine's model.
  Written against vLLM's ``LLM.apply_model`` and ``SamplingParams``; it cannot be run
  on the CPU machines rlxf's tests run on.

Given ``stop`` (PPO's ``rollout.stop``, as a
:class:`~rlxf.models.generation.AnswerStop`), ``hf`` and ``rlxf`` stop sampling an answer
once its text holds a stop string, so a batch whose answers have all ended (EOS or a
stop) samples no further; PPO then cuts each answer after the token completing the stop.
The answers' tokens are those sampled without it: a stopped answer is only padded where
it would have gone on. ``vllm`` samples on, and PPO cuts afterwards.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Protocol

import torch

from rlxf.errors import ConfigError
from rlxf.models.generation import AnswerStop

log = logging.getLogger("rlxf")


class RolloutBackend(Protocol):
    def generate(self, query: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int,
                 temperature: float, stop: AnswerStop | None = None) -> torch.Tensor:
        """Answer ids (B, R) for left-padded ``query`` (B, P) and its ``attention_mask`` (B, P).

        Each answer runs to EOS (included) or ``max_new_tokens``, or (where the backend
        heeds ``stop``) until its text holds a stop string; what follows is padding (PPO
        masks it). R is the longest answer's length.
        """

    def sync_weights(self, policy: torch.nn.Module) -> None:
        """Make the engine sample from ``policy``'s current weights (called after each update)."""


def suppress(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``logits`` (..., V) with the ``tokens`` (ids) set to the lowest finite float: their
    probability is exactly 0 and an entropy over them stays finite. A new tensor; the
    same one when ``tokens`` is empty."""
    if tokens.numel() == 0:
        return logits
    return logits.index_fill(-1, tokens, torch.finfo(logits.dtype).min)


class HFBackend:
    """Sampling with the policy's own ``generate`` at ``temperature`` and nothing else
    (bar ``suppress_tokens``)."""

    def __init__(self, policy: torch.nn.Module, eos_token_id: int, pad_token_id: int,
                 suppress_tokens: list[int] = ()) -> None:
        self.policy, self.eos, self.pad = policy, eos_token_id, pad_token_id
        self.suppress_tokens = list(suppress_tokens)

    @torch.no_grad()
    def generate(self, query: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int,
                 temperature: float, stop: AnswerStop | None = None) -> torch.Tensor:
        from transformers import StoppingCriteriaList

        self.policy.eval()
        extra = {"suppress_tokens": self.suppress_tokens} if self.suppress_tokens else {}
        if stop is not None:
            extra["stopping_criteria"] = StoppingCriteriaList([stop.after(query.shape[1])])
        with plain_generation_config(self.policy):
            seqs = self.policy.generate(input_ids=query, attention_mask=attention_mask, do_sample=True, top_k=0,
                                        top_p=1.0, temperature=temperature, max_new_tokens=max_new_tokens,
                                        eos_token_id=self.eos, pad_token_id=self.pad, **extra)  # (B, P+R)
        return seqs[:, query.shape[1]:]  # (B, R)

    def sync_weights(self, policy: torch.nn.Module) -> None:
        """Nothing to do: ``generate`` runs on the trained weights themselves."""


@contextlib.contextmanager
def plain_generation_config(model):
    """Inside the block ``model.generate`` starts from Hugging Face's neutral defaults
    rather than the checkpoint's ``generation_config`` (whose unset-by-caller fields it
    would otherwise fill in)."""
    from transformers import GenerationConfig

    from rlxf.models.loading import base_model

    inner = base_model(model)
    saved = inner.generation_config
    inner.generation_config = GenerationConfig()
    try:
        yield
    finally:
        inner.generation_config = saved


def sample_categorical(probs: torch.Tensor) -> torch.Tensor:
    """One index per row of ``probs`` (B, V), drawn with probability ``probs[b, i]``.

    Inverse-CDF sampling: one uniform number per row, located in the row's cumulative
    sum (float64, so that no token's share is lost to rounding). ``torch.multinomial``
    draws one exponential number per *token* (V per row; 0.5 ms per call for 16 × 2,048 on
    CPU, most of a decoding step's time at PPO-S size); this draws B.
    """
    cdf = probs.double().cumsum(dim=-1)  # (B, V)
    total = cdf[:, -1:]  # (B, 1)
    u = torch.rand(probs.shape[0], 1, dtype=torch.float64, device=probs.device) * total
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))  # in [0, total) after rounding too
    # the first index whose cumulative sum exceeds u: a token of probability 0 never is
    return torch.searchsorted(cdf, u, right=True).squeeze(1)


class LoopBackend:
    """rlxf's sampling loop: one forward pass of the policy per token, reusing its KV
    cache, each token drawn from ``softmax(logits / temperature)`` by
    :func:`sample_categorical`.

    The steps are those ``generate`` takes in this one case (float32 probabilities,
    answers that ended padded, a stop once every answer has its EOS) without its
    per-token machinery. The distribution is the same as ``hf``'s; the random draws are
    not, so the tokens differ from ``hf``'s for the same seed.
    """

    def __init__(self, policy: torch.nn.Module, eos_token_id: int, pad_token_id: int,
                 suppress_tokens: list[int] = ()) -> None:
        self.policy, self.eos, self.pad = policy, eos_token_id, pad_token_id
        self.suppressed = torch.tensor(list(suppress_tokens), dtype=torch.long)

    @torch.no_grad()
    def generate(self, query: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int,
                 temperature: float, stop: AnswerStop | None = None) -> torch.Tensor:
        from transformers import DynamicCache

        from rlxf.models.loading import base_model, cache_keyword, keeps_logits, returned_cache

        self.policy.eval()
        b = query.shape[0]
        position = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, P)
        cache = cache_keyword(self.policy)  # the forward's name for the KV cache
        out = self.policy(input_ids=query, attention_mask=attention_mask, position_ids=position, use_cache=True,
                          **{cache: DynamicCache(config=base_model(self.policy).config)},
                          **({"logits_to_keep": 1} if keeps_logits(self.policy) else {}))
        position = position[:, -1:]  # (B, 1)
        unfinished = torch.ones(b, dtype=torch.bool, device=query.device)
        suppressed = self.suppressed.to(query.device)
        stop = stop.after(0) if stop is not None else None  # it is shown the answer tokens only
        tokens = []
        for step in range(max_new_tokens):
            probs = torch.softmax(suppress(out.logits[:, -1].float(), suppressed) / temperature, dim=-1)  # (B, V)
            token = sample_categorical(probs)  # (B,)
            token = torch.where(unfinished, token, self.pad)
            tokens.append(token)
            unfinished &= token != self.eos
            if stop is not None:
                unfinished &= ~stop(torch.stack(tokens, dim=1))
            if step + 1 == max_new_tokens or not unfinished.any():
                break
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(b, 1)], dim=1)
            position = position + 1
            out = self.policy(input_ids=token[:, None], attention_mask=attention_mask, position_ids=position,
                              use_cache=True, **{cache: returned_cache(out)})
        return torch.stack(tokens, dim=1)  # (B, R)

    def sync_weights(self, policy: torch.nn.Module) -> None:
        """Nothing to do: the loop runs on the trained weights themselves."""


class VLLMBackend:
    """Sampling with a vLLM engine on this process's GPU, reloaded after every update.

    With several processes (``accelerate launch``), each process runs its own engine on
    its own GPU (vLLM's ``external_launcher`` executor joins the launched processes).
    ``gpu_memory_utilization`` is the share of the GPU vLLM may take; training needs
    the rest.
    """

    def __init__(self, model_path: str, *, eos_token_id: int, pad_token_id: int, dtype: str, seed: int,
                 gpu_memory_utilization: float, num_processes: int) -> None:
        try:
            import vllm
        except ImportError:
            raise ConfigError("rollout.backend=vllm needs vLLM: pip install 'rlxf[vllm]' (Linux with an NVIDIA "
                              "GPU); or use rollout.backend=hf") from None
        extra = {"distributed_executor_backend": "external_launcher"} if num_processes > 1 else {}
        self.vllm = vllm
        self.llm = vllm.LLM(model=model_path, dtype=dtype, seed=seed, gpu_memory_utilization=gpu_memory_utilization,
                            enable_prefix_caching=False, **extra)
        self.eos, self.pad = eos_token_id, pad_token_id

    @torch.no_grad()
    def generate(self, query: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int,
                 temperature: float, stop: AnswerStop | None = None) -> torch.Tensor:
        prompts = [{"prompt_token_ids": q[m.bool()].tolist()} for q, m in zip(query, attention_mask)]
        params = self.vllm.SamplingParams(temperature=temperature, top_p=1.0, max_tokens=max_new_tokens)
        answers = []
        for out in self.llm.generate(prompts, params, use_tqdm=False):
            ids = list(out.outputs[0].token_ids)
            if out.outputs[0].finish_reason == "stop" and (not ids or ids[-1] != self.eos):
                ids.append(self.eos)  # stopped at EOS: keep it, as HF generate does
            answers.append(ids)
        width = max(1, max(len(a) for a in answers))
        response = torch.full((len(answers), width), self.pad, dtype=torch.long)  # (B, R)
        for i, a in enumerate(answers):
            response[i, :len(a)] = torch.tensor(a, dtype=torch.long)
        return response.to(query.device)

    def sync_weights(self, policy: torch.nn.Module) -> None:
        """Load the policy's current weights into the engine's model (same architecture,
        Hugging Face parameter names, which vLLM's ``load_weights`` maps to its own)."""
        weights = [(name, p.detach()) for name, p in policy.state_dict().items()]
        self.llm.apply_model(lambda model: model.load_weights(weights))


def make_backend(name: str, policy: torch.nn.Module, tokenizer, *, model_path: str, dtype: str, seed: int,
                 gpu_memory_utilization: float, num_processes: int, suppress_tokens: list[int] = ()) -> RolloutBackend:
    """The backend ``rollout.backend`` names, for ``policy`` (loaded from ``model_path``)."""
    if name in ("hf", "rlxf"):
        _warn_ignored_generation_config(policy)
    if name == "hf":
        return HFBackend(policy, tokenizer.eos_token_id, tokenizer.pad_token_id, suppress_tokens)
    if name == "rlxf":
        return LoopBackend(policy, tokenizer.eos_token_id, tokenizer.pad_token_id, suppress_tokens)
    if name == "vllm":
        return VLLMBackend(model_path, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                           dtype=dtype, seed=seed, gpu_memory_utilization=gpu_memory_utilization,
                           num_processes=num_processes)
    raise ConfigError(f"rollout.backend must be 'hf', 'rlxf' or 'vllm', got {name!r}")


# generation_config fields that change which tokens are sampled, and their neutral values
_SHAPING = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "typical_p": 1.0, "min_p": None, "epsilon_cutoff": 0.0,
            "eta_cutoff": 0.0, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "bad_words_ids": None,
            "suppress_tokens": None, "begin_suppress_tokens": None, "sequence_bias": None, "min_new_tokens": 0,
            "min_length": 0, "forced_bos_token_id": None, "forced_eos_token_id": None,
            "exponential_decay_length_penalty": None}


def _warn_ignored_generation_config(policy: torch.nn.Module) -> None:
    """Say which of the checkpoint's sampling settings PPO's rollouts leave out."""
    from rlxf.models.loading import base_model

    config = getattr(base_model(policy), "generation_config", None)
    set_here = {k: getattr(config, k, None) for k in _SHAPING} if config is not None else {}
    ignored = {k: v for k, v in set_here.items() if v not in (None, [], _SHAPING[k])}
    if ignored:
        log.warning("the policy's generation_config sets %s: PPO leaves these out and samples from "
                    "softmax(logits / rollout.temperature), the distribution its log-probs are of; "
                    "rollout.suppress_tokens=[...] bans tokens in both",
                    ", ".join(f"{k}={v!r}" for k, v in sorted(ignored.items())))
