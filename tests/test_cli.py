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
    # a group's name alone, or with --help, lists its commands
    assert main(["tinyworld", "--help"]) == 0
    assert "rlxf tinyworld has the commands: build, judge, preferences" in capsys.readouterr().out
    assert main(["tinyworld"]) == 2 and "has the commands: build, judge, preferences" in capsys.readouterr().err


def test_config_errors_are_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rlxf.cli", "sft", "out=x", "model.name_or_path=m",
                           "data.train=d", "batchsize=3"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("rlxf: error: unknown config key 'batchsize'; did you mean 'batch_size'?")


def test_print_config_shows_resolved_values(capsys):
    assert main(["sft", "out=o", "model.name_or_path=m", "data.train=d", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "lr: 1.0e-05" in out and "max_length: 512" in out


def test_a_misspelt_option_suggests_the_closest(capsys):
    """As a misspelt command or config key does: --options are the CLI's own and the config's keys."""
    for args, meant in ([["ppo", "--conifg", "x.yaml"], "--config"], [["sft", "--verbos"], "--verbose"],
                        [["sft", "--print-confg"], "--print-config"], [["sft", "--max-step", "3"], "--max-steps"],
                        [["sft", "--lrr=3"], "--lr"]):
        assert main(args) == 2
        assert capsys.readouterr().err.strip() == f"rlxf: error: unknown option '{args[1].split('=')[0]}'; " \
                                                  f"did you mean '{meant}'?"
    assert main(["sft", "--zzzz", "1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "rlxf: error: unknown option '--zzzz'; the options are --config, --print-config, --verbose, --help, and "
        "--KEY for any config key ('rlxf sft --help' lists them)")
    # spelt right, keys work as --options (with - or _), sections' keys too
    assert main(["sft", "--max-steps", "3", "--model.name-or-path", "m", "--data.train=d", "--out", "o",
                 "--print-config"]) == 0
    assert "max_steps: 3" in capsys.readouterr().out


def test_a_model_name_that_is_no_folder_fails_in_seconds_offline(tmp_path):
    """`rlxf sft model.name_or_path=llamaa` (a typo of a folder) waited ~48 s for the hub's
    retries without network; under HF_HUB_OFFLINE=1 and with nothing cached it fails at once."""
    import os
    import time

    (tmp_path / "d.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-cache")}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rlxf.cli", "sft", "model.name_or_path=llamaa", "data.train=d.jsonl",
                           "out=run", "device=cpu"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"rlxf: error: no folder 'llamaa' for the model here ({tmp_path}), nor a cached hub model of that name, "
        "and HF_HUB_OFFLINE=1 forbids downloading one; give the folder save_pretrained wrote, or unset "
        "HF_HUB_OFFLINE (with network) to download it")
    assert time.perf_counter() - start < 30  # ~3 s: starting Python and importing torch


_FAULTS = """
import resource
from rlxf.cli import keep_freed_memory
applied = keep_freed_memory()
import torch
from transformers import GPT2Config, GPT2LMHeadModel
torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=768, n_head=12, vocab_size=50257, n_positions=64))
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
ids = torch.randint(0, 50257, (4, 32))
def step():
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    for p in model.parameters():
        p.grad = None
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_rlxf_process_reuses_freed_memory_instead_of_faulting_it_in_again():
    """Training steps of a model with GPT-2's 50257 x 768 embeddings (154 MB, and as much for
    its gradient): with glibc's defaults every block over 32 MB is a new mapping, faulted in
    anew each step (396k faults in 3 steps on one thread); the rlxf command's process keeps
    them (101k). The user's own glibc tunables, or RLXF_MALLOC=default, leave glibc as it is."""
    import os

    def faults(**env) -> tuple[str, int]:
        clean = {k: v for k, v in os.environ.items()
                 if not k.startswith("MALLOC_") and k not in ("RLXF_MALLOC", "GLIBC_TUNABLES")}
        out = subprocess.run([sys.executable, "-c", _FAULTS], env={**clean, "OMP_NUM_THREADS": "1", **env},
                             capture_output=True, text=True, check=True).stdout.split()
        return out[0], int(out[1])

    applied, kept = faults()
    skipped, default = faults(RLXF_MALLOC="default")
    respected, _ = faults(MALLOC_ARENA_MAX="2")
    tuned, _ = faults(GLIBC_TUNABLES="glibc.malloc.mmap_max=65536")
    assert (applied, skipped, respected, tuned) == ("True", "False", "False", "False")
    assert kept < default / 2, (kept, default)
