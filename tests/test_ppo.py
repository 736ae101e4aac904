"""The PPO stage: rollout bookkeeping, LoRA memory, resume, and learning on Tinyworld."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from conftest import SENTENCES, kill_and_resume, write_jsonl

from rlxf.config import load_config
from rlxf.errors import ConfigError
from rlxf.models.loading import ModelConfig, load_tokenizer
from rlxf.models.reward import init_reward_model
from rlxf.stages import ppo
from rlxf.stages.ppo import _truncate_at_eos


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("ppo")
    reward = init_reward_model(ModelConfig(name_or_path=str(tiny_model_dir)))
    with torch.no_grad():
        reward.score.weight.mul_(20)  # a random but far from flat reward function
    reward.save_pretrained(root / "rm")
    load_tokenizer(str(tiny_model_dir)).save_pretrained(root / "rm")
    prompts = sorted({s.split(" answer :")[0] + (" answer :" if " answer :" in s else "") for s in SENTENCES})
    write_jsonl(root / "prompts.jsonl", [{"prompt": p} for p in prompts] * 4)
    write_jsonl(root / "pretrain.jsonl", [{"text": s} for s in sorted(set(SENTENCES))])
    return root, tiny_model_dir


def _config(root, model_dir, *overrides):
    return load_config(ppo.Config, None, [
        f"model.name_or_path={model_dir}", f"reward.model={root / 'rm'}", f"rollout.prompts={root / 'prompts.jsonl'}",
        "rollout.batch_size=8", "rollout.max_new_tokens=10", "batch_size=4", "max_steps=6", "lr=1e-3",
        f"out={root / 'run'}", "progress=false", "log_every=1", *overrides])


def test_truncate_at_eos_by_hand():
    eos = 9
    response = torch.tensor([[5, 9, 7, 7],    # ends at position 1; what follows is not part of the answer
                             [5, 6, 7, 8],    # never ends
                             [9, 9, 1, 1]])   # ends at once
    mask, ended = _truncate_at_eos(response, eos)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert ended.tolist() == [True, False, True]


def test_clip_and_step_clips_and_steps_only_the_parameters_with_gradients():
    """Policy and value step one after the other: each clipped to max_norm by its own norm."""
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b]}], lr=1.0)
    a.grad = torch.tensor([3.0, 4.0])  # norm 5, clipped to 1: the step is -(0.6, 0.8)
    assert ppo._clip_and_step(opt, 1.0) == pytest.approx(5.0)
    assert torch.allclose(a, torch.tensor([-0.6, -0.8]), atol=1e-6) and torch.equal(b, torch.ones(2))
    assert a.grad is None
    b.grad = torch.tensor([0.3, 0.4])  # norm 0.5: under the limit, the step is the gradient
    assert ppo._clip_and_step(opt, 1.0) == pytest.approx(0.5)
    assert torch.allclose(b, torch.tensor([0.7, 0.6])) and torch.allclose(a, torch.tensor([-0.6, -0.8]), atol=1e-6)
    b.grad = torch.tensor([30.0, 40.0])
    assert ppo._clip_and_step(opt, None) == 0.0  # no clipping
    assert torch.allclose(b, torch.tensor([-29.3, -39.4]))


def test_rollout_logprobs_match_unpadded_forward(setup):
    """Left-padded prompts and right-padded answers give every row the log-probs it has alone."""
    root, model_dir = setup
    cfg = _config(root, model_dir, "rollout.temperature=0.7")
    trainer = ppo.PPO(cfg, torch.device("cpu"))
    from rlxf.data.formats import load_prompts

    prompts = list(load_prompts(cfg.rollout.prompts))[:6]
    torch.manual_seed(0)
    ro = trainer.rollout(prompts)
    for i in range(len(prompts)):
        q = ro.query[i][ro.attention_mask[i, :ro.query.shape[1]].bool()]
        n = int(ro.mask[i].sum())
        r = ro.response[i, :n]
        with torch.no_grad():
            logits = trainer.policy(torch.cat([q, r])[None]).logits[0, len(q) - 1:-1] / 0.7
        expected = torch.log_softmax(logits, -1).gather(1, r[:, None]).squeeze(1)
        torch.testing.assert_close(ro.logp[i, :n], expected, atol=1e-5, rtol=1e-5)
        assert torch.all(ro.logp[i, :n] == ro.ref_logp[i, :n])  # before any update the policy is the reference
    assert torch.allclose(ro.kl, torch.zeros_like(ro.kl))
    # the score sits on the last real token, nothing else is rewarded at KL 0
    torch.testing.assert_close(ro.rewards.sum(1), ro.score, atol=1e-5, rtol=0)


def test_lora_holds_one_copy_of_each_base_model(setup):
    root, model_dir = setup
    full = ppo.PPO(_config(root, model_dir), torch.device("cpu"))
    lora = ppo.PPO(_config(root, model_dir, "model.lora.enabled=true", "model.lora.r=1"), torch.device("cpu"))
    full_mb = ppo._parameter_mb(full.policy, full.ref, full.value, full.reward)
    lora_mb = ppo._parameter_mb(lora.policy, lora.ref, lora.value, lora.reward)
    assert lora.ref is None and lora.reward is None
    policy_mb = ppo._parameter_mb(full.policy)
    # four models in full mode, two bases plus small adapters in LoRA mode
    assert lora_mb < 0.6 * full_mb, (lora_mb, full_mb)
    assert lora_mb > 2 * policy_mb * 0.95


def test_lora_run_trains_only_adapters(setup, tmp_path):
    root, model_dir = setup
    summary = ppo.run(_config(root, model_dir, "model.lora.enabled=true", f"out={tmp_path / 'lora'}"))
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(summary["final"]) is not None
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "lora" / "checkpoints" / "step-000006" / "trainable.safetensors"))
    assert saved and all("lora_" in k or "score" in k for k in saved)


@pytest.mark.parametrize("override, message", [
    ("batch_size=16", "cannot exceed rollout.batch_size"),
    ("ptx.coef=0.5", "ptx.coef > 0 needs ptx.data"),
    ("reward.function=x:y", "set exactly one of reward.model"),
    ("clip_range=1.5", "clip_range must be in"),
    ("track={gold: nonsense}", "must be 'module:function'"),
])
def test_impossible_configs_fail_before_work(setup, override, message):
    root, model_dir = setup
    with pytest.raises(ConfigError, match=message):
        _config(root, model_dir, override)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_metrics(setup, tmp_path):
    root, model_dir = setup
    args = [f"model.name_or_path={model_dir}", f"reward.model={root / 'rm'}",
            f"rollout.prompts={root / 'prompts.jsonl'}", "rollout.batch_size=8", "rollout.max_new_tokens=10",
            "batch_size=4", "max_steps=24", "lr=1e-3", "progress=false", "log_every=1", "save_every=4",
            "kl.adaptive=true", "kl.target=0.5", f"ptx.data={root / 'pretrain.jsonl'}", "ptx.coef=0.5",
            "ptx.batch_size=2"]
    cmd = [sys.executable, "-m", "rlxf.cli", "ppo", *args]
    resumed = kill_and_resume(cmd, tmp_path, checkpoint=8, timeout=300)
    assert 8 <= resumed["resumed_from_step"] < 24
    whole = (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()
    killed = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r) for r in killed] == [json.loads(r) for r in whole]


def test_full_batches_span_epochs_and_resume_exactly():
    from rlxf.training import full_batch_indices

    stream = full_batch_indices(5, 3, seed=1)
    batches = [next(stream) for _ in range(10)]
    assert all(len(b) == 3 for b in batches)
    flat = [i for b in batches for i in b]
    for epoch in range(6):  # every epoch is a permutation of the 5 examples
        assert sorted(flat[epoch * 5:(epoch + 1) * 5]) == list(range(5))
    resumed = full_batch_indices(5, 3, seed=1, start=7)
    assert [next(resumed) for _ in range(3)] == batches[7:]


def test_evaluation_does_not_change_training(setup, tmp_path):
    """Held-out evaluation samples with a forked RNG: the rollouts after it are unchanged."""
    root, model_dir = setup
    rows = {}
    for every in ("1", "null"):
        ppo.run(_config(root, model_dir, "max_steps=3", f"eval_every={every}", f"out={tmp_path / every}",
                        f"eval.prompts={root / 'prompts.jsonl'}", "eval.n=4"))
        rows[every] = [json.loads(line) for line in (tmp_path / every / "metrics.jsonl").read_text().splitlines()]
    drop = lambda r: {k: v for k, v in r.items() if not k.startswith("eval_")}  # noqa: E731
    assert [drop(r) for r in rows["1"]] == [drop(r) for r in rows["null"]]
    assert all("eval_score" in r for r in rows["1"])
