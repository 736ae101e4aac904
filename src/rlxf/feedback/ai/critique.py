"""Critique and revise answers under constitution principles: SFT data (Constitutional AI §3.1).

    rlxf critique data=answers.jsonl out=runs/revised judge.model=path/to/model constitution=default

For each (prompt, answer) in ``data`` (any demonstration file: ``prompt/completion``,
``messages``), and for each of ``rounds`` rounds, a principle is sampled from the
constitution; the model writes a critique of the current answer under it, then a
revision, which the next round critiques again (Bai et al. 2022 use up to four rounds,
a fresh principle each time).

Output, in ``out``:

- ``demonstrations.jsonl``: ``{prompt, completion}`` with the final revision as the
  completion, ready for ``rlxf sft``; extra fields keep ``original``, ``critiques``,
  ``revisions`` and ``principles``.
- ``unrevised.jsonl``: items with no usable revision (the model wrote nothing, or a
  request failed after all retries), with the ``reason``; never passed off as revised.
- ``summary.json`` and ``judge_cache.sqlite`` (re-running resumes from the cache).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from rlxf.errors import ConfigError, RlxfError
from rlxf.feedback.ai.backends import JudgeConfig, make_judge
from rlxf.feedback.ai.constitution import Constitution, load_constitution
from rlxf.feedback.ai.judge import Judge, JudgeRequestError
from rlxf.runs import Run, Timer

log = logging.getLogger("rlxf")


@dataclass(kw_only=True)
class Config:
    """``rlxf critique``: critique-and-revise answers into SFT demonstrations."""

    out: str
    """Run directory (demonstrations.jsonl, unrevised.jsonl, summary.json, judge_cache.sqlite)."""
    data: str
    """Prompts with the answers to revise: any demonstration file (prompt/completion or messages)."""
    judge: JudgeConfig
    """The model that critiques and revises (in Constitutional AI, the assistant itself)."""
    split: str | None = None
    """Split to read from a saved HF DatasetDict."""
    skip_bad_rows: bool = False
    """Skip malformed input rows (counted) instead of stopping at the first one."""
    limit: int | None = None
    """Revise only the first this many answers; null revises all."""
    constitution: str = "default"
    """Principles: 'default' or a YAML file (see rlxf/feedback/ai/constitutions/default.yaml)."""
    rounds: int = 1
    """Critique-revision rounds per answer, each under a newly sampled principle."""
    critique_max_tokens: int = 128
    """Longest critique, in tokens."""
    revision_max_tokens: int = 256
    """Longest revision, in tokens."""
    temperature: float = 0.0
    """Sampling temperature (0 = greedy)."""
    chunk_size: int = 32
    """Answers sent to the model per batch."""
    max_failed: int = 20
    """Stop when more answers than this failed after all retries."""
    cache: str | None = None
    """SQLite cache of model requests; null: OUT/judge_cache.sqlite."""
    seed: int = 0
    """Seed for principle choice and sampling."""
    progress: bool = True
    """Show a progress bar."""

    def validate(self) -> None:
        if self.rounds < 1 or self.chunk_size < 1 or self.critique_max_tokens < 1 or self.revision_max_tokens < 1:
            raise ConfigError("rounds, chunk_size, critique_max_tokens and revision_max_tokens must be ≥ 1")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be ≥ 0, got {self.temperature}")


@dataclass
class Revision:
    """One answer's way through the rounds. ``answer`` is the latest revision."""

    context: str
    original: str
    answer: str
    critiques: list[str]
    revisions: list[str]
    principles: list[str]
    problem: str | None = None


def run(cfg: Config) -> dict:
    from rlxf.data.formats import load_demonstrations
    from rlxf.data.readers import write_jsonl
    from rlxf.feedback.ai.label import judge_stats, plain_prompt
    from rlxf.feedback.ai.templates import context_text
    from rlxf.progress import progress

    timer = Timer()
    demos = load_demonstrations(cfg.data, split=cfg.split, skip_bad=cfg.skip_bad_rows)
    demos = list(demos)[:cfg.limit] if cfg.limit else list(demos)
    if not demos:
        raise RlxfError(f"{cfg.data} holds no answers to revise")
    constitution = load_constitution(cfg.constitution)
    run_dir = Run.open(cfg.out, cfg)
    if run_dir.complete:
        return run_dir.summary()
    judge = make_judge(cfg.judge, cfg.cache or run_dir.out / "judge_cache.sqlite")
    items = [Revision(context_text(d.prompt), d.completion, d.completion, [], [], []) for d in demos]
    failed = 0
    for start in progress(range(0, len(items), cfg.chunk_size), desc="critique",
                          total=-(-len(items) // cfg.chunk_size), enabled=cfg.progress):
        chunk = items[start:start + cfg.chunk_size]
        try:
            revise(judge, chunk, constitution, cfg)
            continue
        except JudgeRequestError as err:
            log.warning("a request failed (%s); revising this chunk answer by answer", err)
        for item in chunk:
            try:
                revise(judge, [item], constitution, cfg)
            except JudgeRequestError as err:
                item.problem, failed = f"failed: {err}", failed + 1
                if failed > cfg.max_failed:
                    raise RlxfError(f"{failed} answers failed after all retries (last: {err}); re-run to "
                                    "resume from the cache") from None

    done, undone = [], []
    for demo, item in zip(demos, items):
        extra = {"original": item.original, "critiques": item.critiques, "revisions": item.revisions,
                 "principles": item.principles, "source": demo.source}
        if item.problem:
            undone.append({"prompt": plain_prompt(demo.prompt), "reason": item.problem, **extra})
        else:
            done.append({"prompt": plain_prompt(demo.prompt), "completion": item.answer, **extra})
    write_jsonl(run_dir.out / "demonstrations.jsonl", done)
    write_jsonl(run_dir.out / "unrevised.jsonl", undone)
    summary = {"command": "critique", "input": cfg.data, "judge": judge.identity, "answers": len(items),
               "revised": len(done), "unrevised": len(undone), "failed": failed,
               "empty_revisions": sum(1 for i in items if i.problem == "empty revision"),
               "changed": sum(1 for i in items if not i.problem and i.answer.strip() != i.original.strip()),
               "rounds": cfg.rounds, **judge_stats(judge), "seconds": timer.elapsed(),
               "demonstrations": str(run_dir.out / "demonstrations.jsonl")}
    run_dir.write_summary(summary)
    return summary


def revise(judge: Judge, items: Sequence[Revision], constitution: Constitution, cfg: Config) -> None:
    """Run ``cfg.rounds`` critique-revision rounds on ``items`` (in place). An empty
    revision ends an item's rounds with ``problem = "empty revision"``."""
    c = constitution
    for r in range(cfg.rounds):
        live = [it for it in items if it.problem is None and len(it.revisions) == r]
        if not live:
            continue
        principles = [c.sample(cfg.seed, f"round-{r}", it.context, it.original) for it in live]
        asks = [c.critique_format.format(
            conversation=c.conversation_format.format(context=it.context, response=it.answer.strip()),
            critique=p.critique) for it, p in zip(live, principles)]
        critiques = [s[0].strip() for s in judge.generate(asks, max_tokens=cfg.critique_max_tokens,
                                                          temperature=cfg.temperature, stop=c.critique_stop,
                                                          seed=cfg.seed)]
        revision_asks = [c.revision_format.format(critique_prompt=ask, critique=crit, revision=p.revision)
                         for ask, crit, p in zip(asks, critiques, principles)]
        revisions = [s[0].strip() for s in judge.generate(revision_asks, max_tokens=cfg.revision_max_tokens,
                                                          temperature=cfg.temperature, stop=c.revision_stop,
                                                          seed=cfg.seed)]
        for it, p, crit, rev in zip(live, principles, critiques, revisions):
            it.principles.append(p.name)
            it.critiques.append(crit)
            it.revisions.append(rev)
            if rev:
                it.answer = rev
            else:
                it.problem = "empty revision"
