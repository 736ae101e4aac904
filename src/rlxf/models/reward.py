"""Reward models: a causal LM with a scalar head, read at the answer's last token.

A reward model is ``AutoModelForSequenceClassification`` with ``num_labels=1`` built
from a causal-LM checkpoint: the backbone's weights are loaded and a new linear
``score`` head maps each position's last hidden state to a number. The reward of
``prompt + separator + answer + EOS`` is that number at the last real token
(InstructGPT §3.5: "a scalar reward" from the final token). Where the tokenizer pads
with its EOS token (rlxf's choice for one without a pad token), the input ends at the
answer's last token instead: plain ``transformers`` reads the score at the last token
that is not padding, and would take an ending EOS for padding.

Normalisation (InstructGPT §3.5: "we normalize the reward model using a bias so that
the labeler demonstrations achieve a mean score of 0") is stored in the saved
``config.json`` as ``rlxf_reward_normalization = {"shift", "scale", "reference"}``.
:func:`score` and :func:`score_texts` return ``(raw - shift) / scale``; plain
``transformers`` loads the same checkpoint and its ``.logits`` are the *raw* scores.

The PPO stage relies on this module's names: :func:`init_reward_model`,
:func:`load_reward_model`, :func:`reward_inputs`, :func:`score`, :func:`score_texts`,
:func:`token_values` (the raw per-token head output, to initialise a value function).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from rlxf.data.records import Prompt
from rlxf.data.tokenize import encode_pair
from rlxf.errors import ConfigError
from rlxf.models.loading import (LoraConfig, ModelConfig, _torch_dtype, base_model, cache_keyword, checkpoint,
                                 disable_dropout, fuse_gelu, load_model_tokenizer, max_positions, peft_model,
                                 returned_cache)

NORMALIZATION_KEY = "rlxf_reward_normalization"


# ----------------------------------------------------------------------------- building and loading

def init_reward_model(cfg: ModelConfig):
    """A reward model from the causal LM (or reward model) at ``cfg.name_or_path``.

    A new ``score`` head is drawn from N(0, 1/sqrt(hidden_size + 1)) with zero bias
    (Huang et al. 2024, "The N implementation details of RLHF with PPO", detail 5:
    the output starts near 0 whatever the backbone). A checkpoint that already has a
    ``score`` head (an earlier reward model) keeps it but loses its normalisation,
    which training would make stale. Dropout is off; ``config.pad_token_id`` is the
    tokenizer's.
    """
    from transformers import AutoModelForSequenceClassification

    tokenizer = load_model_tokenizer(cfg)
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            checkpoint(cfg.name_or_path, "model"), num_labels=1, dtype=_torch_dtype(cfg.dtype), revision=cfg.revision,
            trust_remote_code=cfg.trust_remote_code, output_loading_info=True, use_safetensors=True)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot build a reward model from '{cfg.name_or_path}': {err}") from None
    head = _head(model)
    if any(key.startswith("score.") for key in info["missing_keys"]):
        with torch.no_grad():
            head.weight.normal_(0.0, 1.0 / math.sqrt(model.config.hidden_size + 1))
            if head.bias is not None:
                head.bias.zero_()
    if hasattr(model.config, NORMALIZATION_KEY):
        delattr(model.config, NORMALIZATION_KEY)
    model.config.pad_token_id = tokenizer.pad_token_id
    disable_dropout(model)
    return fuse_gelu(model)


def load_reward_model(path: str | Path, *, dtype: str = "float32", trust_remote_code: bool = False):
    """A trained reward model, in eval mode, dropout off; :func:`score` applies its normalisation."""
    from transformers import AutoModelForSequenceClassification

    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            checkpoint(str(path), "model"), dtype=_torch_dtype(dtype), trust_remote_code=trust_remote_code,
            use_safetensors=True)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load a reward model from '{path}': {err}") from None
    _one_output(model.config, path)
    _head(model)
    disable_dropout(model)
    return fuse_gelu(model).eval()


def check_reward_model(path: str | Path, *, trust_remote_code: bool = False) -> None:
    """Refuse, from its config alone (no weights loaded), a checkpoint that is no reward
    model: what a command checks before hours of sampling would end in the error."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(checkpoint(str(path), "model"), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load a reward model from '{path}': {err}") from None
    _one_output(config, path)


def _one_output(config, path) -> None:
    if config.num_labels != 1:
        raise ConfigError(f"'{path}' has {config.num_labels} output labels; a reward model has 1 (a causal LM is no "
                          "reward model: train one with rlxf reward)")


def add_reward_lora(model, lora: LoraConfig):
    """Wrap ``model`` with a LoRA adapter; the ``score`` head stays fully trainable (and is saved)."""
    return peft_model(model, lora, task_type="SEQ_CLS", modules_to_save=["score"])


# ----------------------------------------------------------------------------- normalisation

def reward_normalization(model) -> tuple[float, float]:
    """``(shift, scale)`` that :func:`score` applies; ``(0.0, 1.0)`` for an unnormalised model."""
    norm = getattr(base_model(model).config, NORMALIZATION_KEY, None) or {}
    return float(norm.get("shift", 0.0)), float(norm.get("scale", 1.0))


def set_reward_normalization(model, shift: float, scale: float = 1.0, reference: str = "") -> None:
    """Store the normalisation in the model's config (so ``save_pretrained`` writes it)."""
    if not (math.isfinite(shift) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"normalisation needs a finite shift and a positive scale, got {shift}, {scale}")
    setattr(base_model(model).config, NORMALIZATION_KEY,
            {"shift": float(shift), "scale": float(scale), "reference": reference})


# ----------------------------------------------------------------------------- inputs

def encode_answer(prompt: Prompt, answer: str, tokenizer, *, separator: str = " ", max_length: int = 512,
                  ended: bool = True) -> tuple[list[int], bool]:
    """Token ids of ``prompt + separator + answer (+ EOS if ended)``, and whether they
    were cut (:func:`encode_answers` of one answer)."""
    ids, cut = encode_answers(prompt, [answer], tokenizer, separator=separator, max_length=max_length,
                              ended=[ended])
    return ids[0], bool(cut)


def encode_answers(prompt: Prompt, answers: list[str], tokenizer, *, separator: str = " ",
                   max_length: int = 512, ended: list[bool] | None = None) -> tuple[list[list[int]], int]:
    """Token ids of ``prompt + separator + answer (+ EOS if ended)`` for each answer to
    one prompt, and how many of them were cut.

    Too long: the prompt loses tokens from its start, the same number for every answer
    (answers are compared in the same context), as many as the longest answer needs;
    then each answer loses tokens from its end (a cut answer keeps no EOS: it did not
    end within ``max_length``). A tokenizer that pads with EOS gets no EOS at the end
    (see the module's doc), so every reader of the saved model scores the same token.
    """
    ended = [True] * len(answers) if ended is None else ended
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        ended = [False] * len(answers)
    pairs = [encode_pair(prompt, a, tokenizer, separator) for a in answers]  # the same prompt ids in each
    prompt_ids = pairs[0][0] if pairs else []
    answer_ids = [a if e else a[:-1] for (_, a), e in zip(pairs, ended)]
    longest = max((len(a) for a in answer_ids), default=0)
    if len(prompt_ids) + longest <= max_length:
        return [prompt_ids + a for a in answer_ids], 0
    keep = max(0, max_length - longest)
    kept = prompt_ids[len(prompt_ids) - keep:] if keep else []
    seqs = [(kept + a)[:max_length] for a in answer_ids]
    return seqs, sum(len(s) < len(prompt_ids) + len(a) for s, a in zip(seqs, answer_ids))


def pad_right(sequences: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask``, both (B, T), right-padded with ``pad_id``."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)  # (B, T)
    for i, s in enumerate(sequences):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def shared_length(seqs: list[list[int]]) -> int:
    """How many leading tokens all of ``seqs`` share, leaving at least one to each."""
    shared = 0
    while all(len(s) > shared + 1 for s in seqs) and len({s[shared] for s in seqs}) == 1:
        shared += 1
    return shared


def shared_prefix_batch(groups: list[list[list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """The inputs of :func:`shared_prefix_values` for groups of token sequences.

    Each group's prefix is the longest run of tokens all its sequences start with (at
    least one token of every sequence is left to its suffix). Returns ``prefix_ids`` and
    ``prefix_mask`` (G, P) left-padded, ``suffix_ids`` and ``suffix_mask`` (N, S)
    right-padded, in group order, and ``owner`` (N,): each suffix's group.
    """
    prefixes, suffixes, owner = [], [], []
    for g, seqs in enumerate(groups):
        shared = shared_length(seqs)
        prefixes.append(seqs[0][:shared])
        suffixes += [s[shared:] for s in seqs]
        owner += [g] * len(seqs)
    width = max(len(p) for p in prefixes)
    prefix_ids = torch.full((len(prefixes), width), pad_id, dtype=torch.long)  # (G, P)
    prefix_mask = torch.zeros((len(prefixes), width), dtype=torch.long)  # (G, P)
    for i, p in enumerate(prefixes):
        if p:
            prefix_ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            prefix_mask[i, width - len(p):] = 1
    right = pad_right(suffixes, pad_id)
    return {"prefix_ids": prefix_ids, "prefix_mask": prefix_mask, "suffix_ids": right["input_ids"],
            "suffix_mask": right["attention_mask"], "owner": torch.tensor(owner, dtype=torch.long)}


def reward_inputs(prompts: list[Prompt], answers: list[str], tokenizer, separator: str = " ",
                  max_length: int = 512, ended: list[bool] | None = None) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``attention_mask`` (B, T) for scoring ``answers`` to ``prompts``.

    Each row is ``prompt + separator + answer + EOS`` as in training
    (:func:`rlxf.data.tokenize.encode_pair`); an answer with ``ended[i] = False`` (the
    policy never emitted EOS) gets no EOS, so the model sees that it did not end.
    """
    if len(prompts) != len(answers) or (ended is not None and len(ended) != len(answers)):
        raise ValueError("prompts, answers (and ended) must have the same length")
    ended = [True] * len(answers) if ended is None else ended
    seqs = [encode_answer(p, a, tokenizer, separator=separator, max_length=max_length, ended=e)[0]
            for p, a, e in zip(prompts, answers, ended)]
    return pad_right(seqs, tokenizer.pad_token_id)


# ----------------------------------------------------------------------------- scoring

def token_values(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, return_hidden: bool = False):
    """The raw ``score`` head over the backbone's last hidden states: (B, T); with
    ``return_hidden``, also those hidden states (B, T, H).

    Positions follow the attention mask (``cumsum - 1``), so a left-padded row gets the
    same values at its real tokens as the same row right-padded. Values at padding
    positions are meaningless. PPO initialises its value function from these.
    """
    hf = base_model(model)
    backbone = getattr(hf, hf.base_model_prefix)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      use_cache=False).last_hidden_state  # (B, T, H)
    values = _head(hf)(hidden).squeeze(-1).float()  # (B, T)
    return (values, hidden) if return_hidden else values


def shared_prefix_values(model, prefix_ids: torch.Tensor, prefix_mask: torch.Tensor, suffix_ids: torch.Tensor,
                         suffix_mask: torch.Tensor, owner: torch.Tensor, *, return_hidden: bool = False):
    """:func:`token_values` of sequences that share prefixes, each prefix run once: (N, S).

    ``prefix_*``: (G, P), left-padded; ``suffix_*``: (N, S), right-padded; ``owner``:
    (N,), the prefix row of each suffix. Row n holds the values of
    ``prefix[owner[n]] + suffix[n]`` at the suffix's positions: the prefix's keys and
    values are computed once and read by all of its suffixes (gradients flow back
    through them), so K answers to one prompt cost one prompt, not K. With
    ``return_hidden``, also the suffixes' hidden states (N, S, H).
    """
    if prefix_ids.shape[1] == 0:  # no group shares a token: nothing to run once
        return token_values(model, suffix_ids, suffix_mask, return_hidden=return_hidden)
    hf = base_model(model)
    backbone = getattr(hf, hf.base_model_prefix)
    prefix_pos = (prefix_mask.long().cumsum(-1) - 1).clamp(min=0)  # (G, P)
    cache = returned_cache(backbone(input_ids=prefix_ids, attention_mask=prefix_mask, position_ids=prefix_pos,
                                    use_cache=True))
    cache.reorder_cache(owner)  # every layer's keys and values: (G, ...) -> (N, ...)
    suffix_pos = prefix_mask.long().sum(-1)[owner, None] + suffix_mask.long().cumsum(-1) - 1  # (N, S)
    mask = torch.cat([prefix_mask[owner], suffix_mask], dim=1)  # (N, P + S)
    hidden = backbone(input_ids=suffix_ids, attention_mask=mask, position_ids=suffix_pos.clamp(min=0),
                      use_cache=True, **{cache_keyword(backbone): cache}).last_hidden_state  # (N, S, H)
    values = _head(hf)(hidden).squeeze(-1).float()  # (N, S)
    return (values, hidden) if return_hidden else values


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token, for left or right padding: (B,).

    Read from the mask, not from ``input_ids != pad_token_id`` (what the HF head
    does), which is wrong when the pad token is the EOS token that ends an answer.
    """
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)  # (T,)
    return (positions * attention_mask.long()).argmax(-1)  # (B,)


def raw_score(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The unnormalised reward at the last real token: (B,)."""
    values = token_values(model, input_ids, attention_mask)  # (B, T)
    last = last_token_index(attention_mask)  # (B,)
    return values.gather(1, last.unsqueeze(1)).squeeze(1)  # (B,)


def score(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The normalised reward ``(raw - shift) / scale`` at the last real token: (B,)."""
    shift, scale = reward_normalization(model)
    return (raw_score(model, input_ids, attention_mask) - shift) / scale


@torch.no_grad()
def score_texts(model, tokenizer, prompts: list[Prompt], answers: list[str], *, batch_size: int = 32,
                separator: str = " ", ended: list[bool] | None = None, max_length: int = 512) -> list[float]:
    """Normalised rewards of ``answers`` to ``prompts``, in order (batched, no gradients).

    A prompt and answer longer than ``max_length``, or than the model's positions, are
    read as :func:`reward_inputs` cuts them."""
    max_length = min(max_length, max_positions(model) or max_length)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[float] = []
    for start in range(0, len(answers), batch_size):
        end = start + batch_size
        batch = reward_inputs(prompts[start:end], answers[start:end], tokenizer, separator=separator,
                              max_length=max_length, ended=None if ended is None else ended[start:end])
        out += score(model, batch["input_ids"].to(device), batch["attention_mask"].to(device)).tolist()
    model.train(was_training)
    return out


# ----------------------------------------------------------------------------- internals

def _head(model):
    head = getattr(base_model(model), "score", None)
    if head is None:
        raise ConfigError(f"{type(base_model(model)).__name__} has no 'score' head; rlxf reward models are "
                          "decoder models loaded with AutoModelForSequenceClassification")
    return head
