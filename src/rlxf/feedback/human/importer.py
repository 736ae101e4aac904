"""Load labelling tasks into the annotation database, from files or by sampling models.

A task is a prompt with K >= 2 answers: two answers make a pairwise task (A / B / tie /
skip), more make a ranking task. Sources:

- preference files in any shape ``rlxf.data.load_comparisons`` reads
  (``prompt/chosen/rejected``, Vertex AI, Anthropic HH, ``prompt/completions/ranking``);
  the existing label is dropped and the answers are shuffled, so nothing tells the
  labeller which answer was "chosen";
- unlabelled rows ``{"prompt": ..., "answers": [...]}`` or ``{"prompt": ...,
  "completions": [...]}`` (JSONL, JSON, Parquet);
- ``generate.models``: sample K answers per prompt of ``generate.prompts`` from one or
  more local Hugging Face causal LMs (answer i from model i mod M, so two models and K=2
  give a model-vs-model comparison). Each answer is cut at the first ``generate.stop``
  string (by default the next dialogue turn, so an answer to an Anthropic HH prompt does
  not run on into a "Human:" turn the model made up) and cleaned of control characters
  and U+FFFD replacement characters (see :func:`clean_answer`).

Importing the same task twice adds it once, so an import can simply be re-run. Sampled
answers are kept beside the database (``DB.samples/``) as they come, until their tasks
are in it, so an import that crashed while sampling samples only what was left.

    rlxf annotate import database=sqlite:///labels.db files=[prefs.jsonl]
"""

from __future__ import annotations

import logging
import random
import shutil
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from rlxf.data import Preference, Prompt, load_comparisons, load_prompts, read_rows
from rlxf.data.formats import nonempty_answers
from rlxf.errors import ConfigError, DataError
from rlxf.feedback.human.store import open_store, parse_database_url
from rlxf.models.generation import DIALOGUE_TURNS, check_stop, cut_at_stop  # light: torch only in generate()
from rlxf.models.loading import DType  # light: torch is imported only when sampling

log = logging.getLogger("rlxf")


@dataclass
class GenerateConfig:
    models: list[str] = field(default_factory=list)
    """Causal LMs to sample answers from (local folders or hub ids); empty: no sampling."""
    prompts: str | None = None
    """File of prompts (any shape rlxf.data.load_prompts reads)."""
    limit: int | None = None
    """Sample for the first N prompts of the file only (null: every prompt)."""
    answers_per_prompt: int = 2
    """K: answers per prompt, taken in turn from each model (2 = pairwise tasks)."""
    max_new_tokens: int = 128
    """Longest answer, in tokens."""
    temperature: float = 1.0
    """Sampling temperature."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1.0 = off)."""
    batch_size: int = 16
    """Prompts per generate() call."""
    separator: str = " "
    """Text between a plain-text prompt and its answer (as in training)."""
    stop: list[str] = field(default_factory=lambda: list(DIALOGUE_TURNS))
    """Cut each answer before the first of these strings (the answer then counts as ended);
    default: the next dialogue turn (rlxf.models.generation.DIALOGUE_TURNS); []: keep all
    max_new_tokens tokens."""
    dtype: DType = "float32"
    """Weight dtype: float32, bfloat16, float16 or auto."""
    device: str = "auto"
    """Where to run the models: auto (CUDA when there is a GPU, else the CPU), cpu, cuda, cuda:1, mps."""
    trust_remote_code: bool = False
    """Run model code shipped with a checkpoint (off: it executes arbitrary Python)."""

    def validate(self) -> None:
        if self.models and not self.prompts:
            raise ConfigError("generate.models needs generate.prompts, the file of prompts "
                              "to answer")
        if self.answers_per_prompt < 2:
            raise ConfigError("generate.answers_per_prompt must be >= 2 (a task compares "
                              f"answers), got {self.answers_per_prompt}")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ConfigError("generate.max_new_tokens and generate.batch_size must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"generate.limit must be >= 1 or null, got {self.limit}")
        check_stop(self.stop, "generate.stop")


@dataclass
class Config:
    database: str = "sqlite:///annotate.db"
    """Where tasks go: sqlite:///relative.db or sqlite:////absolute.db (created if new)."""
    files: list[str] = field(default_factory=list)
    """Files of tasks: preference rows (their labels are dropped) or {prompt, answers}."""
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    """Sample the answers from models instead of (or as well as) reading them."""
    seed: int = 0
    """Seed for shuffling answers and for sampling."""
    skip_bad: bool = False
    """Skip malformed rows (counted in the summary) instead of stopping at the first."""

    def validate(self) -> None:
        parse_database_url(self.database)
        if not self.files and not self.generate.models:
            raise ConfigError("nothing to import: give files=[...] or generate.models=[...]")


def run(cfg: Config) -> dict:
    """Import every source; return counts of tasks added, duplicates and skipped (bad) rows,
    and with ``generate.models`` the prompts that got fewer than two distinct answers."""
    rng = random.Random(cfg.seed)
    read = [read_tasks(path, skip_bad=cfg.skip_bad) for path in cfg.files]  # every file checked before any is added
    store = open_store(cfg.database, create=True)
    summary = {"added": 0, "duplicates": 0, "skipped_rows": 0}
    for tasks, skipped in read:
        _add(store, tasks, rng, summary, skipped)
    if cfg.generate.models:
        # answers are kept beside the database as they are sampled: a crash resamples only the rest
        samples = Path(parse_database_url(cfg.database).target + ".samples")
        tasks, without_distinct = generate_tasks(cfg.generate, seed=cfg.seed, samples=samples)
        _add(store, tasks, rng, summary, 0)  # no rows to be bad: load_prompts raised at a bad prompt
        summary["prompts_without_distinct_answers"] = without_distinct
        shutil.rmtree(samples, ignore_errors=True)  # in the database now
    summary["tasks_in_database"] = store.task_count()
    return summary


def read_tasks(path: str, *, skip_bad: bool = False
               ) -> tuple[list[tuple[Prompt, list[str], dict]], int]:
    """``([(prompt, answers, meta), ...], skipped rows)`` from one file.

    The first row decides how the file is read: unlabelled answers (an ``answers`` list,
    or ``completions`` without ``ranking``) or labelled comparisons.
    """
    first = next((row for _, row in read_rows(path)), None)
    if first is None:
        return [], 0
    if "answers" in first or ("completions" in first and "ranking" not in first):
        return _read_answer_rows(path, skip_bad)
    # The loaders accept an empty answer (an empty final HH turn is a real label), but a task
    # needs answers to compare: the check `rlxf label` reads with makes such a row bad, as there.
    comparisons = load_comparisons(path, skip_bad=skip_bad, check=nonempty_answers, skip_key="skip_bad")
    tasks = []
    for c in comparisons:
        answers = [c.chosen, c.rejected] if isinstance(c, Preference) else list(c.completions)
        tasks.append((c.prompt, answers, {"source": c.source}))
    return tasks, comparisons.skipped


def generate_tasks(cfg: GenerateConfig, *, seed: int, samples: Path | None = None
                   ) -> tuple[list[tuple[Prompt, list[str], dict]], int]:
    """Sample ``answers_per_prompt`` answers per prompt, in turn from each model.

    Each answer is cleaned (:func:`clean_answer`) and cut before its first ``cfg.stop``
    string; the task's meta names the model of each answer (``models``) and says whether
    it ended (``ended``: EOS or a stop string) rather than hitting ``max_new_tokens``.
    Duplicate and empty answers are dropped; a prompt left with fewer than two distinct
    answers makes no task. Returns the tasks and the number of such prompts.
    """
    from rlxf.models.generation import generate, generate_stored  # imports torch: only when sampling
    from rlxf.models.loading import ModelConfig, fingerprint, load_causal_lm, load_tokenizer
    from rlxf.training import resolve_device

    device = resolve_device(cfg.device, "generate.device")  # a missing GPU fails before any model loads
    prompts = list(load_prompts(cfg.prompts, limit=cfg.limit))
    answers: list[list[tuple[str, str, bool]]] = [[] for _ in prompts]  # per prompt: (text, model, ended)
    for m, name in enumerate(cfg.models):
        count = len(range(m, cfg.answers_per_prompt, len(cfg.models)))  # turns of model m
        if count == 0:
            continue
        log.info("sampling %d answer(s) per prompt for %d prompts from %s",
                 count, len(prompts), name)
        tokenizer = load_tokenizer(name, trust_remote_code=cfg.trust_remote_code,
                                   padding_side="left")
        model = load_causal_lm(ModelConfig(name_or_path=name, dtype=cfg.dtype,
                                           trust_remote_code=cfg.trust_remote_code))
        model.to(device)
        settings = dict(max_new_tokens=cfg.max_new_tokens, key="generate.max_new_tokens", temperature=cfg.temperature,
                        top_p=cfg.top_p, batch_size=cfg.batch_size, separator=cfg.separator, stop=cfg.stop)
        for turn in range(count):
            if samples is None:
                out = generate(model, tokenizer, prompts, seed=seed + 1000 * m + turn, **settings)
            else:
                samples.mkdir(parents=True, exist_ok=True)
                identity = {"model": name, "weights": fingerprint(name), "dtype": cfg.dtype,
                            **{k: v for k, v in settings.items() if k not in ("key", "batch_size")}}
                out = generate_stored(model, tokenizer, prompts, samples / f"model{m}-turn{turn}.jsonl",
                                      identity=identity, seed=seed + 1000 * m + turn, **settings)
            for i, g in enumerate(out):
                text, stopped = cut_at_stop(clean_answer(g.text), cfg.stop)  # a stop string cleaning revealed
                answers[i].append((text, name, g.ended or stopped))
        del model
    tasks, without_distinct = [], 0
    for prompt, sampled in zip(prompts, answers):
        distinct: dict[str, tuple[str, str, bool]] = {}
        for text, name, ended in sampled:
            if text.strip():
                distinct.setdefault(text.strip(), (text, name, ended))
        if len(distinct) < 2:
            without_distinct += 1
            continue
        kept = list(distinct.values())
        tasks.append((prompt, [t for t, _, _ in kept],
                      {"models": [n for _, n, _ in kept], "ended": [e for _, _, e in kept]}))
    if without_distinct:
        log.warning("%d prompt(s) got fewer than 2 distinct non-empty answers; no task made",
                    without_distinct)
    return tasks, without_distinct


def clean_answer(text: str) -> str:
    """``text`` without control characters other than newline and tab, which the page
    would show as boxes or not at all: a carriage return before a newline is dropped,
    other whitespace controls (vertical tab, form feed, lone carriage return, the
    separators U+001C-U+001F, U+0085) become a space, and the rest (U+0000-U+001F,
    U+007F-U+009F) are removed.

    U+FFFD (the replacement character) is removed too: a byte-level BPE tokenizer decodes
    the bytes of a character the sample cut in half, or tokens that are no valid UTF-8,
    as U+FFFD, which is no text the model meant."""
    text = text.replace("\r\n", "\n").replace("\ufffd", "")
    return "".join(c if c in "\n\t" or unicodedata.category(c) != "Cc"
                   else " " if c.isspace() else "" for c in text)


def _read_answer_rows(path: str, skip_bad: bool
                      ) -> tuple[list[tuple[Prompt, list[str], dict]], int]:
    tasks, skipped = [], 0
    for line, row in read_rows(path):
        try:
            tasks.append(_answer_row(row, path, line))
        except DataError as err:
            if not skip_bad:
                raise
            skipped += 1
            log.warning("skipped: %s", err)
    return tasks, skipped


def _answer_row(row: dict, path: str, line: int) -> tuple[Prompt, list[str], dict]:
    where = {"path": path, "line": line}
    prompt = row.get("prompt")
    if isinstance(prompt, list) and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                        and isinstance(m.get("content"), str) for m in prompt):
        prompt = tuple(prompt)
    elif not isinstance(prompt, str) or not prompt.strip():
        raise DataError("must be non-empty text or a list of {role, content} messages",
                        field="prompt", **where)
    key = "answers" if "answers" in row else "completions"
    answers = row.get(key)
    if not isinstance(answers, list) or len(answers) < 2:
        raise DataError("must be a list of at least 2 answers", field=key, **where)
    seen: dict[str, int] = {}
    for i, answer in enumerate(answers):
        if not isinstance(answer, str) or not answer.strip():
            raise DataError("must be non-empty text", field=f"{key}[{i}]", **where)
        j = seen.setdefault(answer.strip(), i)
        if j != i:
            raise DataError(f"answers {j} and {i} are identical; each answer must appear once",
                            field=key, **where)
    return prompt, answers, {"source": f"{path}:{line}"}


PER_ANSWER = ("models", "ended")
"""Task meta keys holding one value per answer, in the order of the answers."""


def _add(store, tasks: list, rng: random.Random, summary: dict, skipped: int) -> None:
    # Shuffle the stored order too (the screen order is shuffled again per labeller):
    # files often list the chosen or best-ranked answer first.
    shuffled = []
    for prompt, answers, meta in tasks:
        order = rng.sample(range(len(answers)), len(answers))
        # Per-answer metadata keeps naming the model of each answer and whether it ended.
        meta = {key: [value[i] for i in order] if key in PER_ANSWER else value
                for key, value in meta.items()}
        shuffled.append((prompt, [answers[i] for i in order], meta))
    added, duplicates = store.add_tasks(shuffled)
    summary["added"] += added
    summary["duplicates"] += duplicates
    summary["skipped_rows"] += skipped
