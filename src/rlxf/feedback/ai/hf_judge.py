"""A local Hugging Face causal LM as the judge: exact log-probabilities, batched.

Any model ``transformers`` loads (a local folder or a hub id) works. Log-probs come
from one forward pass per batch of (prompt, continuation) rows, right-padded so
positions need no adjusting. :meth:`HFJudge.room` tells callers how long a prompt may
be; they shorten the sample in it to fit (:mod:`.fit`). A prompt that still does not
fit raises :class:`~rlxf.feedback.ai.judge.PromptTooLong`: the judge never cuts one
itself, as that would drop the template's instructions at its start.

With a :class:`~rlxf.feedback.ai.cache.ResponseCache`, every finished item is stored
under the model's fingerprint (path + weight files' sizes and times), so a crashed
``rlxf label`` run resumes without recomputing, and a retrained model is not confused
with the old one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from rlxf.feedback.ai.cache import ResponseCache, cached_batch, request_key
from rlxf.feedback.ai.fit import Room
from rlxf.feedback.ai.judge import AnswerScores, Completion, PromptTooLong
from rlxf.feedback.ai.scoring import ChoiceScore, logsumexp
from rlxf.models.loading import ModelConfig, fingerprint

log = logging.getLogger("rlxf")


class HFJudge:
    """A judge backed by ``model`` (a causal LM) and its ``tokenizer``."""

    def __init__(self, model, tokenizer, *, batch_size: int = 8, cache: ResponseCache | None = None,
                 identity: str = "hf-model") -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        self.batch_size, self.cache, self.identity = batch_size, cache, identity
        self.device = next(model.parameters()).device
        cfg = model.config
        self.max_positions = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)
        self._variants: dict[str, list[tuple[int, ...]]] = {}
        self._counts = {"forward_rows": 0, "generated": 0}

    @classmethod
    def load(cls, cfg: ModelConfig, *, device: str = "auto", batch_size: int = 8,
             cache: ResponseCache | None = None, device_key: str = "device") -> "HFJudge":
        """Load the judge ``cfg`` names onto ``device`` (chosen by the config key ``device_key``)."""
        from rlxf.models.loading import load_causal_lm, load_tokenizer
        from rlxf.training import resolve_device

        tokenizer = load_tokenizer(cfg.tokenizer or cfg.name_or_path, revision=cfg.revision,
                                   trust_remote_code=cfg.trust_remote_code)
        model = load_causal_lm(cfg).to(resolve_device(device, device_key))
        return cls(model, tokenizer, batch_size=batch_size, cache=cache,
                   identity=f"{cfg.name_or_path}@{fingerprint(cfg.name_or_path, cfg.revision)}")

    def room(self, *, new_tokens: int = 0, answers: Sequence[str] = ()) -> Room | None:
        """The room a prompt has when the judge is then to write ``new_tokens`` tokens, or to
        score ``answers`` after it (each as long as its longest spelling: the tokenizer's
        ``answer`` or ``" " + answer``); ``None`` when the model's config names no length."""
        if not self.max_positions:
            return None
        longest = max((len(self._encode(text)) for a in answers for text in (a, " " + a.lstrip())), default=0)
        return Room(self.max_positions, max(new_tokens, longest), self.tokenizer)

    def stats(self) -> dict[str, int]:
        cached = {"cache_hits": self.cache.hits, "cache_misses": self.cache.misses} if self.cache else {}
        return {**self._counts, **cached}

    # -- the three judge methods ------------------------------------------------------------

    def answer_logprobs(self, prompts: Sequence[str], answers: Sequence[str]) -> list[AnswerScores]:
        """log P(next the judge writes ``answer``), log-sum-exp over every token sequence
        that spells it (:meth:`answer_variants`): "1", " 1", "▁1", or " " then "1"."""
        keys = [request_key(model=self.identity, kind="answer_logprobs", prompt=p, answers=list(answers))
                for p in prompts]

        def compute(idx: list[int]) -> list[dict]:
            variants = [self.answer_variants(a) for a in answers]
            rows: list[tuple[list[int], list[int]]] = []
            for i in idx:
                prefix = self._encode(prompts[i])
                rows.append((prefix, []))  # the next-token distribution: every 1-token variant
                rows += [(prefix, list(seq)) for vs in variants for seq in vs if len(seq) > 1]
            results = iter(self._logprobs(rows))
            out = []
            for _ in idx:
                next_lp = next(results)  # (V,)
                lps = []
                for vs in variants:
                    terms = [float(next_lp[seq[0]]) if len(seq) == 1 else next(results) for seq in vs]
                    lps.append(logsumexp(terms))
                out.append({"logprobs": lps})
            return out

        return [AnswerScores("logprobs", tuple(v["logprobs"])) for v in cached_batch(self.cache, keys, compute)]

    def score_choices(self, prompts: Sequence[str], choices: Sequence[str]) -> list[list[ChoiceScore]]:
        """log P(choice | prompt) for each choice, tokenized as it would be in running text."""
        keys = [request_key(model=self.identity, kind="score_choices", prompt=p, choices=list(choices))
                for p in prompts]

        def compute(idx: list[int]) -> list[dict]:
            rows, tokens = [], []
            for i in idx:
                prefix = self._encode(prompts[i])
                for c in choices:
                    cont = self._continuation(prompts[i], prefix, c)
                    rows.append((prefix, cont))
                    tokens.append(cont)
            lps = self._logprobs(rows)
            k = len(choices)
            return [{"logprobs": lps[j * k:(j + 1) * k], "tokens": tokens[j * k:(j + 1) * k]}
                    for j in range(len(idx))]

        return [[ChoiceScore(lp, tuple(t)) for lp, t in zip(v["logprobs"], v["tokens"])]
                for v in cached_batch(self.cache, keys, compute)]

    def generate(self, prompts: Sequence[str], *, max_tokens: int, temperature: float, n: int = 1,
                 stop: Sequence[str] = (), seed: int = 0) -> list[list[str]]:
        """``n`` samples per prompt (greedy when ``temperature`` is 0), cut at ``stop``."""
        return [[c.text for c in cs] for cs in self.complete(prompts, max_tokens=max_tokens, temperature=temperature,
                                                             n=n, stop=stop, seed=seed)]

    def complete(self, prompts: Sequence[str], *, max_tokens: int, temperature: float, n: int = 1,
                 stop: Sequence[str] = (), seed: int = 0) -> list[list[Completion]]:
        """:meth:`generate`'s samples, each ended by EOS or a stop string or cut at ``max_tokens``."""
        from rlxf.models.generation import generate

        keys = [request_key(model=self.identity, kind="generate", prompt=p, max_tokens=max_tokens,
                            temperature=temperature, n=n, stop=list(stop), seed=seed) for p in prompts]

        def compute(idx: list[int]) -> list[dict]:
            for i in idx:
                self._check_length(len(self._encode(prompts[i])), max_tokens)
            repeated = [prompts[i] for i in idx for _ in range(n)]
            gens = generate(self.model, self.tokenizer, repeated, max_new_tokens=max_tokens,
                            temperature=max(temperature, 1e-5), greedy=temperature == 0,
                            batch_size=self.batch_size, separator="", seed=seed, stop=stop)
            self._counts["generated"] += len(gens)
            texts, ended = [g.text for g in gens], [g.ended for g in gens]  # ended: EOS or a stop string
            return [{"texts": texts[j * n:(j + 1) * n], "ended": ended[j * n:(j + 1) * n]} for j in range(len(idx))]

        values = cached_batch(self.cache, keys, compute)
        # An entry written before rlxf recorded the ending has no "ended": its texts may have been cut at
        # max_tokens (a revision so cut must never become a demonstration), so it is sampled again and replaced.
        old = [i for i, v in enumerate(values) if "ended" not in v]
        if old:
            for i, value in zip(old, compute(old), strict=True):
                self.cache.put(keys[i], value)
                values[i] = value
        return [[Completion(t, e) for t, e in zip(v["texts"], v["ended"], strict=True)] for v in values]

    # -- tokens ------------------------------------------------------------------------------

    def answer_variants(self, answer: str) -> list[tuple[int, ...]]:
        """Every token sequence we count as the judge writing ``answer``: each single
        token that decodes to it give or take surrounding whitespace ("1", " 1", "▁1"),
        plus the tokenizer's own encodings of ``answer`` and ``" " + answer`` (which may
        be two tokens, " " then "1", in a small vocabulary). These are disjoint events
        for the model, so their probabilities add up."""
        if answer not in self._variants:
            tok = self.tokenizer
            texts = tok.batch_decode([[i] for i in range(len(tok))])
            target = answer.strip()
            seqs = {(i,) for i, t in enumerate(texts) if t.strip() == target and i not in tok.all_special_ids}
            for text in (answer, " " + answer.lstrip()):
                seqs.add(tuple(tok(text, add_special_tokens=False)["input_ids"]))
            self._variants[answer] = sorted(seqs)
        return self._variants[answer]

    def _check_length(self, prompt_tokens: int, after: int) -> None:
        """Refuse a prompt that, with ``after`` tokens after it, exceeds the model's positions."""
        if self.max_positions and prompt_tokens + after > self.max_positions:
            raise PromptTooLong(f"a judge prompt of {prompt_tokens} tokens, with {after} more after it, exceeds "
                                f"the judge's {self.max_positions} positions; shorten its sample first "
                                "(rlxf.feedback.ai.fit.fit_sample with HFJudge.room)")

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _continuation(self, prompt: str, prefix: list[int], choice: str) -> list[int]:
        """The tokens ``choice`` adds to ``prompt`` in running text (see rlxf.data.tokenize.encode_pair)."""
        full = self._encode(prompt + choice)
        if full[:len(prefix)] == prefix and len(full) > len(prefix):
            return full[len(prefix):]
        return self._encode(choice)

    @torch.no_grad()
    def _logprobs(self, rows: list[tuple[list[int], list[int]]]) -> list:
        """For each ``(prefix, continuation)``: log P(continuation | prefix) as a float, or,
        for an empty continuation, the next-token log-prob vector (V,) after the prefix."""
        out: list = [None] * len(rows)
        order = sorted(range(len(rows)), key=lambda r: len(rows[r][0]) + len(rows[r][1]))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            seqs, splits = [], []
            for r in batch:
                prefix, cont = rows[r]
                self._check_length(len(prefix), len(cont))
                seqs.append(prefix + cont)
                splits.append(len(prefix))
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), pad, dtype=torch.long)  # (B, T) right-padded
            mask = torch.zeros_like(ids)
            for b, s in enumerate(seqs):
                ids[b, :len(s)] = torch.tensor(s)
                mask[b, :len(s)] = 1
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            logp = torch.log_softmax(logits.float(), dim=-1).cpu()  # (B, T, V)
            self._counts["forward_rows"] += len(seqs)
            for b, r in enumerate(batch):
                p, cont = splits[b], rows[r][1]
                if not cont:
                    out[r] = logp[b, p - 1]  # (V,) the distribution of the token after the prefix
                else:
                    # token cont[t] sits at position p + t and is predicted at position p + t - 1
                    positions = torch.arange(p - 1, p - 1 + len(cont))
                    out[r] = float(logp[b, positions, torch.tensor(cont)].sum())
        return out
