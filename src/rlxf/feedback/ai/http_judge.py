"""Any OpenAI-compatible server as the judge (vLLM, llama.cpp's server, hosted APIs), via httpx.

Requests go to ``{base_url}/completions`` (or ``/chat/completions`` with
``endpoint="chat"``). What makes this safe to point at a paid API for hours:

- **Cache**: each successful response is stored in a
  :class:`~rlxf.feedback.ai.cache.ResponseCache` under a hash of (model, endpoint kind,
  full request body) before it is used, so a re-run or a crashed run never pays twice.
- **Retries**: timeouts, connection errors, HTTP 408/429/5xx and malformed JSON are
  retried up to ``max_retries`` times, waiting ``backoff * 2**attempt`` seconds with
  jitter (half fixed, half random, capped at ``max_backoff``), or at least the server's
  ``Retry-After`` (honoured up to :data:`RETRY_AFTER_CAP` = 60 s: a server asking for
  an hour is asked again sooner, and the wait never hangs a run unannounced). Each wait
  is logged (INFO) with its cause and the attempt it leads to. Other 4xx answers are
  the request's fault and fail at once (``JudgeRequestError.permanent``). A request
  that failed for good is not sent again by the same judge: a caller redoing a failed
  batch item by item pays only once for it (a new run tries it afresh).
- **Concurrency**: at most ``concurrency`` requests in flight (a thread pool).
- **No log-probs, no guessing**: when the server returns no usable log-probs, the
  generated text goes through the strict parser (:mod:`.parse`); text it cannot read
  comes back as ``method="unparseable"``, for the caller to count.
- **Context length**: the server's is unknown to a client, and a server refuses a prompt
  longer than it (a 400 this client names as such). Given ``context_length`` and a
  tokenizer that counts as the server does, :meth:`OpenAIJudge.room` makes callers
  shorten the sample as for a local judge (:mod:`.fit`), leaving room for the special
  tokens the server adds (a BOS; the chat template around a chat message).

The API key is sent as a bearer token and never logged or stored.
"""

from __future__ import annotations

import email.utils
import functools
import logging
import math
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import httpx

from rlxf.feedback.ai.cache import ResponseCache, request_key
from rlxf.feedback.ai.fit import Room
from rlxf.feedback.ai.judge import AnswerScores, Completion, JudgeRequestError, NoLogprobs, cut_at_stop
from rlxf.feedback.ai.parse import parse_choice
from rlxf.feedback.ai.scoring import ChoiceScore, logsumexp

log = logging.getLogger("rlxf")

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
RETRY_AFTER_CAP = 60.0  # seconds: the longest wait a server's Retry-After header gets
TINY_PROB = 1e-9  # the least probability an answer missing from the top log-probs is given
_SKIP_CHARS = " \t\n*_`\"'"  # leading tokens of these chars only are skipped before the answer
_TOKEN_MARKS = "Ġ▁"  # byte-level and sentencepiece space markers some servers leave in tokens
_LENGTH_REFUSAL = re.compile(r"context.?(length|size|window)|too (long|many tokens)|maximum.*tokens|"
                             r"exceeds?.*(context|limit|tokens)")


class OpenAIJudge:
    """A judge behind an OpenAI-compatible HTTP API."""

    def __init__(self, base_url: str, model: str, *, endpoint: Literal["completions", "chat"] = "completions",
                 api_key: str | None = None, concurrency: int = 8, timeout: float = 60.0, max_retries: int = 6,
                 backoff: float = 0.5, max_backoff: float = 30.0, top_logprobs: int = 5,
                 answer_max_tokens: int = 8, context_length: int | None = None, tokenizer: Any = None,
                 cache: ResponseCache | None = None, transport: httpx.BaseTransport | None = None) -> None:
        if context_length is not None and tokenizer is None:
            raise ValueError("context_length needs the tokenizer that counts the server's tokens")
        self.url = base_url.rstrip("/") + ("/chat/completions" if endpoint == "chat" else "/completions")
        self.model, self.endpoint, self.identity = model, endpoint, f"{model} via {base_url}"
        self.concurrency, self.max_retries = concurrency, max_retries
        self.backoff, self.max_backoff = backoff, max_backoff
        self.top_logprobs, self.answer_max_tokens = top_logprobs, answer_max_tokens
        self.context_length, self.tokenizer = context_length, tokenizer
        self.cache = cache
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=timeout, headers=headers, transport=transport,
                                    limits=httpx.Limits(max_connections=concurrency))
        self._counts: Counter = Counter()
        self._failed: dict[str, JudgeRequestError] = {}  # request key -> how it failed for good
        self._lock = threading.Lock()
        self._jitter = random.Random()

    def stats(self) -> dict[str, int]:
        with self._lock:
            counts = dict(self._counts)
        if self.cache is not None:
            counts.update(cache_hits=self.cache.hits, cache_misses=self.cache.misses)
        return counts

    def close(self) -> None:
        self._client.close()

    def room(self, *, new_tokens: int = 0, answers: Sequence[str] = ()) -> Room | None:
        """The room a prompt has when the server is then to write ``new_tokens`` tokens, or to
        judge between ``answers`` (it writes up to ``answer_max_tokens``; scored by echo, an
        answer is part of the prompt); ``None`` without ``context_length``: the server
        refuses a prompt that does not fit."""
        if self.context_length is None:
            return None
        longest = max((len(self._encode(a)) for a in answers), default=0)
        written = max(new_tokens, self.answer_max_tokens if answers else 0, longest)
        return Room(self.context_length, written + self._added_tokens(), self.tokenizer)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _added_tokens(self) -> int:
        """Tokens the server puts around a prompt: the chat template's (a user message and
        the assistant's start) on the chat endpoint, the tokenizer's special tokens (BOS) on
        completions."""
        if self.endpoint == "chat" and getattr(self.tokenizer, "chat_template", None):
            around = self.tokenizer.apply_chat_template([{"role": "user", "content": ""}], tokenize=False,
                                                        add_generation_prompt=True)
            return len(self._encode(around))
        return len(self.tokenizer("")["input_ids"])

    # -- the three judge methods ------------------------------------------------------------

    def answer_logprobs(self, prompts: Sequence[str], answers: Sequence[str]) -> list[AnswerScores]:
        """Log-probs of the answers at the judge's first real output token (whitespace and
        markdown tokens before it are skipped); the strict text parser when there are none."""
        def one(prompt: str) -> AnswerScores:
            body = self._body(prompt, max_tokens=self.answer_max_tokens, temperature=0.0)
            if self.endpoint == "chat":
                body.update(logprobs=True, top_logprobs=self.top_logprobs)
            else:
                body["logprobs"] = self.top_logprobs
            choice = self._post(body)["choices"][0]
            text = _text(choice)
            top = _first_answer_position(choice.get("logprobs"))
            if top:
                lps = _answer_logprobs(top, answers)
                if lps is not None:
                    return AnswerScores("logprobs", lps, text=text)
            picked = parse_choice(text) if len(answers) == 2 else None
            if picked is None:
                return AnswerScores("unparseable", text=text)
            return AnswerScores("text", choice=picked, text=text)

        return self._map(one, prompts)

    def score_choices(self, prompts: Sequence[str], choices: Sequence[str]) -> list[list[ChoiceScore]]:
        """log P(choice | prompt) from the server's echoed prompt log-probs (completions only:
        one request per prompt carrying all ``prompt + choice`` texts). A token that
        straddles the prompt/choice boundary counts wholly for the choice."""
        if self.endpoint == "chat":
            raise NoLogprobs("the chat endpoint cannot echo prompt log-probs; use endpoint=completions")

        def one(prompt: str) -> list[ChoiceScore]:
            body = self._body([prompt + c for c in choices], max_tokens=1, temperature=0.0)
            body.update(echo=True, logprobs=0)
            out = sorted(self._post(body)["choices"], key=lambda c: c.get("index", 0))
            if len(out) != len(choices):
                raise NoLogprobs(f"asked to score {len(choices)} texts, the server returned {len(out)}")
            return [_echoed_logprob(c.get("logprobs"), len(prompt), len(prompt) + len(text))
                    for c, text in zip(out, choices)]

        return self._map(one, prompts)

    def generate(self, prompts: Sequence[str], *, max_tokens: int, temperature: float, n: int = 1,
                 stop: Sequence[str] = (), seed: int = 0) -> list[list[str]]:
        """``n`` completions per prompt; the seed is sent (servers that honour it are reproducible)."""
        return [[c.text for c in cs] for cs in self.complete(prompts, max_tokens=max_tokens, temperature=temperature,
                                                             n=n, stop=stop, seed=seed)]

    def complete(self, prompts: Sequence[str], *, max_tokens: int, temperature: float, n: int = 1,
                 stop: Sequence[str] = (), seed: int = 0) -> list[list[Completion]]:
        """:meth:`generate`'s completions; one the server stopped for its length or cut short
        (``finish_reason`` "length", "max_tokens", "model_length", "content_filter", "abort"),
        or gave no reason for, did not end, unless a stop string is found in it."""
        def one(prompt: str) -> list[Completion]:
            body = self._body(prompt, max_tokens=max_tokens, temperature=temperature)
            body.update(n=n, seed=seed)
            if stop:
                body["stop"] = list(stop)
            out = sorted(self._post(body)["choices"], key=lambda c: c.get("index", 0))
            cut = [cut_at_stop(_text(c), stop) for c in out]  # also here: not every server honours stop
            if any(c.get("finish_reason") is None for c in out):
                _warn_no_reason()
            return [Completion(text, found or _finished(c.get("finish_reason"))) for c, (text, found) in zip(out, cut)]

        return self._map(one, prompts)

    # -- requests ------------------------------------------------------------------------------

    def _body(self, prompt: str | list[str], **params: Any) -> dict[str, Any]:
        if self.endpoint == "chat":
            return {"model": self.model, "messages": [{"role": "user", "content": prompt}], **params}
        return {"model": self.model, "prompt": prompt, **params}

    def _map(self, fn: Callable, items: Sequence) -> list:
        if len(items) <= 1 or self.concurrency == 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(fn, items))

    def _count(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        """The server's JSON answer to ``body``: from the cache, or fetched with retries and cached."""
        key = request_key(model=self.model, endpoint=self.endpoint, params=body)
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            return hit
        with self._lock:
            failed = self._failed.get(key)
        if failed is not None:
            raise failed
        try:
            data = self._fetch(body)
        except JudgeRequestError as err:
            with self._lock:
                self._failed[key] = err
            raise
        if self.cache is not None:
            self.cache.put(key, data)
        return data

    def _fetch(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body``, retrying up to ``max_retries`` times; raises :class:`JudgeRequestError`."""
        attempts = self.max_retries + 1
        problem = ""
        for attempt in range(attempts):
            if attempt:
                self._count("retries")
            wait = None
            self._count("requests")
            try:
                response = self._client.post(self.url, json=body)
            except httpx.TimeoutException:
                self._count("timeouts")
                problem = "timed out"
            except httpx.TransportError as err:
                self._count("connection_errors")
                problem = f"connection error: {type(err).__name__}"
            else:
                if response.status_code == 200:
                    try:
                        data = response.json()
                        if not isinstance(data, dict) or not data.get("choices"):
                            raise ValueError("no 'choices' in the answer")
                    except ValueError as err:
                        self._count("malformed")
                        problem = f"malformed answer ({err})"
                    else:
                        return data
                elif response.status_code in RETRY_STATUS:
                    self._count(f"http_{response.status_code}")
                    problem = f"HTTP {response.status_code}"
                    wait = _retry_after(response.headers.get("retry-after"))
                else:
                    self._count("refused")
                    raise JudgeRequestError(f"{self.url} refused the request: HTTP {response.status_code}: "
                                            f"{response.text[:300]}{self._refusal_hint(response)}", permanent=True)
            if attempt + 1 < attempts:
                delay = self._delay(attempt)
                if wait is not None:
                    delay = max(delay, min(wait, RETRY_AFTER_CAP))
                log.info("judge request: %s; retrying in %.1f s (attempt %d of %d)", problem, delay, attempt + 2,
                         attempts)
                time.sleep(delay)
        self._count("failed")
        log.warning("judge request: %s; gave up after %d attempts", problem, attempts)
        raise JudgeRequestError(f"{self.url}: gave up after {attempts} attempts (last: {problem})")

    def _refusal_hint(self, response: httpx.Response) -> str:
        """How to fix a refusal for length, which servers word in many ways (vLLM: "maximum
        context length", OpenAI: "context_length_exceeded", llama.cpp: "exceeds the
        available context size")."""
        text = response.text.lower()
        if response.status_code not in (400, 413, 422) or not _LENGTH_REFUSAL.search(text):
            return ""
        if self.context_length is None:
            return (" (the prompt is longer than the model's context: set judge.context_length to it, and "
                    "judge.tokenizer to its tokenizer if judge.model is not one, and rlxf shortens samples to fit)")
        return (f" (the prompt is longer than the model's context although fitted to judge.context_length="
                f"{self.context_length}: is that the served length, and does judge.tokenizer count as the "
                f"server does?)")

    def _delay(self, attempt: int) -> float:
        """Exponential backoff with jitter: half of the step fixed, half uniformly random."""
        step = min(self.max_backoff, self.backoff * 2 ** attempt)
        return step / 2 + self._jitter.uniform(0, step / 2)


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds, or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _text(choice: dict) -> str:
    if "message" in choice:
        return (choice["message"] or {}).get("content") or ""
    return choice.get("text") or ""


def _positions(logprobs: dict | None) -> list[tuple[str, dict[str, float]]]:
    """``(sampled token, {token: logprob} of its top alternatives)`` per generated position,
    from either the legacy completions format or the newer ``content`` list format."""
    if not isinstance(logprobs, dict):
        return []
    if isinstance(logprobs.get("content"), list):
        out = []
        for pos in logprobs["content"]:
            top = {t["token"]: t["logprob"] for t in pos.get("top_logprobs") or []}
            out.append((pos.get("token", ""), top))
        return out
    tokens, tops = logprobs.get("tokens") or [], logprobs.get("top_logprobs") or []
    return [(tok, dict(top or {})) for tok, top in zip(tokens, tops)]


def _first_answer_position(logprobs: dict | None) -> dict[str, float] | None:
    for token, top in _positions(logprobs):
        if token.strip(_SKIP_CHARS + _TOKEN_MARKS):
            return top or None
    return None


def _answer_logprobs(top: dict[str, float], answers: Sequence[str]) -> tuple[float, ...] | None:
    """Per answer, log-sum-exp over the top tokens that spell it (" 1", "1", "▁1").

    An answer absent from the top-k has at most the smallest listed probability, and at
    most the mass the listed tokens leave, ``1 - sum(exp(listed))``; it gets the smaller
    of the two bounds (at least :data:`TINY_PROB`). With ``top_logprobs=1`` the first bound
    alone is the listed answer's own probability, which would make every verdict 0.5:
    top-1 "1" at 0.9 gives "2" at most 0.1, so P(first) = 0.9 / (0.9 + 0.1) = 0.9.
    ``None`` when no answer is listed at all.
    """
    left = 1.0 - sum(math.exp(lp) for lp in top.values())
    floor = min(min(top.values()), math.log(max(left, TINY_PROB)))
    found = []
    for answer in answers:
        terms = [lp for tok, lp in top.items() if tok.strip().strip(_TOKEN_MARKS).strip() == answer.strip()]
        found.append(logsumexp(terms) if terms else None)
    if all(f is None for f in found):
        return None
    return tuple(floor if f is None else f for f in found)


def _echoed_logprob(logprobs: dict | None, start: int, end: int) -> ChoiceScore:
    """Sum of the echoed log-probs of the tokens covering characters ``[start, end)``."""
    if not isinstance(logprobs, dict) or not logprobs.get("text_offset") or not logprobs.get("token_logprobs"):
        raise NoLogprobs("the server did not echo prompt log-probs (needs echo=true and logprobs support)")
    total, tokens = 0.0, []
    for tok, lp, offset in zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["text_offset"]):
        if offset < end and offset + len(tok) > start:
            if lp is None:
                raise NoLogprobs("the server echoed no log-prob for a scored token")
            total += lp
            tokens.append(tok)
    return ChoiceScore(total, tuple(tokens))


_CUT = {"length", "max_tokens", "model_length", "content_filter", "abort"}
# finish_reason of a text the server cut short: OpenAI, vLLM, TGI, llama.cpp and Anthropic-style names


def _finished(reason: str | None) -> bool:
    """Whether a completion with ``finish_reason`` ``reason`` ended of itself ("stop",
    "eos_token", "end_turn", "stop_sequence", ...); none given: unknown, so not."""
    return reason is not None and str(reason).lower() not in _CUT


@functools.cache  # once per process
def _warn_no_reason() -> None:
    log.warning("the judge server gave a completion without a finish_reason: such texts count as cut at max_tokens "
                "(never used as a finished revision)")
