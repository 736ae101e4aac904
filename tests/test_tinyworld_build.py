"""Building Tinyworld's tokenizer and base model; the shipped base model matches its recipe."""

from __future__ import annotations

import json

import pytest
import yaml

from rlxf.config import from_dict, to_dict
from rlxf.errors import ConfigError
from rlxf.tinyworld import build
from rlxf.tinyworld.world import VOCABULARY


def test_small_build_end_to_end_and_reuse(tmp_path):
    cfg = from_dict(build.Config, {
        "out": str(tmp_path / "tw"), "n_pretrain": 400, "n_sft_train": 20, "n_sft_eval": 5, "n_prompts_train": 20,
        "n_prompts_heldout": 10, "vocab_size": 400, "n_layer": 1, "n_embd": 32, "n_head": 2, "steps": 30,
        "batch_size": 8, "lr": 1e-2, "progress": False})
    first = build.run(cfg)
    files = build.paths(cfg.out)
    assert all(p.exists() for p in files.values())
    rows = [json.loads(line) for line in (tmp_path / "tw" / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    assert len(evals) >= 4 and evals[-1] < 0.8 * evals[0], evals  # pre-training learnt something
    # build.json records the precision that ran: auto resolved for this machine
    ran = {**to_dict(cfg), "mixed_precision": build._precision(cfg.mixed_precision, tmp_path / "tw" / "pretrain")}
    assert yaml.safe_load((files["base"] / "build.json").read_text()) == ran

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(files["base"])
    text = " ".join(sorted(VOCABULARY))
    assert tok.decode(tok(text)["input_ids"]) == text  # byte-level BPE: every world word round-trips
    assert AutoModelForCausalLM.from_pretrained(files["base"]).config.n_layer == 1
    again = build.run(cfg)  # a finished build is reused, not redone
    assert again["pretrain_eval_loss"] == first["pretrain_eval_loss"]
    assert again["seconds"] < first["seconds"]
    # reopened where auto resolves the other way (bf16 native there, or not): reused as it ran, not refused
    from rlxf import training

    native = training.cpu_native_bf16()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training, "cpu_native_bf16", lambda: not native)
        elsewhere = build.run(cfg)
    assert elsewhere["pretrain_eval_loss"] == first["pretrain_eval_loss"]


def test_reply_share_reaches_the_corpus(tmp_path):
    cfg = from_dict(build.Config, {"out": str(tmp_path / "tw"), "n_pretrain": 200, "reply_share": 1.0})
    data = build.write_data(cfg, tmp_path / "tw")
    texts = [json.loads(line)["text"] for line in (data / "pretrain.jsonl").read_text().splitlines()]
    assert sum("reply : that is" in t for t in texts) > 50
    held_out = (data / "pretrain_heldout.jsonl").read_text()
    assert "reply :" not in held_out  # the LM-loss yardstick of PPO-ptx stays the plain corpus
    assert len(held_out.splitlines()) == 20  # a tenth of a small corpus, not more documents than it has
    assert build.heldout_documents(100_000) == 500 and build.heldout_documents(3) == 1
    with pytest.raises(ConfigError, match="reply_share"):
        from_dict(build.Config, {"reply_share": 1.5})


def test_claim_and_terse_shares_reach_the_data(tmp_path):
    def rows(data, stem):
        return [json.loads(line) for line in (data / f"{stem}.jsonl").read_text().splitlines()]

    cfg = from_dict(build.Config, {"out": str(tmp_path / "tw"), "n_pretrain": 400, "reply_share": 0.0,
                                   "claim_share": 1.0, "terse_share": 1.0, "n_sft_train": 100})
    data = build.write_data(cfg, tmp_path / "tw")
    claims = [r for r in rows(data, "pretrain") if "reply : that is" in r["text"]]  # no replies to answers here
    assert 90 < len(claims) < 150  # every fact document (30% of 400) is one
    plain = build.write_data(from_dict(build.Config, {"n_pretrain": 400, "n_sft_train": 100}), tmp_path / "plain")
    terse, good = rows(data, "sft_train"), rows(plain, "sft_train")
    assert sum(len(r["completion"].split()) for r in terse) < 0.7 * sum(len(r["completion"].split()) for r in good)
    for key in ("claim_share", "terse_share"):
        with pytest.raises(ConfigError, match=key):
            from_dict(build.Config, {key: -0.1})


def test_shipped_base_model_was_built_by_the_default_recipe():
    recipe = yaml.safe_load((build.SHIPPED / "build.json").read_text())
    defaults = to_dict(build.Config())
    # built where bf16 is native, which the default mixed_precision=auto resolves to bf16
    assert recipe["mixed_precision"] == "bf16" and defaults["mixed_precision"] == "auto"
    ignored = ("out", "progress", "mixed_precision")
    assert {k: v for k, v in recipe.items() if k not in ignored} == \
           {k: v for k, v in defaults.items() if k not in ignored}
    assert (build.SHIPPED / "model.safetensors").stat().st_size < 8_000_000
    assert not list(build.SHIPPED.glob("*.bin")) and not list(build.SHIPPED.glob("*.pt"))
