"""Prompt/answer boundaries, truncation and packing."""

from __future__ import annotations

import torch
from conftest import make_model

from rlxf.data.records import Demonstration
from rlxf.data.tokenize import IGNORE, collate, encode_pair, pack, tokenize_demonstrations


def test_answer_tokens_are_those_of_running_text(tokenizer):
    prompt, answer = "question : what color is the fox ? answer :", "the fox is red ."
    p, a = encode_pair(prompt, answer, tokenizer, " ")
    joined = tokenizer(prompt + " " + answer, add_special_tokens=False)["input_ids"]
    assert p + a[:-1] == joined  # the split loses and adds nothing
    assert a[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(a[:-1]) == " the fox is red ."  # the answer starts with the separator's space


def test_labels_cover_only_the_answer(tokenizer):
    [ex] = tokenize_demonstrations([Demonstration("say hello to tom .", "hello tom !")], tokenizer, max_length=64)
    n_prompt = len(tokenizer("say hello to tom .")["input_ids"])
    assert ex.labels[:n_prompt] == [IGNORE] * n_prompt
    assert ex.labels[n_prompt:] == ex.input_ids[n_prompt:]


def test_truncation_keeps_the_answer_and_the_end_of_the_prompt(tokenizer):
    long_prompt = "the fox is red . " * 20 + "question : what color is the owl ? answer :"
    [ex] = tokenize_demonstrations([Demonstration(long_prompt, "the owl is blue .")], tokenizer, max_length=24)
    assert len(ex.input_ids) == 24
    assert tokenizer.decode([t for t in ex.labels if t != IGNORE]).startswith(" the owl is blue .")
    assert tokenizer.decode(ex.input_ids).split(" the owl is blue")[0].endswith("answer :")


def test_plain_text_is_chunked_not_cut(tokenizer):
    text = "the fox is red . " * 30
    exs = tokenize_demonstrations([Demonstration("", text.strip())], tokenizer, max_length=16)
    n = len(tokenizer(text.strip())["input_ids"]) + 1  # + EOS
    assert sum(len(e.input_ids) for e in exs) == n
    assert all(e.labels == e.input_ids for e in exs)


def test_packing_keeps_examples_whole_and_isolated(tokenizer):
    demos = [Demonstration(f"question : what color is the {a} ? answer :", f"the {a} is {c} .")
             for a, c in [("fox", "red"), ("owl", "blue"), ("bear", "brown"), ("cat", "black"), ("dog", "white")]]
    exs = tokenize_demonstrations(demos, tokenizer, max_length=64)
    packed = pack(exs, 64)
    assert len(packed) < len(exs)
    assert sorted(t for p in packed for t in p.input_ids) == sorted(t for e in exs for t in e.input_ids)
    assert all(len(p.input_ids) <= 64 for p in packed)
    # the packed loss equals the unpacked loss: documents do not see each other
    model = make_model("gpt2", len(tokenizer)).eval()

    def nll(batch):
        labels = batch.pop("labels")
        logits = model(**batch, use_cache=False).logits[:, :-1]
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                                                 ignore_index=IGNORE, reduction="sum")

    unpacked = nll(collate(exs, tokenizer.pad_token_id))
    packed_loss = nll(collate(packed, tokenizer.pad_token_id, packed=True))
    torch.testing.assert_close(packed_loss, unpacked, atol=1e-4, rtol=1e-5)


def test_a_text_chunk_without_a_target_is_left_out(tokenizer):
    """A chunk's first token is predicted by nothing: a text one token longer than a chunk
    would leave its EOS alone in a chunk with no target, which is not made."""
    text = "the fox is red . the owl lives in the forest ."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]  # 14 tokens
    exs = tokenize_demonstrations([Demonstration("", text)], tokenizer, max_length=13)
    assert [e.input_ids for e in exs] == [ids[:13]]  # not [ids[:13], ids[13:]] with ids[13:] == [EOS]
    exs = tokenize_demonstrations([Demonstration("", text)], tokenizer, max_length=12)
    assert [e.input_ids for e in exs] == [ids[:12], ids[12:]]  # the last chunk, 2 tokens, predicts its EOS


def test_the_warning_about_cut_examples_names_the_key_that_set_the_length(tokenizer, caplog):
    long_prompt = " ".join(["the fox is red ."] * 20)
    tokenize_demonstrations([Demonstration(long_prompt, "the owl is blue .")], tokenizer, max_length=24,
                            length_key="ptx.max_length")
    assert "1 of 1 examples were longer than ptx.max_length=24" in caplog.text
