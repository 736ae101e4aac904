"""Fitting a judge prompt into the judge's context: shorten the sample, never the instructions.

A labelling prompt is a template's preamble, exemplars and labels around one *sample*:
a conversation and the responses to judge (:mod:`.templates`); a critique prompt is
the same around one (conversation, answer). When a prompt has more tokens than the
judge's model has positions, cutting it from its start would drop the instructions,
and often the "Response 1:" label, without a word. :func:`fit_sample` shortens the
sample instead:

1. the conversation, from its start (its end, next to the responses, matters most),
   down to nothing if need be;
2. then the responses, from their end, all cut to the same length (cutting only the
   longer one would show the judge a whole answer beside a cut one).

A prompt that does not fit even with an empty sample is not asked at all: the caller
counts it as too long for the judge.

A prompt that goes on after text the judge generated (a chain-of-thought rationale, a
critique) is fitted with room for ``max_tokens`` generated tokens, but the generated text,
decoded and tokenized again, can take more: generation that stops inside a multi-byte
character decodes to U+FFFD replacement characters (several tokens each), and merges
differ at the boundaries. :func:`fit_generated` cuts such text from its end until the
prompt after it fits the room it was generated for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple


@dataclass(frozen=True)
class Room:
    """The room a prompt has on a judge whose context length is known."""

    positions: int
    """The judge model's positions (its context length)."""
    reserved: int
    """Positions kept for what follows the prompt: the answer scored, or the tokens generated."""
    tokenizer: Any
    """The judge's tokenizer (Hugging Face), to count and cut text."""

    @property
    def tokens(self) -> int:
        """The most tokens a prompt may have."""
        return self.positions - self.reserved

    def less(self, tokens: int) -> "Room":
        """This room with ``tokens`` more positions kept for what follows the prompt."""
        return replace(self, reserved=self.reserved + tokens)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids)) if ids else ""

    def length(self, text: str) -> int:
        return len(self.encode(text))

    def fits(self, text: str) -> bool:
        return self.length(text) <= self.tokens


class Fitted(NamedTuple):
    prompt: str | None
    """The prompt to send; ``None`` when it cannot fit even with an empty sample."""
    shortened: bool
    """Whether the sample was shortened (or, with ``prompt`` None, would have to be)."""


def fit_sample(render: Callable[[str, list[str]], str], room: Room | None, context: str,
               responses: Sequence[str]) -> Fitted:
    """``render(context, responses)``, with the sample shortened until the prompt fits ``room``
    (the module docstring gives the order); ``room`` None: the prompt as it is."""
    prompt = render(context, list(responses))
    if room is None or room.fits(prompt):
        return Fitted(prompt, False)

    ctx = room.encode(context)

    def without_start(k: int) -> str:  # the prompt with the first k tokens of the context dropped
        return render(room.decode(ctx[k:]).lstrip(), list(responses))

    if room.fits(without_start(len(ctx))):
        return Fitted(without_start(_fewest(lambda k: room.fits(without_start(k)), len(ctx))), True)

    ids = [room.encode(r) for r in responses]
    longest = max(map(len, ids), default=0)

    def capped(cut: int) -> str:  # no context, and every response at most (longest - cut) tokens
        return render("", [room.decode(r[:longest - cut]).rstrip() for r in ids])

    if not room.fits(capped(longest)):
        return Fitted(None, True)
    return Fitted(capped(_fewest(lambda cut: room.fits(capped(cut)), longest)), True)


class Generated(NamedTuple):
    text: str | None
    """The generated text to put in the follow-up prompt; ``None`` when that prompt does not
    fit even with nothing generated (then it is too long for a reason of its own)."""
    cut: bool
    """Whether the text was cut (or, with ``text`` None, would have to be)."""


def fit_generated(follow: Callable[[str], str], room: Room | None, text: str) -> Generated:
    """The generated ``text``, cut from its end by as few tokens as make ``follow(text)`` (the
    prompt that goes on after it) fit ``room``; ``room`` None: the text as it is."""
    if room is None or room.fits(follow(text)):
        return Generated(text, False)
    ids = room.encode(text)

    def without_end(k: int) -> str:  # the text with its last k tokens dropped
        return room.decode(ids[:len(ids) - k]).rstrip()

    if not room.fits(follow(without_end(len(ids)))):
        return Generated(None, True)
    return Generated(without_end(_fewest(lambda k: room.fits(follow(without_end(k))), len(ids))), True)


def _fewest(ok: Callable[[int], bool], most: int) -> int:
    """The smallest ``k`` in ``[0, most]`` with ``ok(k)``, by bisection; ``ok(most)`` must hold.

    ``ok`` (the prompt fits with ``k`` tokens cut) is false up to some ``k`` and true
    after it, give or take re-tokenization at the cut; whatever it is, the ``k``
    returned is one where ``ok`` held."""
    lo, hi = 0, most
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return hi
