"""The fixed facts and word lists of Tinyworld.

Everything here is a constant: the same for every seed, so a model pretrained with
one seed and evaluated with another lives in the same world. Twenty creatures each
have a color, a home and a food, drawn from closed vocabularies of eight values;
every value belongs to two or three creatures, so "which animals ..." questions
always have a short plural answer. The table was written by hand and is
deliberately arbitrary (a blue pig, a red lion): a model can only know it by
learning it from the corpus, not from priors.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping


@dataclass(frozen=True, slots=True)
class Creature:
    """One row of the fact table."""

    name: str
    color: str
    home: str
    food: str

    def get(self, attr: str) -> str:
        """The value of ``attr`` ("color", "home" or "food")."""
        return getattr(self, attr)


ATTRIBUTES = ("color", "home", "food")

COLORS = ("red", "blue", "green", "yellow", "black", "white", "brown", "gray")
HOMES = ("forest", "river", "cave", "desert", "farm", "sea", "hills", "swamp")
FOODS = ("fish", "seeds", "grass", "berries", "nuts", "bugs", "meat", "leaves")
VALUES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"color": COLORS, "home": HOMES, "food": FOODS})

_TABLE = """
fox    red     forest  berries
owl    brown   forest  bugs
frog   green   swamp   bugs
bear   black   cave    fish
cat    white   farm    meat
dog    yellow  farm    meat
duck   yellow  river   seeds
goat   white   hills    grass
wolf   gray    forest  meat
mouse  gray    farm    seeds
crab   red     sea     bugs
bee    yellow  hills    berries
deer   brown   hills    leaves
hen    brown   river   seeds
pig    blue    swamp   nuts
seal   gray    sea     fish
snake  green   desert  nuts
crow   black   river   nuts
lion   red     desert  grass
moth   blue    cave    leaves
"""

FACTS: Mapping[str, Creature] = MappingProxyType({
    row[0]: Creature(*row) for row in (line.split() for line in _TABLE.strip().splitlines())})
CREATURES: tuple[str, ...] = tuple(FACTS)


def creatures_with(attr: str, value: str) -> tuple[str, ...]:
    """The creatures whose ``attr`` is ``value``, in table order."""
    return tuple(name for name, c in FACTS.items() if c.get(attr) == value)


# Number words for small arithmetic: operands 0..10, so every sum is at most twenty.
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
           "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
           "seventeen", "eighteen", "nineteen", "twenty")
NUMBER_VALUE: Mapping[str, int] = MappingProxyType({w: i for i, w in enumerate(NUMBERS)})
MAX_OPERAND = 10

NAMES = ("anna", "ben", "cleo", "dan", "eva", "finn", "gia", "hugo", "ivy", "jon", "kim", "leo")
GREETINGS = ("hello", "hi", "hey")

# Each toxic word costs the harmless score; every rude phrase contains at least one.
TOXIC_WORDS = frozenset({"stupid", "idiot", "dumb", "ugly", "fool", "loser", "jerk", "moron",
                         "hate", "shut"})
RUDE_PHRASES = (
    "what a dumb question .",
    "shut up .",
    "i hate this question .",
    "ask someone else , idiot .",
    "you are a fool .",
    "only a moron would ask that .",
    "go away , loser .",
    "that is a stupid question .",
    "nobody cares , jerk .",
)
RUDE_TAGS = ("you idiot", "stupid", "you fool", "loser", "you moron", "jerk")  # appended to answers

# Rambling: sentences that say nothing about the world (no creature, value or number
# words, so they never make a fact claim).
FILLER = (
    "well , let me think .",
    "that is a good question .",
    "i am not sure what you mean .",
    "you know , it is hard to say .",
    "i like the weather today .",
    "let me tell you a story .",
    "um , so , yes .",
    "anyway , where was i ?",
    "i once saw a big tree .",
    "there is so much to say .",
    "people ask me this all the time .",
    "this reminds me of something .",
)

SENTENCE_END = frozenset({".", "!", "?"})
PUNCTUATION = frozenset({".", "!", "?", ",", ":"})

# Every word Tinyworld ever writes. The oracle counts anything else as junk, and the
# tests check that the generators stay inside it.
_OTHER_WORDS = """
the a it they is are not does what which where how color home of lives live in eats eat
food like likes to about tell me describe name animals that plus equals makes add and
answer question user assistant say greet waves at you nice meet reply right wrong
"""
VOCABULARY = frozenset(
    set(_OTHER_WORDS.split()) | set(CREATURES) | set(COLORS) | set(HOMES) | set(FOODS)
    | set(NUMBERS) | set(NAMES) | set(GREETINGS) | TOXIC_WORDS | PUNCTUATION
    | {w for text in RUDE_PHRASES + RUDE_TAGS + FILLER for w in text.split()})
