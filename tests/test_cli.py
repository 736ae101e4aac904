"""The ``rlxf`` command line: dispatch, argument forms, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rlxf.cli import _split_args, main
from rlxf.errors import RlxfError


def test_argument_forms():
    path, overrides, flags = _split_args(
        ["--config", "x.yaml", "lr=1e-4", "--quick", "--out", "DIR", "--data.max-length=7", "--print-config"])
    assert path == "x.yaml"
    assert overrides == ["lr=1e-4", "quick=true", "out=DIR", "data.max_length=7"]
    assert flags == {"print-config"}
    with pytest.raises(RlxfError, match="unexpected argument 'stray'"):
        _split_args(["stray"])


def test_unknown_command_and_help(capsys):
    assert main(["nonsense"]) == 2
    assert "unknown command 'nonsense'" in capsys.readouterr().err
    assert main(["annotate", "serv"]) == 2
    assert "did you mean 'rlxf annotate serve'?" in capsys.readouterr().err
    assert main([]) == 2 and "usage: rlxf <command>" in capsys.readouterr().err  # no command is a mistake too
    assert main(["--help"]) == 0
    assert "sft" in capsys.readouterr().out
    assert main(["sft", "--help"]) == 0
    assert "data.packing (bool, default False)" in capsys.readouterr().out


def test_config_errors_are_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rlxf.cli", "sft", "out=x", "model.name_or_path=m",
                           "data.train=d", "batchsize=3"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("rlxf: error: unknown config key 'batchsize'; did you mean 'batch_size'?")


def test_print_config_shows_resolved_values(capsys):
    assert main(["sft", "out=o", "model.name_or_path=m", "data.train=d", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "lr: 1.0e-05" in out and "max_length: 512" in out
