"""bf16 mixed precision (``mixed_precision=bf16``) and the attention kernel it runs with.

bf16 changes numbers, so these tests compare with float32 at tolerances a bf16 matmul
(8 mantissa bits, relative error ~4e-3 per product) can meet, and check that what must
stay exact does: the PPO reference equals the policy before any update.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import SENTENCES, make_model, write_jsonl

from rlxf.config import load_config
from rlxf.errors import ConfigError
from rlxf.models.loading import ModelConfig, load_tokenizer, settle_attention
from rlxf.models.reward import init_reward_model
from rlxf.stages import ppo, reward, sft
from rlxf import training
from rlxf.training import autocast

CPU = torch.device("cpu")


def test_autocast_runs_matmuls_in_bf16_and_nothing_with_no():
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with autocast("bf16", CPU):
        assert layer(x).dtype == torch.bfloat16
        assert torch.nn.functional.layer_norm(x, (4,)).dtype == torch.float32  # element-wise work keeps float32
    with autocast("no", CPU):
        assert layer(x).dtype == torch.float32
    assert layer.weight.dtype == torch.float32  # weights are never converted


def test_mixed_precision_accepts_only_no_bf16_and_auto(tmp_path):
    with pytest.raises(ConfigError, match="'mixed_precision' must be one of 'no', 'bf16', 'auto'; got 'fp16'"):
        load_config(sft.Config, None, ["out=x", "model.name_or_path=m", "data.train=t", "mixed_precision=fp16"])
    assert load_config(sft.Config, None, ["out=x", "model.name_or_path=m", "data.train=t",
                                          "mixed_precision=auto"]).mixed_precision == "auto"


def test_autocast_refuses_an_unresolved_auto():
    with pytest.raises(ValueError, match="resolve 'auto' with precision_for"):
        autocast("auto", CPU)


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_where_it_is_native(monkeypatch, native):
    from rlxf.training import precision_for

    monkeypatch.setattr(training, "cpu_native_bf16", lambda: native)
    assert precision_for("auto", CPU) == ("bf16" if native else "no")
    assert precision_for("auto", torch.device("mps")) == "no"  # autocast covers CPU and CUDA only
    assert precision_for("no", CPU) == "no" and precision_for("bf16", CPU) == "bf16"  # asked for: kept


def test_a_cpu_computes_bf16_natively_only_with_bf16_instructions(tmp_path, monkeypatch):
    """oneDNN's check says yes on every AVX-512 CPU; a Skylake Xeon has no bf16 instructions."""
    skylake = "flags\t\t: fpu sse2 avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni\n"
    sapphire = "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
    zen4 = "flags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
    graviton3 = "Features\t: fp asimd sve bf16 i8mm\n"
    for text, native in ((skylake, False), (sapphire, True), (zen4, True), (graviton3, True)):
        (tmp_path / "cpuinfo").write_text("processor\t: 0\n" + text + "\nprocessor\t: 1\n" + text)
        assert training.cpu_native_bf16(tmp_path / "cpuinfo") == native, text
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)  # no /proc/cpuinfo: ask oneDNN
    assert training.cpu_native_bf16(tmp_path / "missing")


@pytest.mark.parametrize("capability", [(7, 5), (8, 0)])
def test_auto_precision_on_a_gpu_takes_bf16_from_ampere_on_and_warns_where_it_is_emulated(monkeypatch, caplog,
                                                                                          capability):
    """torch.cuda.is_bf16_supported() is True on a T4 (7.5) too, where bf16 is emulated:
    auto takes it only where it is native, and bf16 asked for there is warned about."""
    import contextlib

    from rlxf.training import check_mixed_precision, precision_for

    def supported(including_emulation: bool = True) -> bool:  # torch's answers on such a GPU
        return including_emulation or capability >= (8, 0)

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    name = "Tesla T4" if capability < (8, 0) else "A100"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    gpu = torch.device("cuda:0")
    assert precision_for("auto", gpu) == ("bf16" if capability >= (8, 0) else "no")
    with caplog.at_level("WARNING", logger="rlxf"):
        check_mixed_precision("bf16", gpu)
    assert ("Tesla T4 computes bfloat16 only by emulation" in caplog.text) == (capability < (8, 0))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_settle_attention_chooses_eager_for_bf16_on_cpu_only(tokenizer, arch):
    model = make_model(arch, len(tokenizer))
    default = model.config._attn_implementation
    assert settle_attention(model, None, CPU, "no").config._attn_implementation == default
    assert settle_attention(model, None, CPU, "bf16").config._attn_implementation == "eager"
    assert settle_attention(model, "sdpa", CPU, "bf16").config._attn_implementation == "sdpa"  # asked for: kept
    with pytest.raises(ConfigError, match="attn_implementation=no_such_kernel"):
        settle_attention(model, "no_such_kernel", CPU, "no")


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_eager_and_sdpa_attention_agree_on_padded_batches(tokenizer, arch):
    """Switching kernels must not change what the model computes (left padding included)."""
    model = make_model(arch, len(tokenizer)).eval()
    ids = torch.randint(3, len(tokenizer), (3, 12))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding
    mask[1, 9:] = 0  # right padding
    with torch.no_grad():
        sdpa = settle_attention(model, "sdpa", CPU)(input_ids=ids, attention_mask=mask).logits
        eager = settle_attention(model, "eager", CPU)(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(eager[real], sdpa[real], atol=1e-5, rtol=1e-5)
    # packed rows (SFT's packing): no attention mask, position ids restart at each sequence
    pos = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3]] * 3)
    with torch.no_grad():
        # (use_cache=False: transformers derives the block-diagonal mask only without a cache, as SFT runs)
        sdpa = settle_attention(model, "sdpa", CPU)(input_ids=ids, position_ids=pos, use_cache=False).logits
        eager = settle_attention(model, "eager", CPU)(input_ids=ids, position_ids=pos, use_cache=False).logits
        alone = model(input_ids=ids[:, 5:8], use_cache=False).logits  # the second sequence by itself
    torch.testing.assert_close(eager, sdpa, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eager[:, 5:8], alone, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- the stages

def _sft_config(tmp_path, model_dir, name, *overrides):
    write_jsonl(tmp_path / "demos.jsonl", [{"prompt": s.split(" answer :")[0] + " answer :",
                                            "completion": s.split(" answer :")[1]}
                                           for s in SENTENCES if " answer :" in s] * 4)
    return load_config(sft.Config, None, [
        f"out={tmp_path / name}", f"model.name_or_path={model_dir}", f"data.train={tmp_path / 'demos.jsonl'}",
        "data.eval_fraction=0.2", "max_steps=30", "lr=3e-3", "batch_size=4", "log_every=5", "eval_every=30",
        "progress=false", *overrides])


def _losses(run_dir) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def test_sft_in_bf16_follows_the_float32_loss_curve(tmp_path, tiny_model_dir):
    full = sft.run(_sft_config(tmp_path, tiny_model_dir, "fp32"))
    half = sft.run(_sft_config(tmp_path, tiny_model_dir, "bf16", "mixed_precision=bf16"))
    a, b = _losses(tmp_path / "fp32"), _losses(tmp_path / "bf16")
    assert b[-1] < 0.7 * b[0]  # it learns
    assert max(abs(x - y) / x for x, y in zip(a, b)) < 0.03  # and like float32 does
    assert abs(half["final_eval_loss"] - full["final_eval_loss"]) / full["final_eval_loss"] < 0.03
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(half["final"]).dtype == torch.float32  # saved as trained: float32


def test_a_stage_records_what_auto_resolved_to_and_a_resume_elsewhere_is_refused(tmp_path, tiny_model_dir,
                                                                                 monkeypatch):
    """config.yaml holds the precision that ran, so a run started where bf16 is native and
    resumed where it is not (or the reverse) is refused rather than finished differently;
    a complete run is returned wherever it is reopened (it computes nothing more)."""
    import yaml

    monkeypatch.setattr(training, "cpu_native_bf16", lambda: False)
    cfg = _sft_config(tmp_path, tiny_model_dir, "auto", "mixed_precision=auto", "max_steps=4", "save_every=2")
    summary = sft.run(cfg)
    assert yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())["mixed_precision"] == "no"
    assert sft.run(cfg) == summary  # the same machine resolves it the same: the complete run is returned
    monkeypatch.setattr(training, "cpu_native_bf16", lambda: True)
    assert sft.run(cfg) == summary  # and so does a machine with native bf16 (a report rebuilt elsewhere)
    assert yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())["mixed_precision"] == "no"
    monkeypatch.setattr(training, "cpu_native_bf16", lambda: False)
    (tmp_path / "auto" / "summary.json").unlink()  # as if it had stopped after its last checkpoint
    monkeypatch.setattr(training, "cpu_native_bf16", lambda: True)
    with pytest.raises(ConfigError, match="mixed_precision changed"):
        sft.run(cfg)


def test_reward_model_in_bf16_follows_the_float32_run(tmp_path, tiny_model_dir):
    from test_reward import pair_rows

    data = write_jsonl(tmp_path / "prefs.jsonl", pair_rows())

    def config(name, *extra):
        return load_config(reward.Config, None, [
            f"out={tmp_path / name}", f"model.name_or_path={tiny_model_dir}", f"data.train={data}",
            "data.eval_fraction=0.25", "max_steps=40", "lr=3e-3", "batch_size=8", "log_every=10", "progress=false",
            *extra])

    full = reward.run(config("fp32"))
    half = reward.run(config("bf16", "mixed_precision=bf16"))
    a, b = _losses(tmp_path / "fp32"), _losses(tmp_path / "bf16")
    assert b[-1] < 0.5 * b[0]  # it learns
    assert max(abs(x - y) for x, y in zip(a, b)) < 0.05 * max(a)  # and like float32 does
    assert abs(half["heldout"]["accuracy"] - full["heldout"]["accuracy"]) <= 0.1
    assert half["heldout"]["accuracy"] > 0.8
    # normalisation scores in the saved weights' dtype (float32) with either setting
    shifts = half["normalization"]["shift"], full["normalization"]["shift"]
    assert abs(shifts[0] - shifts[1]) < 0.1 * abs(shifts[1]) + 0.05


@pytest.fixture(scope="module")
def ppo_setup(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("ppo-bf16")
    rm = init_reward_model(ModelConfig(name_or_path=str(tiny_model_dir)))
    with torch.no_grad():
        rm.score.weight.mul_(20)
    rm.save_pretrained(root / "rm")
    load_tokenizer(str(tiny_model_dir)).save_pretrained(root / "rm")
    prompts = sorted({s.split(" answer :")[0] + " answer :" for s in SENTENCES if " answer :" in s})
    write_jsonl(root / "prompts.jsonl", [{"prompt": p} for p in prompts] * 4)
    return root, tiny_model_dir


def _ppo_config(root, model_dir, name, *overrides):
    return load_config(ppo.Config, None, [
        f"model.name_or_path={model_dir}", f"reward.model={root / 'rm'}", f"rollout.prompts={root / 'prompts.jsonl'}",
        "rollout.batch_size=8", "rollout.max_new_tokens=10", "batch_size=4", "max_steps=12", "lr=3e-3",
        f"out={root / name}", "progress=false", "log_every=1", *overrides])


def test_ppo_rollout_in_bf16_keeps_the_reference_exact(ppo_setup):
    """Policy and reference run the same bf16 path, so before any update their log-probs
    are equal and the KL is exactly 0; the log-probs are float32 and near float32's."""
    root, model_dir = ppo_setup
    from rlxf.data.formats import load_prompts

    trainer = ppo.PPO(_ppo_config(root, model_dir, "unused", "mixed_precision=bf16"), CPU)
    assert trainer.policy.config._attn_implementation == "eager"
    prompts = list(load_prompts(str(root / "prompts.jsonl")))[:8]
    torch.manual_seed(0)
    ro = trainer.rollout(prompts)
    assert ro.logp.dtype == ro.values.dtype == torch.float32
    # sampling ran with SDPA (one query token a step), and eager is back for the rest
    assert trainer.sampling_attention == "sdpa" and trainer.policy.config._attn_implementation == "eager"
    assert torch.equal(ro.logp, ro.ref_logp) and torch.count_nonzero(ro.kl) == 0
    with torch.no_grad():
        full = trainer._logits(trainer.policy, ro.query, ro.response, ro.attention_mask)  # float32, no autocast
    exact = torch.log_softmax(full, -1).gather(2, ro.response[..., None]).squeeze(2)
    real = ro.mask.bool()
    assert (ro.logp[real] - exact[real]).abs().mean() < 0.02


def test_a_ppo_update_in_bf16_moves_the_weights_as_float32_does(ppo_setup):
    """The same rollout, the same starting weights and minibatch order: one PPO update
    (4 epochs x 2 minibatches) in bf16 and in float32 must change the policy and value
    weights in nearly the same direction and by nearly the same amount. (Log-probs left
    in bf16 still pass here; the rollout test above catches those by their dtype.)"""
    root, model_dir = ppo_setup
    from rlxf.data.formats import load_prompts
    from rlxf.training import make_optimizer

    prompts = list(load_prompts(str(root / "prompts.jsonl")))[:8]
    deltas, stats = {}, {}
    for precision in ("no", "bf16"):
        cfg = _ppo_config(root, model_dir, "unused", f"mixed_precision={precision}")
        trainer = ppo.PPO(cfg, CPU)
        if precision == "no":
            torch.manual_seed(0)
            ro = trainer.rollout(prompts)  # one rollout, in float32, for both
        before = torch.cat([p.detach().flatten().clone() for m in trainer.trainable_modules() for p in m.parameters()])
        optimizer, scheduler = make_optimizer(trainer.parameter_groups(cfg), cfg, 10)
        optimizer = trainer.prepare(optimizer)
        torch.manual_seed(1)
        stats[precision] = trainer.update(ro, optimizer, scheduler)
        after = torch.cat([p.detach().flatten() for m in trainer.trainable_modules() for p in m.parameters()])
        deltas[precision] = after - before
    a, b = deltas["no"], deltas["bf16"]
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.99  # measured 0.9993
    assert abs(b.norm() / a.norm() - 1) < 0.02  # measured 1.0008
    for key in ("policy_loss", "value_loss", "approx_kl"):
        assert abs(stats["bf16"][key] - stats["no"][key]) < 0.05 * abs(stats["no"][key]) + 1e-3, key


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_frozen_matmul_weights_in_bf16_change_no_output_under_autocast(tokenizer, arch):
    """store_matmul_weights: bf16 storage of what autocast casts anyway gives the very same
    logits (and reward scores); tied weights (GPT-2's LM head) and norms stay float32."""
    from rlxf.models.loading import store_matmul_weights

    ids = torch.randint(3, len(tokenizer), (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    for model in (make_model(arch, len(tokenizer)).eval(), _reward_model(arch, tokenizer)):
        with torch.no_grad(), autocast("bf16", CPU):
            before = model(input_ids=ids, attention_mask=mask).logits
            store_matmul_weights(model, torch.bfloat16)
            after = model(input_ids=ids, attention_mask=mask).logits
        assert torch.equal(before, after)
        dtypes = {name: p.dtype for name, p in model.named_parameters()}
        stored = [n for n, d in dtypes.items() if d == torch.bfloat16]
        assert stored and all(any(k in n for k in ("proj", "attn", "mlp", "score", "lm_head")) for n in stored)
        assert all(d == torch.float32 for n, d in dtypes.items() if "norm" in n or "ln_" in n or "embed" in n
                   or "wte" in n or "wpe" in n)
    gpt2 = make_model("gpt2", len(tokenizer))
    store_matmul_weights(gpt2, torch.bfloat16)
    assert gpt2.lm_head.weight is gpt2.transformer.wte.weight and gpt2.lm_head.weight.dtype == torch.float32


def _reward_model(arch, tokenizer):
    from transformers import AutoModelForSequenceClassification

    lm = make_model(arch, len(tokenizer))
    lm.config.num_labels, lm.config.pad_token_id = 1, 0
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(lm.config).eval()


@pytest.mark.parametrize("native", [True, False])
def test_ppo_resolves_auto_for_its_device(ppo_setup, monkeypatch, native):
    root, model_dir = ppo_setup
    monkeypatch.setattr(training, "cpu_native_bf16", lambda: native)
    trainer = ppo.PPO(_ppo_config(root, model_dir, "unused", "mixed_precision=auto"), CPU)
    assert trainer.cfg.mixed_precision == ("bf16" if native else "no")
    frozen = torch.bfloat16 if native else torch.float32
    assert trainer.ref.transformer.h[0].attn.c_attn.weight.dtype == frozen


def test_ppo_in_bf16_stores_frozen_models_in_bf16_and_trained_ones_in_float32(ppo_setup):
    root, model_dir = ppo_setup
    for precision, frozen in (("bf16", torch.bfloat16), ("no", torch.float32)):
        trainer = ppo.PPO(_ppo_config(root, model_dir, "unused", f"mixed_precision={precision}"), CPU)
        assert trainer.ref.transformer.h[0].attn.c_attn.weight.dtype == frozen
        assert trainer.reward.transformer.h[0].mlp.c_fc.weight.dtype == frozen
        trained = [p.dtype for m in trainer.trainable_modules() for p in m.parameters()]
        assert set(trained) == {torch.float32}


def test_bf16_on_a_cpu_without_native_bf16_warns(monkeypatch, caplog):
    from rlxf.training import check_mixed_precision

    monkeypatch.setattr(training, "cpu_native_bf16", lambda: False)
    with caplog.at_level("WARNING", logger="rlxf"):
        check_mixed_precision("bf16", CPU)
        check_mixed_precision("no", CPU)
    assert [r.message for r in caplog.records] == [
        "mixed_precision=bf16: this CPU has no native bfloat16 (AVX512-BF16 or AMX), so bf16 matmuls are "
        "emulated, 10-100x slower than float32; set mixed_precision=no"]


@pytest.mark.parametrize("native", [True, False])
def test_tinyworld_build_takes_bf16_only_where_it_is_native(monkeypatch, native):
    """`rlxf tinyworld build` defaults to mixed_precision=auto: on a CPU that emulates bf16
    (AVX2 only) pre-training in bf16 would be 10-100x slower than float32."""
    from rlxf.tinyworld import build

    monkeypatch.setattr(training, "cpu_native_bf16", lambda: native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert build.Config(out="x").mixed_precision == "auto"
    nothing = Path("no-such-build/pretrain")
    assert build._precision("auto", nothing) == ("bf16" if native else "no")
    assert build._precision("bf16", nothing) == "bf16" and build._precision("no", nothing) == "no"  # kept


def test_bf16_is_refused_on_devices_autocast_does_not_cover():
    from rlxf.training import check_mixed_precision

    with pytest.raises(ConfigError, match="runs on CPU and CUDA devices, not mps"):
        check_mixed_precision("bf16", torch.device("mps"))
    check_mixed_precision("no", torch.device("mps"))  # float32 anywhere
