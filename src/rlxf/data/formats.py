"""Turn rows of the common data shapes into rlxf's records, checking them on the way.

Each row's shape is detected from its fields, so one file may mix shapes. Fields that
are ``null`` count as absent (Parquet and ``datasets`` fill the columns a row lacks with
nulls); fields that no shape uses are ignored. A *message list* is a list of
``{"role": ..., "content": "..."}`` objects; a conversational prompt becomes a tuple of
them, which :func:`render_prompt` renders with the tokenizer's chat template.

Demonstrations (:func:`load_demonstrations`, for SFT):

- ``prompt``, ``completion`` -- prompt text or a message list; completion text, or
  (TRL's conversational form) a list of one assistant message.
- ``messages`` -- a chat whose last message is the assistant's answer; the earlier
  messages are the prompt.
- ``text`` -- pretraining text: ``Demonstration(prompt="", completion=text)``.
- any comparison shape below -- the demonstration of its preferred answer (``chosen``;
  ``rejected`` where ``prob_chosen`` < 0.5; a ranking's best), so a preference file is
  also SFT data.

Comparisons (:func:`load_preferences` and :func:`load_comparisons`, for reward models):

- TRL: ``prompt``, ``chosen``, ``rejected`` -- text, or a prompt message list with
  ``chosen``/``rejected`` each a list of one assistant message, or (UltraFeedback as the
  H4 binarized sets give it) ``chosen``/``rejected`` each the whole conversation, whose
  shared messages are the prompt.
- Vertex AI: ``input_text``, ``candidate_0``, ``candidate_1``, ``choice`` -- ``choice``
  (0 or 1) is the index of the preferred candidate.
- Implicit prompt: only ``chosen`` and ``rejected``, two versions of one conversation
  that differ in the final answer. Either Anthropic HH dialogue text
  (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``): the prompt is the shared text up to and
  including the last shared ``"\\n\\nAssistant:"``, the answers are the rest with leading
  whitespace removed. Or TRL's implicit-prompt message lists: the prompt is the shared
  messages, each answer the one assistant message after them.
- Ranking: ``prompt``, ``completions`` (K >= 2 answers), ``ranking`` (indices into
  ``completions``, best first).
- Any of the pairwise shapes may add ``prob_chosen`` (a soft label in [0, 1], the
  probability that ``chosen`` is better; e.g. from an AI labeller) and ``margin``.

Prompts (:func:`load_prompts`, for PPO and generation): ``prompt``, ``input_text``,
``messages`` (a final assistant answer is dropped), or an implicit-prompt comparison.

A bad row raises :class:`~rlxf.errors.DataError` naming file, line and field. With
``skip_bad=True`` bad rows are skipped instead, logged as a warning, and counted in the
returned :class:`Loaded` list's ``skipped`` and ``errors``. A row that is bad only for
this use (an HH comparison whose preferred answer is empty is no demonstration) says it
can be skipped, naming ``skip_key``: the caller's config key for ``skip_bad``
(``data.skip_bad_rows`` in ``rlxf sft``), given by the caller because each command
spells it its own way.

``limit=N`` reads rows only until N records are in (pairs, for
:func:`load_preferences`): a trial on the first rows of a large file neither waits for
the rest nor stops at a bad row after them.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rlxf.data.readers import iter_rows
from rlxf.data.records import Demonstration, Preference, Prompt, Ranking
from rlxf.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

HUMAN_TURN, ASSISTANT_TURN = "\n\nHuman:", "\n\nAssistant:"  # Anthropic HH markers
KEPT_ERRORS = 5  # how many skipped rows' errors a Loaded list keeps


class Loaded(list):
    """The records a loader read: a plain list, plus what ``skip_bad=True`` skipped.

    Attributes:
        skipped: how many bad rows were skipped (0 unless ``skip_bad=True``).
        errors: the :class:`DataError` of the first few skipped rows (at most 5).
    """

    def __init__(self, records=(), *, skipped: int = 0, errors: list[DataError] | None = None):
        super().__init__(records)
        self.skipped = skipped
        self.errors = errors or []


def load_demonstrations(path: str | os.PathLike, *, split: str | None = None,
                        skip_bad: bool = False, skip_key: str | None = None, limit: int | None = None) -> Loaded:
    """Read SFT data: a :class:`Loaded` list of :class:`Demonstration` (shapes: module doc).

    ``skip_key``: the config key that sets ``skip_bad`` (e.g. ``data.skip_bad_rows``),
    named in the error of a row that may be skipped; null names none. ``limit``: the
    first that many demonstrations (module doc).
    """
    return _load(path, split, skip_bad, _DEMONSTRATION_SHAPES, skip_key, limit=limit)


Check = Callable[[Any, "_Where"], None]
"""A caller's own test of a parsed record: raises ``where.error(field, problem)`` for one
it refuses, which then counts as a bad row (raised, or skipped with ``skip_bad``)."""


def nonempty_answers(comparison: Preference | Ranking, where: _Where) -> None:
    """A :data:`Check` refusing a comparison with an empty answer. The loaders accept one
    (an empty last turn of an Anthropic HH dialogue is a real label: the labeller preferred
    no answer), but a judge or a labeller needs two answers to compare."""
    answers = ([("chosen", comparison.chosen), ("rejected", comparison.rejected)] if isinstance(comparison, Preference)
               else [(f"completions[{i}]", a) for i, a in enumerate(comparison.completions)])
    for field, answer in answers:
        if not answer.strip():
            skip = f" ({where.skip_key}=true skips such rows)" if where.skip_key else ""
            raise where.error(field, f"is empty; an answer needs some text{skip}")


def load_comparisons(path: str | os.PathLike, *, split: str | None = None, skip_bad: bool = False,
                     limit: int | None = None, check: Check | None = None, skip_key: str | None = None) -> Loaded:
    """Read reward-model data keeping each ranking whole: :class:`Preference` for pairwise
    rows, :class:`Ranking` for ranking rows, in file order.

    Use this for the K-wise loss, where all pairs of one ranking share a batch element
    (InstructGPT §3.5); :func:`load_preferences` flattens rankings into pairs.
    ``limit``: the first that many comparisons; ``check``: see :data:`Check`; ``skip_key``:
    as for :func:`load_demonstrations`.
    """
    return _load(path, split, skip_bad, _COMPARISON_SHAPES, skip_key, limit=limit, check=check)


def load_preferences(path: str | os.PathLike, *, split: str | None = None, skip_bad: bool = False,
                     limit: int | None = None, check: Check | None = None, skip_key: str | None = None) -> Loaded:
    """Read reward-model data as a :class:`Loaded` list of :class:`Preference` pairs.

    A ranking of K answers becomes its C(K, 2) (better, worse) pairs, in the order of
    :meth:`Ranking.pairs`; ``skipped`` still counts rows, not pairs. ``limit``: the first
    that many pairs (the last ranking read may be cut); ``check``: see :data:`Check`
    (it sees a ranking whole); ``skip_key``: as for :func:`load_demonstrations`.
    """
    comparisons = _load(path, split, skip_bad, _COMPARISON_SHAPES, skip_key, limit=limit, check=check,
                        size=lambda c: len(c.pairs()) if isinstance(c, Ranking) else 1)
    pairs = [pair for c in comparisons
             for pair in (c.pairs() if isinstance(c, Ranking) else [c])]
    return Loaded(pairs[:limit], skipped=comparisons.skipped, errors=comparisons.errors)


def load_prompts(path: str | os.PathLike, *, split: str | None = None,
                 skip_bad: bool = False, limit: int | None = None) -> Loaded:
    """Read prompts for PPO or generation: a :class:`Loaded` list of text or message tuples.

    Any answers in the rows (``completion``, ``chosen``, a final assistant message) are
    ignored, so SFT and preference files double as prompt sets. ``limit``: the first that
    many prompts.
    """
    return _load(path, split, skip_bad, _PROMPT_SHAPES, limit=limit)


def render_prompt(prompt: Prompt, tokenizer: Any, *, tokenizer_key: str | None = None) -> str:
    """The text a model sees for ``prompt``.

    Text is returned unchanged; a conversation is rendered with the tokenizer's chat
    template, ending with the cue for the assistant's turn (``add_generation_prompt``).
    ``tokenizer_key``: the config key that chose the tokenizer (``model.tokenizer``,
    ``model_a``, ...), named in the error when it has no chat template; null names none.
    """
    if isinstance(prompt, str):
        return prompt
    if not getattr(tokenizer, "chat_template", None):  # the same for every such row: not one row's fault
        source = getattr(tokenizer, "name_or_path", "")
        which = f"'{source}' ({type(tokenizer).__name__})" if source else type(tokenizer).__name__
        key = f" ({tokenizer_key}=...)" if tokenizer_key else ""
        raise ConfigError(f"the data holds conversations (message lists), but the tokenizer {which} has no "
                          f"chat template; use a chat model's tokenizer{key}, set tokenizer.chat_template to a "
                          "Jinja template, or use text prompts")
    return tokenizer.apply_chat_template(list(prompt), tokenize=False,
                                         add_generation_prompt=True)


# --- loading loop ---------------------------------------------------------------------

@dataclass(frozen=True)
class _Where:
    """The row being parsed, for error messages and ``source``."""

    path: str
    line: int
    skip_key: str | None = None  # the config key that would skip this row; None: skipping is on, or has no key

    @property
    def source(self) -> str:
        return f"{self.path}:{self.line}"

    def error(self, field: str | None, problem: str) -> DataError:
        return DataError(problem, path=self.path, line=self.line, field=field)


@dataclass(frozen=True)
class _Shape:
    """One accepted row shape: the fields that identify it and how to parse it."""

    name: str
    needs: tuple[str, ...]  # required fields
    marks: tuple[str, ...]  # a row with any of these fields is taken to be this shape
    parse: Callable[[dict, _Where], Any]  # returns one record

    def describe(self) -> str:
        return f"{self.name} ({', '.join(self.needs)})" if self.needs else self.name


def _load(path, split: str | None, skip_bad: bool, shapes: list[_Shape], skip_key: str | None = None, *,
          limit: int | None = None, check: Check | None = None, size: Callable[[Any], int] | None = None) -> Loaded:
    """The records of ``path`` (see the module doc); with ``limit``, rows are read only
    until the records' ``size`` (1 each unless given) adds up to it."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    name = str(path) if split is None else f"{path}:{split}"
    records, errors, skipped, seen, held = [], [], 0, 0, 0
    for line, row in iter_rows(path, split=split):
        seen += 1
        try:
            if isinstance(row, DataError):
                raise row
            where = _Where(name, line, None if skip_bad else skip_key)  # a skipped row needs no hint
            present = {k: v for k, v in row.items() if v is not None}
            record = _detect(present, where, shapes).parse(present, where)
            if check is not None:
                check(record, where)
        except DataError as e:
            if not skip_bad:
                raise
            skipped += 1
            if len(errors) < KEPT_ERRORS:
                errors.append(e)
            continue
        records.append(record)
        held += 1 if size is None else size(record)
        if limit is not None and held >= limit:
            break
    if skipped:
        logger.warning("%s: skipped %d bad row(s) of %d; first: %s", name, skipped, seen, errors[0])
    return Loaded(records, skipped=skipped, errors=errors)


def _detect(row: dict, where: _Where, shapes: list[_Shape]) -> _Shape:
    for shape in shapes:
        if any(field in row for field in shape.marks):
            missing = [field for field in shape.needs if field not in row]
            if missing:
                raise where.error(missing[0], f"missing or null; the row looks like the "
                                  f"{shape.describe()} shape (missing: {', '.join(missing)})"
                                  f"{_other_kind(row, shapes)}")
            return shape
    accepted = "; ".join(shape.describe() for shape in shapes)
    raise where.error(None, f"no known shape in fields {sorted(row)}; accepted: {accepted}{_other_kind(row, shapes)}")


def _other_kind(row: dict, shapes: list[_Shape]) -> str:
    """A hint when ``row`` is data of another kind: demonstrations given where comparisons
    are read, say."""
    if shapes is _COMPARISON_SHAPES and ({"completion", "text"} & set(row) or
                                         ("messages" in row and "chosen" not in row)):
        return (". It is demonstration data (what `rlxf sft` reads); a reward model learns from comparisons: "
                "prompt/chosen/rejected, rankings or Vertex AI candidates (rlxf label or rlxf annotate make them)")
    return ""


# --- field checks -----------------------------------------------------------------------

def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _messages(value: Any, field: str, where: _Where) -> tuple[dict, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise where.error(field, f"must be a non-empty list of {{role, content}} messages, "
                          f"got {_kind(value) if value else 'an empty list'}")
    messages = []
    for i, message in enumerate(value):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise where.error(f"{field}[{i}]", f"must be a message {{'role': str, 'content': "
                              f"str}}, got {message!r:.80}")
        messages.append({k: v for k, v in message.items() if v is not None})
    return tuple(messages)


def _prompt(value: Any, field: str, where: _Where) -> Prompt:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return _messages(value, field, where)
    raise where.error(field, f"must be text or a list of {{role, content}} messages, "
                      f"got {_kind(value)}")


def _text(value: Any, field: str, where: _Where) -> str:
    if not isinstance(value, str):
        raise where.error(field, f"must be text, got {_kind(value)}")
    if not value.strip():
        raise where.error(field, "is empty; an answer needs some text")
    return value


def _answer(value: Any, field: str, where: _Where) -> str:
    """Answer text, also given as TRL's conversational list of one assistant message."""
    if isinstance(value, (list, tuple)):
        messages = _messages(value, field, where)
        if len(messages) != 1 or messages[0]["role"] != "assistant":
            raise where.error(field, "a conversational answer must be a list of exactly one "
                              f"assistant message, got roles {[m['role'] for m in messages]}")
        value = messages[0]["content"]
    elif not isinstance(value, str):
        raise where.error(field, f"must be text or a list of one assistant message, "
                          f"got {_kind(value)}")
    return _text(value, field, where)


def _preference(row: dict, where: _Where, prompt: Prompt, chosen: str, rejected: str,
                rejected_field: str = "rejected") -> Preference:
    """A Preference with the row's optional soft label and margin, checked."""
    if chosen.strip() == rejected.strip():
        raise where.error(rejected_field, "is identical to the chosen answer; a comparison "
                          "needs two different answers")
    prob_chosen, margin = row.get("prob_chosen", 1.0), row.get("margin", 0.0)
    if not (_is_number(prob_chosen) and 0.0 <= prob_chosen <= 1.0):
        raise where.error("prob_chosen", f"must be a number in [0, 1] (the probability that "
                          f"chosen is better), got {prob_chosen!r}")
    if not (_is_number(margin) and math.isfinite(margin)):
        raise where.error("margin", f"must be a finite number, got {margin!r}")
    return Preference(prompt, chosen, rejected, prob_chosen=float(prob_chosen),
                      margin=float(margin), source=where.source)


# --- comparison shapes ----------------------------------------------------------------

def _parse_trl(row: dict, where: _Where) -> Preference:
    chosen, rejected = row["chosen"], row["rejected"]
    if _whole_conversation(chosen) and _whole_conversation(rejected):
        # UltraFeedback-style rows: a prompt, and answers given as the whole conversation;
        # the conversation's shared messages are the prompt (the prompt field repeats them)
        messages, chosen_text, rejected_text = _split_conversations(chosen, rejected, where)
        return _preference(row, where, messages, chosen_text, rejected_text)
    return _preference(row, where, _prompt(row["prompt"], "prompt", where),
                       _answer(chosen, "chosen", where), _answer(rejected, "rejected", where))


def _whole_conversation(value: Any) -> bool:
    """A message list that opens with a user or system message (not a lone answer)."""
    return (isinstance(value, (list, tuple)) and len(value) > 1 and isinstance(value[0], dict)
            and value[0].get("role") in ("user", "system"))


def _parse_vertex(row: dict, where: _Where) -> Preference:
    choice = row["choice"]
    if not (_is_number(choice) and choice in (0, 1)):
        raise where.error("choice", f"must be 0 or 1 (the index of the preferred candidate), "
                          f"got {choice!r}")
    choice = int(choice)
    prompt = _parse_vertex_prompt(row, where)
    candidates = [_answer(row[f"candidate_{i}"], f"candidate_{i}", where) for i in (0, 1)]
    return _preference(row, where, prompt, candidates[choice], candidates[1 - choice],
                       rejected_field=f"candidate_{1 - choice}")


def _parse_implicit(row: dict, where: _Where) -> Preference:
    chosen, rejected = row["chosen"], row["rejected"]
    if isinstance(chosen, str) and isinstance(rejected, str):
        return _preference(row, where, *_split_hh(chosen, rejected, where))
    if isinstance(chosen, (list, tuple)) and isinstance(rejected, (list, tuple)):
        return _preference(row, where, *_split_conversations(chosen, rejected, where))
    raise where.error("rejected", f"without a prompt field, chosen and rejected must both be "
                      f"dialogue text (Anthropic HH) or both message lists; got "
                      f"{_kind(chosen)} and {_kind(rejected)}")


def _split_hh(chosen: str, rejected: str, where: _Where) -> tuple[str, str, str]:
    """Split two Anthropic HH dialogues into (shared prompt, chosen answer, rejected answer).

    The answers may be empty: in HH an empty final Assistant turn is a real label (the
    labeller preferred saying nothing to a harmful answer); the harmless-base test split
    has four such rows. An answer may not hold a Human turn: dialogues that part before
    their last turn are not one comparison. (An answer may hold the text "Assistant:":
    row 1255 of that split has a model answer that wrote one.)
    """
    for field, dialogue in (("chosen", chosen), ("rejected", rejected)):
        if ASSISTANT_TURN not in dialogue:
            raise where.error(field, f"has no Assistant turn; an Anthropic HH dialogue reads "
                              f"{HUMAN_TURN!r} question {ASSISTANT_TURN!r} answer ...")
    shared = os.path.commonprefix([chosen, rejected])
    end = shared.rfind(ASSISTANT_TURN)
    if end < 0:
        raise where.error("rejected", "shares no prefix with chosen up to an Assistant turn; "
                          "both must be the same dialogue with different final answers")
    end += len(ASSISTANT_TURN)
    for field, dialogue in (("chosen", chosen), ("rejected", rejected)):
        if HUMAN_TURN in dialogue[end:]:
            raise where.error(field, "goes on past its answer (a Human turn after the last Assistant turn it shares "
                              "with the other dialogue); chosen and rejected must be the same dialogue with "
                              "different final Assistant answers")
    return chosen[:end], chosen[end:].lstrip(), rejected[end:].lstrip()


def _split_conversations(chosen: list, rejected: list, where: _Where
                         ) -> tuple[tuple[dict, ...], str, str]:
    """Split TRL implicit-prompt message lists into (shared messages, chosen, rejected)."""
    chosen_messages = _messages(chosen, "chosen", where)
    rejected_messages = _messages(rejected, "rejected", where)
    shared = 0
    for c, r in zip(chosen_messages, rejected_messages):
        if c != r:
            break
        shared += 1
    if shared == 0:
        raise where.error("rejected", "shares no messages with chosen; both must be the "
                          "same conversation with different final answers")
    answers = [_answer(messages[shared:], field, where) for field, messages in
               (("chosen", chosen_messages), ("rejected", rejected_messages))]
    return chosen_messages[:shared], answers[0], answers[1]


def _parse_ranking(row: dict, where: _Where) -> Ranking:
    for field in ("prob_chosen", "margin"):
        if field in row:
            raise where.error(field, "applies to pairwise rows, not rankings")
    prompt = _prompt(row["prompt"], "prompt", where)
    completions = row["completions"]
    if not isinstance(completions, (list, tuple)):
        raise where.error("completions", f"must be a list of answers, got {_kind(completions)}")
    k = len(completions)
    if k < 2:
        raise where.error("completions", f"has {k} answer(s); a ranking needs K >= 2")
    answers = tuple(_answer(c, f"completions[{i}]", where) for i, c in enumerate(completions))
    first_index: dict[str, int] = {}
    for i, answer in enumerate(answers):
        j = first_index.setdefault(answer.strip(), i)
        if j != i:
            raise where.error("completions", f"answers {j} and {i} are identical; each answer "
                              "must appear once")
    return Ranking(prompt, answers, _permutation(row["ranking"], k, where), source=where.source)


def _permutation(ranking: Any, k: int, where: _Where) -> tuple[int, ...]:
    """Check that ``ranking`` is a permutation of range(k); say why when it is not."""
    need = f"ranking must list each index 0..{k - 1} of completions once, best first"
    if not (isinstance(ranking, (list, tuple)) and all(_is_int(i) for i in ranking)):
        raise where.error("ranking", f"must be a list of integer indices; {need}")
    if len(ranking) != k:
        raise where.error("ranking", f"wrong length: {len(ranking)} indices for {k} "
                          f"completions; {need}")
    seen: set[int] = set()
    for i in ranking:
        if not 0 <= i < k:
            raise where.error("ranking", f"index {i} out of range; {need}")
        if i in seen:
            raise where.error("ranking", f"duplicate index {i}; {need}")
        seen.add(i)
    return tuple(ranking)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Order matters: the first shape with one of its ``marks`` in the row is the row's shape.
_COMPARISON_SHAPES = [
    _Shape("ranking", ("prompt", "completions", "ranking"), ("completions", "ranking"),
           _parse_ranking),
    _Shape("Vertex AI", ("input_text", "candidate_0", "candidate_1", "choice"),
           ("candidate_0", "candidate_1", "choice", "input_text"), _parse_vertex),
    _Shape("TRL", ("prompt", "chosen", "rejected"), ("prompt",), _parse_trl),
    _Shape("implicit prompt / Anthropic HH", ("chosen", "rejected"), ("chosen", "rejected"),
           _parse_implicit),
]


# --- demonstration shapes -------------------------------------------------------------

def _parse_chat(row: dict, where: _Where) -> Demonstration:
    messages = _messages(row["messages"], "messages", where)
    if messages[-1]["role"] != "assistant":
        raise where.error("messages", f"the last message must be the answer (role "
                          f"'assistant'), got role {messages[-1]['role']!r}")
    if len(messages) < 2:
        raise where.error("messages", "needs at least one message before the assistant's "
                          "answer (for plain text without a prompt, use a 'text' row)")
    answer = _text(messages[-1]["content"], f"messages[{len(messages) - 1}]", where)
    return Demonstration(messages[:-1], answer, source=where.source)


def _parse_prompt_completion(row: dict, where: _Where) -> Demonstration:
    return Demonstration(_prompt(row["prompt"], "prompt", where),
                         _answer(row["completion"], "completion", where), source=where.source)


def _parse_text(row: dict, where: _Where) -> Demonstration:
    return Demonstration("", _text(row["text"], "text", where), source=where.source)


def _parse_preferred(row: dict, where: _Where) -> Demonstration:
    """A comparison row as the demonstration of its preferred answer: ``chosen`` (the
    other one where a soft label gives it less than even odds), a ranking's best."""
    record = _detect(row, where, _COMPARISON_SHAPES).parse(row, where)
    if isinstance(record, Ranking):
        return Demonstration(record.prompt, record.ordered[0], source=where.source)
    answer, field = (record.chosen, "chosen") if record.prob_chosen >= 0.5 else (record.rejected, "rejected")
    if not answer.strip():
        skip = f" ({where.skip_key}=true skips such rows)" if where.skip_key else ""
        raise where.error(field, f"is empty: the labeller preferred no answer at all, which is no demonstration{skip}")
    return Demonstration(record.prompt, answer, source=where.source)


_DEMONSTRATION_SHAPES = [
    _Shape("chat", ("messages",), ("messages",), _parse_chat),
    _Shape("a comparison's preferred answer (any comparison shape)", (),
           ("chosen", "rejected", "completions", "ranking", "candidate_0", "candidate_1", "choice"),
           _parse_preferred),
    _Shape("prompt/completion", ("prompt", "completion"), ("prompt", "completion"),
           _parse_prompt_completion),
    _Shape("pretraining text", ("text",), ("text",), _parse_text),
]


# --- prompt shapes --------------------------------------------------------------------

def _parse_chat_prompt(row: dict, where: _Where) -> tuple[dict, ...]:
    messages = _messages(row["messages"], "messages", where)
    if messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    if not messages:
        raise where.error("messages", "has no messages before the assistant's answer")
    return messages


def _parse_vertex_prompt(row: dict, where: _Where) -> str:
    if not isinstance(row["input_text"], str):
        raise where.error("input_text", f"must be text, got {_kind(row['input_text'])}")
    return row["input_text"]


def _parse_prompt(row: dict, where: _Where) -> Prompt:
    """A row's ``prompt``; for an UltraFeedback comparison, the messages its answers share
    (what the reward model and SFT read from the same row), not the prompt text."""
    if _whole_conversation(row.get("chosen")) and _whole_conversation(row.get("rejected")):
        return _split_conversations(row["chosen"], row["rejected"], where)[0]
    return _prompt(row["prompt"], "prompt", where)


_PROMPT_SHAPES = [
    _Shape("prompt", ("prompt",), ("prompt",), _parse_prompt),
    _Shape("Vertex AI", ("input_text",), ("input_text",), _parse_vertex_prompt),
    _Shape("chat", ("messages",), ("messages",), _parse_chat_prompt),
    _Shape("implicit prompt / Anthropic HH", ("chosen", "rejected"), ("chosen", "rejected"),
           lambda row, where: _parse_implicit(row, where).prompt),
]
