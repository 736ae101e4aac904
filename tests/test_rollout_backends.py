"""PPO's rollout backends: HF generate by default, vLLM optional, weights synced after each update."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import SENTENCES, write_jsonl

from rlxf.config import load_config
from rlxf.errors import ConfigError
from rlxf.models.rollout_backends import HFBackend, make_backend


@pytest.fixture(scope="module")
def ppo_setup(tmp_path_factory, tiny_model_dir):
    from rlxf.models.loading import ModelConfig, load_tokenizer
    from rlxf.models.reward import init_reward_model

    root = tmp_path_factory.mktemp("backends")
    reward = init_reward_model(ModelConfig(name_or_path=str(tiny_model_dir)))
    reward.save_pretrained(root / "rm")
    load_tokenizer(str(tiny_model_dir)).save_pretrained(root / "rm")
    prompts = sorted({s.split(" answer :")[0] + " answer :" for s in SENTENCES if " answer :" in s})
    write_jsonl(root / "prompts.jsonl", [{"prompt": p} for p in prompts])
    return root, tiny_model_dir


def _config(root, model_dir, *overrides):
    from rlxf.stages import ppo

    return load_config(ppo.Config, None, [
        f"model.name_or_path={model_dir}", f"reward.model={root / 'rm'}", f"rollout.prompts={root / 'prompts.jsonl'}",
        "rollout.batch_size=4", "rollout.max_new_tokens=6", "batch_size=2", "max_steps=3", "lr=1e-3",
        f"out={root / 'run'}", "progress=false", *overrides])


def test_hf_backend_is_the_policys_generate(tiny_model_dir):
    from rlxf.models.loading import ModelConfig, load_causal_lm, load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir), padding_side="left")
    policy = load_causal_lm(ModelConfig(name_or_path=str(tiny_model_dir)))
    query = tok(["question : what color is the fox ?", "say hello to tom ."], return_tensors="pt", padding=True)
    backend = make_backend("hf", policy, tok, model_path=str(tiny_model_dir), dtype="float32", seed=0,
                           gpu_memory_utilization=0.3, num_processes=1)
    assert isinstance(backend, HFBackend)
    torch.manual_seed(3)
    response = backend.generate(query["input_ids"], query["attention_mask"], max_new_tokens=5, temperature=0.7)
    torch.manual_seed(3)
    seqs = policy.generate(**query, do_sample=True, top_k=0, top_p=1.0, temperature=0.7, max_new_tokens=5,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    assert response.shape[0] == 2 and 1 <= response.shape[1] <= 5
    assert torch.equal(response, seqs[:, query["input_ids"].shape[1]:])
    before = [p.clone() for p in policy.parameters()]
    backend.sync_weights(policy)  # nothing to copy: generate runs on the trained weights
    assert all(torch.equal(a, b) for a, b in zip(before, policy.parameters()))


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_vllm_backend_without_vllm_says_what_to_install(tiny_model_dir):
    from rlxf.models.loading import load_tokenizer

    with pytest.raises(ConfigError, match=r"pip install 'rlxf\[vllm\]'"):
        make_backend("vllm", None, load_tokenizer(str(tiny_model_dir)), model_path=str(tiny_model_dir),
                     dtype="float32", seed=0, gpu_memory_utilization=0.3, num_processes=1)


def test_vllm_with_lora_is_refused_before_work(ppo_setup):
    root, model_dir = ppo_setup
    with pytest.raises(ConfigError, match="rollout.backend=vllm loads full weights"):
        _config(root, model_dir, "rollout.backend=vllm", "model.lora.enabled=true")


def test_weights_are_synced_to_the_backend_after_every_update(ppo_setup, tmp_path, monkeypatch):
    import rollout_doubles

    from rlxf.stages import ppo

    made = []
    monkeypatch.setattr(ppo, "make_backend", lambda name, policy, tokenizer, **_: made.append(
        rollout_doubles.SeededRowBackend(policy, tokenizer.eos_token_id, tokenizer.pad_token_id)) or made[-1])
    root, model_dir = ppo_setup
    ppo.run(_config(root, model_dir, f"out={tmp_path / 'run'}"))
    backend = made[0]
    assert backend.events == ["generate", "sync"] * 3  # each rollout samples from the weights of the last update
    # each sync saw new weights, and the last one the weights that were saved
    assert len(set(backend.synced_weights)) == 3
    from safetensors.torch import load_file

    final = load_file(str(tmp_path / "run" / "final" / "model.safetensors"))
    assert sum(t.double().sum().item() for t in final.values()) == pytest.approx(backend.synced_weights[-1], rel=1e-9)
