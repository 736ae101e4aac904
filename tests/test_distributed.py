"""Two processes (DDP over gloo, launched by `accelerate launch`) train like one process.

Each stage runs twice on the same tiny model and the same global batches: in this
process, and under ``accelerate launch --config_file examples/accelerate/ddp_cpu.yaml``
with 2 CPU processes, each taking half of every batch. Tolerances (README, "From a
laptop to a GPU to several nodes"):

- final weights: max |w_2 - w_1| < 1e-4 for SFT, the reward model and PPO (2 steps,
  4 optimiser updates), except, for the reward model, the biases whose gradient is 0 in
  exact arithmetic (the final layer norm's bias: a pairwise loss does not change when
  every reward shifts by the same amount; the attention biases, whose key part
  softmax ignores). Adam turns their floating-point noise into steps of ~lr·|g|/ε, so
  they drift by up to ~1e-4 in *both* runs and carry no signal;
- every logged metric: |m_2 - m_1| ≤ 1e-4 + 1e-4·|m_1|.

Every stage runs with grad_accum=2, and each process counts its models' gradient
all-reduces (tests/ddp_main.py): one synchronised backward pass per optimiser step,
not one per micro-batch.

The two runs differ only by floating-point summation order (padding to a shorter
batch, summing two halves); anything wrong in the sharding, the loss scaling or the
global statistics moves the weights by ~lr = 1e-3 per update, far beyond 1e-4.
PPO samples with a test backend whose answers do not depend on the batching (see
rollout_doubles.py) and uses one minibatch per PPO epoch: with several, N processes
draw a different random partition of the rollout than one process does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, SENTENCES, demo_rows, make_tokenizer, write_jsonl

from rlxf.config import load_config

WEIGHT_TOL = 1e-4
METRIC_ATOL, METRIC_RTOL = 1e-4, 1e-4
DDP_CPU = REPO / "examples" / "accelerate" / "ddp_cpu.yaml"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """A dropout-free tiny GPT-2 (dropout masks would differ between the runs), a reward
    model on it, demonstrations, preferences (pairs and rankings) and prompts."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from rlxf.models.loading import ModelConfig
    from rlxf.models.reward import init_reward_model

    root = tmp_path_factory.mktemp("distributed")
    tok = make_tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=2, n_head=4,
                                       bos_token_id=1, eos_token_id=1, resid_pdrop=0.0, embd_pdrop=0.0,
                                       attn_pdrop=0.0))
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    reward = init_reward_model(ModelConfig(name_or_path=str(root / "model")))
    with torch.no_grad():
        reward.score.weight.mul_(20)  # a random but far from flat reward
    reward.save_pretrained(root / "rm")
    tok.save_pretrained(root / "rm")
    write_jsonl(root / "demos.jsonl", demo_rows(64))
    rows = demo_rows(24)
    pairs = [{"prompt": r["prompt"], "chosen": r["completion"], "rejected": "shut up ."} for r in rows[:16]]
    rankings = [{"prompt": r["prompt"], "completions": [r["completion"], "i do not know .", "shut up ."],
                 "ranking": [0, 1, 2]} for r in rows[16:]]
    write_jsonl(root / "prefs.jsonl", pairs + rankings)
    prompts = sorted({s.split(" answer :")[0] + (" answer :" if " answer :" in s else "") for s in SENTENCES})
    write_jsonl(root / "prompts.jsonl", [{"prompt": p} for p in prompts] * 4)
    write_jsonl(root / "pretrain.jsonl", [{"text": s} for s in sorted(set(SENTENCES))])
    return root


def _launch_two(tmp_path, stage: str, args: list[str]) -> list[dict[str, dict[str, int]]]:
    """Run ``rlxf STAGE ARGS`` on 2 processes (``ppo`` with the seeded row backend); returns
    each process's DDP counts by model (see tests/ddp_main.py)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(DDP_CPU),
           str(REPO / "tests" / "ddp_main.py"), stage, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RLXF_DDP_COUNTS": str(tmp_path / "ddp-counts")}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads((tmp_path / "ddp-counts" / f"rank-{r}.json").read_text()) for r in range(2)]


def _synced_backwards(counts: list[dict[str, dict[str, int]]]) -> list[dict[str, int]]:
    return [{model: c["synced_backwards"] for model, c in rank.items()} for rank in counts]


def _compare(one: Path, two: Path, skip: tuple[str, ...] = ()) -> tuple[float, float]:
    """Max weight and metric differences; asserts the same steps and keys were logged.
    Weights whose name ends with one of ``skip`` are not compared."""
    from safetensors.torch import load_file

    rows1 = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    rows2 = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert [sorted(r) for r in rows1] == [sorted(r) for r in rows2] and rows1
    metric_gap = 0.0
    for r1, r2 in zip(rows1, rows2):
        for key, v1 in r1.items():
            assert r2[key] == pytest.approx(v1, abs=METRIC_ATOL, rel=METRIC_RTOL), (r1["step"], key, v1, r2[key])
            metric_gap = max(metric_gap, abs(r2[key] - v1))
    w1, w2 = load_file(str(one / "final" / "model.safetensors")), load_file(str(two / "final" / "model.safetensors"))
    assert w1.keys() == w2.keys()
    weight_gap = max(float((w1[k] - w2[k]).abs().max()) for k in w1 if not k.endswith(skip))
    assert weight_gap < WEIGHT_TOL, weight_gap
    return weight_gap, metric_gap


def _report(stage: str, gaps: tuple[float, float], counts: list[dict[str, dict[str, int]]]) -> None:
    print(f"{stage}: max |weight diff| {gaps[0]:.2e}, max |metric diff| {gaps[1]:.2e}, DDP on rank 0: {counts[0]}")


def test_sft_two_processes_match_one(fx, tmp_path):
    from rlxf.stages import sft

    # 61 train examples in micro-batches of 4: the last one of the epoch holds a single
    # example, so the second process runs with an empty share (weight 0) at step 8
    args = [f"model.name_or_path={fx / 'model'}", f"data.train={fx / 'demos.jsonl'}", "lr=3e-3", "max_steps=8",
            "batch_size=4", "grad_accum=2", "log_every=2", "eval_every=4", "progress=false", "device=cpu"]
    sft.run(load_config(sft.Config, None, args + [f"out={tmp_path / 'one'}"]))
    counts = _launch_two(tmp_path, "sft", args + [f"out={tmp_path / 'two'}"])
    _report("sft", _compare(tmp_path / "one", tmp_path / "two"), counts)
    # 8 steps of 2 micro-batches: only each step's second backward all-reduces
    assert _synced_backwards(counts) == [{"GPT2LMHeadModel": 8}] * 2


def test_reward_two_processes_match_one(fx, tmp_path):
    from rlxf.stages import reward

    args = [f"model.name_or_path={fx / 'model'}", f"data.train={fx / 'prefs.jsonl'}", "data.eval_fraction=0.3",
            "lr=3e-3", "max_steps=6", "batch_size=2", "grad_accum=2", "log_every=2", "eval_every=3", "progress=false"]
    # device=auto (the default): on a machine without CUDA the processes join over gloo as with device=cpu
    one = reward.run(load_config(reward.Config, None, args + [f"out={tmp_path / 'one'}"]))
    counts = _launch_two(tmp_path, "reward", args + [f"out={tmp_path / 'two'}"])
    _report("reward", _compare(tmp_path / "one", tmp_path / "two", skip=("ln_f.bias", "attn.c_attn.bias")), counts)
    assert _synced_backwards(counts) == [{"TokenValues": 6}] * 2  # 6 steps of 2 micro-batches
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    # the metric tolerance: 1e-4 + 1e-4·|m|
    assert two["normalization"]["shift"] == pytest.approx(one["normalization"]["shift"], rel=1e-4, abs=1e-4)


def test_ppo_two_processes_match_one(fx, tmp_path):
    import rollout_doubles

    from rlxf.stages import ppo

    # one minibatch per epoch (batch_size = rollout.batch_size), reward and advantage
    # whitening, adaptive KL and PPO-ptx: every global statistic is exercised
    args = [f"model.name_or_path={fx / 'model'}", f"reward.model={fx / 'rm'}",
            f"rollout.prompts={fx / 'prompts.jsonl'}", "rollout.batch_size=8", "rollout.max_new_tokens=8",
            "batch_size=8", "grad_accum=2", "ppo_epochs=2", "max_steps=2",
            "lr=1e-3", "reward.whiten=true", "kl.adaptive=true", "kl.target=0.5", f"ptx.data={fx / 'pretrain.jsonl'}",
            "ptx.coef=0.5", "ptx.batch_size=4", "log_every=1", "progress=false", "device=cpu"]
    original = ppo.make_backend
    try:
        backends = rollout_doubles.install()
        ppo.run(load_config(ppo.Config, None, args + [f"out={tmp_path / 'one'}"]))
    finally:
        ppo.make_backend = original
    assert backends[0].events == ["generate", "sync", "generate", "sync"]
    counts = _launch_two(tmp_path, "ppo", args + [f"out={tmp_path / 'two'}"])
    _report("ppo", _compare(tmp_path / "one", tmp_path / "two"), counts)
    # 2 steps × 2 epochs × 1 minibatch = 4 updates of each model, each of 2 micro-batches
    assert _synced_backwards(counts) == [{"GPT2LMHeadModel": 4, "TokenValues": 4}] * 2


def test_ppo_refuses_batches_that_processes_cannot_split(fx, tmp_path):
    args = [f"model.name_or_path={fx / 'model'}", f"reward.model={fx / 'rm'}",
            f"rollout.prompts={fx / 'prompts.jsonl'}", "rollout.batch_size=6", "batch_size=3", "max_steps=1",
            "progress=false", "device=cpu",
            f"out={tmp_path / 'odd'}"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(DDP_CPU), "-m", "rlxf.cli", "ppo",
           *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=300)
    assert done.returncode != 0
    assert "batch_size (3) must be a multiple of the number of processes (2)" in done.stderr
    assert not (tmp_path / "odd").exists()  # refused before the run directory was made


@pytest.mark.parametrize("rank, shown", [(-1, "bad key on every process"), (1, "bad row on process 1 only"),
                                         (0, "bad row on process 0 only")])
def test_an_error_of_every_process_is_printed_once_and_one_of_a_single_process_too(tmp_path, rank, shown):
    """A config or data error that every process raises is printed once (by process 0), not
    once per process; an error of one process alone is printed too (by that process, after
    rlxf.cli.ERROR_WAIT_S). The launcher's own report of the failed process follows. Log
    lines, the same on every process, are printed by process 0 only."""
    import time

    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(DDP_CPU),
           str(REPO / "tests" / "ddp_error_main.py"), f"rank={rank}"]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          cwd=tmp_path, timeout=120)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("rlxf: error:")]
    assert errors == [f"rlxf: error: {shown}"], done.stderr[-3000:]
    assert done.stderr.count("rlxf: a warning every process logs") == 1  # logged by process 0 only
    assert time.perf_counter() - start < 60  # the processes that waited were stopped, not left to sleep


def test_resuming_on_another_number_of_processes_is_said(tmp_path, caplog):
    """A checkpoint holds each process's random state; resumed on fewer or more processes,
    the run cannot repeat an uninterrupted one, and process 0 (the one that logs) says so."""
    import logging

    from rlxf.distributed import make_accelerator
    from rlxf.runs import Run
    from rlxf.stages import sft
    from rlxf.training import load_checkpoint, save_checkpoint

    acc = make_accelerator("cpu")
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    run = Run.open(tmp_path / "run", load_config(sft.Config, None, ["model.name_or_path=m", "data.train=d",
                                                                    f"out={tmp_path / 'run'}"]))
    save_checkpoint(run, 1, accelerator=acc, modules=(model,), optimizer=opt, scheduler=sched, keep=3)
    ckpt = run.latest_checkpoint()
    with caplog.at_level(logging.WARNING, logger="rlxf"):
        load_checkpoint(ckpt, accelerator=acc, modules=(model,), optimizer=opt, scheduler=sched)
    assert "random streams differ" not in caplog.text  # written and resumed by one process

    state = torch.load(ckpt / "state.pt", weights_only=True)  # as if written by 2 processes
    state["rng_other_processes"] = [{"torch": state["rng_torch"], "cuda": state["rng_cuda"],
                                     "python": state["rng_python"]}]
    torch.save(state, ckpt / "state.pt")
    with caplog.at_level(logging.WARNING, logger="rlxf"):
        load_checkpoint(ckpt, accelerator=acc, modules=(model,), optimizer=opt, scheduler=sched)
    assert "written by 2 process(es) and resumes on 1: their random streams differ" in caplog.text
