"""`rlxf tinyworld preferences`: a policy's answers ranked by simulated labellers, in standard formats."""

from __future__ import annotations

import json
from itertools import combinations

from rlxf.config import load_config
from rlxf.data.formats import load_comparisons, load_preferences
from rlxf.data.records import Ranking
from rlxf.tinyworld import parse_prompt, score
from rlxf.tinyworld import preferences
from rlxf.tinyworld.prompts import split_of


def test_preferences_are_ranked_with_gold_and_load_as_standard_data(tmp_path, tiny_model_dir):
    cfg = load_config(preferences.Config, None, [f"policy={tiny_model_dir}", f"out={tmp_path / 'prefs'}",
                                                 "n_train=8", "n_heldout=4", "k=3", "max_new_tokens=6",
                                                 "progress=false"])
    summary = preferences.run(cfg)
    out = tmp_path / "prefs"
    for split, n in (("train", 8), ("heldout", 4)):
        rows = [json.loads(line) for line in (out / f"rankings_{split}.jsonl").read_text().splitlines()]
        assert len(rows) == summary[split]["rankings"] == n - summary[split]["dropped_prompts"] >= n - 1
        rankings = load_comparisons(out / f"rankings_{split}.jsonl")
        assert all(isinstance(r, Ranking) for r in rankings)  # the loader's checks pass: distinct, a permutation
        pairs = load_preferences(out / f"pairs_{split}.jsonl")
        assert len(pairs) == summary[split]["pairs"] == sum(len(r.completions) * (len(r.completions) - 1) // 2
                                                            for r in rankings)
        # the pairs file is the rankings flattened, best first
        assert [(p.chosen, p.rejected) for p in pairs] == [pair for r in rankings
                                                           for pair in combinations(r.ordered, 2)]
        for row in rows:
            assert split_of(parse_prompt(row["prompt"])) == split
            assert row["gold"] == [score(row["prompt"], a, e).total for a, e in zip(row["completions"], row["ended"])]
        report = summary[split]
        raw = [json.loads(line) for line in (out / f"pairs_{split}.jsonl").read_text().splitlines()]
        ordered = [p for p in raw if p["gold_chosen"] != p["gold_rejected"]]
        assert report["gold_ties"] == len(raw) - len(ordered)
        assert report["labels_vs_gold"] == (sum(p["gold_chosen"] > p["gold_rejected"] for p in ordered) / len(ordered)
                                            if ordered else None)
        assert 0.5 <= report["inter_labeller_expected"] <= 1.0
    assert preferences.run(cfg) == summary  # a finished run is reused
