"""`rlxf demo --quick`: the Tinyworld loop end to end, asserting that learning happened."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_quick_demo_sft_beats_base(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rlxf.cli", "demo", "--quick", "--out", str(tmp_path / "demo"),
                           "progress=false"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    gold = summary["gold"]
    assert gold["sft"] > gold["base"] + 0.05, gold  # SFT beats the unaligned base by a clear margin
    assert summary["win_rate"]["sft_vs_base"] > 0.6
    assert "win rate of SFT over base" in proc.stderr
