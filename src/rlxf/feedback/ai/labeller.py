"""AI labels from a judge: pairwise preferences (RLAIF) and direct scores (d-RLAIF).

:func:`judge_pairs` turns (context, A, B) triples into :class:`PairJudgement` objects:

1. a principle is sampled per pair when a constitution is given (Bai et al. 2022);
2. the labelling prompt is rendered in order AB and, with ``both_orders``, in BA;
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

:class:`DirectScoreReward` rates single answers 1-10 and returns the expected rating,
a reward function PPO can call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rlxf.feedback.ai.constitution import Constitution
from rlxf.feedback.ai.judge import Judge, NoLogprobs
from rlxf.feedback.ai.parse import parse_rating
from rlxf.feedback.ai.scoring import expected_rating, mean, order_flipped, rating_distribution, swap_average
from rlxf.feedback.ai.templates import (LABELS, RATINGS, Template, after_rationale, load_template,
                                        pairwise_prompt, rating_choices, rating_prompt)


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

    @property
    def flipped(self) -> bool | None:
        """Whether the choice flipped with the order; ``None`` unless both orders parsed."""
        if self.p_first_ab is None or self.p_first_ba is None:
            return None
        return order_flipped(self.p_first_ab, self.p_first_ba)

    @property
    def unparseable(self) -> int:
        return self.methods.count("unparseable")


def judge_pairs(judge: Judge, pairs: Sequence[tuple[str, str, str]], s: JudgeSettings) -> list[PairJudgement]:
    """Judge every ``(context, answer_a, answer_b)``; see the module docstring for the steps."""
    principles = [s.constitution.sample(s.seed, *pair) if s.constitution else None for pair in pairs]
    orders = (False, True) if s.both_orders else (False,)
    prompts = []  # pair-major: for pair i, order o, the prompt at i * len(orders) + o
    for (context, a, b), principle in zip(pairs, principles):
        for swapped in orders:
            first, second = (b, a) if swapped else (a, b)
            prompts.append(pairwise_prompt(s.template, context, first, second,
                                           principle=principle.judge if principle else None, cot=s.cot))
    if s.cot:
        rationales = judge.generate(prompts, max_tokens=s.rationale_max_tokens, temperature=s.temperature,
                                    n=s.samples, stop=s.template.rationale_stop, seed=s.seed)
        scored = [after_rationale(s.template, p, r) for p, rs in zip(prompts, rationales) for r in rs]
        owner = [k for k, rs in enumerate(rationales) for _ in rs]  # which prompt each scored text extends
    else:
        rationales = [[] for _ in prompts]
        scored, owner = prompts, list(range(len(prompts)))
    verdicts = judge.answer_logprobs(scored, LABELS)
    by_prompt: list[list] = [[] for _ in prompts]
    for k, verdict in zip(owner, verdicts):
        by_prompt[k].append(verdict)

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
        out.append(PairJudgement(_combine(p_ab, p_ba, s), p_ab, p_ba, tuple(methods), tuple(reasons),
                                 principle.name if principle else None, tuple(unparsed)))
    return out


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
    ``self.unparseable``, so the caller can mask or drop it.

        reward = DirectScoreReward(HFJudge.load(ModelConfig(name_or_path="judge")), "helpful")
        reward(["User: hi"], ["Hello! How can I help?"])  # -> [8.7]
    """

    def __init__(self, judge: Judge, template: Template | str = "helpful", *, batch_size: int = 32,
                 normalize: bool = False, constitution: Constitution | None = None, seed: int = 0) -> None:
        self.judge = judge
        self.template = load_template(template) if isinstance(template, str) else template
        self.batch_size, self.normalize = batch_size, normalize
        self.constitution, self.seed = constitution, seed
        self.unparseable = 0

    def __call__(self, prompts: Sequence[str], answers: Sequence[str]) -> list[float]:
        values = [float(r) for r in RATINGS]
        scores = []
        for dist in self.distributions(prompts, answers):
            score = math.nan if dist is None else expected_rating(values, dist)
            scores.append((score - 5.5) / 4.5 if self.normalize else score)
        return scores

    def distributions(self, prompts: Sequence[str], answers: Sequence[str]) -> list[list[float] | None]:
        """P(rating = 1..10) per answer; ``None`` where the rating could not be read."""
        if len(prompts) != len(answers):
            raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
        out: list[list[float] | None] = []
        for start in range(0, len(prompts), self.batch_size):
            texts = []
            for p, a in zip(prompts[start:start + self.batch_size], answers[start:start + self.batch_size]):
                principle = self.constitution.sample(self.seed, p, a).judge if self.constitution else None
                texts.append(rating_prompt(self.template, p, a, principle=principle))
            try:
                scored = self.judge.score_choices(texts, rating_choices(self.template))
                out += [rating_distribution(s) for s in scored]
            except NoLogprobs:
                out += [self._from_text(t) for t in self.judge.generate(texts, max_tokens=8, temperature=0.0)]
        return out

    def _from_text(self, samples: list[str]) -> list[float] | None:
        rating = parse_rating(samples[0]) if samples else None
        if rating is None:
            self.unparseable += 1
            return None
        return [1.0 if int(r) == rating else 0.0 for r in RATINGS]
