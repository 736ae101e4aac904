"""Strict parsers for a judge's generated text, used when a server returns no log-probs.

A parser returns the answer only when the text states exactly one, and ``None``
otherwise: an unparseable answer is counted and reported by the caller, never guessed.
Only the first non-empty line is read, after removing markdown emphasis (``**2**``,
``_2_``, `` `2` ``) and quotes. With chain-of-thought the rationale comes before the
template's ending, so the line read is still the one after it.

The answer must open the line, after an optional lead-in (``Answer:``, ``Preferred:``,
``Preferred Response=``, ``The preferred response is``, ``Rating (1-10):``, any case),
optionally in brackets (``(2)``, ``[[2]]``). What follows may be nothing, or a
separator (``.``, ``,``, ``-``, ``:``, ``because``, ...) and then an explanation, which a
judge cut at its few answer tokens leaves unfinished. An explanation that opens with
another number (``1, 2``; ``7-8``), or with ``or``, makes the line ambiguous.

Accepted for a pairwise choice: ``1``, ``Response 1``, ``Preferred Response=Response 2``,
``The preferred response is 2.``, ``[[2]]``, ``Answer: (2)``, ``Summary 2 is better``,
``Response 2 is better than Response 1``, ``Response 2, because it is more``,
``2 - it is more helpful``. Rejected: ``1 or 2``, ``both``, ``Response 1 and Response 2
are equal`` (there is no tie label), ``1, 2``, ``12``, ``Response 1 is worse``, ``I prefer
the first one`` / ``I think 2`` (the answer does not open the line), empty text.

Accepted for a rating 1-10: ``7``, ``7/10``, ``7 out of 10``, ``[[7]]``, ``Rating: 7``,
``Score = 10.``, ``8/10 - clear and correct``, ``Rating: 8. The answer is``; rejected:
``7-8``, ``7.5``, ``11``, ``0``, ``7/5``, ``seven``, ``7 or 8``.
"""

from __future__ import annotations

import re

_MARKUP = re.compile(r"[*_`\"']")
_NOUN = r"(?:response|answer|summary|option|output|choice|verdict|rating|score)"
# "Answer:", "Preferred Response=Response", "The preferred response is", "Rating (1-10):", "Less harmful response="
_LEAD = (r"(?:(?:the|my)\s+)?(?:(?:final|preferred|better|best|chosen|less\s+harmful|more\s+helpful)\s*)?"
         rf"(?:{_NOUN}\s*)?(?:\(1\s*-\s*10\)\s*)?(?:(?:[:=#]|is\b)\s*)?(?:{_NOUN}\s*)?")
_OPEN, _CLOSE = r"(?:[\[(]{1,2}\s*)?", r"(?:\s*[\])]{1,2})?"  # "(2)", "[[7]]"; no space of their own
_BETTER = (r"(?:is|was)\s+(?:the\s+)?(?:better|best|preferred|superior|(?:more|most)\s+helpful|less\s+harmful)"
           r"(?:\s+(?:one|response|answer|summary|option|choice))?")
_CHOICE = re.compile(
    rf"{_LEAD}{_OPEN}(?P<label>[12])(?!\d){_CLOSE}"
    rf"(?:\s+{_BETTER}(?:\s+than\s+(?:{_NOUN}\s*)?{_OPEN}(?P<other>[12])(?!\d){_CLOSE})?)?(?P<tail>.*)",
    re.IGNORECASE)
_RATING = re.compile(
    rf"{_LEAD}{_OPEN}(?P<value>10|[1-9])(?!\d)(?:\s*(?:/|out\s+of)\s*10(?!\d))?{_CLOSE}(?P<tail>.*)", re.IGNORECASE)
# after the answer: a separator, then any explanation ...
_SEPARATOR = re.compile(r"(?:\s*[.,;:!?\-–—]|\s+(?:because|since|as|for)\b)(?P<rest>.*)", re.IGNORECASE)
# ... unless it offers another answer: "1, 2", "7-8", "1, or 2", "1 - and Response 2"
_ANOTHER = re.compile(rf"\s*(?:or\b|nor\b|(?:(?:and|vs\.?|versus)\s+)?(?:{_NOUN}\s*)?[\[(]*\s*\d)", re.IGNORECASE)


def _first_line(text: str) -> str:
    for line in text.splitlines():
        line = " ".join(_MARKUP.sub("", line).split())
        if line:
            return line
    return ""


def _ends_cleanly(tail: str) -> bool:
    """Whether what follows the answer leaves it the only one: nothing, or a separator and an
    explanation that does not open with another answer."""
    if not tail.strip():
        return True
    m = _SEPARATOR.match(tail)
    return m is not None and _ANOTHER.match(m["rest"]) is None


def parse_choice(text: str) -> int | None:
    """``0`` for "1" (first position), ``1`` for "2", ``None`` when not exactly one of them."""
    m = _CHOICE.match(_first_line(text))
    if m is None or m["label"] == m["other"] or not _ends_cleanly(m["tail"]):
        return None
    return int(m["label"]) - 1


def parse_rating(text: str) -> int | None:
    """The rating 1-10 the text states, or ``None``."""
    m = _RATING.match(_first_line(text))
    return int(m["value"]) if m and _ends_cleanly(m["tail"]) else None
