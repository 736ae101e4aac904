"""Sampling answers from a causal LM with Hugging Face ``generate``.

Prompts are rendered and split from answers exactly as in training (see
``rlxf.data.tokenize``), left-padded, and sampled in length-sorted batches. Each
answer reports whether the model ended it (emitted EOS) — the gold oracle and the
PPO EOS penalty both need to know. :func:`cut_at_stop` cuts an answer at a stop string
such as the next dialogue turn (:data:`DIALOGUE_TURNS`, the default ``stop`` of ``rlxf
sxs``/``autosxs`` sampling and of ``rlxf annotate import``); :func:`generate` given
``stop`` also stops sampling an answer there (:class:`AnswerStop`), so a batch ends
when its every answer has ended instead of running to ``max_new_tokens``.

:func:`generate_stored` is one :func:`generate` call whose answers are appended to a file
chunk by chunk, with the random number generator's state after each, so a crashed
evaluation samples again only the chunk it was in, and ends with the same answers.

Torch is imported inside :func:`generate` only, so that config modules can read
:data:`DIALOGUE_TURNS` without it.

This is for evaluation and data generation; PPO samples its rollouts through
:mod:`rlxf.models.rollout_backends` (HF ``generate`` by default, vLLM optionally).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from rlxf.data.records import Prompt
from rlxf.data.tokenize import prompt_text
from rlxf.errors import ConfigError

log = logging.getLogger("rlxf")

DIALOGUE_TURNS = ("\n\nHuman:", "\nHuman:", "\n\nAssistant:", "\nAssistant:", "\n\nUser:", "\nUser:")
# The default stop strings: the start of a next dialogue turn. Anthropic HH prompts end in
# "\n\nAssistant:" and a sampled answer often goes on to "\n\nHuman: ...". The answer is
# cut at the earliest match, so the double-newline forms leave no newline at its end.


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``(text before the first stop string, whether one was found)``."""
    end = min((i for s in stop if (i := text.find(s)) >= 0), default=None)
    return (text, False) if end is None else (text[:end], True)


def check_stop(stop: list[str], key: str) -> None:
    """Refuse an empty stop string (``key``: the config key that set ``stop``)."""
    if any(not s for s in stop):
        raise ConfigError(f"{key} must not hold an empty string (it would cut every answer to nothing); "
                          f"use {key}=[] for no stop strings")


class AnswerStop:
    """Which answers hold one of ``stop``: a Hugging Face stopping criterion that ends an
    answer where :func:`cut_at_stop` would cut its text.

    An answer is the tokens of ``input_ids`` (B, L) after the first ``start`` (see
    :meth:`after`), decoded without special tokens and with row b's ``prefixes[b]`` (the
    separator, which is not shown) removed from its start. Hugging Face's own
    ``stop_strings`` match the prompt and the separator too, and would end an answer
    whose text holds no stop string. To spare decoding every answer at every token, the
    last few tokens are looked at first: a stop string the newest token completed is in
    them.
    """

    def __init__(self, tokenizer, stop: Sequence[str], prefixes: Sequence[str] | None = None, start: int = 0) -> None:
        self.tokenizer, self.stop, self.prefixes, self.start = tokenizer, list(stop), prefixes, start
        self.window = max(len(s.encode("utf-8")) for s in self.stop) + 2  # tokens, each a byte or more
        self.done: list[bool] | None = None

    def after(self, start: int) -> AnswerStop:
        """A fresh criterion (no answer seen yet) whose answers start at column ``start``."""
        return AnswerStop(self.tokenizer, self.stop, self.prefixes, start)

    def holds(self, ids: Sequence[int], row: int) -> bool:
        """Whether the text of answer ``ids`` of row ``row`` holds a stop string."""
        text = self.tokenizer.decode(list(ids), skip_special_tokens=True)
        if self.prefixes is not None and self.prefixes[row]:
            text = text.removeprefix(self.prefixes[row])
        return any(s in text for s in self.stop)

    def __call__(self, input_ids, scores=None, **_):
        import torch

        answers = input_ids[:, self.start:].tolist()
        if self.done is None:
            self.done = [False] * len(answers)
        for b, ids in enumerate(answers):
            if not self.done[b] and any(s in self.tokenizer.decode(ids[-self.window:], skip_special_tokens=True)
                                        for s in self.stop):
                self.done[b] = self.holds(ids, b)
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)


@dataclass(frozen=True)
class Generation:
    prompt: Prompt
    text: str
    """The answer, decoded, without the separator and without EOS; cut before the first
    stop string when :func:`generate` was given ``stop``."""
    ended: bool
    """True when the answer ended within ``max_new_tokens``: the model emitted EOS (or
    another of its :func:`end_tokens`), or wrote one of ``stop``."""
    token_ids: tuple[int, ...]
    """The answer's tokens up to and including EOS, or up to the stop string's last token."""
    stopped: bool = False
    """True when it ended at a stop string (``text`` is cut before it)."""


def encode_prompts(prompts: list[Prompt], tokenizer, separator: str) -> list[list[int]]:
    return [tokenizer(prompt_text(p, tokenizer, separator)[0], add_special_tokens=False)["input_ids"]
            for p in prompts]


def fit_prompts(encoded: list[list[int]], model, max_new_tokens: int, key: str = "max_new_tokens", *,
                warn: bool = True) -> list[list[int]]:
    """``encoded`` prompts, each cut from its start (its end, next to the answer, matters
    most) to what the model's positions leave beside a ``max_new_tokens`` answer; ``key``
    is the config key that set it, for the error when it leaves no room. ``warn``: log
    how many were cut (once per message)."""
    from rlxf.models.loading import max_positions

    limit = max_positions(model)
    if limit is None:
        return encoded
    room = limit - max_new_tokens
    if room < 1:
        raise ConfigError(f"{key} ({max_new_tokens}) leaves no room for a prompt in the model's {limit} "
                          f"positions; set {key} below {limit}")
    cut = sum(len(e) > room for e in encoded)
    if cut and warn:
        _warn_once(f"{cut} of {len(encoded)} prompts were longer than the {room} tokens the model's {limit} positions "
                   f"leave beside a {max_new_tokens}-token answer, and lost tokens from their start")
    return [e[-room:] for e in encoded]


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """Log ``message`` the first time only: an evaluation samples the same prompts from
    two or three models of one shape, and one warning says it for all of them."""
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def generate(model, tokenizer, prompts: list[Prompt], *, max_new_tokens: int, temperature: float = 1.0,
             top_p: float = 1.0, greedy: bool = False, batch_size: int = 32, separator: str = " ",
             seed: int | None = None, progress: bool = False, key: str = "max_new_tokens",
             stop: Sequence[str] = (), warn_cut: bool = True) -> list[Generation]:
    """One sampled (or greedy) answer per prompt, in the order of ``prompts`` (``key``: the
    config key of ``max_new_tokens``, named if it leaves no room for a prompt). An answer
    that writes one of ``stop`` ends there: it is sampled no further and cut before it.
    ``warn_cut=False``: the caller has said how many prompts were cut to fit the model."""
    import torch

    from rlxf.progress import progress as bar

    if seed is not None:
        torch.manual_seed(seed)
    device = next(model.parameters()).device
    encoded = fit_prompts(encode_prompts(prompts, tokenizer, separator), model, max_new_tokens, key, warn=warn_cut)
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    out: list[Generation | None] = [None] * len(prompts)
    was_training = model.training
    model.eval()
    ends, pad = end_tokens(model, tokenizer), tokenizer.pad_token_id
    sampling = {} if greedy else {"temperature": temperature, "top_p": top_p, "top_k": 0}
    for start in bar(range(0, len(order), batch_size), desc="generate", enabled=progress):
        idx = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in idx)
        stopping = {}
        if stop:
            from transformers import StoppingCriteriaList

            seps = [prompt_text(prompts[i], tokenizer, separator)[1] for i in idx]
            stopping["stopping_criteria"] = StoppingCriteriaList([AnswerStop(tokenizer, stop, seps, start=width)])
        ids = torch.full((len(idx), width), pad, dtype=torch.long)  # (B, P) left-padded
        mask = torch.zeros_like(ids)
        for row, i in enumerate(idx):
            n = len(encoded[i])
            ids[row, width - n:] = torch.tensor(encoded[i])
            mask[row, width - n:] = 1
        with torch.no_grad():
            seqs = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=not greedy,
                                  max_new_tokens=max_new_tokens, eos_token_id=ends, pad_token_id=pad, **sampling,
                                  **stopping)
        for row, i in enumerate(idx):
            out[i] = _answer(prompts[i], seqs[row, width:].tolist(), tokenizer, separator, stop, ends)
    model.train(was_training)
    return out


def end_tokens(model, tokenizer) -> list[int]:
    """The tokens that end an answer: the tokenizer's EOS and those of the model's
    ``generation_config`` (a chat model ends its turn with its own, e.g. Llama 3's
    ``<|eot_id|>`` beside ``<|end_of_text|>``), the tokenizer's first."""
    config = getattr(model, "generation_config", None)
    theirs = getattr(config, "eos_token_id", None)
    theirs = [] if theirs is None else [theirs] if isinstance(theirs, int) else list(theirs)
    return list(dict.fromkeys([tokenizer.eos_token_id, *theirs]))


def _answer(prompt: Prompt, answer: list[int], tokenizer, separator: str, stop: Sequence[str],
            ends: Sequence[int] | None = None) -> Generation:
    """The :class:`Generation` of one row of ``generate``'s output (the tokens after the
    prompt); ``ends``: the tokens that end it (default: the tokenizer's EOS)."""
    pad = tokenizer.pad_token_id
    ends = set(ends or [tokenizer.eos_token_id])
    end = next((k for k, t in enumerate(answer) if t in ends), None)
    ended = end is not None
    answer = answer[:end + 1] if ended else answer
    text = tokenizer.decode([t for t in answer if t not in ends], skip_special_tokens=True)
    sep = prompt_text(prompt, tokenizer, separator)[1]
    text = text.removeprefix(sep) if sep else text
    text, stopped = cut_at_stop(text, stop)
    if stopped:  # sampling stopped there: what follows is padding (an "EOS" where the pad token is EOS)
        while answer and answer[-1] == pad:
            answer = answer[:-1]
    return Generation(prompt, text, ended or stopped, tuple(answer), stopped)


def generate_stored(model, tokenizer, prompts: list[Prompt], store: str | os.PathLike, *, identity: dict,
                    batch_size: int = 32, chunk_batches: int = 8, seed: int = 0, progress: bool = False,
                    desc: str = "generate", **settings) -> list[Generation]:
    """``generate(model, tokenizer, prompts, batch_size=batch_size, seed=seed, **settings)``
    with its answers kept in ``store`` (JSONL) as they come, so that a re-run samples only
    what a crash left undone and still returns that one call's answers.

    The prompts are sampled in :func:`generate`'s batches, ``chunk_batches`` at a time;
    each finished chunk is one line of ``store``: its answers and the random number
    generator's state after it. A re-run with the same ``identity`` (what made the
    answers: the model's :func:`~rlxf.models.loading.fingerprint`, the settings), the same
    prompts and chunking reads the finished chunks back, restores the generator and samples
    the rest. A file written for anything else, or a last line cut by the crash, is sampled
    again (logged). ``settings``: the rest of :func:`generate`'s keywords.
    """
    import torch

    encoded = fit_prompts(encode_prompts(prompts, tokenizer, settings.get("separator", " ")), model,
                          settings["max_new_tokens"], settings.get("key", "max_new_tokens"))
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))  # generate's order: the same batches
    size = batch_size * chunk_batches
    chunks = [order[start:start + size] for start in range(0, len(order), size)]
    device = next(model.parameters()).device
    header = {"identity": identity, "prompts": len(prompts), "prompts_hash": _prompts_hash(prompts), "seed": seed,
              "chunk": size, "device": device.type, "format": 2}
    header = json.loads(json.dumps(header))  # as it reads back
    done = _read_store(Path(store), header, chunks, device)
    out: list[Generation | None] = [None] * len(prompts)
    for k, (answers, _) in enumerate(done):
        for i, g in zip(chunks[k], answers):
            out[i] = Generation(prompts[i], g["text"], g["ended"], tuple(g["token_ids"]), g["stopped"])
    if done:
        kept = sum(len(chunks[k]) for k in range(len(done)))
        log.info("%s: %d of %d answers were sampled before; sampling the other %d", store, kept, len(prompts),
                 len(prompts) - kept)
        _set_rng_state(done[-1][1], device)  # where the uninterrupted call's generator stood
    else:
        torch.manual_seed(seed)
    from rlxf.progress import progress as bar

    with open(store, "a", encoding="utf-8") as fh:
        for k in bar(range(len(done), len(chunks)), desc=desc, total=len(chunks), initial=len(done),
                     enabled=progress):
            gens = generate(model, tokenizer, [prompts[i] for i in chunks[k]], batch_size=batch_size, seed=None,
                            warn_cut=False, **settings)  # the cut prompts of all chunks were counted above
            for i, g in zip(chunks[k], gens):
                out[i] = g
            row = {"chunk": k, "answers": [{key: v for key, v in asdict(g).items() if key != "prompt"}
                                           for g in gens], "rng": _rng_state(device)}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    return out


_STORED = {"text", "ended", "token_ids", "stopped"}  # a Generation's fields but its prompt


def _prompts_hash(prompts: list[Prompt]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(prompts, ensure_ascii=False).encode()).hexdigest()[:16]


def _rng_state(device) -> dict[str, str]:
    """The state of the generators sampling on ``device`` (CPU's, and the accelerator's), as text."""
    import base64

    import torch

    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    elif device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return {name: base64.b64encode(t.numpy().tobytes()).decode("ascii") for name, t in state.items()}


def _set_rng_state(state: dict[str, str], device) -> None:
    """Restore what :func:`_rng_state` saved (raises ValueError or RuntimeError on a state torch refuses)."""
    import base64

    import torch

    def tensor(name: str):
        return torch.frombuffer(bytearray(base64.b64decode(state[name], validate=True)), dtype=torch.uint8)

    if device.type == "cuda":
        torch.cuda.set_rng_state(tensor("cuda"), device)
    elif device.type == "mps":
        torch.mps.set_rng_state(tensor("mps"))
    torch.set_rng_state(tensor("cpu"))


def _read_store(store: Path, header: dict, chunks: list[list[int]], device) -> list[tuple[list[dict], dict]]:
    """The first finished chunks of ``store``, in order, each ``(answers, generator state
    after it)``, rewriting the file to its header and those (a new file when it is missing,
    of another header, or unreadable)."""
    import binascii

    import torch

    done: list[tuple[list[dict], dict]] = []
    if store.exists():
        # lines end in "\n" only: an answer may hold U+2028 or U+0085, which splitlines() would split at
        lines = store.read_text(encoding="utf-8").split("\n")
        lines = lines[:-1] if lines and not lines[-1] else lines
        try:
            same = bool(lines) and json.loads(lines[0]) == header
        except json.JSONDecodeError:
            same = False
        if not same:
            log.warning("%s holds answers sampled for another model, settings or prompts; sampling them again", store)
        saved = torch.get_rng_state()
        for n, line in enumerate(lines[1:] if same else [], start=2):
            try:
                row = json.loads(line)
                k = row["chunk"]
                if k != len(done) or k >= len(chunks) or len(row["answers"]) != len(chunks[k]) or \
                        not all(isinstance(a, dict) and _STORED <= a.keys() for a in row["answers"]):
                    raise ValueError(k)
                _set_rng_state(row["rng"], device)  # refused here, not after the chunks before it were kept
                done.append((row["answers"], row["rng"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError, RuntimeError, binascii.Error):
                log.warning("%s:%d: cut short or unreadable (the run stopped while writing it); its answers and "
                            "those after it are sampled again", store, n)
                break
        torch.set_rng_state(saved)
    tmp = store.with_name(store.name + ".tmp")
    tmp.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n"
                           for x in [header] + [{"chunk": k, "answers": a, "rng": r} for k, (a, r) in enumerate(done)]),
                   encoding="utf-8")
    os.replace(tmp, store)
    return done
