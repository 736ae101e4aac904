"""Constitutions: principles that steer an AI judge and critique-and-revise (Bai et al. 2022).

A constitution is a YAML file with a list of ``principles``; each has a ``judge``
sentence (added to the labelling preamble, RLAIF-style), and a ``critique`` and a
``revision`` request (Constitutional AI's supervised stage, §3.1). The built-in
``default`` lives in ``constitutions/default.yaml``.

Sampling is deterministic: the principle for an item is drawn by a random generator
seeded with the run's seed and the item's content, so a re-run asks the judge exactly
the same questions (and so hits the cache), whatever the order of the input file.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from rlxf.config import from_dict
from rlxf.errors import ConfigError

BUILTIN_DIR = Path(__file__).parent / "constitutions"


@dataclass(kw_only=True)
class Principle:
    name: str
    """A short name, recorded with every label it was used for."""
    judge: str
    """One sentence for the judge: which response to prefer."""
    critique: str
    """Critique request: what to find wrong with an answer."""
    revision: str
    """Revision request: how to rewrite the answer."""


@dataclass(kw_only=True)
class Constitution:
    principles: list[Principle]
    """The principles; one is sampled per label or per revision."""
    critique_format: str = "{conversation}\n\nCritique request: {critique}\nCritique:"
    """The critique prompt, with {conversation} and {critique}."""
    revision_format: str = "{critique_prompt} {critique}\n\nRevision request: {revision}\nRevision:"
    """The revision prompt: the critique prompt, the critique written, then {revision}."""
    conversation_format: str = "{context}\nAssistant: {response}"
    """How a prompt and the answer under critique are shown, with {context} and {response}."""
    critique_stop: list[str] = field(default_factory=lambda: ["\n\nRevision request", "\n\nCritique request"])
    """Critique generation stops at the first of these strings."""
    revision_stop: list[str] = field(default_factory=lambda: ["\n\nCritique request", "\n\nRevision request",
                                                              "\nUser:", "\nHuman:"])
    """Revision generation stops at the first of these strings (the model starting a new turn)."""

    def validate(self) -> None:
        if not self.principles:
            raise ConfigError("a constitution needs at least one principle")
        from rlxf.feedback.ai.templates import check_fields

        check_fields("critique_format", self.critique_format, {"conversation", "critique"})
        check_fields("revision_format", self.revision_format, {"critique_prompt", "critique", "revision"})
        check_fields("conversation_format", self.conversation_format, {"context", "response"})
        names = [p.name for p in self.principles]
        if len(set(names)) != len(names):
            raise ConfigError(f"principle names must be unique, got {names}")

    def sample(self, seed: int, *content: str) -> Principle:
        """The principle for the item identified by ``content`` (deterministic)."""
        rng = random.Random("\x1f".join([f"constitution/{seed}", *content]))
        return rng.choice(self.principles)


def load_constitution(name_or_path: str) -> Constitution:
    """The built-in constitution ``name`` (``default``), or one read from a YAML file."""
    path = Path(name_or_path)
    if not path.is_file():
        path = BUILTIN_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            builtins = ", ".join(sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml")))
            raise ConfigError(f"constitution '{name_or_path}' is neither a file nor a built-in ({builtins})")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        return from_dict(Constitution, raw)
    except (yaml.YAMLError, ConfigError) as err:
        raise ConfigError(f"constitution {path}: {err}") from None
