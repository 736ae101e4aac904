"""The ``judge:`` config section shared by ``rlxf label``, ``label-eval`` and ``critique``.

    judge:
      backend: hf                 # a local transformers model ...
      model: path/or/hub-id
    judge:
      backend: openai             # ... or any OpenAI-compatible server
      model: meta-llama/Llama-3.1-70B-Instruct
      base_url: http://localhost:8000/v1
      api_key_env: OPENAI_API_KEY # the key's *name*; the key itself is never written down
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rlxf.errors import ConfigError
from rlxf.feedback.ai.cache import ResponseCache
from rlxf.feedback.ai.judge import Judge
from rlxf.models.loading import DType


@dataclass(kw_only=True)
class JudgeConfig:
    model: str
    """hf: a local folder or hub id; openai: the model name the server knows."""
    backend: Literal["hf", "openai"] = "hf"
    """'hf' runs the model here with transformers; 'openai' calls an OpenAI-compatible server."""
    tokenizer: str | None = None
    """Tokenizer path or id; null uses model. openai: only read with context_length, to count the server's tokens."""
    dtype: DType = "float32"
    """hf: weight dtype."""
    revision: str | None = None
    """hf: hub revision."""
    trust_remote_code: bool = False
    """hf: run model code shipped with the checkpoint (off: it executes arbitrary Python)."""
    device: str = "auto"
    """hf: 'auto', 'cpu', 'cuda', 'cuda:1', 'mps'."""
    batch_size: int = 8
    """hf: sequences per forward pass."""
    base_url: str | None = None
    """openai: the API root, e.g. http://localhost:8000/v1."""
    endpoint: Literal["completions", "chat"] = "completions"
    """openai: /v1/completions (log-probs, direct scoring) or /v1/chat/completions."""
    api_key_env: str | None = None
    """openai: name of the environment variable holding the API key (null: no key)."""
    concurrency: int = 8
    """openai: requests in flight at once."""
    timeout: float = 60.0
    """openai: seconds before a request is abandoned (and retried)."""
    max_retries: int = 6
    """openai: retries per request after timeouts, connection errors, 408/429/5xx, malformed JSON (each logged)."""
    backoff: float = 0.5
    """openai: first retry waits about this many seconds; each further one doubles it (with jitter)."""
    max_backoff: float = 30.0
    """openai: longest wait between retries, unless the server's Retry-After asks for more (honoured up to 60 s)."""
    top_logprobs: int = 5
    """openai: alternatives per token to request; the answers "1"/"2" are looked up among them."""
    answer_max_tokens: int = 8
    """openai: tokens generated for an answer (read by the strict parser when there are no log-probs)."""
    context_length: int | None = None
    """openai: the served model's context length; set, samples are shortened to fit (counted with judge.tokenizer)."""

    def validate(self) -> None:
        if self.backend == "openai":
            if not self.base_url:
                raise ConfigError("judge.backend=openai needs judge.base_url (e.g. http://localhost:8000/v1)")
            if not self.base_url.startswith(("http://", "https://")):
                raise ConfigError(f"judge.base_url must start with http:// or https://, got {self.base_url!r}")
        elif self.base_url or self.context_length is not None:
            key = "base_url" if self.base_url else "context_length"
            raise ConfigError(f"judge.{key} is set but judge.backend is 'hf' (whose context length is read from "
                              f"the model); set judge.backend=openai or drop judge.{key}")
        if self.context_length is not None and self.context_length < 2:
            raise ConfigError(f"judge.context_length must be ≥ 2 (the served model's tokens), "
                              f"got {self.context_length}")
        for name in ("concurrency", "batch_size", "top_logprobs", "answer_max_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"judge.{name} must be ≥ 1, got {getattr(self, name)}")
        if self.max_retries < 0 or self.timeout <= 0 or self.backoff < 0:
            raise ConfigError("judge.max_retries must be ≥ 0, judge.timeout > 0 and judge.backoff ≥ 0")


def make_judge(cfg: JudgeConfig, cache_path: str | Path | None) -> Judge:
    """The configured backend, caching finished requests in ``cache_path`` (SQLite)."""
    cache = ResponseCache(cache_path) if cache_path else None
    if cfg.backend == "openai":
        from rlxf.feedback.ai.http_judge import OpenAIJudge

        api_key = None
        if cfg.api_key_env:
            api_key = os.environ.get(cfg.api_key_env)
            if not api_key:
                raise ConfigError(f"judge.api_key_env names ${cfg.api_key_env}, which is not set; "
                                  f"export {cfg.api_key_env}=... (the key is never written to the run)")
        tokenizer = None
        if cfg.context_length is not None:
            from rlxf.models.loading import load_tokenizer

            try:
                tokenizer = load_tokenizer(cfg.tokenizer or cfg.model, revision=cfg.revision,
                                           trust_remote_code=cfg.trust_remote_code)
            except ConfigError as err:
                missing = "judge.tokenizer" if cfg.tokenizer else "judge.tokenizer (null: judge.model)"
                raise ConfigError(f"judge.context_length counts tokens with {missing}, which did not load: {err}; "
                                  f"set judge.tokenizer to a local copy of the served model's tokenizer") from None
            tokenizer.model_max_length = cfg.context_length  # the server's, not the checkpoint's training length
        return OpenAIJudge(cfg.base_url, cfg.model, endpoint=cfg.endpoint, api_key=api_key,
                           concurrency=cfg.concurrency, timeout=cfg.timeout, max_retries=cfg.max_retries,
                           backoff=cfg.backoff, max_backoff=cfg.max_backoff, top_logprobs=cfg.top_logprobs,
                           answer_max_tokens=cfg.answer_max_tokens, context_length=cfg.context_length,
                           tokenizer=tokenizer, cache=cache)
    from rlxf.feedback.ai.hf_judge import HFJudge
    from rlxf.models.loading import ModelConfig

    model = ModelConfig(name_or_path=cfg.model, tokenizer=cfg.tokenizer, dtype=cfg.dtype, revision=cfg.revision,
                        trust_remote_code=cfg.trust_remote_code)
    return HFJudge.load(model, device=cfg.device, batch_size=cfg.batch_size, cache=cache, device_key="judge.device")
