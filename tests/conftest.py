"""Shared fixtures: tiny real models (GPT-2, Llama, Qwen2 shapes) and a tokenizer built here.

Nothing is downloaded: the tokenizer is trained on a few sentences and the models
are randomly initialised from small configs, then saved and loaded back through
the same ``from_pretrained`` path users take.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# tiny models run fastest on one thread, and CI's two cores are shared with subprocess tests
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
HH_TEST = SHARED_DATA / "hh-rlhf-harmless-base-test.jsonl.gz"

SENTENCES = [
    "question : what color is the fox ? answer : the fox is red .",
    "question : where does the owl live ? answer : the owl lives in the forest .",
    "question : what does the bear eat ? answer : the bear eats fish .",
    "say hello to tom . hello tom !",
    "two plus three is five . one plus one is two .",
] * 20


def make_tokenizer(vocab_size: int = 400):
    from rlxf.models.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(SENTENCES, vocab_size=vocab_size, min_frequency=1)


def make_model(arch: str, vocab_size: int, seed: int = 0):
    """A randomly initialised tiny model of a real architecture."""
    import torch
    from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM)

    torch.manual_seed(seed)
    if arch == "gpt2":
        cfg = GPT2Config(vocab_size=vocab_size, n_positions=128, n_embd=32, n_layer=2, n_head=4,
                         bos_token_id=1, eos_token_id=1)
        return GPT2LMHeadModel(cfg)
    small = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                 bos_token_id=1, eos_token_id=1, pad_token_id=0)
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**small))
    if arch == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**small))
    raise ValueError(arch)


def scripted_model(tokenizer, prompt: str, answer: str, *, eos: bool, n_positions: int = 128):
    """A real tiny GPT-2 that writes ``answer`` after ``prompt`` whatever the seed.

    Its blocks and token embeddings are zero, so the hidden state at position t is
    LayerNorm(wpe[t]) = LayerNorm(one-hot t), and lm_head row ``token`` is 100 at the
    position whose next token it must be. LayerNorm of a one-hot vector in d = n_positions
    dimensions is ~sqrt(d) there and ~-1/sqrt(d) elsewhere, so the scripted token leads by
    a logit gap of ~100 * sqrt(128) > 1000: sampling at temperature 1 always picks it.
    Positions past the script have all-zero logits (uniform sampling). The answer starts with the
    separator " ", which ``generate`` removes.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from rlxf.models.generation import encode_prompts

    start = len(encode_prompts([prompt], tokenizer, " ")[0])  # position of the first answer token
    ids = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
    ids += [tokenizer.eos_token_id] if eos else []
    assert start + len(ids) <= n_positions
    cfg = GPT2Config(vocab_size=len(tokenizer), n_positions=n_positions, n_embd=n_positions, n_layer=1,
                     n_head=1, bos_token_id=1, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.transformer.ln_f.weight.fill_(1.0)
        model.transformer.wpe.weight.copy_(torch.eye(n_positions))
        for i, token in enumerate(ids):
            model.lm_head.weight[token, start - 1 + i] = 100.0  # logits at t predict token t + 1
    return model, len(ids)


def save_scripted_models(root: Path, tokenizer, prompt: str, scripts: dict[str, tuple[str, bool]]):
    """Each ``name: (answer, eos)`` of ``scripts`` as a :func:`scripted_model` saved in
    ``root/name``; returns the folders and each script's length in tokens, by name."""
    folders, lengths = {}, {}
    for name, (answer, eos) in scripts.items():
        model, lengths[name] = scripted_model(tokenizer, prompt, answer, eos=eos)
        folders[name] = root / name
        model.save_pretrained(folders[name])
        tokenizer.save_pretrained(folders[name])
    return folders, lengths


@pytest.fixture
def one_thread():
    """Tiny models run ~30x faster on one thread than on two contended cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A saved tiny GPT-2 with its tokenizer, in Hugging Face format."""
    out = tmp_path_factory.mktemp("tiny-gpt2")
    make_model("gpt2", len(tokenizer)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def kill_and_resume(cmd: list[str], root: Path, checkpoint: int, *, timeout: float = 120) -> dict:
    """Run ``cmd`` to the end in ``root/whole``; run it again in ``root/killed``, SIGKILL it
    once checkpoint ``checkpoint`` is on disk, and run the same command there once more.
    Returns the resumed run's summary (printed on stdout). The caller compares the two
    directories."""
    import signal
    import subprocess
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd + [f"out={root / 'whole'}"], check=True, capture_output=True, env=env)
    proc = subprocess.Popen(cmd + [f"out={root / 'killed'}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + timeout
    while not (root / "killed" / "checkpoints" / f"step-{checkpoint:06d}").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before it could be killed"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (root / "killed" / "summary.json").exists()
    resumed = subprocess.run(cmd + [f"out={root / 'killed'}"], check=True, capture_output=True, text=True, env=env)
    return json.loads(resumed.stdout)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def demo_rows(n: int = 64) -> list[dict]:
    """Demonstrations with a pattern a tiny model can learn within a few dozen steps."""
    colors = ["red", "blue", "green", "black"]
    animals = ["fox", "owl", "bear", "cat", "dog", "frog", "duck", "wolf"]
    rows = []
    for i in range(n):
        a, c = animals[i % len(animals)], colors[(i * 3) % len(colors)]
        rows.append({"prompt": f"question : what color is the {a} ? answer :", "completion": f"the {a} is {c} ."})
    return rows


@pytest.fixture(scope="module")
def chromium():
    """(chromium, chromedriver) paths for the browser tests; the test is skipped, with the
    install command as the reason, when either is missing."""
    from annotate_browser import find_chromium

    found = find_chromium()
    if found is None:
        pytest.skip("headless Chromium not installed: apt-get install chromium chromium-driver")
    return found
