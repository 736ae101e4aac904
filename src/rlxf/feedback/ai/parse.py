"""Strict parsers for a judge's generated text, used when a server returns no log-probs.

A parser returns the answer only when the text states exactly one, and ``None``
otherwise: an unparseable answer is counted and reported by the caller, never guessed.
Only the first non-empty line is read (a judge often explains itself after answering),
after removing markdown emphasis (``**2**``, ``_2_``, `` `2` ``) and quotes.

Accepted for a pairwise choice: ``1``, ``2.``, ``Response 1``, ``Preferred Response=2``,
``**2**``, ``Answer: 1``, ``Summary 2 is better``. Rejected: ``1 or 2``, ``both``,
``Response 1 and Response 2``, ``12``, ``I prefer the first one`` (no label), empty text.

Accepted for a rating 1-10: ``7``, ``7/10``, ``Rating: 7``, ``**7**``, ``Score = 10.``;
rejected: ``7-8``, ``11``, ``0``, ``seven``, ``7 or 8``.
"""

from __future__ import annotations

import re

_MARKUP = re.compile(r"[*_`\"']")
_NOUN = r"(?:(?:preferred|better|best|chosen)\s+)?(?:response|answer|summary|option|output|choice|rating|score)?"
_CHOICE = re.compile(
    rf"{_NOUN}\s*[:=#]?\s*\(?(?P<label>[12])\)?\s*"
    r"(?:is\s+(?:better|preferred|the\s+better\s+(?:one|response|answer)))?\s*[.!]?", re.IGNORECASE)
_RATING = re.compile(
    rf"{_NOUN}\s*(?:\(1\s*-\s*10\))?\s*[:=#]?\s*(?P<value>10|[1-9])(?:\s*/\s*10)?\s*[.!]?", re.IGNORECASE)


def _first_line(text: str) -> str:
    for line in text.splitlines():
        line = " ".join(_MARKUP.sub("", line).split())
        if line:
            return line
    return ""


def parse_choice(text: str) -> int | None:
    """``0`` for "1" (first position), ``1`` for "2", ``None`` when not exactly one of them."""
    m = _CHOICE.fullmatch(_first_line(text))
    return int(m["label"]) - 1 if m else None


def parse_rating(text: str) -> int | None:
    """The rating 1-10 the text states, or ``None``."""
    m = _RATING.fullmatch(_first_line(text))
    return int(m["value"]) if m else None
