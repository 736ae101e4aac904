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
- ``unrevised.jsonl``: items with no usable revision, with the ``reason``: "empty
  revision" (the model wrote nothing in every round), "revision cut at
  revision_max_tokens" (no revision ended before that length: a demonstration cut
  mid-way would teach the SFT model to stop mid-way), "too long for the model" (the
  prompt did not fit even with the conversation and answer shortened), "refused: ..."
  or "failed: ..." (a request the server refused, or whose retries ran out); never
  passed off as revised. An empty or cut revision in a later round keeps the one before
  it (cut ones are counted in ``cut_revisions``).
- ``summary.json`` and ``judge_cache.sqlite`` (re-running resumes from the cache).

A prompt longer than the model's context has its sample shortened as in ``rlxf label``
(:mod:`.fit`): the conversation from its start, then the answer from its end; a critique
that re-tokenizes longer than it was generated is cut from its end to leave the revision
its room (:func:`~rlxf.feedback.ai.fit.fit_generated`, counted in ``cut_critiques``). A run
where some answer *failed* is not complete: the two files are written, ``summary.json``
is not, and the command fails saying how many; re-running it retries only those.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from rlxf.errors import ConfigError, RlxfError
from rlxf.feedback.ai.backends import JudgeConfig, make_judge
from rlxf.feedback.ai.constitution import Constitution, Principle, load_constitution
from rlxf.feedback.ai.fit import Room, fit_generated, fit_sample
from rlxf.feedback.ai.judge import Judge, JudgeRequestError, prompt_room
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
    """One answer's way through the rounds. ``answer`` is the latest non-empty revision
    (the original until there is one); ``revisions`` holds every round's, empty ones too."""

    context: str
    original: str
    answer: str
    critiques: list[str]
    revisions: list[str]
    principles: list[str]
    problem: str | None = None
    shortened: int = 0
    """Rounds whose prompt had its sample shortened to fit the model's context."""
    too_long: bool = False
    """A round's prompt did not fit even shortened: the item's rounds ended there."""
    cut_critiques: int = 0
    """Rounds whose critique was cut from its end to fit (re-tokenized longer than generated)."""
    cut_revisions: int = 0
    """Rounds whose revision reached revision_max_tokens without ending: kept in ``revisions``,
    never taken as the answer (a demonstration cut mid-way teaches stopping mid-way)."""
    revised: bool = False
    """Some round's revision was taken as the answer."""


def run(cfg: Config) -> dict:
    from rlxf.data.formats import load_demonstrations
    from rlxf.data.readers import write_jsonl
    from rlxf.feedback.ai.label import judge_stats, plain_prompt
    from rlxf.feedback.ai.templates import context_text
    from rlxf.progress import progress

    timer = Timer()
    loaded = load_demonstrations(cfg.data, split=cfg.split, skip_bad=cfg.skip_bad_rows, skip_key="skip_bad_rows",
                                 limit=cfg.limit or None)
    demos = list(loaded)
    if not demos:
        raise RlxfError(f"{cfg.data} holds no answers to revise")
    constitution = load_constitution(cfg.constitution)
    run_dir = Run.open(cfg.out, cfg)
    if run_dir.complete:
        log.info("%s is already complete; delete it to revise again", run_dir.out)
        return run_dir.summary()
    judge = make_judge(cfg.judge, cfg.cache or run_dir.out / "judge_cache.sqlite")
    check_fits(judge, constitution, cfg)  # before the progress bar: a prompt that cannot fit fails every answer
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
                item.problem, failed = f"{'refused' if err.permanent else 'failed'}: {err}", failed + 1
                if failed > cfg.max_failed:
                    raise RlxfError(f"{failed} answers failed or were refused (last: {err}); re-run to "
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
    cut_critiques = sum(i.cut_critiques for i in items)
    if cut_critiques:
        log.warning("%d critiques were more tokens re-tokenized than the %d generated (often a character cut in "
                    "the middle, decoded as U+FFFD): cut from their end to leave the revision its room",
                    cut_critiques, cfg.critique_max_tokens)
    cut_revisions = sum(i.cut_revisions for i in items)  # rounds, as cut_critiques
    all_cut = sum(1 for i in items if i.problem == CUT)  # answers left with no revision that ended
    if cut_revisions:
        log.warning("%d revisions reached revision_max_tokens (%d) without ending and were not taken (the answer "
                    "kept the round before; %d answers have no revision at all, in unrevised.jsonl); raise "
                    "revision_max_tokens", cut_revisions, cfg.revision_max_tokens, all_cut)
    shortened = sum(i.shortened for i in items)
    if shortened:
        log.warning("%d prompts were longer than the model's %d positions: their conversation and answer were "
                    "shortened to fit (the conversation from its start, then the answer from its end)",
                    shortened, prompt_room(judge).positions)
    too_long = sum(1 for i in items if i.problem == TOO_LONG)
    if too_long:
        log.warning("%d of %d answers were %s: their prompt did not fit its %d positions even with the "
                    "conversation and answer shortened, and they have no revision (unrevised.jsonl); lower "
                    "critique_max_tokens or revision_max_tokens, or use a model with a longer context",
                    too_long, len(items), TOO_LONG, prompt_room(judge).positions)
    failures = [i.problem for i in items if i.problem and i.problem.startswith("failed")]
    if failures:
        raise RlxfError(f"{len(failures)} of {len(items)} answers failed after all retries (last: "
                        f"{failures[-1].removeprefix('failed: ')}); the run is not complete. Re-run the same "
                        "command to retry only those: the judge cache keeps the finished requests")
    summary = {"command": "critique", "input": cfg.data, "skipped_rows": loaded.skipped, "judge": judge.identity,
               "answers": len(items), "revised": len(done), "unrevised": len(undone),
               "refused": sum(1 for i in items if i.problem and i.problem.startswith("refused")),
               "empty_revisions": sum(1 for i in items if i.problem == "empty revision"),
               "too_long": too_long,
               "cut_revisions": cut_revisions, "all_revisions_cut": all_cut,
               "shortened_prompts": shortened, "cut_critiques": cut_critiques,
               "changed": sum(1 for i in items if not i.problem and i.answer.strip() != i.original.strip()),
               "rounds": cfg.rounds, **judge_stats(judge), "seconds": timer.elapsed(),
               "demonstrations": str(run_dir.out / "demonstrations.jsonl")}
    run_dir.write_summary(summary)
    log.info("revised %d of %d answers (%d changed; %d unrevised: %d empty revisions, %d cut revisions, %d too long "
             "for the model, %d refused)", summary["revised"], summary["answers"], summary["changed"],
             summary["unrevised"], summary["empty_revisions"], summary["all_revisions_cut"], summary["too_long"],
             summary["refused"])
    return summary


TOO_LONG = "too long for the model"
CUT = "revision cut at revision_max_tokens"


def check_fits(judge: Judge, c: Constitution, cfg: Config) -> Room | None:
    """The room of a revision prompt and its revision on ``judge`` (``None``: no known context
    length). Raises :class:`ConfigError` when no answer could be revised: the token limits leave
    no room for a prompt, or the critique prompt with an empty conversation and answer does not
    fit under some principle: any answer may draw that one, and those that do could never be
    revised (as ``rlxf label`` checks its template with the constitution's longest principle).
    :func:`revise` checks this itself; ``run`` checks it before any work."""
    room = prompt_room(judge, new_tokens=cfg.revision_max_tokens)
    if room is None:
        return None
    if room.tokens - cfg.critique_max_tokens < 1:
        raise ConfigError(f"critique_max_tokens ({cfg.critique_max_tokens}) + revision_max_tokens "
                          f"({cfg.revision_max_tokens}) leave no room for a prompt in the model's "
                          f"{room.positions} positions; lower them")
    conversation = c.conversation_format.format(context="", response="")
    # (tokens of the bare critique prompt, tokens it may have, principle) under each principle
    sizes = [(room.length(c.critique_format.format(conversation=conversation, critique=p.critique)),
              _ask_room(room, c, p, cfg).tokens, p) for p in c.principles]
    over = [(bare, tokens, p) for bare, tokens, p in sizes if bare > tokens]
    if over:
        bare, tokens, p = max(over, key=lambda size: size[0] - size[1])
        others = f" (and {len(over) - 1} more of the {len(sizes)} principles)" if len(over) > 1 else ""
        raise ConfigError(f"the critique prompt alone (no conversation, no answer) is {bare} tokens under principle "
                          f"'{p.name}'{others}, more than the {tokens} the model's {room.positions} positions leave "
                          "for it (the rest is kept for the critique, the revision request and the revision); any "
                          "answer may draw it: lower critique_max_tokens or revision_max_tokens, use a model with a "
                          "longer context, or shorten or drop that principle")
    return room


def _ask_room(room: Room | None, c: Constitution, p: Principle, cfg: Config) -> Room | None:
    """The room of the critique prompt under principle ``p``: the critique, then the revision
    request (+ 1 token: the boundary, re-tokenized) and the revision must still fit after it."""
    if room is None:
        return None
    after = room.length(c.revision_format.format(critique_prompt="", critique="", revision=p.revision))
    return room.less(cfg.critique_max_tokens + after + 1)


def revise(judge: Judge, items: Sequence[Revision], constitution: Constitution, cfg: Config) -> None:
    """Run ``cfg.rounds`` critique-revision rounds on ``items`` (in place), resuming each
    item at its first unfinished round. An empty revision leaves the answer as it was
    (the next round critiques it again); an item with no non-empty revision after all
    rounds gets ``problem = "empty revision"``.

    The revision prompt is the critique prompt, the critique and the revision request,
    so the critique prompt is fitted to leave room for all of them and the revision."""
    c = constitution
    room = check_fits(judge, c, cfg)  # the revision prompt and the revision
    for r in range(cfg.rounds):
        live = [it for it in items if it.problem is None and not it.too_long and len(it.revisions) == r]
        if not live:
            continue
        principles = [c.sample(cfg.seed, f"round-{r}", it.context, it.original) for it in live]
        asks = []
        for it, p in zip(live, principles):
            def render(context: str, answer: list[str], p=p) -> str:
                conversation = c.conversation_format.format(context=context, response=answer[0].strip())
                return c.critique_format.format(conversation=conversation, critique=p.critique)

            fitted = fit_sample(render, _ask_room(room, c, p, cfg), it.context, [it.answer])
            it.shortened += fitted.shortened
            it.too_long = fitted.prompt is None
            asks.append(fitted.prompt)
        ready = [(it, p, ask) for it, p, ask in zip(live, principles, asks) if ask is not None]
        if not ready:
            continue
        generated = judge.generate([ask for _, _, ask in ready], max_tokens=cfg.critique_max_tokens,
                                   temperature=cfg.temperature, stop=c.critique_stop, seed=cfg.seed)
        critiques, revision_asks = [], []
        for (it, p, ask), samples in zip(ready, generated):
            def follow(crit: str, ask=ask, p=p) -> str:
                return c.revision_format.format(critique_prompt=ask, critique=crit, revision=p.revision)

            fitted = fit_generated(follow, room, samples[0].strip())
            it.too_long = fitted.text is None  # the revision request alone does not fit after the prompt
            it.cut_critiques += fitted.cut and fitted.text is not None
            critiques.append(samples[0].strip() if fitted.text is None else fitted.text)
            revision_asks.append(None if fitted.text is None else follow(fitted.text))
        fits = [text is not None for text in revision_asks]
        asked = [text for text in revision_asks if text is not None]
        written = iter(judge.complete(asked, max_tokens=cfg.revision_max_tokens, temperature=cfg.temperature,
                                      stop=c.revision_stop, seed=cfg.seed) if asked else [])
        for (it, p, _), crit, ok in zip(ready, critiques, fits):
            if not ok:
                continue
            revision = next(written)[0]
            rev = revision.text.strip()
            it.principles.append(p.name)
            it.critiques.append(crit)
            it.revisions.append(rev)
            it.cut_revisions += bool(rev) and not revision.ended
            if rev and revision.ended:
                it.answer, it.revised = rev, True
    for it in items:
        if it.problem is None and not it.revised:
            it.problem = (TOO_LONG if it.too_long else CUT if it.cut_revisions else "empty revision")
