"""Making tasks by sampling answers from two tiny random GPT-2 models (built and saved
here with a tokenizer trained by ``tokenizers``; nothing is downloaded)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from annotate_helpers import sql
from conftest import make_model

from rlxf.config import load_config
from rlxf.errors import ConfigError
from rlxf.feedback.human import importer
from rlxf.feedback.human.store import open_store

PROMPTS = ["question : what color is the fox ? answer :", "say hello to tom .",
           "two plus three is", "question : where does the owl live ? answer :"]


@pytest.fixture
def one_thread():
    """Tiny models run ~30x faster on one thread than on two contended cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_generated_answers_become_tasks_naming_their_models(tmp_path, tokenizer, one_thread):
    models = []
    for seed in (0, 1):
        folder = tmp_path / f"gpt2-{seed}"
        make_model("gpt2", len(tokenizer), seed=seed).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        models.append(str(folder))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    db = f"sqlite:///{tmp_path / 'gen.db'}"
    cfg = load_config(importer.Config, None, [
        f"database={db}", f"generate.models=[{models[0]},{models[1]}]",
        f"generate.prompts={prompts}", "generate.answers_per_prompt=3",
        "generate.max_new_tokens=12", "seed=5"])
    summary = importer.run(cfg)

    rows = sql(open_store(db), "SELECT prompt, answers, meta FROM tasks")
    tasks = [(json.loads(p), json.loads(a), json.loads(m)["models"]) for p, a, m in rows]
    assert summary["added"] == len(tasks) and summary["added"] + summary["skipped_rows"] == 4
    assert len(tasks) >= 3  # random 12-token samples from a 400-token vocabulary differ
    for prompt, answers, names in tasks:
        assert prompt in PROMPTS and len(answers) == len(names) >= 2
        assert len({a.strip() for a in answers}) == len(answers) and all(a.strip() for a in answers)
        # K = 3 answers in turn from 2 models: model 0 gives two, model 1 one.
        counts = Counter(names)
        assert counts[models[0]] <= 2 and counts[models[1]] <= 1

    # The model named for an answer really wrote it: model 1's only turn uses seed
    # 5 + 1000 * 1 + 0, so sampling again with that seed gives the same answers.
    from rlxf.models.generation import generate
    from rlxf.models.loading import ModelConfig, load_causal_lm, load_tokenizer

    again = generate(load_causal_lm(ModelConfig(name_or_path=models[1])),
                     load_tokenizer(models[1], padding_side="left"), PROMPTS,
                     max_new_tokens=12, batch_size=16, seed=1005)
    by_prompt = {g.prompt: g.text for g in again}
    for prompt, answers, names in tasks:
        if models[1] in names:
            assert answers[names.index(models[1])] == by_prompt[prompt]


def test_generate_limit_samples_for_the_first_prompts_only(tmp_path, tokenizer, one_thread):
    folder = tmp_path / "gpt2"
    make_model("gpt2", len(tokenizer), seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    db = f"sqlite:///{tmp_path / 'gen.db'}"
    summary = importer.run(load_config(importer.Config, None, [
        f"database={db}", f"generate.models=[{folder}]", f"generate.prompts={prompts}", "generate.limit=2",
        "generate.max_new_tokens=12"]))
    asked = {json.loads(p) for (p,) in sql(open_store(db), "SELECT prompt FROM tasks")}
    assert summary["added"] + summary["skipped_rows"] == 2 and asked <= set(PROMPTS[:2])
    with pytest.raises(ConfigError, match="generate.limit must be >= 1"):
        load_config(importer.Config, None, [f"generate.models=[{folder}]", f"generate.prompts={prompts}",
                                            "generate.limit=0"])
