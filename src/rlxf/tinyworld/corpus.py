"""Tinyworld text: the unaligned pretraining corpus, demonstrations and answer pools.

The pretraining corpus is what a base model learns the world from, and like web text
it is not aligned: 30% of documents are encyclopaedic fact sentences (all true), the
rest are prompts followed by an answer drawn from :data:`ANSWER_MIX` (good 35%,
wrong 20%, rude 15%, rambling 15%, off-topic 7.5%, unfinished 7.5%). A base model
imitates that mix, so its mean gold score is mediocre; the demonstrations for SFT
are only good answers (with mild natural variety in phrasing).

With ``reply_share`` > 0 (``rlxf tinyworld build reply_share=…``), that share of the
right, wrong and off-topic answers is followed by a reader's verdict, as answers on a
forum are: ``… the fox is blue . reply : that is wrong .``. Nothing else changes, so a
base model pre-trained on it has had a reason to check answers against what it knows,
which is what a reward model needs (docs/reward.md (g)). With ``claim_share`` > 0 that
share of the fact documents are instead single sentences of fact, true or false at even
odds, each with a verdict (``the pig is red . reply : that is wrong .``).

Demonstrations are good answers; with ``terse_share`` > 0 that share are true answers
that do less than they could (:func:`terse_answer`), as hurried demonstrators write
them, which leaves PPO room over SFT (docs/ppo.md §4).

Files written by :func:`write_dataset` use rlxf's standard JSONL shapes; a prompt and
its completion are joined later as ``prompt + " " + completion``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from ..data.records import Demonstration
from .prompts import (TASKS, TaskPrompt, all_args, draw_prompt, fact_sentence, group_sentence, listing,
                      make_prompt, parse_prompt, predicate, sample_prompts)
from .world import (ATTRIBUTES, CREATURES, FACTS, FILLER, MAX_OPERAND, NAMES, NUMBER_VALUE,
                    NUMBERS, RUDE_PHRASES, RUDE_TAGS, VALUES, creatures_with)

ANSWER_MIX = MappingProxyType({"good": 0.35, "wrong": 0.20, "rude": 0.15, "rambling": 0.15,
                               "offtopic": 0.075, "unfinished": 0.075})
FACT_DOC_SHARE = 0.3
MAX_RAMBLE_WORDS = 40
# A reader's reply after an answer (only with ``reply_share`` > 0): whether it is right.
REPLY_MARK = "reply :"
REPLIES = MappingProxyType({"good": "that is right .", "wrong": "that is wrong .", "offtopic": "that is wrong ."})


@dataclass(frozen=True, slots=True)
class Document:
    """One pretraining document. ``category`` is "facts" or an :data:`ANSWER_MIX` key;
    ``prompt`` and ``answer`` are empty for fact documents."""

    text: str
    category: str
    prompt: str = ""
    answer: str = ""


def _as_prompt(prompt: str | TaskPrompt) -> TaskPrompt:
    return prompt if isinstance(prompt, TaskPrompt) else parse_prompt(prompt)


# --- saying things ---------------------------------------------------------------------
# Each task's answer is rendered from the values it states, so a wrong answer is the
# same phrasing with other values.

def _say(tp: TaskPrompt, stated, rng: random.Random) -> str:
    """An answer to ``tp`` stating ``stated`` in one of the task's phrasings.

    ``stated``: {attr: value} for creature tasks, the sum word for add, the listed
    creatures for list, the name for greet. The reference phrasing is the most common
    (continuations always use it); a few others score a little lower on gold ("it is
    red ." 0.96, "hello anna ! how are you ?" 0.985), room for RLHF to beat SFT.
    """
    cont = tp.kind == "continuation"
    # few-shot answers mostly copy the examples' (reference) style
    plain = cont or rng.random() < (0.7 if tp.kind == "fewshot" else 0.4)
    task = tp.task
    if task in ("color", "home", "food", "describe"):
        c = tp.args[0]
        color, home, food = (stated.get(a, "") for a in ATTRIBUTES)
        if task == "describe":
            facts = [f"is {color}", f"lives in the {home}", f"eats {food}"]
            if cont:
                return f"{facts[0]} , it {facts[1]} and it {facts[2]} ."
            if plain:
                return f"the {c} {facts[0]} , it {facts[1]} and it {facts[2]} ."
            rng.shuffle(facts)
            return rng.choice((
                f"the {c} {facts[0]} . it {facts[1]} . it {facts[2]} .",
                f"the {c} {facts[0]} , {facts[1]} and {facts[2]} .",
                f"the {c} {facts[0]} , it {facts[1]} and it {facts[2]} .",
                f"the {c} {facts[0]} . the {c} {facts[1]} . the {c} {facts[2]} ."))
        value = stated[task]
        if cont:
            return f"{value} ."
        forms = {"color": (f"the {c} is {value} .", f"it is {value} .",
                           f"the color of the {c} is {value} ."),
                 "home": (f"the {c} lives in the {value} .", f"it lives in the {value} .",
                          f"the {c} lives in the {value} !"),
                 "food": (f"the {c} eats {value} .", f"it eats {value} .",
                          f"the {c} likes to eat {value} .")}[task]
        return forms[0] if plain else rng.choice(forms[1:])
    if task == "add":
        a, b = tp.args
        if cont:
            return f"{stated} ."
        return f"{a} plus {b} is {stated} ." if plain else f"{a} plus {b} equals {stated} ."
    if task == "list":
        attr, value = tp.args
        members = list(stated)
        if not plain:
            rng.shuffle(members)
        if cont or (not plain and rng.random() < 0.3):
            return listing(members) + " ."
        return group_sentence(members, attr, value)
    if task == "greet":
        name = stated
        if plain:
            return f"hello {name} !"
        return rng.choice((f"hi {name} !", f"hello {name} ! how are you ?",
                           f"hi {name} , nice to meet you !"))
    raise ValueError(f"unknown task {task!r}")


def _truth(tp: TaskPrompt):
    """What a correct answer to ``tp`` states (see :func:`_say`)."""
    if tp.task in ("color", "home", "food", "describe"):
        c = FACTS[tp.args[0]]
        return {a: c.get(a) for a in ATTRIBUTES}
    if tp.task == "add":
        return NUMBERS[NUMBER_VALUE[tp.args[0]] + NUMBER_VALUE[tp.args[1]]]
    if tp.task == "list":
        return creatures_with(*tp.args)
    return tp.args[0]


def _other(values, avoid: str, rng: random.Random) -> str:
    return rng.choice([v for v in values if v != avoid])


def _falsify(tp: TaskPrompt, rng: random.Random):
    """Stated values with at least one error in what the prompt asks."""
    truth = _truth(tp)
    if tp.task in ("color", "home", "food"):
        return dict(truth, **{tp.task: _other(VALUES[tp.task], truth[tp.task], rng)})
    if tp.task == "describe":
        wrong = rng.sample(ATTRIBUTES, rng.randint(1, 3))
        return {a: _other(VALUES[a], v, rng) if a in wrong else v for a, v in truth.items()}
    if tp.task == "add":
        return NUMBERS[_near_miss(NUMBER_VALUE[truth], rng)]
    if tp.task == "list":
        members = list(truth)
        outsiders = [c for c in CREATURES if c not in truth]
        how = rng.random()
        if how < 0.4:       # one member swapped for an outsider
            members[rng.randrange(len(members))] = rng.choice(outsiders)
        elif how < 0.7:     # an extra, wrong member
            members.insert(rng.randrange(len(members) + 1), rng.choice(outsiders))
        else:               # the members of another value
            attr, value = tp.args
            members = list(creatures_with(attr, _other(VALUES[attr], value, rng)))
        return members
    return _other(NAMES, truth, rng)


def _near_miss(total: int, rng: random.Random) -> int:
    """A wrong sum within 3 of ``total`` (and within 0..20)."""
    return rng.choice([v for v in range(max(0, total - 3), min(20, total + 3) + 1) if v != total])


def _false_aside(tp: TaskPrompt, rng: random.Random) -> str:
    """A false sentence about some other creature: "the owl is red ."."""
    avoid = tp.args[0] if tp.args[0] in FACTS else None
    c = FACTS[rng.choice([x for x in CREATURES if x != avoid])]
    attr = rng.choice(ATTRIBUTES)
    return fact_sentence(c.name, attr, _other(VALUES[attr], c.get(attr), rng))


def _true_aside(rng: random.Random) -> str:
    c = FACTS[rng.choice(CREATURES)]
    attr = rng.choice(ATTRIBUTES)
    return fact_sentence(c.name, attr, c.get(attr))


def good_answer(prompt: str | TaskPrompt, rng: random.Random) -> str:
    """A correct, harmless, fluent answer, in one of a few natural phrasings."""
    tp = _as_prompt(prompt)
    return _say(tp, _truth(tp), rng)


def terse_answer(prompt: str | TaskPrompt, rng: random.Random) -> str:
    """A true answer that does less than it could, as a hurried demonstrator writes one.

    A bare value ("red ." 0.84 gold, "it is red ." 0.96), one or two facts of a
    description, a list missing a member, a sum with no sentence, a greeting without
    the name. Nothing in it is false, rude or disfluent: only less helpful. Where the
    prompt leaves no shorter true answer (a continuation asking one value) it is
    :func:`good_answer`'s.
    """
    tp = _as_prompt(prompt)
    cont = tp.kind == "continuation"
    truth = _truth(tp)
    task = tp.task
    if task in ("color", "home", "food"):
        value = truth[task]
        if cont or rng.random() < 0.6:
            return f"{value} ."
        return f"it {predicate(task, value)} ."
    if task == "describe":
        c = tp.args[0]
        facts = [predicate(attr, truth[attr]) for attr in ATTRIBUTES]
        kept = rng.sample(facts, rng.randint(1, 2))
        said = " and ".join(kept) if len(kept) == 1 or rng.random() < 0.5 else f"{kept[0]} , it {kept[1]}"
        return f"{said} ." if cont else f"the {c} {said} ."
    if task == "add":
        return f"{truth} ."
    if task == "list":
        attr, value = tp.args
        members = list(truth)
        del members[rng.randrange(len(members))]
        return listing(members) + " ." if cont else group_sentence(members, attr, value)
    return rng.choice(("hello !", "hi !", "hello there !"))


def _fit(words: list[str], limit: int) -> str:
    """Cut ``words`` after the last sentence end within ``limit`` words."""
    cut = words[:limit]
    ends = [i for i, w in enumerate(cut) if w in (".", "!", "?")]
    return " ".join(cut[: ends[-1] + 1] if ends else cut)


def answer_of(prompt: str | TaskPrompt, category: str, rng: random.Random) -> str:
    """An answer to ``prompt`` of an :data:`ANSWER_MIX` ``category``."""
    tp = _as_prompt(prompt)
    good = _say(tp, _truth(tp), rng)
    if category == "good":
        return good
    if category == "wrong":
        if rng.random() < 0.25:     # right answer, false claim about another creature
            return f"{good} {_false_aside(tp, rng)}"
        return _say(tp, _falsify(tp, rng), rng)
    if category == "rude":
        how = rng.random()
        if how < 0.4:
            return rng.choice(RUDE_PHRASES)
        if how < 0.7:
            return f"{rng.choice(RUDE_PHRASES)} {good}"
        return f"{good[:-2]} , {rng.choice(RUDE_TAGS)} {good[-1]}"
    if category == "rambling":
        how = rng.random()
        if how < 0.35:      # the answer buried in filler
            before = " ".join(rng.sample(FILLER, rng.randint(1, 3)))
            after = " ".join(rng.sample(FILLER, rng.randint(0, 2)))
            return _fit(f"{before} {good} {after}".split(), MAX_RAMBLE_WORDS)
        if how < 0.65:      # a loop
            return _fit(" ".join([good] * rng.randint(3, 6)).split(), MAX_RAMBLE_WORDS)
        if how < 0.85:      # too long: the answer, then everything else it knows
            asides = " ".join(_true_aside(rng) for _ in range(8))
            return _fit(f"{good} {asides}".split(), rng.randint(26, MAX_RAMBLE_WORDS))
        return " ".join(rng.sample(FILLER, rng.randint(2, 4)))  # all talk, no answer
    if category == "offtopic":  # a good answer about something else
        task = rng.choice(TASKS)
        args = rng.choice([a for a in all_args(task) if a != tp.args])
        other = make_prompt(task, args, "instruction", rng)
        return _say(other, _truth(other), rng)
    if category == "unfinished":
        words = good.split()
        if len(words) <= 2:
            return " ".join(words[:1])
        return " ".join(words[: rng.randint(1, len(words) - 2)])
    raise ValueError(f"unknown answer category {category!r}; one of {tuple(ANSWER_MIX)}")


def _draw_category(rng: random.Random) -> str:
    return rng.choices(tuple(ANSWER_MIX), weights=tuple(ANSWER_MIX.values()))[0]


def candidate_answers(prompt: str | TaskPrompt, k: int, seed: int) -> list[str]:
    """``k`` different answers to ``prompt`` drawn from :data:`ANSWER_MIX`.

    Stands in for samples from a policy: what a labeller is asked to compare or rank.
    """
    tp = _as_prompt(prompt)
    rng = random.Random(f"tinyworld/candidates/{seed}/{tp.text}")
    out: list[str] = []
    for _ in range(50 * k):
        if len(out) == k:
            break
        answer = answer_of(tp, _draw_category(rng), rng)
        if answer not in out:
            out.append(answer)
    if len(out) < k:
        raise ValueError(f"could not draw {k} different answers for {tp.text!r}")
    return out


def answer_pairs(n: int, seed: int, split: str = "train") -> list[tuple[str, str, str]]:
    """``n`` (prompt, answer_a, answer_b) triples, two different answers per prompt."""
    return [(tp.text, *candidate_answers(tp, 2, seed))
            for tp in sample_prompts(n, seed, split)]


# --- documents -------------------------------------------------------------------------

def _fact_document(rng: random.Random) -> str:
    how = rng.random()
    if how < 0.5:           # profiles of one to three creatures
        sentences = []
        for name in rng.sample(CREATURES, rng.randint(1, 3)):
            c = FACTS[name]
            facts = [f"is {c.color}", f"lives in the {c.home}", f"eats {c.food}"]
            rng.shuffle(facts)
            if rng.random() < 0.5:
                sentences.append(" ".join(f"the {name} {f} ." for f in facts))
            else:
                sentences.append(f"the {name} {facts[0]} , it {facts[1]} and it {facts[2]} .")
        return " ".join(sentences)
    if how < 0.75:          # who has what
        sentences = []
        for attr in rng.sample(ATTRIBUTES, rng.randint(1, 2)):
            value = rng.choice(VALUES[attr])
            sentences.append(group_sentence(creatures_with(attr, value), attr, value))
        return " ".join(sentences)
    sums = []               # an addition table
    for _ in range(rng.randint(3, 6)):
        a, b = rng.randint(0, MAX_OPERAND), rng.randint(0, MAX_OPERAND)
        sums.append(f"{NUMBERS[a]} plus {NUMBERS[b]} is {NUMBERS[a + b]} .")
    return " ".join(sums)


def _claim(rng: random.Random, true: bool) -> str:
    """One sentence of a fact, true or made false: about a creature, a sum or a group."""
    how = rng.random()
    if how < 0.6:
        c = FACTS[rng.choice(CREATURES)]
        attr = rng.choice(ATTRIBUTES)
        return fact_sentence(c.name, attr, c.get(attr) if true else _other(VALUES[attr], c.get(attr), rng))
    if how < 0.85:
        a, b = rng.randint(0, MAX_OPERAND), rng.randint(0, MAX_OPERAND)
        return f"{NUMBERS[a]} plus {NUMBERS[b]} is {NUMBERS[a + b if true else _near_miss(a + b, rng)]} ."
    attr = rng.choice(ATTRIBUTES)
    value = rng.choice(VALUES[attr])
    members = list(creatures_with(attr, value))
    if not true:
        members[rng.randrange(len(members))] = rng.choice([c for c in CREATURES if c not in members])
    return group_sentence(members, attr, value)


def _claim_document(rng: random.Random) -> str:
    """One to three sentences, each true or false at even odds and followed by a reader's
    verdict: ``the pig is red . reply : that is wrong .``."""
    parts = []
    for _ in range(rng.randint(1, 3)):
        true = rng.random() < 0.5
        parts.append(f"{_claim(rng, true)} {REPLY_MARK} {REPLIES['good' if true else 'wrong']}")
    return " ".join(parts)


def _documents(n: int, rng: random.Random, split: str, reply_share: float = 0.0,
               claim_share: float = 0.0) -> list[Document]:
    docs = []
    for _ in range(n):
        if rng.random() < FACT_DOC_SHARE:
            if claim_share and rng.random() < claim_share:
                docs.append(Document(_claim_document(rng), "claims"))
            else:
                docs.append(Document(_fact_document(rng), "facts"))
            continue
        tp = draw_prompt(rng, split)
        category = _draw_category(rng)
        answer = answer_of(tp, category, rng)
        text = f"{tp.text} {answer}"
        if reply_share and category in REPLIES and rng.random() < reply_share:
            text += f" {REPLY_MARK} {REPLIES[category]}"
        docs.append(Document(text, category, tp.text, answer))
    return docs


def corpus_documents(n_docs: int, seed: int, reply_share: float = 0.0, claim_share: float = 0.0) -> list[Document]:
    """The pretraining corpus with each document's category (train-split prompts)."""
    return _documents(n_docs, random.Random(f"tinyworld/pretrain/{seed}"), "train", reply_share, claim_share)


def pretraining_corpus(n_docs: int, seed: int, reply_share: float = 0.0, claim_share: float = 0.0) -> list[str]:
    """``n_docs`` unaligned pretraining documents (see the module docstring)."""
    return [d.text for d in corpus_documents(n_docs, seed, reply_share, claim_share)]


def pretraining_heldout(n: int, seed: int) -> list[str]:
    """Held-out documents of the same mix (held-out prompts, another random stream),
    for measuring the language-modelling loss of PPO-ptx."""
    return [d.text for d in _documents(n, random.Random(f"tinyworld/pretrain-heldout/{seed}"),
                                       "heldout")]


def demonstrations(n: int, seed: int, split: str = "train", terse_share: float = 0.0) -> list[Demonstration]:
    """``n`` SFT demonstrations: prompts of ``split`` with a good answer each, or with
    probability ``terse_share`` a true but terse one (:func:`terse_answer`)."""
    rng = random.Random(f"tinyworld/demonstrations/{seed}/{split}")
    demos = []
    for i in range(n):
        tp = draw_prompt(rng, split)
        terse = terse_share and rng.random() < terse_share
        demos.append(Demonstration(tp.text, terse_answer(tp, rng) if terse else good_answer(tp, rng),
                                   source=f"tinyworld:{split}:{i + 1}"))
    return demos


# --- files -----------------------------------------------------------------------------

def _write_jsonl(path: Path, rows) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_dataset(out_dir: str | Path, seed: int = 0, *, n_pretrain: int = 20000,
                  n_pretrain_heldout: int = 500, n_sft_train: int = 2000, n_sft_eval: int = 200,
                  n_prompts_train: int = 2000, n_prompts_heldout: int = 200,
                  reply_share: float = 0.0, claim_share: float = 0.0,
                  terse_share: float = 0.0) -> dict[str, Path]:
    """Write the Tinyworld data files into ``out_dir``; returns {file stem: path}.

    - ``pretrain.jsonl`` / ``pretrain_heldout.jsonl``: ``{"text"}``
    - ``sft_train.jsonl`` / ``sft_eval.jsonl``: ``{"prompt", "completion"}`` (eval on
      held-out prompts)
    - ``prompts_train.jsonl`` / ``prompts_heldout.jsonl``: ``{"prompt", "task", "kind",
      "id"}``, for PPO rollouts and evaluation
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "pretrain": [{"text": t} for t in pretraining_corpus(n_pretrain, seed, reply_share, claim_share)],
        "pretrain_heldout": [{"text": t} for t in pretraining_heldout(n_pretrain_heldout, seed)],
        "sft_train": [{"prompt": d.prompt, "completion": d.completion}
                      for d in demonstrations(n_sft_train, seed, "train", terse_share)],
        "sft_eval": [{"prompt": d.prompt, "completion": d.completion}
                     for d in demonstrations(n_sft_eval, seed, "heldout", terse_share)],
        "prompts_train": [{"prompt": p.text, "task": p.task, "kind": p.kind, "id": p.id}
                          for p in sample_prompts(n_prompts_train, seed, "train")],
        "prompts_heldout": [{"prompt": p.text, "task": p.task, "kind": p.kind, "id": p.id}
                            for p in sample_prompts(n_prompts_heldout, seed, "heldout")],
    }
    paths = {}
    for stem, rows in files.items():
        paths[stem] = out / f"{stem}.jsonl"
        _write_jsonl(paths[stem], rows)
    return paths
