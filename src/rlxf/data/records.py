"""The record types every data shape is normalised into.

A *prompt* is either plain text or a conversation (a tuple of ``{"role", "content"}``
messages) that the tokenizer's chat template renders; answers are always text.
``source`` is ``"FILE:LINE"`` of the row the record came from, for error messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Union

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}
Prompt = Union[str, tuple]  # text, or a tuple of Message


@dataclass(frozen=True, slots=True)
class Demonstration:
    """A prompt and the answer a model should learn to give (SFT data)."""

    prompt: Prompt
    completion: str
    source: str = ""


@dataclass(frozen=True, slots=True)
class Preference:
    """Two answers to one prompt and how likely ``chosen`` is the better one.

    ``prob_chosen`` is 1.0 for a hard human label and in [0, 1] for a soft (AI) label.
    ``margin`` is an optional preference strength for the margin Bradley-Terry loss.
    """

    prompt: Prompt
    chosen: str
    rejected: str
    prob_chosen: float = 1.0
    margin: float = 0.0
    source: str = ""


@dataclass(frozen=True, slots=True)
class Ranking:
    """K answers to one prompt ranked by a labeller.

    ``ranking`` lists indices into ``completions`` from best to worst; it is a
    permutation of ``range(K)``.
    """

    prompt: Prompt
    completions: tuple[str, ...]
    ranking: tuple[int, ...]
    source: str = ""

    @property
    def ordered(self) -> tuple[str, ...]:
        """The completions from best to worst."""
        return tuple(self.completions[i] for i in self.ranking)

    def pairs(self) -> list[Preference]:
        """All C(K, 2) (better, worse) pairs implied by the ranking (InstructGPT §3.5)."""
        return [Preference(self.prompt, better, worse, source=self.source)
                for better, worse in combinations(self.ordered, 2)]
