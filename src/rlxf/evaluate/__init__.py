"""Evaluation: side-by-side tables, AI side-by-side win rates, curves with diagnostics, the report.

    from rlxf.evaluate import side_by_side, judge_side_by_side, diagnose, write_report
    table = side_by_side(prompts, sft_answers, ppo_answers, scorers={"gold": gold_totals},
                         name_a="sft", name_b="ppo")                        # a pandas DataFrame
    result = judge_side_by_side(judge, prompts, ppo_answers, sft_answers, settings)
    result.summary["win_rate_a"]                                           # rate, Wilson low/high, n
    write_report("runs/demo", [Stage("ppo", "runs/demo/ppo/config.yaml", "runs/demo/ppo/summary.json",
                                     "runs/demo/ppo/metrics.jsonl")], sxs=table)

Modules: :mod:`.sxs` (``rlxf sxs``), :mod:`.autosxs` (``rlxf autosxs``), :mod:`.curves`
(PNG curves and the written diagnostics), :mod:`.report` (``rlxf report``),
:mod:`.agreement` (judge-vs-human agreement). Names are imported on first use, so
``import rlxf.evaluate`` stays light (no torch, pandas or matplotlib).
"""

from importlib import import_module

_EXPORTS = {
    "side_by_side": "sxs", "reward_scorer": "sxs", "wilson_interval": "sxs", "win_rate": "sxs",
    "judge_side_by_side": "autosxs",
    "Thresholds": "curves", "Diagnosis": "curves", "diagnose": "curves", "diagnose_frame": "curves",
    "read_metrics": "curves", "write_curves": "curves",
    "Stage": "report", "write_report": "report",
    "binary_report": "agreement", "cohen_kappa": "agreement",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"rlxf.evaluate.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'rlxf.evaluate' has no attribute {name!r}")
