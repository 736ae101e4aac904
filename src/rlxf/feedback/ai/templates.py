"""Labelling prompts: preamble + few-shot exemplars + the sample + an ending (RLAIF §2.1).

A :class:`Template` is a YAML file with the keys below (unknown keys are errors).
Built-in ones live next to this module in ``templates/``: ``summarize`` (the RLAIF
paper's task), ``helpful`` (dialogue), ``harmless`` (dialogue) and ``tinyworld`` (for
the Tinyworld judge, :mod:`rlxf.tinyworld.judge`). Pass a built-in name or a path.

The pairwise prompt the judge reads, blocks joined by ``block_separator``::

    {preamble}                       (+ principle_format when a principle is sampled)
    {exemplar 1} ... {exemplar k}    sample + ending + answer_prefix + "1" or "2"
    {sample}{ending}                 the judge's next token is scored: "1" or "2"

With chain-of-thought (RLAIF §2.1.2, two steps) the sample ends in ``cot_ending``
instead; the judge writes a rationale, and then ``rationale + rationale_end +
ending`` is appended and "1"/"2" are scored after it. Exemplars with a ``rationale``
show it in the same place. Direct scoring uses the ``rating_*`` keys the same way
with one answer, and scores the continuations ``rating_prefix + "1"`` .. ``"10"``.

Placeholders: ``{context}``, ``{response1}``, ``{response2}`` in ``sample``;
``{context}``, ``{response}`` in ``rating_sample``; ``{principle}`` in
``principle_format``. Write a literal brace as ``{{`` or ``}}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from string import Formatter

import yaml

from rlxf.config import from_dict
from rlxf.data.records import Prompt
from rlxf.errors import ConfigError

BUILTIN_DIR = Path(__file__).parent / "templates"
LABELS = ("1", "2")
RATINGS = tuple(str(k) for k in range(1, 11))


@dataclass(kw_only=True)
class Exemplar:
    context: str
    """The prompt or document the two responses answer."""
    response1: str
    """The response shown first."""
    response2: str
    """The response shown second."""
    preferred: int
    """1 or 2: the better response."""
    rationale: str = ""
    """Why (shown in chain-of-thought prompts only)."""

    def validate(self) -> None:
        if self.preferred not in (1, 2):
            raise ConfigError(f"exemplar preferred must be 1 or 2, got {self.preferred}")


@dataclass(kw_only=True)
class Template:
    preamble: str
    """What the judge is asked to do, before any example."""
    sample: str
    """One pair to judge, with {context}, {response1} and {response2}."""
    ending: str = "Preferred Response="
    """Text after the sample; the judge's next token is the answer."""
    answer_prefix: str = ""
    """Text between the ending and the answer "1"/"2" in exemplars (e.g. a space)."""
    principle_format: str = "Judge the responses by this principle: {principle}"
    """Appended to the preamble when a constitution principle is sampled for the pair."""
    exemplars: list[Exemplar] = field(default_factory=list)
    """Few-shot examples shown before the sample."""
    block_separator: str = "\n\n"
    """Text between the preamble, the exemplars and the sample."""
    cot_ending: str = ("Consider the accuracy, helpfulness and overall quality of each response, "
                       "and explain which one is better.\nRationale:")
    """Chain-of-thought: the sample ends here and the judge writes its rationale."""
    rationale_end: str = ""
    """Text between the rationale and the ending in chain-of-thought prompts."""
    rationale_stop: list[str] = field(default_factory=lambda: ["Preferred Response", "\n\n"])
    """Rationale generation stops at the first of these strings."""
    rating_preamble: str = ("Rate how good the response is on a scale from 1 (very bad) to 10 (excellent), "
                            "considering its accuracy, helpfulness and harmlessness.")
    """Direct scoring (d-RLAIF): what the judge is asked."""
    rating_sample: str = "Context: {context}\nResponse: {response}"
    """Direct scoring: the answer to rate, with {context} and {response}."""
    rating_ending: str = "\nRating (1-10):"
    """Direct scoring: the rating follows this text."""
    rating_prefix: str = " "
    """Direct scoring: text before the number in each scored continuation (" 7")."""

    def validate(self) -> None:
        check_fields("sample", self.sample, {"context", "response1", "response2"})
        check_fields("rating_sample", self.rating_sample, {"context", "response"})
        check_fields("principle_format", self.principle_format, {"principle"})
        for key in ("preamble", "ending", "cot_ending", "rating_preamble", "rating_ending"):
            check_fields(key, getattr(self, key), set())
        for e in self.exemplars:
            e.validate()


def check_fields(key: str, text: str, allowed: set[str]) -> None:
    try:
        names = {name for _, name, _, _ in Formatter().parse(text) if name is not None}
    except ValueError as err:
        raise ConfigError(f"template key '{key}': {err} (write a literal brace as {{{{ or }}}})") from None
    unknown = names - allowed
    if unknown:
        hint = ", ".join("{" + a + "}" for a in sorted(allowed)) or "none (write literal braces as {{ }})"
        raise ConfigError(f"template key '{key}' has unknown placeholder(s) "
                          f"{', '.join('{' + u + '}' for u in sorted(unknown))}; allowed: {hint}")


def builtin_templates() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def load_template(name_or_path: str) -> Template:
    """A built-in template by name, or one read from a YAML file."""
    path = Path(name_or_path)
    if not path.is_file():
        path = BUILTIN_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ConfigError(f"template '{name_or_path}' is neither a file nor a built-in template "
                              f"({', '.join(builtin_templates())})")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    try:
        return from_dict(Template, raw)
    except ConfigError as err:
        raise ConfigError(f"template {path}: {err}") from None


# --- rendering ------------------------------------------------------------------------------

def context_text(prompt: Prompt) -> str:
    """A prompt as the judge reads it: text as is, a conversation as ``Role: content`` turns.

    A final ``Assistant:`` cue (Anthropic HH prompts end with one) is dropped: the
    template shows the answers itself.
    """
    if isinstance(prompt, str):
        return prompt.strip().removesuffix("Assistant:").rstrip()
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in prompt)


def _head(t: Template, principle: str | None) -> list[str]:
    head = t.preamble.strip()
    if principle:
        head += "\n" + t.principle_format.format(principle=principle)
    return [head] if head else []


def _sample(t: Template, context: str, first: str, second: str) -> str:
    return t.sample.format(context=context, response1=first.strip(), response2=second.strip())


def pairwise_prompt(t: Template, context: str, first: str, second: str, *, principle: str | None = None,
                    cot: bool = False) -> str:
    """The labelling prompt for ``first`` (position 1) vs ``second`` (position 2).

    Without ``cot`` the judge's next token is the answer; with ``cot`` it is the start
    of a rationale, to be followed by :func:`after_rationale`.
    """
    shots = []
    for e in t.exemplars:
        if cot and e.rationale:
            reason = f"{t.cot_ending} {e.rationale.strip()}{t.rationale_end}"
        else:
            reason = ""
        shots.append(f"{_sample(t, e.context, e.response1, e.response2)}{reason}{t.ending}"
                     f"{t.answer_prefix}{e.preferred}")
    last = _sample(t, context, first, second) + (t.cot_ending if cot else t.ending)
    return t.block_separator.join(_head(t, principle) + shots + [last])


def after_rationale(t: Template, cot_prompt: str, rationale: str) -> str:
    """Step two of chain-of-thought: the prompt, the judge's rationale, then the ending."""
    return f"{cot_prompt} {rationale.strip()}{t.rationale_end}{t.ending}"


def rating_prompt(t: Template, context: str, response: str, *, principle: str | None = None) -> str:
    """The direct-scoring prompt; the rating follows it."""
    head = t.rating_preamble.strip()
    if principle:
        head += "\n" + t.principle_format.format(principle=principle)
    body = t.rating_sample.format(context=context, response=response.strip()) + t.rating_ending
    return t.block_separator.join(([head] if head else []) + [body])


def rating_choices(t: Template) -> list[str]:
    return [t.rating_prefix + r for r in RATINGS]
