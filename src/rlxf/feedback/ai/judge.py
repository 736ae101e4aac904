"""The judge interface every backend implements, and what it returns.

A *judge* is a language model asked to compare or rate answers. RLAIF needs three
things from it, so a backend has three batched methods (everything else -- templates,
both orders, chain-of-thought, averaging -- is built on top, in :mod:`.labeller`):

- ``answer_logprobs(prompts, answers)``: how likely the judge's next token is each
  answer ("1" or "2"), summed over every way its tokenizer can write that answer;
- ``score_choices(prompts, choices)``: the log-probability of whole candidate
  continuations (the ratings "1".."10" of direct scoring, "10" possibly two tokens);
- ``generate(prompts, ...)``: sampled text (rationales, critiques), and ``complete``, the
  same with whether each text ended by itself (revisions: one cut at ``max_tokens`` is
  no answer to learn from).

A backend that knows its context length also has ``room(...)``: how many tokens a
prompt may have (:class:`~rlxf.feedback.ai.fit.Room`), so that callers shorten the
sample in a prompt to fit (:mod:`.fit`) instead of sending a prompt the judge would cut.

Backends: :class:`~rlxf.feedback.ai.hf_judge.HFJudge` (a local transformers model,
exact log-probs) and :class:`~rlxf.feedback.ai.http_judge.OpenAIJudge` (any
OpenAI-compatible server, cached, with retries).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from rlxf.errors import RlxfError
from rlxf.feedback.ai.fit import Room
from rlxf.feedback.ai.scoring import ChoiceScore


class JudgeRequestError(RlxfError):
    """A judge request failed for good: its retries ran out, or (``permanent``) the server
    refused it with a 4xx it would repeat, so asking again later will not help."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class PromptTooLong(RlxfError):
    """A prompt sent to a judge has more tokens than its model has positions. Callers
    shorten prompts with :func:`~rlxf.feedback.ai.fit.fit_sample` first; a backend never
    cuts one itself (that would drop the instructions at the prompt's start)."""


class NoLogprobs(RlxfError):
    """The backend cannot give log-probabilities for this request (the caller parses text)."""


@dataclass(frozen=True)
class AnswerScores:
    """A judge's verdict on which answer comes next.

    ``method`` says where it came from:

    - ``"logprobs"``: ``logprobs[i]`` is log P(next token spells ``answers[i]``);
    - ``"text"``: the server gave no usable log-probs, and the strict parser read
      answer ``choice`` from the generated ``text`` (a hard, one-hot verdict);
    - ``"unparseable"``: neither worked; ``text`` holds what the judge wrote;
    - ``"too_long"``: the prompt could not fit the judge's context even with its sample
      shortened (:mod:`.fit`), so it was never asked.
    """

    method: Literal["logprobs", "text", "unparseable", "too_long"]
    logprobs: tuple[float, ...] = ()
    choice: int | None = None
    text: str = ""

    def distribution(self, n: int) -> list[float] | None:
        """P(answer i) over the ``n`` answers, or ``None`` when unparseable or too long."""
        if self.method == "logprobs":
            from rlxf.feedback.ai.scoring import softmax

            return softmax(list(self.logprobs))
        if self.method == "text":
            return [1.0 if i == self.choice else 0.0 for i in range(n)]
        return None


@dataclass(frozen=True)
class Completion:
    """A text the judge wrote. ``ended``: it stopped by itself (EOS, or a stop string),
    not because it reached ``max_tokens``."""

    text: str
    ended: bool


class Judge(Protocol):
    """What :mod:`.labeller` needs from a backend. ``identity`` names the model for
    summaries; ``stats()`` returns counters (requests, cache hits, retries, ...).
    ``room`` is optional (see :func:`prompt_room`)."""

    identity: str

    def answer_logprobs(self, prompts: Sequence[str], answers: Sequence[str]) -> list[AnswerScores]:
        ...

    def score_choices(self, prompts: Sequence[str], choices: Sequence[str]) -> list[list[ChoiceScore]]:
        """For each prompt, one :class:`ChoiceScore` per choice. Raises :class:`NoLogprobs`
        when the backend cannot score continuations."""
        ...

    def generate(self, prompts: Sequence[str], *, max_tokens: int, temperature: float, n: int = 1,
                 stop: Sequence[str] = (), seed: int = 0) -> list[list[str]]:
        """``n`` completions per prompt (greedy at temperature 0), each cut before any ``stop``."""
        ...

    def complete(self, prompts: Sequence[str], *, max_tokens: int, temperature: float, n: int = 1,
                 stop: Sequence[str] = (), seed: int = 0) -> list[list[Completion]]:
        """What :meth:`generate` writes, with whether each text ended by itself."""
        ...

    def stats(self) -> dict[str, int]:
        ...


def prompt_room(judge: Judge, *, new_tokens: int = 0, answers: Sequence[str] = ()) -> Room | None:
    """How many tokens a prompt may have when the judge is then to write ``new_tokens``
    tokens or to score ``answers`` after it; ``None`` when the judge does not know its
    context length (an HTTP server, which refuses what does not fit) or has no ``room``."""
    room = getattr(judge, "room", None)
    return room(new_tokens=new_tokens, answers=answers) if room is not None else None


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``(text up to the first occurrence of any (non-empty) stop string, whether one was found)``."""
    from rlxf.models.generation import cut_at_stop as cut

    return cut(text, [s for s in stop if s])

