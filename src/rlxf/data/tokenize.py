"""Turning records into token ids: the prompt/answer boundary, truncation and packing.

A text prompt and its answer are joined as ``prompt + separator + answer`` (rlxf's
default separator is one space, so ``"question : ... answer :"`` + ``"the fox is red ."``
reads naturally); a conversational prompt is rendered by the tokenizer's chat template,
which already ends where the answer begins, so no separator is added. Generation uses
the same rule (see :func:`prompt_text`), so a model sees at inference exactly the
boundary it was trained on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from rlxf.data.records import Demonstration, Prompt
from rlxf.errors import ConfigError

log = logging.getLogger("rlxf")

IGNORE = -100  # label of tokens that carry no loss (prompt, padding)


def prompt_text(prompt: Prompt, tokenizer, separator: str) -> tuple[str, str]:
    """``(rendered prompt, separator to put before the answer)``."""
    if isinstance(prompt, str):
        return prompt, (separator if prompt else "")
    from rlxf.data.formats import render_prompt

    return render_prompt(prompt, tokenizer), ""


def check_prompts(prompts: list[Prompt], tokenizer, *, key: str, tokenizer_key: str) -> None:
    """Render every conversation in ``prompts`` with ``tokenizer`` now, so that one it cannot
    render (no chat template) stops a run before training, naming the config ``key`` of the
    prompts and ``tokenizer_key``, the command's key that chose the tokenizer."""
    from rlxf.data.formats import render_prompt

    try:
        for prompt in prompts:
            render_prompt(prompt, tokenizer, tokenizer_key=tokenizer_key)
    except ConfigError as err:
        raise ConfigError(f"{key}: {err}") from None


def encode_pair(prompt: Prompt, answer: str, tokenizer, separator: str) -> tuple[list[int], list[int]]:
    """Token ids of the prompt and of the answer (ending in EOS), split at their boundary.

    We tokenize the joined text and cut it where the prompt's own tokens end, so
    the answer's first token is the one a tokenizer produces in running text (for
    byte-level BPE ``" the"``, not ``"the"``). If the joined text does not start
    with the prompt's tokens, the two parts are tokenized apart.
    """
    text, sep = prompt_text(prompt, tokenizer, separator)
    prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
    full = tokenizer(text + sep + answer, add_special_tokens=False)["input_ids"]
    if full[:len(prompt_ids)] == prompt_ids:
        answer_ids = full[len(prompt_ids):]
    else:
        answer_ids = tokenizer(sep + answer, add_special_tokens=False)["input_ids"]
    return prompt_ids, answer_ids + [tokenizer.eos_token_id]


@dataclass
class Example:
    """One training sequence: ``labels`` is ``input_ids`` with prompt tokens set to IGNORE.

    ``position_ids`` restart at 0 at every packed document boundary.
    """

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.position_ids:
            self.position_ids = list(range(len(self.input_ids)))



def n_targets(example: Example) -> int:
    """Tokens of ``example`` a next-token loss predicts: labelled tokens after the first
    (nothing precedes the first one; the loss reads ``labels[:, 1:]``)."""
    return sum(1 for t in example.labels[1:] if t != IGNORE)


@dataclass
class TokenizeStats:
    examples: int = 0
    truncated: int = 0
    answer_tokens: int = 0


def tokenize_demonstrations(demos: list[Demonstration], tokenizer, *, max_length: int, separator: str = " ",
                            stats: TokenizeStats | None = None, length_key: str = "max_length") -> list[Example]:
    """Examples with loss on the answer tokens only (``length_key``: the config key that set
    ``max_length``, for the warning about cut examples).

    Too long: the prompt loses tokens from its start (its end, next to the answer,
    matters most); an answer longer than ``max_length`` is cut at its end. A record
    with an empty prompt is plain text (pretraining): it is split into
    ``max_length`` chunks with loss on every token, not truncated. A chunk's first token
    has nothing before it to be predicted from, so a last chunk of one token (the EOS
    of a text one longer than a multiple of ``max_length``) holds no target and is left out.
    """
    stats = stats if stats is not None else TokenizeStats()
    out = []
    for demo in demos:
        prompt_ids, answer_ids = encode_pair(demo.prompt, demo.completion, tokenizer, separator)
        if not prompt_ids:
            for start in range(0, len(answer_ids), max_length):
                chunk = answer_ids[start:start + max_length]
                if len(chunk) < 2:
                    continue
                out.append(Example(chunk, list(chunk)))
                stats.examples += 1
                stats.answer_tokens += len(chunk)
            continue
        if len(prompt_ids) + len(answer_ids) > max_length:
            stats.truncated += 1
            answer_ids = answer_ids[:max_length - 1]
            prompt_ids = prompt_ids[len(prompt_ids) - (max_length - len(answer_ids)):]
        out.append(Example(prompt_ids + answer_ids, [IGNORE] * len(prompt_ids) + answer_ids))
        stats.examples += 1
        stats.answer_tokens += len(answer_ids)
    if stats.truncated:
        log.warning("%d of %d examples were longer than %s=%d and were truncated",
                    stats.truncated, stats.examples, length_key, max_length)
    return out


def pack(examples: list[Example], max_length: int) -> list[Example]:
    """Best-fit-decreasing packing of whole examples into sequences of ≤ ``max_length``.

    Examples are never split across sequences, and each keeps its own positions
    (restarting at 0), from which the model builds a block-diagonal causal mask, so
    packed documents do not attend to each other.
    """
    bins: list[list[Example]] = []
    room: list[int] = []
    for ex in sorted(examples, key=lambda e: len(e.input_ids), reverse=True):
        n = len(ex.input_ids)
        best = min((i for i, r in enumerate(room) if r >= n), key=lambda i: room[i], default=None)
        if best is None:
            bins.append([ex])
            room.append(max_length - n)
        else:
            bins[best].append(ex)
            room[best] -= n
    return [Example([t for e in b for t in e.input_ids], [t for e in b for t in e.labels],
                    [t for e in b for t in e.position_ids]) for b in bins]


def collate(examples: list[Example], pad_id: int, *, packed: bool = False) -> dict:
    """Right-padded tensors: ``input_ids``, ``labels`` (B, T) and an ``attention_mask``
    or, for packed sequences, ``position_ids`` (the model derives the mask from them)."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(examples), width), dtype=torch.long)  # (B, T)
    pos = torch.zeros((len(examples), width), dtype=torch.long)  # (B, T)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
        pos[i, :n] = torch.tensor(e.position_ids)
    if packed:
        return {"input_ids": ids, "labels": labels, "position_ids": pos}
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
