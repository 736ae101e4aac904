"""Rollout backends for tests: sampling that does not depend on how prompts are batched.

``SeededRowBackend`` samples each answer alone, from a generator seeded by the
prompt's tokens and the number of weight syncs so far (the PPO step). So one process
sampling 8 prompts and two processes sampling 4 each draw the *same* answers, and a
1-vs-2-process comparison checks the distributed PPO math, not the luck of sampling.
It records every call, so tests can check that weights are synced after each update.
"""

from __future__ import annotations

import torch


class SeededRowBackend:
    def __init__(self, policy, eos_token_id: int, pad_token_id: int) -> None:
        self.policy, self.eos, self.pad = policy, eos_token_id, pad_token_id
        self.syncs = 0
        self.events: list[str] = []  # "generate" / "sync", in call order
        self.synced_weights: list[float] = []  # a checksum of the weights at each sync

    @torch.no_grad()
    def generate(self, query, attention_mask, *, max_new_tokens: int, temperature: float, stop=None):
        self.events.append("generate")
        answers = []
        for q, m in zip(query, attention_mask):
            ids = q[m.bool()]
            seed = (hash(tuple(ids.tolist())) + 1_000_003 * self.syncs) % 2**31
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                seq = self.policy.generate(input_ids=ids[None], attention_mask=torch.ones_like(ids)[None],
                                           do_sample=True, top_k=0, top_p=1.0, temperature=temperature,
                                           max_new_tokens=max_new_tokens, eos_token_id=self.eos,
                                           pad_token_id=self.pad)
            answers.append(seq[0, len(ids):])
        return torch.nn.utils.rnn.pad_sequence(answers, batch_first=True, padding_value=self.pad)  # (B, R)

    def sync_weights(self, policy) -> None:
        self.events.append("sync")
        self.syncs += 1
        self.synced_weights.append(float(sum(p.detach().double().sum() for p in policy.parameters())))


def install() -> list[SeededRowBackend]:
    """Make every PPO built from now on sample with a :class:`SeededRowBackend`; returns
    the list the created backends are appended to."""
    from rlxf.stages import ppo

    made: list[SeededRowBackend] = []

    def make(name, policy, tokenizer, **_):
        made.append(SeededRowBackend(policy, tokenizer.eos_token_id, tokenizer.pad_token_id))
        return made[-1]

    ppo.make_backend = make
    return made
