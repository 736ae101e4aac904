"""Export the labels as preference data, with inter-annotator agreement.

Writes into the folder ``out``:

- ``pairs.jsonl``: ``prompt/chosen/rejected/prob_chosen`` rows (TRL shape, read by
  ``rlxf.data.load_preferences``) from pairwise tasks, and from ranking tasks when
  ``rankings: pairs`` (each ranking of K answers gives its C(K, 2) pairs);
- ``rankings.jsonl``: ``prompt/completions/ranking`` rows when ``rankings: rankings``;
- ``agreement.json``: pairwise percent agreement, Krippendorff's alpha, Fleiss' kappa
  and each labeller's agreement with the others (see ``agreement.py``).

Rows also carry ``task_id`` and ``votes`` (labels behind the row); with ``votes: all``
the ``annotator``; with ``votes: majority`` how the votes split (pairs: ``tally``, the
labels that preferred the chosen answer, the rejected one, or called a tie; ranking rows:
``borda_totals``, each completion's total position, lower is better); and, when the
task was sampled from models (``generate.models``), the model of each answer
(``chosen_model``/``rejected_model``, or ``completion_models``). The loaders ignore
these extra fields.

How several labels of one task become rows (``votes``):

- ``majority``: one row per task. For a pair, the answer most labellers preferred; a
  tie wins, or two options draw, and the row is a tie. For a ranking, the Borda
  consensus: answers ordered by their mean position over the labels. Exported as pairs
  (``rankings: pairs``), two answers whose mean positions draw make a tie; a ranking
  row cannot hold a tie, and orders them as they were stored (which the import
  shuffled).
- ``all``: one row per label, so the reward model sees the disagreement.

A tie becomes ``prob_chosen: 0.5`` with ``ties: half`` and no row with ``ties: exclude``.
Skips are never exported.

The summary counts the labelled tasks, those exported, and, by reason, those that gave
no row (``tasks_left_out``): ``ties`` (the task's result was a tie, or with ``votes: all``
every label was, and ``ties: exclude``), ``min_labels`` (fewer labels than
``min_labels``) and ``only_skips`` (every label a skip). Exporting no row at all warns.

    rlxf annotate export database=sqlite:///labels.db out=labels/ votes=majority
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rlxf.data import write_jsonl
from rlxf.errors import ConfigError
from rlxf.feedback.human.agreement import agreement_report, comparison_items
from rlxf.feedback.human.store import Label, Task, open_store, parse_database_url

log = logging.getLogger("rlxf")


@dataclass
class Config:
    database: str = "sqlite:///annotate.db"
    """The annotation database (sqlite:///relative.db or sqlite:////absolute.db)."""
    out: str = "annotations"
    """Folder for pairs.jsonl, rankings.jsonl and agreement.json."""
    votes: Literal["majority", "all"] = "majority"
    """One row per task from the majority (Borda for rankings), or one row per label."""
    ties: Literal["exclude", "half"] = "exclude"
    """Leave ties out, or export them as prob_chosen 0.5."""
    rankings: Literal["rankings", "pairs"] = "rankings"
    """Write ranking tasks as prompt/completions/ranking rows, or as their C(K,2) pairs."""
    min_labels: int = 1
    """Export only tasks with at least this many labels (skips do not count)."""

    def validate(self) -> None:
        parse_database_url(self.database)
        if self.min_labels < 1:
            raise ConfigError(f"min_labels must be >= 1, got {self.min_labels}")


def run(cfg: Config) -> dict:
    store = open_store(cfg.database)
    pairs: list[dict] = []
    rankings: list[dict] = []
    judged = []  # (task, labeller, K, outcome, ranking) for agreement
    labelled, exported, left_out = 0, 0, {"ties": 0, "min_labels": 0, "only_skips": 0}
    for task, labels in store.labelled_tasks():
        labelled += 1
        labels = [label for label in labels if label.outcome != "skip"]
        judged += [(task.id, la.user_name, task.k, la.outcome, la.ranking) for la in labels]
        if not labels:
            left_out["only_skips"] += 1
            continue
        if len(labels) < cfg.min_labels:
            left_out["min_labels"] += 1
            continue
        if task.k == 2:
            rows, into = pair_rows(task, labels, cfg.votes, cfg.ties), pairs
        elif cfg.rankings == "rankings":
            rows, into = ranking_rows(task, labels, cfg.votes), rankings
        else:
            rows, into = ranking_pair_rows(task, labels, cfg.votes, cfg.ties), pairs
        if not rows:  # a ranking row is always written: only excluded ties leave none
            left_out["ties"] += 1
            continue
        exported += 1
        into += rows
    report = agreement_report(comparison_items(judged))

    out = Path(cfg.out)
    write_jsonl(out / "pairs.jsonl", pairs)
    files = [str(out / "pairs.jsonl")]
    if cfg.rankings == "rankings":
        write_jsonl(out / "rankings.jsonl", rankings)
        files.append(str(out / "rankings.jsonl"))
    (out / "agreement.json").write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    files.append(str(out / "agreement.json"))
    log.info("exported %d pair rows and %d ranking rows from %d of %d labelled tasks to %s",
             len(pairs), len(rankings), exported, labelled, out)
    if exported < labelled:
        log.info("left out %d task(s): %s", labelled - exported, _left_out_reasons(left_out, cfg))
    if not pairs and not rankings:
        log.warning("nothing was exported: %s", "the database holds no labels yet" if not labelled
                    else f"no labelled task gave a row ({_left_out_reasons(left_out, cfg)})")
    agreement = report.as_dict()
    agreement.pop("per_labeller")
    return {"pairs": len(pairs), "rankings": len(rankings), "tasks_labelled": labelled,
            "tasks_exported": exported, "tasks_left_out": left_out, "files": files, "agreement": agreement}


def _left_out_reasons(left_out: dict[str, int], cfg: Config) -> str:
    """``left_out`` counts in words, each with the setting that would export them."""
    why = {"ties": "tied, with ties=exclude (ties=half exports them as prob_chosen 0.5)",
           "min_labels": f"fewer than min_labels={cfg.min_labels} labels",
           "only_skips": "every label a skip"}
    return "; ".join(f"{n} {why[reason]}" for reason, n in left_out.items() if n)


def pair_rows(task: Task, labels: list[Label], votes: str, ties: str) -> list[dict]:
    """Rows for a pairwise task from its (non-skip) labels; see the module doc."""
    tally = Counter(_winner(label) for label in labels)
    if votes == "all":
        results = [(_winner(label), 1, label.user_name) for label in labels]
    else:
        (top, n), *rest = tally.most_common()
        drawn = bool(rest) and rest[0][1] == n
        results = [("tie" if drawn else top, len(labels), None)]
    rows = []
    for winner, n_votes, annotator in results:
        if winner == "tie" and ties == "exclude":
            continue
        first = 0 if winner == "tie" else winner
        row = {"prompt": task.prompt, "chosen": task.answers[first],
               "rejected": task.answers[1 - first],
               "prob_chosen": 0.5 if winner == "tie" else 1.0,
               "task_id": task.id, "votes": n_votes, **_pair_models(task, first, 1 - first)}
        if annotator is not None:
            row["annotator"] = annotator
        else:  # 3-0 and 2-1 majorities differ in strength
            row["tally"] = {"chosen": tally[first], "rejected": tally[1 - first], "tie": tally["tie"]}
        rows.append(row)
    return rows


def ranking_rows(task: Task, labels: list[Label], votes: str) -> list[dict]:
    """``prompt/completions/ranking`` rows for a ranking task; see the module doc."""
    def row(ranking, n_votes: int) -> dict:
        models = _models(task)
        return {"prompt": task.prompt, "completions": list(task.answers),
                "ranking": list(ranking), "task_id": task.id, "votes": n_votes,
                **({"completion_models": models} if models else {})}

    if votes == "all":
        return [row(label.ranking, 1) | {"annotator": label.user_name} for label in labels]
    rankings = [label.ranking for label in labels]
    return [row(borda(task.k, rankings), len(labels)) | {"borda_totals": borda_totals(task.k, rankings)}]


def ranking_pair_rows(task: Task, labels: list[Label], votes: str, ties: str) -> list[dict]:
    """A ranking task's C(K, 2) pairs as ``prompt/chosen/rejected/prob_chosen`` rows: per
    label (``votes: all``), or from the Borda consensus, where two answers whose total
    positions draw are a tie (``prob_chosen: 0.5``, or no row with ``ties: exclude``).
    Consensus rows carry the ``tally`` of labels that put chosen above rejected or below."""
    if votes == "all":
        return [row | {"annotator": label.user_name} for label in labels
                for row in _pairs(task, label.ranking, set(), 1, ties)]
    rankings = [label.ranking for label in labels]
    total = borda_totals(task.k, rankings)
    drawn = {(a, b) for a in range(task.k) for b in range(task.k) if a != b and total[a] == total[b]}
    return _pairs(task, borda(task.k, rankings), drawn, len(labels), ties, tally_of=rankings)


def _pairs(task: Task, ranking, drawn: set, n_votes: int, ties: str,
           tally_of: list[tuple[int, ...]] | None = None) -> list[dict]:
    """The pairs of ``ranking``; with ``tally_of`` (the labels' rankings) each row's tally."""
    rows = []
    for i, better in enumerate(ranking):
        for worse in ranking[i + 1:]:
            tie = (better, worse) in drawn
            if tie and ties == "exclude":
                continue
            row = {"prompt": task.prompt, "chosen": task.answers[better], "rejected": task.answers[worse],
                   "prob_chosen": 0.5 if tie else 1.0, "task_id": task.id, "votes": n_votes,
                   **_pair_models(task, better, worse)}
            if tally_of is not None:
                above = sum(r.index(better) < r.index(worse) for r in tally_of)
                row["tally"] = {"chosen": above, "rejected": len(tally_of) - above, "tie": 0}
            rows.append(row)
    return rows


def _models(task: Task) -> list[str] | None:
    """The model that wrote each answer, when the import sampled them (``generate.models``)."""
    models = task.meta.get("models")
    return list(models) if isinstance(models, list) and len(models) == task.k else None


def _pair_models(task: Task, chosen: int, rejected: int) -> dict:
    models = _models(task)
    return {"chosen_model": models[chosen], "rejected_model": models[rejected]} if models else {}


def borda_totals(k: int, rankings: list[tuple[int, ...]]) -> list[int]:
    """Each answer's total position over ``rankings`` (each best first): its Borda count."""
    total = [0] * k
    for ranking in rankings:
        for place, answer in enumerate(ranking):
            total[answer] += place
    return total


def borda(k: int, rankings: list[tuple[int, ...]]) -> tuple[int, ...]:
    """Consensus of several rankings of k answers (each best first): answers sorted by
    their total position (the Borda count, de Borda 1781), a draw going to the lower index.
    """
    total = borda_totals(k, rankings)
    return tuple(sorted(range(k), key=lambda answer: (total[answer], answer)))


def _winner(label: Label) -> int | str:
    return "tie" if label.outcome == "tie" else label.ranking[0]
