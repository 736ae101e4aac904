"""AI feedback (RLAIF, Lee et al. 2023; Constitutional AI, Bai et al. 2022).

    from rlxf.feedback.ai import HFJudge, JudgeSettings, judge_pairs, load_template
    judge = HFJudge.load(ModelConfig(name_or_path="path/to/judge"))
    [verdict] = judge_pairs(judge, [("User: hi", "Hello!", "Go away.")],
                            JudgeSettings(template=load_template("helpful")))
    verdict.prob_a          # P(first answer better), averaged over both orders

Modules: :mod:`.templates` (labelling prompts), :mod:`.constitution` (principles),
:mod:`.judge` (the backend interface), :mod:`.hf_judge` and :mod:`.http_judge`
(backends), :mod:`.cache` (SQLite request cache), :mod:`.parse` (strict answer
parsers), :mod:`.fit` (shortening a sample to fit the judge's context), :mod:`.scoring`
(the arithmetic), :mod:`.labeller` (pairs and direct scores), and the commands
:mod:`.label`, :mod:`.label_eval`, :mod:`.critique`.

Names are imported on first use, so ``import rlxf.feedback.ai`` stays light (no torch).
"""

from importlib import import_module

_EXPORTS = {
    "AnswerScores": "judge", "Judge": "judge", "JudgeRequestError": "judge", "NoLogprobs": "judge",
    "HFJudge": "hf_judge", "OpenAIJudge": "http_judge", "ResponseCache": "cache",
    "DirectScoreReward": "labeller", "JudgeSettings": "labeller", "PairJudgement": "labeller",
    "judge_pairs": "labeller", "Template": "templates", "load_template": "templates",
    "Constitution": "constitution", "load_constitution": "constitution",
    "parse_choice": "parse", "parse_rating": "parse", "JudgeConfig": "backends", "make_judge": "backends",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"rlxf.feedback.ai.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'rlxf.feedback.ai' has no attribute {name!r}")
