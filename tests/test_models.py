"""Loading and saving through the public from_pretrained path; tokenizer training; generation."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import make_model, write_jsonl

from rlxf.errors import ConfigError
from rlxf.models.generation import generate
from rlxf.models.loading import LoraConfig, ModelConfig, add_lora, load_causal_lm, load_tokenizer, save_model


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_tiny_architectures_round_trip(tmp_path, tokenizer, arch):
    model = make_model(arch, len(tokenizer)).eval()  # eval: GPT-2's dropout would differ per call
    model.save_pretrained(tmp_path / "src")
    tokenizer.save_pretrained(tmp_path / "src")
    loaded = load_causal_lm(ModelConfig(name_or_path=str(tmp_path / "src")))
    assert type(loaded).__name__ == type(model).__name__
    ids = torch.tensor([tokenizer("the fox is red .")["input_ids"]])
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=0, rtol=0)
    assert not list((tmp_path / "src").glob("*.bin")), "weights must be safetensors"


def test_missing_checkpoint_is_a_clear_error(tmp_path, tokenizer):
    missing = str(tmp_path / "nothing-here")
    with pytest.raises(ConfigError, match=f"no folder '{missing}' for the model \\(current folder: "):
        load_causal_lm(ModelConfig(name_or_path=missing))
    with pytest.raises(ConfigError, match=f"no folder '{missing}' for the tokenizer"):
        load_tokenizer(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"empty' holds no model \(no config.json or adapter_config.json\)"):
        load_causal_lm(ModelConfig(name_or_path=str(tmp_path / "empty")))
    with pytest.raises(ConfigError, match=r"empty' holds no tokenizer \(no tokenizer.json or"):
        load_tokenizer(str(tmp_path / "empty"))
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match="is a file; give the folder that save_pretrained wrote"):
        load_causal_lm(ModelConfig(name_or_path=str(tmp_path / "weights.safetensors")))
    # a folder with a tokenizer but no model names what is missing, not a tokenizers traceback
    tokenizer.save_pretrained(tmp_path / "tok-only")
    assert load_tokenizer(str(tmp_path / "tok-only")).eos_token is not None
    with pytest.raises(ConfigError, match="holds no model"):
        load_causal_lm(ModelConfig(name_or_path=str(tmp_path / "tok-only")))


def _no_hub_cache(tmp_path, monkeypatch, *, offline: bool):
    """An empty Hugging Face cache, and the hub offline or not (HF_HUB_OFFLINE as read at import)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.chdir(tmp_path)


def test_a_model_name_neither_here_nor_cached_fails_at_once_offline(tmp_path, monkeypatch):
    """A misspelt name is a hub id to transformers: without network, huggingface_hub retried
    each file it lacked (~48 s) before the error. Under HF_HUB_OFFLINE=1 nothing is asked."""
    import time

    _no_hub_cache(tmp_path, monkeypatch, offline=True)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"^no folder 'llamaa' for the model here \(.*\), nor a cached hub model of "
                                          r"that name, and HF_HUB_OFFLINE=1 forbids downloading one; give the folder"):
        load_causal_lm(ModelConfig(name_or_path="llamaa"))
    with pytest.raises(ConfigError, match=r"^no folder 'org/llamaa' for the tokenizer here .* HF_HUB_OFFLINE=1"):
        load_tokenizer("org/llamaa")
    with pytest.raises(ConfigError, match=r"no folder 'my model' .* it is no valid hub id"):
        load_tokenizer("my model")
    assert time.perf_counter() - start < 2


def test_a_cached_hub_model_is_found_without_asking_the_hub(tmp_path, monkeypatch, tiny_model_dir):
    import huggingface_hub

    from rlxf.models.loading import checkpoint

    _no_hub_cache(tmp_path, monkeypatch, offline=False)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda *a, **k: pytest.fail("asked the hub"))
    repo = tmp_path / "hub-cache" / "models--org--tiny"  # the cache's layout: refs/main -> snapshots/<commit>/
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    assert checkpoint("org/tiny", "model") == "org/tiny"


def test_a_hub_that_cannot_be_reached_is_asked_once_without_retries(tmp_path, monkeypatch):
    """Online but without a working network (no DNS here): one request, then the error; a
    hub that answers "no such repository" says so."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import RepositoryNotFoundError

    _no_hub_cache(tmp_path, monkeypatch, offline=False)
    asked = []

    def no_network(url, *, timeout):
        asked.append((url, timeout))
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", no_network)
    with pytest.raises(ConfigError, match=r"^no folder 'llamaa' for the model here .* nor a cached hub model of that "
                                          r"name, and the hub \(https://.*\) cannot be reached to download one "
                                          r"\(ConnectionError: \[Errno -2\] Name or service not known\); give the "
                                          r"folder save_pretrained wrote, check the network .*HF_HUB_OFFLINE=1"):
        load_causal_lm(ModelConfig(name_or_path="llamaa"))
    assert asked == [(huggingface_hub.hf_hub_url("llamaa", "config.json"), constants.HF_HUB_ETAG_TIMEOUT)]

    def no_repo(url, *, timeout):
        error = RepositoryNotFoundError.__new__(RepositoryNotFoundError)  # __init__ wants the HTTP client's response
        Exception.__init__(error, "404 Client Error: Repository Not Found")
        raise error

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", no_repo)
    with pytest.raises(ConfigError, match=r"^no folder 'llamaa' for the tokenizer here .*, and the hub \(https://.*\) "
                                          r"has no model 'llamaa' \(a private one needs hf auth login\); check the "
                                          r"spelling"):
        load_tokenizer("llamaa")


def test_lora_targets_the_model_lacks_name_the_layers_it_has():
    with pytest.raises(ConfigError, match=r"target_modules=\['q_proj'\] matches no layer of GPT2LMHeadModel; "
                                          r"its linear layers are \['c_attn', 'c_fc', 'c_proj', 'lm_head'\]"):
        add_lora(make_model("gpt2", 64), LoraConfig(enabled=True, target_modules=["q_proj"]))
    with pytest.raises(ConfigError, match="lora.target_modules is an empty list"):
        LoraConfig(target_modules=[]).validate()
    with pytest.raises(ConfigError, match=r"lora.target_modules: leave it null \(not all-linear\)"):
        LoraConfig(target_modules=["all-linear"]).validate()  # target_modules=all-linear reads as [all-linear]


def test_a_device_this_machine_lacks_is_a_config_error():
    from rlxf.training import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"device='gpu' is not a device; use auto, cpu, cuda, cuda:N or mps"):
        resolve_device("gpu")
    with pytest.raises(ConfigError, match="rlxf runs on cpu, cuda or mps, not meta"):
        resolve_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"device=cuda:0: this PyTorch .* use device=cpu"):
            resolve_device("cuda:0")
    # commands whose device key is another name it
    with pytest.raises(ConfigError, match=r"^judge.device='gpu' is not a device"):
        resolve_device("gpu", "judge.device")


def test_sxs_names_its_own_device_key(tmp_path, tiny_model_dir):
    from rlxf.config import load_config
    from rlxf.evaluate import sxs

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "what color is the fox ?"}])
    cfg = load_config(sxs.Config, None, [f"model_a={tiny_model_dir}", f"model_b={tiny_model_dir}",
                                         f"prompts={prompts}", f"out={tmp_path / 'run'}", "generation.device=gpu",
                                         "progress=false"])
    with pytest.raises(ConfigError, match=r"^generation.device='gpu' is not a device"):
        sxs.run(cfg)


def test_trust_remote_code_is_off_by_default():
    assert ModelConfig(name_or_path="x").trust_remote_code is False


def test_pickled_weights_are_never_loaded(tmp_path, tiny_model_dir):
    """Weights saved as a pickle (pytorch_model.bin) can run code when loaded: a folder with
    nothing else is refused, saying how to convert it; a reward model too."""
    from safetensors.torch import load_file

    from rlxf.models.reward import init_reward_model, load_reward_model

    pickled = tmp_path / "bin"
    pickled.mkdir()
    for f in tiny_model_dir.iterdir():
        if f.suffix != ".safetensors":
            (pickled / f.name).write_bytes(f.read_bytes())
    torch.save(load_file(str(tiny_model_dir / "model.safetensors")), pickled / "pytorch_model.bin")
    for load in (lambda: load_causal_lm(ModelConfig(name_or_path=str(pickled))),
                 lambda: init_reward_model(ModelConfig(name_or_path=str(pickled))),
                 lambda: load_reward_model(pickled)):
        with pytest.raises(ConfigError, match=r"pickled .bin files only; rlxf loads safetensors only"):
            load()


def test_bpe_tokenizer_round_trips_text(tokenizer, tmp_path):
    text = "question : what color is the fox ? answer : the fox is red ."
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    tokenizer.save_pretrained(tmp_path)
    again = load_tokenizer(str(tmp_path))
    assert again(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert again.pad_token == "<|pad|>" and again.eos_token == "<|endoftext|>"


def test_lora_model_saves_merged_and_loads_without_peft(tmp_path, tokenizer):
    model = make_model("llama", len(tokenizer))
    peft_model = add_lora(model, LoraConfig(enabled=True, r=4))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():  # make the adapter non-zero so merging matters
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    ids = torch.tensor([tokenizer("the owl is blue .")["input_ids"]])
    expected = peft_model(ids).logits
    save_model(peft_model, tokenizer, tmp_path / "merged")
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(plain(ids).logits, expected, atol=1e-5, rtol=1e-5)


def test_generation_reports_ending_and_strips_separator(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    model = load_causal_lm(ModelConfig(name_or_path=str(tiny_model_dir)))
    prompts = ["question : what color is the fox ? answer :", "say hello to tom ."]
    a = generate(model, tok, prompts, max_new_tokens=6, seed=3)
    b = generate(model, tok, prompts, max_new_tokens=6, seed=3)
    assert [g.text for g in a] == [g.text for g in b]  # seeded sampling is reproducible
    for g in a:
        assert len(g.token_ids) <= 6
        assert g.ended == (g.token_ids[-1] == tok.eos_token_id)
        assert not g.text.startswith(" ")
    greedy = generate(model, tok, prompts[:1] * 3, max_new_tokens=5, greedy=True)
    assert len({g.text for g in greedy}) == 1


def test_stored_generation_is_one_generate_call_even_across_a_crash(tmp_path, tiny_model_dir, monkeypatch, caplog):
    """generate_stored returns what one generate call with the same seed returns: the
    same batches, one random stream. A re-run after a crash in its third chunk reads the
    two finished ones back, restores the generator as it stood after them, and ends
    with those answers too; a file of another seed is sampled afresh."""
    from rlxf.models import generation

    tok = load_tokenizer(str(tiny_model_dir), padding_side="left")
    model = load_causal_lm(ModelConfig(name_or_path=str(tiny_model_dir)))
    prompts = [f"question : what color is the {w} ? answer :" for w in ("fox", "owl", "cat", "dog", "hen")] + \
              [f"say hello to {n} ." for n in ("tom", "ann", "bob", "eve")] + ["two plus three is", "one plus one is"]
    settings = dict(max_new_tokens=8, temperature=1.3, batch_size=2)
    whole = generate(model, tok, prompts, seed=7, **settings)
    store = tmp_path / "answers.jsonl"
    real, calls = generation.generate, []

    def crash_in_the_third_chunk(*a, **k):
        calls.append(len(a[2]))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(generation, "generate", crash_in_the_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        generation.generate_stored(model, tok, prompts, store, identity={"m": 1}, chunk_batches=2, seed=7,
                                   **settings)
    assert calls == [4, 4, 3] and len(store.read_text().splitlines()) == 3  # header, chunks 0 and 1
    torch.manual_seed(12345)  # whatever ran in between
    calls.clear()
    monkeypatch.setattr(generation, "generate", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k))
    with caplog.at_level("INFO", logger="rlxf"):
        resumed = generation.generate_stored(model, tok, prompts, store, identity={"m": 1}, chunk_batches=2, seed=7,
                                             **settings)
    assert calls == [3] and "8 of 11 answers were sampled before" in caplog.text
    assert resumed == whole
    calls.clear()
    other = generation.generate_stored(model, tok, prompts, store, identity={"m": 1}, chunk_batches=2, seed=8,
                                       **settings)
    assert calls == [4, 4, 3] and other == generate(model, tok, prompts, seed=8, **settings) != whole


def test_stored_generation_counts_the_prompts_cut_to_fit_once_over_all_chunks(tmp_path, tiny_model_dir, monkeypatch,
                                                                               caplog):
    from rlxf.models import generation

    tok = load_tokenizer(str(tiny_model_dir), padding_side="left")
    model = load_causal_lm(ModelConfig(name_or_path=str(tiny_model_dir)))
    monkeypatch.setattr(generation, "_warned", set())
    prompts = ["the fox is red . " * 40, "say hi .", "say hello .", "two plus three is"]
    with caplog.at_level("WARNING", logger="rlxf"):
        generation.generate_stored(model, tok, prompts, tmp_path / "s.jsonl", identity={}, max_new_tokens=8,
                                   batch_size=1, chunk_batches=2)
    assert caplog.text.count("prompts were longer than") == 1 and "1 of 4 prompts were longer" in caplog.text


def test_stored_answers_holding_unicode_line_separators_read_back_whole(tmp_path, tiny_model_dir, monkeypatch):
    """U+2028, U+2029 and U+0085 are written raw (ensure_ascii=False) and are line breaks to
    str.splitlines: a finished store holding them is read back, not sampled again."""
    from rlxf.models import generation

    tok = load_tokenizer(str(tiny_model_dir), padding_side="left")
    model = load_causal_lm(ModelConfig(name_or_path=str(tiny_model_dir)))
    calls = []

    def odd(model, tokenizer, prompts, **_):
        calls.append(len(prompts))
        return [generation.Generation(p, "a\u2028b\u2029c\u0085d", True, (5, 6)) for p in prompts]

    monkeypatch.setattr(generation, "generate", odd)
    prompts = ["say hello to tom .", "two plus three is", "one plus one is"]
    args = dict(identity={"m": 1}, max_new_tokens=4, batch_size=1, chunk_batches=1, seed=0)
    first = generation.generate_stored(model, tok, prompts, tmp_path / "s.jsonl", **args)
    assert calls == [1, 1, 1]
    again = generation.generate_stored(model, tok, prompts, tmp_path / "s.jsonl", **args)
    assert calls == [1, 1, 1] and again == first and again[0].text == "a\u2028b\u2029c\u0085d"


def test_a_model_fingerprint_changes_when_it_or_an_adapters_base_is_trained_again(tmp_path):
    import json
    import time

    from rlxf.models.loading import fingerprint

    base, adapter = tmp_path / "base", tmp_path / "adapter"
    base.mkdir(), adapter.mkdir()
    (base / "model.safetensors").write_bytes(b"x" * 10)
    (adapter / "adapter_model.safetensors").write_bytes(b"y" * 10)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    before = fingerprint(str(base)), fingerprint(str(adapter))
    assert fingerprint(str(adapter)) == before[1]  # the same files: the same fingerprint
    time.sleep(0.01)
    (base / "model.safetensors").write_bytes(b"z" * 10)  # trained again into the same folder
    assert fingerprint(str(base)) != before[0] and fingerprint(str(adapter)) != before[1]
    assert fingerprint("org/model", "abc") == "abc" and fingerprint("org/model") == "main"
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(adapter)}))
    assert fingerprint(str(adapter))  # an adapter naming itself as its base ends


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_lora_is_told_how_the_layers_store_their_weights(tokenizer, arch):
    """GPT-2's Conv1D layers hold (in, out) weights: peft is told so (fan_in_fan_out), and
    neither the policy's nor the reward model's adapter warns on every LoRA run."""
    import warnings

    from rlxf.models.reward import add_reward_lora, init_reward_model

    model = make_model(arch, len(tokenizer))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lora = add_lora(model, LoraConfig(enabled=True, r=4))
    assert lora.peft_config["default"].fan_in_fan_out == (arch == "gpt2")
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        save_model(make_model(arch, len(tokenizer)), tokenizer, folder)
        reward = init_reward_model(ModelConfig(name_or_path=folder))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            add_reward_lora(reward, LoraConfig(enabled=True, r=4))


def test_an_answer_ends_at_any_end_token_of_the_models_generation_config(tokenizer):
    """A chat model ends its turn with a token of its own (Llama 3's <|eot_id|>), listed in
    its generation_config beside the tokenizer's EOS: the answer ends there, counts as
    ended, and its text leaves the token out."""
    from conftest import scripted_model

    from rlxf.models.generation import end_tokens

    prompt = "question : what color is the fox ? answer :"
    model, _ = scripted_model(tokenizer, prompt, "the fox is red . the owl is blue .", eos=False)
    turn_end = tokenizer(" .", add_special_tokens=False)["input_ids"][-1]  # stands in for <|eot_id|>
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, turn_end]
    assert end_tokens(model, tokenizer) == [tokenizer.eos_token_id, turn_end]
    g = generate(model, tokenizer, [prompt], max_new_tokens=20, seed=0)[0]
    assert (g.text, g.ended) == ("the fox is red", True) and g.token_ids[-1] == turn_end
    model.generation_config.eos_token_id = None
    assert end_tokens(model, tokenizer) == [tokenizer.eos_token_id]
    assert not generate(model, tokenizer, [prompt], max_new_tokens=20, seed=0)[0].ended


@pytest.mark.parametrize("pad_is_eos", [False, True])
def test_generation_stops_sampling_an_answer_at_a_stop_string(tokenizer, pad_is_eos):
    """With ``stop``, sampling ends at the stop string (HF ``stop_strings``): the batch
    takes as many forward passes as the script up to it, not ``max_new_tokens``; the text
    is cut before it and the answer counts as ended, also where the pad token is EOS (GPT-2
    style) and the padding after a stopped answer reads as EOS."""
    import copy

    from conftest import scripted_model

    tok = copy.deepcopy(tokenizer)
    if pad_is_eos:
        tok.pad_token = tok.eos_token
    prompt = "question : what color is the fox ? answer :"
    model, length = scripted_model(tok, prompt, "the fox is red . the owl is blue .", eos=False)
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    free = generate(model, tok, [prompt] * 2, max_new_tokens=30, seed=0)
    assert len(calls) == 30 and not any(g.ended or g.stopped for g in free)
    assert all(g.text.startswith("the fox is red . the owl is blue .") for g in free)
    calls.clear()
    stopped = generate(model, tok, [prompt] * 2, max_new_tokens=30, seed=0, stop=[" the owl"])
    upto = len(tok(" the fox is red . the owl", add_special_tokens=False)["input_ids"])
    assert len(calls) == upto < length < 30  # sampling ended at the stop string
    for g in stopped:
        assert (g.text, g.ended, g.stopped) == ("the fox is red .", True, True)
        assert tok.decode(g.token_ids) == " the fox is red . the owl"  # no padding, no EOS that was padding
    never = generate(model, tok, [prompt], max_new_tokens=12, seed=0, stop=["zebra"])[0]
    assert (never.ended, never.stopped, len(never.token_ids)) == (False, False, 12)

    # A shorter prompt's answer meets the script later (its positions start earlier): the
    # first row stops and is padded while the second samples on; its tokens end at the stop.
    mixed = generate(model, tok, [prompt, "say hi ."], max_new_tokens=30, seed=0, stop=[" the owl"])
    assert (mixed[0].text, mixed[0].ended, mixed[0].stopped) == ("the fox is red .", True, True)
    assert tok.decode(mixed[0].token_ids) == " the fox is red . the owl"
    assert len(mixed[1].token_ids) > len(mixed[0].token_ids)

    # A stop string is looked for in the answer alone: "answer :" + " the fox" holds ": the"
    # across the prompt's end, which ends nothing (Hugging Face's stop_strings would stop there).
    across = generate(model, tok, [prompt], max_new_tokens=12, seed=0, stop=[": the"])[0]
    assert (across.ended, across.stopped, len(across.token_ids)) == (False, False, 12)
    assert across.text.startswith("the fox is red . the owl")


def test_loaded_gpt2_uses_the_one_kernel_tanh_gelu_with_the_same_outputs(tiny_model_dir):
    from transformers import AutoModelForCausalLM
    from transformers.activations import GELUTanh, NewGELUActivation

    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    fused = load_causal_lm(ModelConfig(name_or_path=str(tiny_model_dir))).eval()
    assert any(isinstance(m, NewGELUActivation) for m in plain.modules())
    assert not any(isinstance(m, NewGELUActivation) for m in fused.modules())
    assert any(isinstance(m, GELUTanh) for m in fused.modules())
    ids = torch.randint(2, 100, (2, 12))
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, fused(ids).logits, atol=1e-5)
    assert fused.config.activation_function == "gelu_new"  # what is saved stays the model's own


def test_optimizer_uses_the_fused_adamw_on_cpu():
    from rlxf.training import TrainConfig, make_optimizer

    model = torch.nn.Linear(4, 2)
    opt, _ = make_optimizer(model.parameters(), TrainConfig(out="unused", lr=1e-3), 10)
    assert opt.defaults["fused"] is True
    before = model.weight.detach().clone()
    model(torch.ones(1, 4)).sum().backward()
    opt.step()
    # AdamW's first step moves every weight with a gradient by lr (times sign of the gradient)
    assert torch.allclose((before - model.weight).abs(), torch.full_like(before, 1e-3), rtol=1e-3)


def test_learning_rate_schedules_by_hand():
    from rlxf.training import lr_factor

    # warm-up over 4 steps: 0, 1/4, 1/2, 3/4, then the schedule from 1
    assert [lr_factor(s, "constant", 4, 12) for s in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_factor(12, "constant", 4, 12) == 1.0
    # linear after warm-up: 8 steps from 1 to 0
    assert [lr_factor(s, "linear", 4, 12) for s in (4, 6, 8, 12, 13)] == [1.0, 0.75, 0.5, 0.0, 0.0]
    # cosine: 1 at the start, 1/2 halfway, (1 + cos(pi/4)) / 2 a quarter of the way, 0 at the end
    assert lr_factor(4, "cosine", 4, 12) == 1.0
    assert lr_factor(8, "cosine", 4, 12) == pytest.approx(0.5)
    assert lr_factor(6, "cosine", 4, 12) == pytest.approx((1 + 2 ** -0.5) / 2)
    assert lr_factor(12, "cosine", 4, 12) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(0, "cosine", 0, 10) == 1.0  # no warm-up: the peak at once


def test_training_does_not_import_the_trainer_stack():
    """The schedulers are rlxf's own: transformers' would pull in its Trainer and peft (~100 MB)."""
    import subprocess
    import sys

    code = ("import sys, torch; from rlxf.training import make_optimizer, TrainConfig; "
            "make_optimizer(torch.nn.Linear(2, 2).parameters(), TrainConfig(out='x'), 5); "
            "print('peft' in sys.modules, 'transformers.trainer_utils' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_a_reward_model_whose_tokenizer_pads_with_eos_scores_as_plain_transformers_does(tmp_path, tokenizer):
    """Without a pad token rlxf pads with EOS; the HF head reads the last token that is
    not padding, so a reward input ending in EOS would be read one token early there."""
    import copy

    from transformers import AutoModelForSequenceClassification

    from rlxf.models.reward import encode_answer, init_reward_model, raw_score, reward_inputs

    no_pad = copy.deepcopy(tokenizer)
    no_pad.pad_token = None
    make_model("gpt2", len(tokenizer)).save_pretrained(tmp_path / "lm")
    no_pad.save_pretrained(tmp_path / "lm")
    tok = load_tokenizer(str(tmp_path / "lm"))
    assert tok.pad_token_id == tok.eos_token_id  # rlxf's choice for a tokenizer without one
    init_reward_model(ModelConfig(name_or_path=str(tmp_path / "lm"))).save_pretrained(tmp_path / "rm")
    no_pad.save_pretrained(tmp_path / "rm")
    ids, _ = encode_answer("the fox is", "red .", tok)
    assert ids[-1] != tok.eos_token_id  # the input ends at the answer's last token

    prompts, answers = ["the fox is", "two plus three is"], ["red .", "five , and the owl lives in the wood ."]
    batch = reward_inputs(prompts, answers, tok)
    assert batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum()  # row 0 is padded
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    with torch.no_grad():
        theirs = plain(**batch).logits[:, 0]
        ours = raw_score(init_reward_model(ModelConfig(name_or_path=str(tmp_path / "rm"))).eval(), **batch)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)


def test_saved_weights_are_as_readable_as_any_new_file(tmp_path, tiny_model_dir):
    """transformers writes model.safetensors readable by its owner only (0600); a teammate
    could not load a model rlxf saved. save_model gives it the umask's permissions."""
    old = os.umask(0o022)
    try:
        out = save_model(load_causal_lm(ModelConfig(name_or_path=str(tiny_model_dir))), None, tmp_path / "m")
    finally:
        os.umask(old)
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o644


def test_a_kv_cache_goes_by_the_name_the_models_forward_takes():
    """transformers 5.25 renamed ``past_key_values`` to ``cache`` (the old name warns, and goes
    in 5.40): rlxf asks the forward's signature, and reads a returned cache by either name."""
    from types import SimpleNamespace

    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

    from rlxf.models.loading import cache_keyword, returned_cache

    class Before(torch.nn.Module):  # the signature of transformers < 5.25
        def forward(self, input_ids, past_key_values=None, use_cache=None):
            return input_ids

    class After(torch.nn.Module):
        def forward(self, input_ids, cache=None, use_cache=None):
            return input_ids

    class Wrapper(torch.nn.Module):  # names neither: the installed transformers' name
        def forward(self, **kwargs):
            return kwargs

    assert cache_keyword(Before()) == "past_key_values"
    assert cache_keyword(After()) == "cache"
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16, n_positions=8)).eval()
    name = cache_keyword(model)
    assert name == cache_keyword(GPT2Model(model.config))  # the backbone takes the same name
    import inspect

    assert name in inspect.signature(type(model).forward).parameters
    assert cache_keyword(Wrapper()) == name
    before, after = object(), object()
    assert returned_cache(SimpleNamespace(past_key_values=before)) is before
    assert returned_cache(SimpleNamespace(cache=after, past_key_values=before)) is after
    # a real forward: the cache it returns feeds the next step under that name, without a warning
    ids = torch.tensor([[1, 2, 3]])
    out = model(input_ids=ids, use_cache=True)
    step = model(input_ids=torch.tensor([[4]]), use_cache=True, **{name: returned_cache(out)})
    full = model(input_ids=torch.tensor([[1, 2, 3, 4]])).logits[:, -1]
    torch.testing.assert_close(step.logits[:, -1], full, atol=1e-5, rtol=1e-5)
