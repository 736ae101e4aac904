"""The SFT stage end to end on a tiny model: learning, the run directory, LoRA, packing, resume."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from conftest import demo_rows, kill_and_resume, write_jsonl

from rlxf.config import load_config
from rlxf.errors import ConfigError, DataError
from rlxf.models.loading import keeps_logits
from rlxf.stages import sft


def _config(tmp_path, model_dir, *overrides: str) -> sft.Config:
    data = write_jsonl(tmp_path / "demos.jsonl", demo_rows(64))
    base = [f"model.name_or_path={model_dir}", f"data.train={data}", f"out={tmp_path / 'run'}",
            "lr=1e-2", "max_steps=80", "batch_size=8", "progress=false", "eval_every=40", "save_every=20"]
    return load_config(sft.Config, None, base + list(overrides))


def test_sft_learns_and_leaves_a_complete_run_directory(tmp_path, tiny_model_dir):
    summary = sft.run(_config(tmp_path, tiny_model_dir))
    out = tmp_path / "run"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(10, 81, 10))
    assert rows[-1]["loss"] < 0.7 * rows[0]["loss"], rows  # learning happened
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    assert len(evals) == 2 and evals[-1] < evals[0]
    assert (out / "config.yaml").exists() and (out / "summary.json").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000060", "step-000080"]
    assert summary["final_eval_loss"] == evals[-1]

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out / "final")
    tok = AutoTokenizer.from_pretrained(out / "final")
    ids = tok("question : what color is the fox ? answer :", return_tensors="pt")["input_ids"]
    seq = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert seq.shape[1] > ids.shape[1]
    # the model learnt the answer pattern "the <animal> is ..."
    assert tok.decode(seq[0, ids.shape[1]:]).startswith(" the fox is")


def test_finished_run_is_not_trained_again_and_changed_config_is_refused(tmp_path, tiny_model_dir):
    first = sft.run(_config(tmp_path, tiny_model_dir, "max_steps=5"))
    assert sft.run(_config(tmp_path, tiny_model_dir, "max_steps=5")) == first
    with pytest.raises(ConfigError, match=r"different config \(lr changed\)"):
        sft.run(_config(tmp_path, tiny_model_dir, "max_steps=5", "lr=1e-3"))


def test_lora_trains_only_the_adapter_and_saves_a_plain_model(tmp_path, tiny_model_dir):
    summary = sft.run(_config(tmp_path, tiny_model_dir, "model.lora.enabled=true", "model.lora.r=8",
                              "lr=1e-2", "max_steps=30", "save_every=10"))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"]
    from safetensors.torch import load_file

    ckpt = load_file(str(tmp_path / "run" / "checkpoints" / "step-000030" / "trainable.safetensors"))
    assert ckpt and all("lora_" in k for k in ckpt)  # only adapter weights are trainable
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(summary["final"]) is not None


def test_packing_trains(tmp_path, tiny_model_dir):
    sft.run(_config(tmp_path, tiny_model_dir, "data.packing=true", "data.max_length=128", "max_steps=20",
                    "eval_every=10", "batch_size=2"))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"]


def test_summary_counts_demonstrations_and_packed_sequences_apart(tmp_path, tiny_model_dir):
    row = demo_rows(1)[0]  # 16 tokens: 10 of prompt, 5 of answer and EOS
    train, held = write_jsonl(tmp_path / "train.jsonl", [row] * 14), write_jsonl(tmp_path / "held.jsonl", [row] * 4)
    common = [f"data.train={train}", f"data.eval={held}", "max_steps=1", "batch_size=2"]
    keys = ("train_examples", "eval_examples", "train_sequences", "eval_sequences")
    packed = sft.run(_config(tmp_path, tiny_model_dir, *common, "data.packing=true", "data.max_length=48",
                             f"out={tmp_path / 'packed'}"))
    # 48 tokens hold 3 demonstrations: 14 in 3 + 3 + 3 + 3 + 2, the 4 held out in 3 + 1
    assert [packed[k] for k in keys] == [14, 4, 5, 2]
    plain = sft.run(_config(tmp_path, tiny_model_dir, *common, "data.max_length=48", f"out={tmp_path / 'plain'}"))
    assert [plain[k] for k in keys] == [14, 4, 14, 4]


def test_bad_row_stops_before_training(tmp_path, tiny_model_dir):
    rows = demo_rows(8)
    rows[5] = {"prompt": "question : what ?", "completion": ""}
    write_jsonl(tmp_path / "bad.jsonl", rows)
    cfg = _config(tmp_path, tiny_model_dir, f"data.train={tmp_path / 'bad.jsonl'}")
    with pytest.raises(DataError, match=r"bad.jsonl:6: field 'completion'"):
        sft.run(cfg)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def _final_weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "final" / "model.safetensors"))


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tmp_path, tiny_model_dir):
    """SIGKILL mid-run, re-run the same command: same metrics, same final weights."""
    data = write_jsonl(tmp_path / "demos.jsonl", demo_rows(64))
    args = [f"model.name_or_path={tiny_model_dir}", f"data.train={data}", "lr=3e-3", "max_steps=60",
            "batch_size=4", "grad_accum=2", "log_every=5", "save_every=5", "progress=false", "eval_every=20"]
    cmd = [sys.executable, "-m", "rlxf.cli", "sft", *args]
    summary = kill_and_resume(cmd, tmp_path, checkpoint=15)
    assert 15 <= summary["resumed_from_step"] < 60
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert summary["final_train_loss"] == whole["final_train_loss"]
    assert summary["final_eval_loss"] == whole["final_eval_loss"]
    assert (tmp_path / "killed" / "metrics.jsonl").read_text() == (tmp_path / "whole" / "metrics.jsonl").read_text()
    a, b = _final_weights(tmp_path / "whole"), _final_weights(tmp_path / "killed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # checkpoints carry the seconds trained so far, which a resumed run starts its clock from
    state = torch.load(tmp_path / "killed" / "checkpoints" / "step-000060" / "state.pt", weights_only=True)
    assert summary["seconds"] >= state["extra"]["seconds"] > 0


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_loss_from_answer_positions_only_equals_the_full_logits_loss(tokenizer, arch):
    """The LM head runs only where an answer token is predicted; the loss must not change."""
    from conftest import make_model

    from rlxf.data.records import Demonstration
    from rlxf.data.tokenize import IGNORE, collate, pack, tokenize_demonstrations

    model = make_model(arch, len(tokenizer)).eval()
    demos = [Demonstration(f"question : what color is the {a} ? answer :", f"the {a} is {c} .")
             for a, c in [("fox", "red"), ("owl", "blue"), ("bear", "brown"), ("cat", "black")]]
    exs = tokenize_demonstrations(demos, tokenizer, max_length=64)
    assert keeps_logits(model)
    for batch in (collate(exs, tokenizer.pad_token_id), collate(pack(exs, 64), tokenizer.pad_token_id, packed=True)):
        with torch.no_grad():
            fast, n = sft._token_nll(model, dict(batch), "cpu")
            labels = batch.pop("labels")
            logits = model(**batch, use_cache=False).logits[:, :-1]
        full = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                                                 ignore_index=IGNORE, reduction="sum")
        assert n == int((labels[:, 1:] != IGNORE).sum()) > 0
        torch.testing.assert_close(fast, full, atol=1e-4, rtol=1e-5)


def test_run_resumed_after_its_last_checkpoint_keeps_the_final_eval_loss(tmp_path, tiny_model_dir):
    """Killed after the last checkpoint, before final/ and summary.json: the re-run has no step
    left to evaluate at, and its summary is still the uninterrupted run's."""
    import shutil

    cfg = _config(tmp_path, tiny_model_dir, "max_steps=4", "eval_every=2", "save_every=2")
    whole = sft.run(cfg)
    assert whole["final_eval_loss"] is not None
    (tmp_path / "run" / "summary.json").unlink()
    shutil.rmtree(tmp_path / "run" / "final")
    resumed = sft.run(cfg)
    assert resumed["resumed_from_step"] == 4
    drop = lambda s: {k: v for k, v in s.items() if k not in ("seconds", "resumed_from_step")}  # noqa: E731
    assert drop(resumed) == drop(whole)


def test_n_targets_counts_the_tokens_the_loss_predicts():
    from rlxf.data.tokenize import IGNORE, Example, n_targets

    # a text chunk: its first token has nothing before it, so 4 tokens are 3 targets
    assert n_targets(Example([5, 6, 7, 8], [5, 6, 7, 8])) == 3
    # a demonstration: 2 prompt tokens (IGNORE), 3 answer tokens, all 3 predicted
    assert n_targets(Example([5, 6, 7, 8, 9], [IGNORE, IGNORE, 7, 8, 9])) == 3


def test_loss_on_plain_text_is_the_mean_over_predicted_tokens(tmp_path, tokenizer):
    """One text chunk of n tokens holds n - 1 targets; the logged loss is their mean NLL."""
    from conftest import make_model

    model = make_model("llama", len(tokenizer)).eval()  # no dropout: training and eval forwards agree
    model.save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    text = "the fox is red . the owl lives in the forest ."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]  # 14 tokens
    data = write_jsonl(tmp_path / "text.jsonl", [{"text": text}])
    sft.run(_config(tmp_path, tmp_path / "llama", f"data.train={data}", f"data.max_length={len(ids)}",
                    "max_steps=1", "batch_size=1", "data.eval_fraction=0", "log_every=1"))
    [row] = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1], -1)  # (13, V): predicts tokens 1..13
    nll = -logp.gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1)  # (13,)
    assert row["tokens"] == len(ids) - 1 == 13
    assert row["loss"] == pytest.approx(nll.mean().item(), rel=1e-5)  # not nll.sum() / 14, 1/14 lower


def test_skipped_rows_are_counted_in_the_summary(tmp_path, tiny_model_dir):
    rows = demo_rows(16)
    rows[3] = {"prompt": "question : what ?", "completion": ""}
    rows[7] = {"prompt": "question : what ?"}
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    summary = sft.run(_config(tmp_path, tiny_model_dir, f"data.train={data}", "data.skip_bad_rows=true",
                              "max_steps=1"))
    assert summary["skipped_rows"] == 2
    assert summary["train_examples"] + summary["eval_examples"] == 14


def test_data_split_picks_the_training_split_and_the_eval_file_is_read_as_given(tmp_path, tiny_model_dir):
    import datasets

    rows = demo_rows(16)
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:12]),
                          "test": datasets.Dataset.from_list(rows[12:])}).save_to_disk(str(tmp_path / "dd"))
    held = write_jsonl(tmp_path / "held.jsonl", rows[12:])
    for i, evals in enumerate((held, f"{tmp_path / 'dd'}:test")):  # a plain file, or the folder's other split
        out = tmp_path / f"run-{i}"
        summary = sft.run(_config(tmp_path, tiny_model_dir, f"data.train={tmp_path / 'dd'}", "data.split=train",
                                  f"data.eval={evals}", "max_steps=2", "eval_every=2", "save_every=2", f"out={out}"))
        assert summary["final_eval_loss"] is not None


def test_conversations_need_a_chat_template_and_the_error_names_the_key(tmp_path, tiny_model_dir):
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"prompt": [{"role": "user", "content": "hi"}], "completion": "yo"}])
    with pytest.raises(ConfigError, match=r"data.train: .* has no chat template; .*\(model.tokenizer=\.\.\.\)"):
        sft.run(_config(tmp_path, tiny_model_dir, f"data.train={chat}"))


def test_the_logged_learning_rate_is_the_one_each_step_used(tmp_path, tiny_model_dir):
    """A linear schedule over 4 steps from 1e-2 without warm-up steps at 1e-2, 7.5e-3, 5e-3
    and 2.5e-3; each row logs its own step's rate, not the next one's (the last is not 0)."""
    from rlxf.runs import read_metrics_rows

    sft.run(_config(tmp_path, tiny_model_dir, "max_steps=4", "log_every=1", "warmup_steps=0", "lr_schedule=linear",
                    "eval_every=null", "save_every=100"))
    rates = [row["lr"] for row in read_metrics_rows(tmp_path / "run" / "metrics.jsonl") if "lr" in row]
    assert rates == pytest.approx([1e-2, 7.5e-3, 5e-3, 2.5e-3])
