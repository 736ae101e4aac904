"""`rlxf demo --quick`: the Tinyworld pipeline end to end, killed during PPO and resumed.

One run serves three checks: the pipeline resumes after a crash without redoing SFT or
reward-model training, the summary holds the promised keys, and learning happened
(SFT beats the unaligned base model on gold score by a clear margin, and the reward model
orders held-out answer pairs as the gold oracle does well above chance).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

KEYS = ["gold.base", "gold.sft", "gold.ppo", "win_rate.ppo_vs_sft", "win_rate_ceiling.over_sft", "kl.final",
        "reward_model_gold.heldout_accuracy", "labellers.agreement", "seconds.sft", "seconds.preferences",
        "seconds.reward", "seconds.ppo", "seconds.evaluate"]


def _get(summary: dict, dotted: str):
    for part in dotted.split("."):
        summary = summary[part]
    return summary


@pytest.mark.slow
def test_quick_demo_survives_a_kill_during_ppo_and_learns(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "rlxf.cli", "demo", "--quick", "--out", str(out), "progress=false"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 900
    while not list((out / "ppo" / "checkpoints").glob("step-*[0-9]")):
        assert proc.poll() is None and time.time() < deadline, "the demo ended before PPO checkpointed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "summary.json").exists()
    finished = {stage: (out / stage / "summary.json").stat().st_mtime_ns for stage in ("sft", "preferences", "reward")}

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for stage, mtime in finished.items():  # finished stages were not run again
        assert (out / stage / "summary.json").stat().st_mtime_ns == mtime, stage
    assert json.loads((out / "ppo" / "summary.json").read_text())["resumed_from_step"] > 0

    summary = json.loads((out / "summary.json").read_text())
    for key in KEYS:
        assert isinstance(_get(summary, key), float), key
    assert summary["gold"]["sft"] > summary["gold"]["base"] + 0.05, summary["gold"]
    assert summary["win_rate"]["sft_vs_base"] > 0.6
    # the reward model learnt the gold order from noisy labels (chance 0.5; 0.789 when measured)
    assert summary["reward_model_gold"]["heldout_accuracy"] > 0.7
    # an upper bound on any policy's win rate over the same SFT answers
    assert summary["win_rate"]["ppo_vs_sft"] <= summary["win_rate_ceiling"]["over_sft"] <= 1
    assert (out / "report.html").stat().st_size > 10_000
    assert "gold win rate" in rerun.stderr


def test_demo_writes_terse_demonstrations_when_asked_and_refuses_to_mix_data(tmp_path, monkeypatch):
    from rlxf import pipeline
    from rlxf.config import from_dict
    from rlxf.errors import ConfigError
    from rlxf.tinyworld import demo

    class Stop(Exception):
        pass

    def stop(cfg):
        raise Stop(cfg.demonstrations)

    monkeypatch.setattr(pipeline, "run_stages", stop)

    def words(share, out):
        with pytest.raises(Stop) as stopped:
            demo.run(from_dict(demo.Config, {"out": str(out), "terse_share": share, "progress": False}))
        rows = [json.loads(line) for line in open(stopped.value.args[0])]
        return sum(len(r["completion"].split()) for r in rows) / len(rows)

    plain, terse = words(0.0, tmp_path / "plain"), words(0.5, tmp_path / "terse")
    assert terse < 0.85 * plain  # half of them shorter by a third or more
    with pytest.raises(ConfigError, match="terse_share: 0.5 there, 0.0 asked"):  # the same out, other data
        words(0.0, tmp_path / "terse")
    with pytest.raises(ConfigError, match="world"):
        from_dict(demo.Config, {"world": str(tmp_path), "terse_share": 0.5})
