"""AI labels from a judge: pairwise preferences (RLAIF) and direct scores (d-RLAIF).

:func:`judge_pairs` turns (context, A, B) triples into :class:`PairJudgement` objects:

1. a principle is sampled per pair when a constitution is given (Bai et al. 2022);
2. the labelling prompt is rendered in order AB and, with ``both_orders``, in BA; when
   it is too long for the judge, its sample is shortened to fit (:mod:`.fit`), and a
   prompt that cannot fit at all is not asked (method ``"too_long"``);
3. with chain-of-thought, the judge first writes ``samples`` rationales per prompt
   (at ``temperature``; self-consistency when ``samples > 1``), and "1"/"2" are scored
   after each (RLAIF §2.1.2, two-step);
4. each scored prompt gives P(position 1 wins), from the log-probs or, when the backend
   has none, a strictly parsed answer (one-hot); unparseable ones are left out;
5. per order the parsed samples are averaged, then the two orders are combined with
   :func:`~rlxf.feedback.ai.scoring.swap_average` into P(A better).

A pair gets no label (``prob_a is None``) when nothing about it parsed, or, with
``require_both_orders``, when either order has no parsed judgement: a label from one
order only would bring back the position bias the swap removes.

With chain-of-thought the prompt is fitted so that it, the longest rationale
(``rationale_max_tokens``) and the ending after it all fit; a rationale that still
overflows (re-tokenized longer than it was written: :func:`~rlxf.feedback.ai.fit.fit_generated`)
is cut from its end until it fits, and counted in ``cut_rationales``.

:class:`DirectScoreReward` rates single answers 1-10 and returns the expected rating,
a reward function PPO can call.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from rlxf.errors import ConfigError
from rlxf.feedback.ai.constitution import Constitution
from rlxf.feedback.ai.fit import Room, fit_generated, fit_sample
from rlxf.feedback.ai.judge import AnswerScores, Judge, NoLogprobs, prompt_room
from rlxf.feedback.ai.parse import parse_rating
from rlxf.feedback.ai.scoring import expected_rating, mean, order_flipped, rating_distribution, swap_average
from rlxf.feedback.ai.templates import (LABELS, RATINGS, Template, after_rationale, load_template,
                                        pairwise_prompt, rating_choices, rating_prompt)

log = logging.getLogger("rlxf")

_TEXT_ANSWER_TOKENS = 8  # a rating read from text, from a judge that names no answer_max_tokens of its own


@dataclass(frozen=True)
class JudgeSettings:
    """How to ask the judge (the ``rlxf label`` config keys of the same names)."""

    template: Template
    both_orders: bool = True
    require_both_orders: bool = True
    cot: bool = False
    samples: int = 1
    temperature: float = 0.0
    rationale_max_tokens: int = 128
    constitution: Constitution | None = None
    seed: int = 0


@dataclass(frozen=True)
class PairJudgement:
    """The judge's verdict on one pair (A, B).

    ``p_first_ab`` / ``p_first_ba``: P(position 1 wins) averaged over the parsed samples
    with A shown first / B shown first (``None``: that order was not asked, or nothing
    in it parsed). ``prob_a``: P(A is better), swap-averaged; ``None`` = no label.
    ``methods`` lists, per judgement asked, "logprobs", "text" or "unparseable".
    """

    prob_a: float | None
    p_first_ab: float | None
    p_first_ba: float | None
    methods: tuple[str, ...]
    rationales: tuple[str, ...] = ()
    principle: str | None = None
    unparsed: tuple[str, ...] = ()
    """What the judge wrote where no answer could be read (for debugging templates)."""
    shortened: int = 0
    """How many of its prompts had their sample shortened to fit the judge's context."""
    cut_rationales: int = 0
    """How many of its rationales were cut from their end to fit (re-tokenized longer than written)."""

    @property
    def flipped(self) -> bool | None:
        """Whether the choice flipped with the order; ``None`` unless both orders parsed."""
        if self.p_first_ab is None or self.p_first_ba is None:
            return None
        return order_flipped(self.p_first_ab, self.p_first_ba)

    @property
    def unparseable(self) -> int:
        return self.methods.count("unparseable")

    @property
    def too_long(self) -> bool:
        """Whether a prompt of the pair could not fit the judge's context at all."""
        return "too_long" in self.methods

    @property
    def problem(self) -> str | None:
        """Why the pair has no label: "too long for the judge" or "unparseable"; ``None`` if labelled."""
        if self.prob_a is not None:
            return None
        return "too long for the judge" if self.too_long else "unparseable"


def judge_pairs(judge: Judge, pairs: Sequence[tuple[str, str, str]], s: JudgeSettings) -> list[PairJudgement]:
    """Judge every ``(context, answer_a, answer_b)``; see the module docstring for the steps."""
    t = s.template
    principles = [s.constitution.sample(s.seed, *pair) if s.constitution else None for pair in pairs]
    orders = (False, True) if s.both_orders else (False,)
    score_room, ask_room = _rooms(judge, s)
    prompts: list[str | None] = []  # pair-major: for pair i, order o, the prompt at i * len(orders) + o
    shortened: list[bool] = []
    for (context, a, b), principle in zip(pairs, principles):
        for swapped in orders:
            def render(ctx: str, answers: list[str], principle=principle) -> str:
                return pairwise_prompt(t, ctx, answers[0], answers[1],
                                       principle=principle.judge if principle else None, cot=s.cot)

            fitted = fit_sample(render, ask_room, context, (b, a) if swapped else (a, b))
            prompts.append(fitted.prompt)
            shortened.append(fitted.shortened)
    asked = [k for k, p in enumerate(prompts) if p is not None]
    rationales: list[list[str]] = [[] for _ in prompts]
    cut = [0] * len(prompts)
    scored: list[tuple[int, str | None]] = []  # (prompt index, the prompt "1"/"2" is scored after; None: too long)
    if s.cot and asked:
        written = judge.generate([prompts[k] for k in asked], max_tokens=s.rationale_max_tokens,
                                 temperature=s.temperature, n=s.samples, stop=t.rationale_stop, seed=s.seed)
        for k, texts in zip(asked, written):
            for text in texts:
                fitted = fit_generated(lambda r, k=k: after_rationale(t, prompts[k], r), score_room, text)
                cut[k] += fitted.cut and fitted.text is not None
                rationales[k].append(text if fitted.text is None else fitted.text)
                scored.append((k, None if fitted.text is None else after_rationale(t, prompts[k], fitted.text)))
        if sum(cut):
            log.warning("%d of %d rationales were more tokens re-tokenized than the %d generated (often a "
                        "character cut in the middle, decoded as U+FFFD): cut from their end to fit the judge's "
                        "%d positions", sum(cut), len(scored), s.rationale_max_tokens, score_room.positions)
    else:
        scored = [(k, prompts[k]) for k in asked]
    sent = [text for _, text in scored if text is not None]
    verdicts = iter(judge.answer_logprobs(sent, LABELS) if sent else [])
    by_prompt: list[list[AnswerScores]] = [[] for _ in prompts]
    for k, text in scored:
        by_prompt[k].append(next(verdicts) if text is not None else AnswerScores("too_long"))
    for k, prompt in enumerate(prompts):
        if prompt is None:
            by_prompt[k] = [AnswerScores("too_long")] * (s.samples if s.cot else 1)

    out = []
    for i, principle in enumerate(principles):
        p_first: list[float | None] = []
        methods, reasons, unparsed = [], [], []
        for o in range(len(orders)):
            k = i * len(orders) + o
            samples = by_prompt[k]
            methods += [v.method for v in samples]
            reasons += rationales[k]
            unparsed += [v.text for v in samples if v.method == "unparseable"]
            parsed = [dist[0] for v in samples if (dist := v.distribution(2)) is not None]
            p_first.append(mean(parsed) if parsed else None)
        p_ab = p_first[0]
        p_ba = p_first[1] if s.both_orders else None
        mine = slice(i * len(orders), (i + 1) * len(orders))
        out.append(PairJudgement(_combine(p_ab, p_ba, s), p_ab, p_ba, tuple(methods), tuple(reasons),
                                 principle.name if principle else None, tuple(unparsed), sum(shortened[mine]),
                                 sum(cut[mine])))
    return out


def check_template_fits(judge: Judge, s: JudgeSettings) -> None:
    """Raise :class:`ConfigError` when no pair could be judged with these settings: the template
    alone is too long for the judge, or the rationale leaves no room. :func:`judge_pairs` checks
    this itself; commands call it first, before any slow work (loading data, sampling answers)."""
    _rooms(judge, s)


def _rooms(judge: Judge, s: JudgeSettings) -> tuple[Room | None, Room | None]:
    """The room of the prompt "1"/"2" is scored after, and of the prompt first asked (with
    chain-of-thought, the rationale comes between them); checked to fit the bare template."""
    score_room = prompt_room(judge, answers=LABELS)
    ask_room = _cot_room(score_room, s) if s.cot else score_room
    _check_template_fits(ask_room, s)
    return score_room, ask_room


def _check_template_fits(room: Room | None, s: JudgeSettings) -> None:
    """Fail before any judging when the template alone, with an empty sample, is too long:
    then no pair could be judged, whatever is shortened. With a constitution the check takes
    the longest principle: any pair may draw it, and the pairs that do could never be judged."""
    if room is None:
        return
    principles = s.constitution.principles if s.constitution else [None]
    sizes = [(room.length(pairwise_prompt(s.template, "", "", "", principle=p.judge if p else None, cot=s.cot)), p)
             for p in principles]
    bare, longest = max(sizes, key=lambda size: size[0])
    if bare > room.tokens:
        kept = f" ({room.reserved} kept for the answer" + (" and the rationale)" if s.cot else ")")
        under = f" with principle '{longest.name}' (the constitution's longest)" if longest else ""
        shorter = ", shorter principles" if longest else ""
        raise ConfigError(f"the labelling template alone (no conversation, no answers){under} is {bare} tokens, "
                          f"more than the {room.tokens} the judge's {room.positions} positions leave for a "
                          f"prompt{kept}; use a judge with a longer context, or a shorter template (fewer "
                          f"exemplars, a shorter preamble{shorter})")


def _cot_room(score_room: Room | None, s: JudgeSettings) -> Room | None:
    """The room of a chain-of-thought prompt: the rationale, then " " + rationale_end +
    ending (:func:`after_rationale`) and the answer must still fit after it; one more
    token for the boundary between the rationale and what follows, re-tokenized."""
    if score_room is None:
        return None
    after = score_room.length(after_rationale(s.template, "", ""))
    room = score_room.less(s.rationale_max_tokens + after + 1)
    if room.tokens < 1:
        raise ConfigError(f"rationale_max_tokens ({s.rationale_max_tokens}) leaves no room for a labelling prompt "
                          f"in the judge's {room.positions} positions; lower it")
    return room


def _combine(p_ab: float | None, p_ba: float | None, s: JudgeSettings) -> float | None:
    if not s.both_orders:
        return p_ab
    if p_ab is not None and p_ba is not None:
        return swap_average(p_ab, p_ba)
    if s.require_both_orders:
        return None
    if p_ab is not None:
        return p_ab
    return None if p_ba is None else 1.0 - p_ba


class DirectScoreReward:
    """d-RLAIF reward (Lee et al. 2023, §2.2.2): the judge rates each answer 1-10, and the
    reward is the expected rating ``sum_k k * P(k)``, with P from the log-probs of the
    continuations " 1" .. " 10" (a two-token "10" handled by
    :func:`~rlxf.feedback.ai.scoring.exclusive_logprobs`).

    ``normalize=True`` maps the expected rating from [1, 10] onto [-1, 1]. When the
    backend has no log-probs, the judge's greedy text is parsed (:func:`parse_rating`);
    an unparseable rating gives NaN (never a made-up value) and is counted in
    ``self.unparseable``, so the caller can mask or drop it. A prompt too long for the
    judge has its sample shortened (:mod:`.fit`; counted in ``self.shortened``), or, when
    even that cannot fit, gives NaN too (counted in ``self.too_long``).

        reward = DirectScoreReward(HFJudge.load(ModelConfig(name_or_path="judge")), "helpful")
        reward(["User: hi"], ["Hello! How can I help?"])  # -> [8.7]
    """

    def __init__(self, judge: Judge, template: Template | str = "helpful", *, batch_size: int = 32,
                 normalize: bool = False, constitution: Constitution | None = None, seed: int = 0) -> None:
        self.judge = judge
        self.template = load_template(template) if isinstance(template, str) else template
        self.batch_size, self.normalize = batch_size, normalize
        self.constitution, self.seed = constitution, seed
        self.unparseable = self.too_long = self.shortened = 0

    def __call__(self, prompts: Sequence[str], answers: Sequence[str]) -> list[float]:
        values = [float(r) for r in RATINGS]
        scores = []
        for dist in self.distributions(prompts, answers):
            score = math.nan if dist is None else expected_rating(values, dist)
            scores.append((score - 5.5) / 4.5 if self.normalize else score)
        return scores

    def distributions(self, prompts: Sequence[str], answers: Sequence[str]) -> list[list[float] | None]:
        """P(rating = 1..10) per answer; ``None`` where the rating could not be read, or where
        the prompt could not fit the judge's context even with its sample shortened."""
        if len(prompts) != len(answers):
            raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
        choices = rating_choices(self.template)
        room = prompt_room(self.judge, answers=choices)
        out: list[list[float] | None] = []
        for start in range(0, len(prompts), self.batch_size):
            texts: list[str | None] = []
            for p, a in zip(prompts[start:start + self.batch_size], answers[start:start + self.batch_size]):
                principle = self.constitution.sample(self.seed, p, a).judge if self.constitution else None

                def render(ctx: str, response: list[str], principle=principle) -> str:
                    return rating_prompt(self.template, ctx, response[0], principle=principle)

                fitted = fit_sample(render, room, p, [a])
                self.shortened += fitted.shortened
                self.too_long += fitted.prompt is None
                texts.append(fitted.prompt)
            asked = [t for t in texts if t is not None]
            try:
                dists = [rating_distribution(s) for s in self.judge.score_choices(asked, choices)] if asked else []
            except NoLogprobs:
                # as many tokens as the judge writes for any answer (judge.answer_max_tokens), which its room
                # keeps free: a judge that explains itself then still reaches its number
                written = getattr(self.judge, "answer_max_tokens", _TEXT_ANSWER_TOKENS)
                dists = [self._from_text(t) for t in self.judge.generate(asked, max_tokens=written, temperature=0.0)]
            found = iter(dists)
            out += [next(found) if t is not None else None for t in texts]
        return out

    def _from_text(self, samples: list[str]) -> list[float] | None:
        rating = parse_rating(samples[0]) if samples else None
        if rating is None:
            self.unparseable += 1
            return None
        return [1.0 if int(r) == rating else 0.0 for r in RATINGS]
