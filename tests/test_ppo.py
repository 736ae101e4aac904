"""The PPO stage: rollout bookkeeping, LoRA memory, resume, and learning on Tinyworld."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch
from conftest import SENTENCES, kill_and_resume, write_jsonl

from rlxf.config import load_config
from rlxf.errors import ConfigError, RlxfError
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


def test_an_answer_ends_at_a_stop_string_as_at_eos(setup, tokenizer, tmp_path):
    """rollout.stop: a policy running on into a made-up next turn has its answer end with
    the token completing the stop string (masked after), counted as ended (no missing-EOS
    penalty) and scored and logged without it."""
    from conftest import save_scripted_models

    root, _ = setup
    prompt = "say hello to tom ."
    folders, _ = save_scripted_models(tmp_path, tokenizer, prompt,
                                      {"p": ("hello tom .\n\nHuman: you insult me . . . .", False)})
    args = [f"model.name_or_path={folders['p']}", "rollout.max_new_tokens=16", "rollout.batch_size=2",
            "batch_size=2"]
    cut = ppo.PPO(_config(root, folders["p"], *args, 'rollout.stop=["\\n\\nHuman:"]'), torch.device("cpu"))
    ro = cut.rollout([prompt] * 2)
    kept = tokenizer(" hello tom .\n\nHuman:", add_special_tokens=False)["input_ids"]
    assert ro.mask.sum(1).tolist() == [len(kept)] * 2  # through the stop string's last token
    assert ro.response.shape[1] == len(kept)  # and sampling stopped there: not run on to max_new_tokens
    assert ro.response[0, :len(kept)].tolist() == kept
    assert ro.texts == ["hello tom ."] * 2 and ro.ended.tolist() == [True, True] and ro.stopped.tolist() == [True] * 2
    scored = cut._score([prompt] * 2, ro.texts, [True, True])
    torch.testing.assert_close(ro.score, scored)  # no missing-EOS penalty
    stats = cut.rollout_stats(ro)
    assert stats["stop_rate"] == 1.0 and stats["eos_rate"] == 1.0

    plain = ppo.PPO(_config(root, folders["p"], *args), torch.device("cpu"))
    ro = plain.rollout([prompt] * 2)
    assert ro.mask.sum(1).tolist() == [16, 16] and not ro.ended.any()
    assert ro.texts[0].startswith("hello tom .\n\nHuman: you")
    with pytest.raises(ConfigError, match="rollout.stop must not hold an empty string"):
        _config(root, folders["p"], "rollout.stop=['']")


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


def _summary_without_timings(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("seconds", "memory", "resumed_from_step")}


def test_run_resumed_after_its_last_checkpoint_keeps_the_final_evaluation(setup, tmp_path):
    """Killed after the last checkpoint, before final/ and summary.json: the re-run has no step
    left to evaluate at, and its summary still holds the uninterrupted run's eval numbers."""
    import shutil

    root, model_dir = setup
    cfg = _config(root, model_dir, "max_steps=2", "eval_every=1", f"out={tmp_path / 'run'}",
                  f"eval.prompts={root / 'prompts.jsonl'}", "eval.n=4", f"eval.lm_data={root / 'pretrain.jsonl'}")
    whole = ppo.run(cfg)
    assert {"eval_score", "eval_lm_loss"} <= set(whole)
    (tmp_path / "run" / "summary.json").unlink()
    shutil.rmtree(tmp_path / "run" / "final")
    resumed = ppo.run(cfg)
    assert resumed["resumed_from_step"] == 2
    assert _summary_without_timings(resumed) == _summary_without_timings(whole)


def test_grad_accum_runs_each_minibatch_in_micro_batches_with_the_same_update(setup):
    """grad_accum=2: each minibatch of 4 answers (and its 4 pre-training sequences) goes
    through the policy as 2 micro-batches of 2, each loss weighed by its share of the
    minibatch's tokens, so two updates move the models as grad_accum=1 does (float
    rounding apart) and the logged statistics are the same minibatch means."""
    from rlxf.data.formats import load_prompts
    from rlxf.training import make_optimizer

    root, model_dir = setup
    ptx = [f"ptx.data={root / 'pretrain.jsonl'}", "ptx.coef=0.5", "ptx.batch_size=4"]
    prompts = list(load_prompts(root / "prompts.jsonl"))[:8]
    stats, weights, rows = {}, {}, {}
    for g in (1, 2):
        cfg = _config(root, model_dir, f"grad_accum={g}", *ptx)
        trainer = ppo.PPO(cfg, torch.device("cpu"))
        optimizer, scheduler = make_optimizer(trainer.parameter_groups(cfg), cfg, 2 * 8)
        optimizer = trainer.prepare(optimizer)
        torch.manual_seed(0)
        ro = trainer.rollout(prompts)  # the same rollout: the models start the same
        seen = rows[g] = []
        trainer.policy.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].shape[0]),
                                                 with_kwargs=True)
        stats[g] = [trainer.update(ro, optimizer, scheduler) for _ in range(2)]
        weights[g] = [p.detach().clone() for p in (*trainer.policy.parameters(), *trainer.value.parameters())]
    # 2 updates × 4 epochs × 2 minibatches, each a policy pass and a ptx pass per micro-batch
    assert rows[1] == [4] * 32 and rows[2] == [2] * 64
    for one, two in zip(stats[1], stats[2]):
        assert one.keys() == two.keys() and "ptx_loss" in one
        assert two == pytest.approx(one, rel=1e-5, abs=1e-6)
    # Adam divides by √v: where a gradient entry is near 0 its rounding moves the weight by up
    # to ~1e-3 of an lr=1e-3 step; the 16 steps moved weights by up to 1.6e-2
    for a, b in zip(weights[1], weights[2]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(weights[1], weights[2]))  # the sums did run in other orders


@pytest.mark.parametrize("overrides, message", [
    (["grad_accum=3"], r"batch_size \(4\) must be a multiple of grad_accum × processes \(3 × 1\)"),
    (["grad_accum=4", "ptx.coef=0.5", "ptx.data=x.jsonl", "ptx.batch_size=6"],
     r"ptx.batch_size \(6\) must be a multiple of grad_accum × processes \(4 × 1\)"),
])
def test_grad_accum_must_split_the_minibatches_evenly(setup, overrides, message):
    root, model_dir = setup
    with pytest.raises(ConfigError, match=message):
        _config(root, model_dir, *overrides)


@pytest.mark.parametrize("key, file, message", [
    ("eval.lm_data", "nowhere.jsonl", r"eval.lm_data: .*nowhere.jsonl: no such file .*leave eval.lm_data out"),
    ("eval.lm_data", "empty.jsonl", r"eval.lm_data \(.*empty.jsonl\) holds no text"),
    ("eval.prompts", "chat.jsonl", r"eval.prompts: .* has no chat template; .*model.tokenizer="),
    ("rollout.prompts", "chat.jsonl", r"rollout.prompts: .* has no chat template; .*model.tokenizer="),
])
def test_evaluation_inputs_are_checked_before_training(setup, tmp_path, key, file, message):
    """Held-out text and prompts that would fail only at the first evaluation (or after
    training; an empty file would log eval_lm_loss 0.0) stop the run before its first step."""
    root, model_dir = setup
    write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "what color is the fox ?"}]}])
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ConfigError, match=message):
        ppo.run(_config(root, model_dir, f"{key}={tmp_path / file}", f"out={tmp_path / 'run'}"))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    assert not list(tmp_path.glob("run/checkpoints/step-*"))


def test_lora_scores_with_the_reward_models_normalisation(setup, tmp_path):
    """With LoRA the reward model is the value function's weights with the adapter off; the
    normalisation stored with it applies as it does to the separately loaded reward model."""
    from transformers import AutoConfig

    from rlxf.models import reward as rm

    root, model_dir = setup
    normed = tmp_path / "rm-normed"
    shutil.copytree(root / "rm", normed)
    config = AutoConfig.from_pretrained(normed)
    setattr(config, rm.NORMALIZATION_KEY, {"shift": 3.0, "scale": 2.0})
    config.save_pretrained(normed)
    prompts, texts = ["what color is the fox ? answer :"] * 2, ["the fox is red .", "hills hills"]
    scores = {}
    for lora in ("false", "true"):
        p = ppo.PPO(_config(root, model_dir, f"reward.model={normed}", f"model.lora.enabled={lora}"),
                    torch.device("cpu"))
        scores[lora] = p._score(prompts, texts, [True, True]).tolist()
    raw = rm.score_texts(rm.init_reward_model(ModelConfig(name_or_path=str(normed))),
                         load_tokenizer(str(normed)), prompts, texts)  # the normalisation dropped
    assert scores["false"] == pytest.approx([(r - 3.0) / 2.0 for r in raw], abs=1e-5)
    assert scores["true"] == pytest.approx(scores["false"], abs=1e-5)


def test_a_tracked_or_reward_function_that_fails_names_its_key(setup, tmp_path):
    """A user's function raising deep inside a PPO step is an error naming the config key
    and the function, not a traceback; one returning the wrong number of scores too."""
    root, model_dir = setup
    with pytest.raises(RlxfError, match=r"^track.gold \('os.path:join'\) failed on these answers: TypeError"):
        ppo.run(_config(root, model_dir, "track.gold=os.path:join", f"out={tmp_path / 'a'}"))
    with pytest.raises(RlxfError, match=r"^reward.function \('builtins:sorted'\) failed"):
        ppo.run(_config(root, model_dir, "reward.model=null", "reward.function=builtins:sorted",
                        f"reward.value_model={root / 'rm'}", f"out={tmp_path / 'b'}"))
    with pytest.raises(RlxfError, match=r"^track.n \('itertools:chain'\) returned 24 scores for 8 answers"):
        ppo.run(_config(root, model_dir, "track.n=itertools:chain", f"out={tmp_path / 'c'}"))


def test_the_logged_learning_rate_is_the_mean_rate_of_the_steps_updates(setup, tmp_path):
    """2 PPO steps of 4 epochs × 2 minibatches: 16 updates on a linear schedule from 1e-3,
    the k-th at 1e-3 × (16 − k) / 16. Step 1 logs the mean of updates 0-7 (12.5 / 16 of the
    peak), step 2 of updates 8-15 (4.5 / 16), not the rate after its last update."""
    root, model_dir = setup
    ppo.run(_config(root, model_dir, "max_steps=2", f"out={tmp_path / 'run'}"))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows if "lr" in r] == pytest.approx([1e-3 * 12.5 / 16, 1e-3 * 4.5 / 16])


def test_the_held_out_evaluation_samples_as_the_rollouts_do(setup, monkeypatch):
    """Without the checkpoint's generation_config: its repetition penalty or its own end
    tokens would make the evaluated answers come from another distribution than training's."""
    from rlxf.models import generation

    root, model_dir = setup
    policy = ppo.PPO(_config(root, model_dir), torch.device("cpu"))
    policy.policy.generation_config.repetition_penalty = 5.0
    policy.policy.generation_config.eos_token_id = [policy.tokenizer.eos_token_id, 7]
    seen, real = [], generation.generate

    def watched(model, *a, **k):
        seen.append((model.generation_config.repetition_penalty, generation.end_tokens(model, policy.tokenizer)))
        return real(model, *a, **k)

    monkeypatch.setattr(generation, "generate", watched)
    ppo.evaluate(policy, ["say hello to tom ."], policy.cfg)
    ((penalty, ends),) = seen
    assert penalty in (None, 1.0) and ends == [policy.tokenizer.eos_token_id]  # None: unset, no penalty
    assert policy.policy.generation_config.repetition_penalty == 5.0  # set back afterwards
