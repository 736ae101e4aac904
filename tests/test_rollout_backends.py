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


@pytest.mark.parametrize("name", ["hf", "rlxf"])
def test_a_backend_stops_sampling_once_every_answer_has_written_a_stop_string(tokenizer, name):
    """Given PPO's AnswerStop, a batch whose answers have all written a stop string samples
    no further; the answers' tokens up to it are those sampled without a stop."""
    from conftest import scripted_model

    from rlxf.models.generation import AnswerStop, encode_prompts

    prompt = "question : what color is the fox ? answer :"
    model, length = scripted_model(tokenizer, prompt, "the fox is red . the owl is blue .", eos=False)
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    ids = torch.tensor(encode_prompts([prompt] * 2, tokenizer, " "))
    query, mask = ids, torch.ones_like(ids)
    backend = make_backend(name, model, tokenizer, model_path="unused", dtype="float32", seed=0,
                           gpu_memory_utilization=0.5, num_processes=1)
    torch.manual_seed(0)
    free = backend.generate(query, mask, max_new_tokens=30, temperature=1.0)
    assert len(calls) == 30 and free.shape == (2, 30)
    calls.clear()
    torch.manual_seed(0)
    stop = AnswerStop(tokenizer, [" the owl"], ["", ""])
    stopped = backend.generate(query, mask, max_new_tokens=30, temperature=1.0, stop=stop)
    upto = len(tokenizer(" the fox is red . the owl", add_special_tokens=False)["input_ids"])
    assert len(calls) == upto < length and stopped.shape == (2, upto)
    assert torch.equal(stopped, free[:, :upto])
    assert stop.done is None  # each call runs a fresh criterion (stop.after), so one AnswerStop serves every batch


# -- rlxf's own sampling loop ----------------------------------------------------------


def test_sample_categorical_inverts_the_cumulative_sum(monkeypatch):
    from rlxf.models import rollout_backends as rb

    probs = torch.tensor([[0.5, 0.25, 0.25, 0.0]] * 5 + [[0.0, 0.0, 2.0, 0.0]])  # rows need not sum to 1
    # cumulative sums [0.5, 0.75, 1, 1] and [0, 0, 2, 2]; u is a share of the row's total
    u = torch.tensor([[0.0], [0.4999], [0.5], [0.75], [0.9999], [0.0]], dtype=torch.float64)
    monkeypatch.setattr(rb.torch, "rand", lambda *shape, **kw: u.clone())
    assert rb.sample_categorical(probs).tolist() == [0, 0, 1, 2, 2, 2]  # a token of probability 0 never
    u = torch.ones(6, 1, dtype=torch.float64)  # u = total (rounding can get there): still the last likely token
    assert rb.sample_categorical(probs).tolist() == [2] * 6


def test_sample_categorical_frequencies():
    from rlxf.models.rollout_backends import sample_categorical

    torch.manual_seed(0)
    probs = torch.tensor([[0.5, 0.25, 0.125, 0.125, 0.0]]).expand(40_000, 5)
    freq = torch.bincount(sample_categorical(probs), minlength=5).double() / 40_000
    assert torch.allclose(freq, torch.tensor([0.5, 0.25, 0.125, 0.125, 0.0], dtype=torch.float64), atol=0.01)
    assert freq[4] == 0


def _tiny(arch, tokenizer):
    from conftest import make_model

    return make_model(arch, len(tokenizer), seed=1).eval()


def _queries(tokenizer):
    tokenizer.padding_side = "left"
    q = tokenizer(["question : what color is the fox ?", "say hello ."], return_tensors="pt", padding=True)
    assert q["attention_mask"][1, 0] == 0  # the second prompt is left-padded
    return q["input_ids"], q["attention_mask"]


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_loop_backend_takes_generates_steps(arch, tokenizer):
    """At a temperature near 0 sampling is greedy decoding: the loop must give Hugging Face's
    greedy tokens, through the KV cache, left padding, EOS, padding after it and the stop."""
    from rlxf.models.rollout_backends import LoopBackend

    model = _tiny(arch, tokenizer)
    query, mask = _queries(tokenizer)

    def greedy(eos):
        seqs = model.generate(input_ids=query, attention_mask=mask, do_sample=False, max_new_tokens=8,
                              eos_token_id=eos, pad_token_id=0)
        return seqs[:, query.shape[1]:]

    free = greedy(eos=len(tokenizer) + 5)  # an EOS that never comes: 8 tokens each
    assert free.shape == (2, 8)
    # make the token the first answer emits third its EOS (unless the second answer emitted it earlier)
    eos = int(free[0, 2])
    expected = greedy(eos)
    # T = 1e-6: a top-2 logit gap of 1e-4 (Qwen2 here has one of 1.6e-4) still decides at odds of e^100
    got = LoopBackend(model, eos, 0).generate(query, mask, max_new_tokens=8, temperature=1e-6)
    assert torch.equal(got, expected)
    assert got[0, 2] == eos and (got[0, 3:] == 0).all()  # padded after its EOS


def test_loop_backend_samples_the_policys_distribution(tokenizer):
    """First tokens drawn by the loop are as close to softmax(logits / T) as torch.multinomial's
    own draws are (total variation distance), and far from the distribution at another T."""
    from rlxf.models.rollout_backends import LoopBackend

    model = _Peaked(_tiny("gpt2", tokenizer))
    query, mask = _queries(tokenizer)
    n = 20_000
    query, mask = query[:1].expand(n, -1), mask[:1].expand(n, -1)
    with torch.no_grad():
        logits = model(input_ids=query[:1], attention_mask=mask[:1]).logits[0, -1]

    def tv(draws, probs):
        return 0.5 * (torch.bincount(draws, minlength=len(probs)).double() / n - probs.double()).abs().sum().item()

    torch.manual_seed(0)
    drawn = LoopBackend(model, 1, 0).generate(query, mask, max_new_tokens=1, temperature=0.7)[:, 0]
    expected = torch.softmax(logits / 0.7, dim=-1)
    reference = torch.multinomial(expected.expand(n, -1), 1)[:, 0]
    assert tv(drawn, expected) < 1.5 * tv(reference, expected) + 0.005
    assert tv(drawn, torch.softmax(logits, dim=-1)) > 5 * tv(reference, expected)  # T matters


class _Peaked(torch.nn.Module):
    """A causal LM with its logits multiplied by 20: a distribution with a few likely tokens."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config

    def forward(self, logits_to_keep=0, **kwargs):
        out = self.model(logits_to_keep=logits_to_keep, **kwargs)
        out.logits = out.logits * 20
        return out


@pytest.mark.parametrize("lora", [False, True])
def test_loop_backend_runs_ppo(ppo_setup, tmp_path, lora):
    from rlxf.runs import Run
    from rlxf.stages import ppo

    root, model_dir = ppo_setup
    extra = ["model.lora.enabled=true", "model.lora.r=2"] if lora else []
    ppo.run(_config(root, model_dir, f"out={tmp_path / 'run'}", "rollout.backend=rlxf", "log_every=1", *extra))
    rows = Run(tmp_path / "run").metrics()
    assert len(rows) == 3 and all(1 <= r["response_length"] <= 6 for r in rows)


def test_hf_backend_sets_the_checkpoints_generation_config_aside(tiny_model_dir):
    """PPO's log-probs are those of softmax(logits / T): a repetition penalty or banned
    tokens in the checkpoint's generation_config.json must not shape the rollouts."""
    from rlxf.models.loading import ModelConfig, load_causal_lm, load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir), padding_side="left")
    policy = load_causal_lm(ModelConfig(name_or_path=str(tiny_model_dir)))
    query = tok(["question : what color is the fox ?", "say hello to tom ."], return_tensors="pt", padding=True)
    backend = HFBackend(policy, tok.eos_token_id, tok.pad_token_id)

    def sample():
        torch.manual_seed(3)
        return backend.generate(query["input_ids"], query["attention_mask"], max_new_tokens=5, temperature=1.0)

    plain = sample()
    checkpoint_config = policy.generation_config
    checkpoint_config.repetition_penalty = 5.0
    checkpoint_config.suppress_tokens = sorted(set(plain.flatten().tolist()))
    assert torch.equal(sample(), plain)
    assert policy.generation_config is checkpoint_config  # put back
    torch.manual_seed(3)  # generate itself would have obeyed it
    direct = policy.generate(**query, do_sample=True, top_k=0, top_p=1.0, temperature=1.0, max_new_tokens=5,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    assert not torch.equal(direct[:, query["input_ids"].shape[1]:], plain)


# -- banned tokens ---------------------------------------------------------------------


def test_suppress_sets_logits_to_the_lowest_float():
    from rlxf.models.rollout_backends import suppress

    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    out = suppress(logits, torch.tensor([2]))
    low = torch.finfo(torch.float32).min
    assert out.tolist() == [[1.0, 2.0, low], [0.0, 0.0, low]] and logits[0, 2] == 3.0  # a new tensor
    probs = torch.softmax(out, -1)
    assert probs[:, 2].tolist() == [0.0, 0.0] and torch.allclose(probs[1, :2], torch.tensor([0.5, 0.5]))
    from rlxf.rl import entropy_from_logits

    assert torch.isfinite(entropy_from_logits(out[None])).all()  # no 0 · -inf
    assert suppress(logits, torch.tensor([], dtype=torch.long)) is logits


@pytest.mark.parametrize("backend", ["hf", "rlxf"])
def test_suppressed_tokens_are_never_sampled_and_not_in_the_logprobs(ppo_setup, backend):
    from rlxf.data.formats import load_prompts
    from rlxf.stages import ppo

    root, model_dir = ppo_setup
    banned = list(range(2, 200))  # half the vocabulary
    trainer = ppo.PPO(_config(root, model_dir, f"rollout.backend={backend}", "rollout.max_new_tokens=8",
                              f"rollout.suppress_tokens=[{','.join(map(str, banned))}]"), torch.device("cpu"))
    torch.manual_seed(0)
    ro = trainer.rollout(list(load_prompts(str(root / "prompts.jsonl")))[:4])
    sampled = ro.response[ro.mask.bool()]
    assert sampled.numel() > 8 and not torch.isin(sampled, torch.tensor(banned)).any()
    with torch.no_grad():  # the log-probs are of the distribution without the banned tokens
        seq = torch.cat([ro.query, ro.response], 1)
        position = (ro.attention_mask.cumsum(-1) - 1).clamp(min=0)
        logits = trainer.policy(input_ids=seq, attention_mask=ro.attention_mask, position_ids=position).logits
        logits = logits[:, ro.query.shape[1] - 1:-1].clone()
    logits[..., banned] = float("-inf")
    expected = torch.log_softmax(logits, -1).gather(2, ro.response[..., None]).squeeze(2)
    real = ro.mask.bool()
    assert torch.allclose(ro.logp[real], expected[real], atol=1e-5)
    assert torch.allclose(ro.ref_logp[real], expected[real], atol=1e-5)


def test_suppress_tokens_must_fit_the_backend_and_the_vocabulary(ppo_setup):
    from rlxf.stages import ppo

    root, model_dir = ppo_setup
    with pytest.raises(ConfigError, match="not vllm"):
        _config(root, model_dir, "rollout.backend=vllm", "rollout.suppress_tokens=[1]")
    with pytest.raises(ConfigError, match=r"\[10000\]: the policy has \d+ tokens"):
        ppo.PPO(_config(root, model_dir, "rollout.suppress_tokens=[10000]"), torch.device("cpu"))


def test_sampling_settings_of_the_checkpoint_are_named_when_left_out(tiny_model_dir, caplog):
    from rlxf.models.loading import ModelConfig, load_causal_lm, load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    policy = load_causal_lm(ModelConfig(name_or_path=str(tiny_model_dir)))
    with caplog.at_level("WARNING", logger="rlxf"):
        make_backend("rlxf", policy, tok, model_path="", dtype="float32", seed=0, gpu_memory_utilization=0.3,
                     num_processes=1)
    assert not caplog.records  # a plain checkpoint: nothing to say
    policy.generation_config.repetition_penalty = 1.3
    policy.generation_config.top_p = 0.9
    with caplog.at_level("WARNING", logger="rlxf"):
        make_backend("hf", policy, tok, model_path="", dtype="float32", seed=0, gpu_memory_utilization=0.3,
                     num_processes=1)
    assert "repetition_penalty=1.3, top_p=0.9" in caplog.text and "rollout.suppress_tokens" in caplog.text
