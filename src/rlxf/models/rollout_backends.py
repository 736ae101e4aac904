"""Where PPO's rollouts are sampled: Hugging Face ``generate`` (default) or vLLM.

A backend turns left-padded prompt ids into sampled answer ids and is told after every
PPO update that the policy's weights changed (:meth:`sync_weights`). PPO computes every
log-prob it trains with from its own forward pass, never from the backend, so a
backend only has to sample from the current policy at ``temperature`` with no top-k or
top-p truncation.

- ``hf``: the policy's own ``generate``; it *is* the trained model, so syncing is a no-op.
- ``vllm`` (``pip install 'rlxf[vllm]'``, GPU only): a vLLM engine holding a copy of the
  policy; after each update the policy's state dict is loaded into the engine's model.
  Written against vLLM's ``LLM.apply_model`` and ``SamplingParams``; it cannot be run
  on the CPU machines rlxf's tests run on.
"""

from __future__ import annotations

from typing import Protocol

import torch

from rlxf.errors import ConfigError


class RolloutBackend(Protocol):
    def generate(self, query: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int,
                 temperature: float) -> torch.Tensor:
        """Answer ids (B, R) for left-padded ``query`` (B, P) and its ``attention_mask`` (B, P).

        Each answer runs to EOS (included) or ``max_new_tokens``; what follows EOS is
        padding (PPO masks it). R is the longest answer's length.
        """

    def sync_weights(self, policy: torch.nn.Module) -> None:
        """Make the engine sample from ``policy``'s current weights (called after each update)."""


class HFBackend:
    """Sampling with the policy's own ``generate`` (top-k and top-p off)."""

    def __init__(self, policy: torch.nn.Module, eos_token_id: int, pad_token_id: int) -> None:
        self.policy, self.eos, self.pad = policy, eos_token_id, pad_token_id

    @torch.no_grad()
    def generate(self, query: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int,
                 temperature: float) -> torch.Tensor:
        self.policy.eval()
        seqs = self.policy.generate(input_ids=query, attention_mask=attention_mask, do_sample=True, top_k=0,
                                    top_p=1.0, temperature=temperature, max_new_tokens=max_new_tokens,
                                    eos_token_id=self.eos, pad_token_id=self.pad)  # (B, P+R)
        return seqs[:, query.shape[1]:]  # (B, R)

    def sync_weights(self, policy: torch.nn.Module) -> None:
        """Nothing to do: ``generate`` runs on the trained weights themselves."""


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
                 temperature: float) -> torch.Tensor:
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
                 gpu_memory_utilization: float, num_processes: int) -> RolloutBackend:
    """The backend ``rollout.backend`` names, for ``policy`` (loaded from ``model_path``)."""
    if name == "hf":
        return HFBackend(policy, tokenizer.eos_token_id, tokenizer.pad_token_id)
    if name == "vllm":
        return VLLMBackend(model_path, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                           dtype=dtype, seed=seed, gpu_memory_utilization=gpu_memory_utilization,
                           num_processes=num_processes)
    raise ConfigError(f"rollout.backend must be 'hf' or 'vllm', got {name!r}")
