"""Tinyworld prompts: seven tasks asked in three kinds of prompt.

As in InstructGPT's prompt mix (Ouyang et al. 2022, §3.2), a task is asked

- ``instruction``: explicitly, ``question : what color is the fox ? answer :``;
- ``fewshot``: after one or two solved examples of the same task;
- ``continuation``: implicitly, as text to continue, ``the owl is brown . the fox is``.

Tasks and their ``args``:

=========  ==================  =============================================
task       args                reference (instruction / few-shot kind)
=========  ==================  =============================================
color      (creature,)         ``the fox is red .``
home       (creature,)         ``the fox lives in the forest .``
food       (creature,)         ``the fox eats berries .``
describe   (creature,)         ``the fox is red , it lives in ... eats berries .``
add        (a, b) number words ``two plus three is five .``
list       (attribute, value)  ``the fox , the owl and the wolf live in the forest .``
greet      (name,)             ``hello anna !``
=========  ==================  =============================================

A continuation's reference is the rest of its last sentence (``red .``).

The train / held-out split is by a stable hash of ``(task, args, kind)``: a held-out
prompt asks something no train prompt of the same kind asks, whatever its few-shot
examples or context sentence. Other stages pass prompts around as text only, so
:func:`parse_prompt` recovers everything from the text.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from dataclasses import dataclass
from functools import lru_cache

from .world import (ATTRIBUTES, CREATURES, FACTS, MAX_OPERAND, NAMES, NUMBER_VALUE, NUMBERS,
                    VALUES, creatures_with)

TASKS = ("color", "home", "food", "describe", "add", "list", "greet")
KINDS = ("instruction", "fewshot", "continuation")
SPLITS = ("train", "heldout")
HELDOUT_FRACTION = 0.2
MAX_PROMPT_WORDS = 40


@dataclass(frozen=True, slots=True)
class TaskPrompt:
    """One prompt and what it asks.

    ``text`` is what a model sees; ``reference`` is the ideal answer (no EOS token),
    to be joined to the prompt as ``text + " " + reference``; ``id`` is a stable hash
    of ``text``.
    """

    text: str
    kind: str
    task: str
    args: tuple[str, ...]
    reference: str
    id: str


# --- templates -------------------------------------------------------------------------
# Placeholders: {c} creature, {a} {b} operands, {s} sum, {n} name, {v} list value;
# a trailing 2 marks the context sentence of a continuation prompt.

WRAPPERS = (("question :", "answer :"), ("user :", "assistant :"))

QUESTIONS = {
    "color": ("what color is the {c} ?", "what is the color of the {c} ?"),
    "home": ("where does the {c} live ?", "where is the home of the {c} ?"),
    "food": ("what does the {c} eat ?", "what food does the {c} like ?"),
    "describe": ("tell me about the {c} .", "describe the {c} ."),
    "add": ("what is {a} plus {b} ?", "add {a} and {b} ."),
    "greet": ("say hello to {n} .", "greet {n} ."),
}
LIST_QUESTIONS = {
    "color": ("which animals are {v} ?", "name the {v} animals ."),
    "home": ("which animals live in the {v} ?", "name the animals that live in the {v} ."),
    "food": ("which animals eat {v} ?", "name the animals that eat {v} ."),
}
CONTINUATIONS = {
    "color": "the {c2} is {color2} . the {c} is",
    "home": "the {c2} lives in the {home2} . the {c} lives in the",
    "food": "the {c2} eats {food2} . the {c} eats",
    "describe": "the {c2} is {color2} , it lives in the {home2} and it eats {food2} . the {c}",
    "add": "{a2} plus {b2} is {s2} . {a} plus {b} is",
    "greet": "{n} waves at you . you say",
}
LIST_CONTINUATIONS = {
    "color": "the {v} animals are",
    "home": "the animals that live in the {v} are",
    "food": "the animals that eat {v} are",
}


def listing(names: tuple[str, ...] | list[str]) -> str:
    """``the fox , the owl and the wolf`` (an English list of creatures)."""
    items = [f"the {n}" for n in names]
    if len(items) == 1:
        return items[0]
    return " , ".join(items[:-1]) + " and " + items[-1]


def predicate(attr: str, value: str, plural: bool = False) -> str:
    """``is red`` / ``are red``, ``lives in the cave``, ``eats fish``."""
    if attr == "color":
        return f"{'are' if plural else 'is'} {value}"
    if attr == "home":
        return f"{'live' if plural else 'lives'} in the {value}"
    return f"{'eat' if plural else 'eats'} {value}"


def fact_sentence(name: str, attr: str, value: str) -> str:
    """``the fox is red .``: one creature's ``attr`` stated as ``value`` (true or not)."""
    return f"the {name} {predicate(attr, value)} ."


def group_sentence(members, attr: str, value: str) -> str:
    """``the fox , the crab and the lion are red .``"""
    return f"{listing(members)} {predicate(attr, value, len(members) > 1)} ."


def reference(task: str, args: tuple[str, ...], kind: str) -> str:
    """The ideal answer to a prompt asking ``task(args)`` in the given ``kind``."""
    if task in ("color", "home", "food", "describe"):
        c = FACTS[args[0]]
        full = (fact_sentence(c.name, task, c.get(task)) if task != "describe" else
                f"the {c.name} is {c.color} , it lives in the {c.home} and it eats {c.food} .")
        if kind != "continuation":
            return full
        return {"color": f"{c.color} .", "home": f"{c.home} .", "food": f"{c.food} .",
                "describe": full.split(" ", 2)[2]}[task]
    if task == "add":
        total = NUMBERS[NUMBER_VALUE[args[0]] + NUMBER_VALUE[args[1]]]
        return f"{total} ." if kind == "continuation" else f"{args[0]} plus {args[1]} is {total} ."
    if task == "list":
        attr, value = args
        members = creatures_with(attr, value)
        if kind == "continuation":
            return listing(members) + " ."
        return group_sentence(members, attr, value)
    if task == "greet":
        return f"hello {args[0]} !"
    raise ValueError(f"unknown Tinyworld task {task!r}")


def all_args(task: str) -> list[tuple[str, ...]]:
    """Every ``args`` tuple ``task`` can be asked with."""
    if task in ("color", "home", "food", "describe"):
        return [(c,) for c in CREATURES]
    if task == "add":
        return [(NUMBERS[a], NUMBERS[b]) for a in range(MAX_OPERAND + 1)
                for b in range(MAX_OPERAND + 1)]
    if task == "list":
        return [(attr, v) for attr in ATTRIBUTES for v in VALUES[attr]]
    if task == "greet":
        return [(n,) for n in NAMES]
    raise ValueError(f"unknown Tinyworld task {task!r}")


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _prompt_id(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


@lru_cache(maxsize=None)
def split_args(task: str, kind: str, split: str) -> tuple[tuple[str, ...], ...]:
    """The ``args`` of ``task`` asked in ``kind`` that belong to ``split``.

    Within each (task, kind) the keys are ordered by a stable hash and the first
    ``ceil(HELDOUT_FRACTION * N)`` are held out, so both splits are never empty.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    ranked = sorted(all_args(task), key=lambda a: _stable_hash("|".join((task, *a, kind))))
    n_heldout = math.ceil(HELDOUT_FRACTION * len(ranked))
    return tuple(ranked[:n_heldout] if split == "heldout" else ranked[n_heldout:])


def split_of(prompt: TaskPrompt) -> str:
    """``"train"`` or ``"heldout"``."""
    return "heldout" if prompt.args in split_args(prompt.task, prompt.kind, "heldout") else "train"


# --- building --------------------------------------------------------------------------

def _question(task: str, args: tuple[str, ...], rng: random.Random) -> str:
    if task == "list":
        return rng.choice(LIST_QUESTIONS[args[0]]).format(v=args[1])
    if task == "add":
        return rng.choice(QUESTIONS["add"]).format(a=args[0], b=args[1])
    if task == "greet":
        return rng.choice(QUESTIONS["greet"]).format(n=args[0])
    return rng.choice(QUESTIONS[task]).format(c=args[0])


def _continuation(task: str, args: tuple[str, ...], rng: random.Random) -> str:
    if task == "list":
        return LIST_CONTINUATIONS[args[0]].format(v=args[1])
    if task == "greet":
        return CONTINUATIONS["greet"].format(n=args[0])
    if task == "add":
        a2, b2 = rng.choice([x for x in all_args("add") if x != args])
        s2 = NUMBERS[NUMBER_VALUE[a2] + NUMBER_VALUE[b2]]
        return CONTINUATIONS["add"].format(a=args[0], b=args[1], a2=a2, b2=b2, s2=s2)
    other = FACTS[rng.choice([c for c in CREATURES if c != args[0]])]
    return CONTINUATIONS[task].format(c=args[0], c2=other.name, color2=other.color,
                                      home2=other.home, food2=other.food)


def make_prompt(task: str, args: tuple[str, ...], kind: str, rng: random.Random) -> TaskPrompt:
    """A prompt asking ``task(args)`` in ``kind``; ``rng`` picks phrasing and examples."""
    if kind == "continuation":
        text = _continuation(task, args, rng)
    elif kind in ("instruction", "fewshot"):
        q_mark, a_mark = rng.choice(WRAPPERS)
        query = f"{q_mark} {_question(task, args, rng)} {a_mark}"
        parts = []
        if kind == "fewshot":
            others = [a for a in all_args(task) if a != args]
            for ex in rng.sample(others, rng.choice((1, 2))):
                shot = (f"{q_mark} {_question(task, ex, rng)} {a_mark} "
                        f"{reference(task, ex, 'instruction')}")
                if len(" ".join(parts + [shot, query]).split()) <= MAX_PROMPT_WORDS or not parts:
                    parts.append(shot)
        text = " ".join(parts + [query])
    else:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return TaskPrompt(text, kind, task, tuple(args), reference(task, args, kind), _prompt_id(text))


def sample_prompts(n: int, seed: int, split: str = "train") -> list[TaskPrompt]:
    """``n`` prompts of ``split`` (see :func:`draw_prompt`).

    Deterministic in ``(n, seed, split)``; a prefix of a longer sample is the shorter one.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = random.Random(f"tinyworld/prompts/{seed}/{split}")
    return [draw_prompt(rng, split) for _ in range(n)]


def draw_prompt(rng: random.Random, split: str = "train") -> TaskPrompt:
    """One prompt of ``split``: task and kind uniform, then args uniform within the split."""
    task, kind = rng.choice(TASKS), rng.choice(KINDS)
    return make_prompt(task, rng.choice(split_args(task, kind, split)), kind, rng)


# --- parsing ---------------------------------------------------------------------------

def _alt(words) -> str:
    return "(?:" + "|".join(sorted(words, key=len, reverse=True)) + ")"


_SLOT = {"c": _alt(CREATURES), "c2": _alt(CREATURES), "a": _alt(NUMBERS), "b": _alt(NUMBERS),
         "a2": _alt(NUMBERS), "b2": _alt(NUMBERS), "s2": _alt(NUMBERS), "n": _alt(NAMES),
         "color2": _alt(VALUES["color"]), "home2": _alt(VALUES["home"]),
         "food2": _alt(VALUES["food"])}


def _compile(template: str, v_words=()) -> re.Pattern:
    slots = dict(_SLOT, v=_alt(v_words) if v_words else "(?!)")
    pattern = re.sub(r"\\\{(\w+)\\\}", lambda m: f"(?P<{m.group(1)}>{slots[m.group(1)]})",
                     re.escape(template))
    return re.compile(pattern + r"\Z")


# (task, list attribute or None, compiled pattern)
_QUESTION_PATTERNS = (
    [(task, None, _compile(t)) for task, ts in QUESTIONS.items() for t in ts]
    + [("list", attr, _compile(t, VALUES[attr])) for attr, ts in LIST_QUESTIONS.items()
       for t in ts])
_CONTINUATION_PATTERNS = (
    [(task, None, _compile(t)) for task, t in CONTINUATIONS.items()]
    + [("list", attr, _compile(t, VALUES[attr])) for attr, t in LIST_CONTINUATIONS.items()])


def _args_from(task: str, attr: str | None, m: re.Match) -> tuple[str, ...]:
    g = m.groupdict()
    if task == "list":
        return (attr, g["v"])
    if task == "add":
        if max(NUMBER_VALUE[g["a"]], NUMBER_VALUE[g["b"]]) > MAX_OPERAND:
            raise ValueError("operand too large")
        return (g["a"], g["b"])
    if task == "greet":
        return (g["n"],)
    return (g["c"],)


def _match_question(question: str) -> tuple[str, tuple[str, ...]]:
    for task, attr, pattern in _QUESTION_PATTERNS:
        m = pattern.match(question)
        if m:
            return task, _args_from(task, attr, m)
    raise ValueError(f"not a Tinyworld question: {question!r}")


@lru_cache(maxsize=65536)
def parse_prompt(text: str) -> TaskPrompt:
    """Recover the :class:`TaskPrompt` a Tinyworld prompt text was built from. An
    instruction before it, set off by a blank line (as ``rlxf pipeline instruction=...``
    writes it; Tinyworld prompts have no line breaks), is not part of it.

    Raises ``ValueError`` when ``text`` is not a Tinyworld prompt.
    """
    norm = " ".join(str(text).split())
    try:
        task, args, kind = _parse(norm)
    except ValueError as err:
        instructed, sep, prompt = str(text).rpartition("\n\n")
        if sep and instructed.strip() and prompt.strip():
            return parse_prompt(prompt)
        raise ValueError(f"not a Tinyworld prompt ({err}): {norm[:80]!r}") from None
    return TaskPrompt(norm, kind, task, args, reference(task, args, kind), _prompt_id(norm))


def _parse(text: str) -> tuple[str, tuple[str, ...], str]:
    for q_mark, a_mark in WRAPPERS:
        if text.startswith(q_mark + " ") and text.endswith(" " + a_mark):
            segments = text[len(q_mark) + 1:].split(f" {q_mark} ")
            *shots, last = segments
            task, args = _match_question(last[: -len(a_mark) - 1])
            for shot in shots:
                question, sep, answer = shot.partition(f" {a_mark} ")
                if not sep or not answer or _match_question(question)[0] != task:
                    raise ValueError("few-shot example of another shape")
            return task, args, "fewshot" if shots else "instruction"
    for task, attr, pattern in _CONTINUATION_PATTERNS:
        m = pattern.match(text)
        if m:
            return task, _args_from(task, attr, m), "continuation"
    raise ValueError("no template matches")
