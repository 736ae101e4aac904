"""Loading and saving models the way users do: ``transformers`` from a path or hub id.

Everything goes through ``from_pretrained``/``save_pretrained`` so that what rlxf
writes loads with plain ``transformers`` and what a user trained elsewhere loads
in rlxf. Weights are safetensors only; ``trust_remote_code`` stays off unless the
config turns it on.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rlxf.errors import ConfigError

log = logging.getLogger("rlxf")

DType = Literal["float32", "bfloat16", "float16", "auto"]


@dataclass(kw_only=True)
class LoraConfig:
    enabled: bool = False
    """Train a LoRA adapter (peft) instead of all weights."""
    r: int = 8
    """LoRA rank."""
    alpha: int = 16
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = 0.0
    """Dropout on the LoRA input."""
    target_modules: list[str] | None = None
    """Module names to adapt; null adapts every linear layer ('all-linear')."""

    def validate(self) -> None:
        if self.r < 1:
            raise ConfigError(f"lora.r must be ≥ 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if self.target_modules is not None and not self.target_modules:
            raise ConfigError("lora.target_modules is an empty list; name modules (e.g. [q_proj,v_proj]) or "
                              "leave it null for every linear layer")
        if self.target_modules is not None and "all-linear" in self.target_modules:
            raise ConfigError("lora.target_modules: leave it null (not all-linear) to adapt every linear layer")


@dataclass(kw_only=True)
class ModelConfig:
    name_or_path: str
    """A local directory in Hugging Face format, or a hub id (needs the network)."""
    tokenizer: str | None = None
    """Tokenizer path or id; null uses name_or_path."""
    dtype: DType = "float32"
    """Weight dtype. float32 is exact on CPU; bfloat16 halves memory on GPUs."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) to load."""
    trust_remote_code: bool = False
    """Run model code shipped with the checkpoint. Off by default: it executes arbitrary Python."""
    attn_implementation: str | None = None
    """Attention kernels: 'eager', 'sdpa', 'flash_attention_2', ... null lets rlxf choose:
    eager under mixed_precision=bf16 on CPU (PyTorch's SDPA is the slower one there),
    else transformers' default (sdpa)."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """Parameter-efficient fine-tuning with LoRA."""


def _torch_dtype(name: DType):
    import torch

    return "auto" if name == "auto" else getattr(torch, name)


def load_tokenizer(name_or_path: str, *, revision: str | None = None, trust_remote_code: bool = False,
                   padding_side: Literal["left", "right"] = "right"):
    """A tokenizer with a pad token (the EOS token when the checkpoint has none)."""
    from transformers import AutoTokenizer

    name_or_path = checkpoint(name_or_path, "tokenizer", revision=revision)
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load a tokenizer from '{name_or_path}': {_where(name_or_path)}{err}") from None
    if tok.eos_token is None:
        raise ConfigError(f"the tokenizer at '{name_or_path}' has no EOS token; rlxf needs one to end answers")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def load_model_tokenizer(cfg: ModelConfig, *, padding_side: Literal["left", "right"] = "right"):
    """The tokenizer that goes with ``cfg``'s model (``cfg.tokenizer`` when set). The model
    is checked first, so a wrong ``name_or_path`` is reported as the model's, not the tokenizer's."""
    if cfg.tokenizer is None:
        checkpoint(cfg.name_or_path, "model", revision=cfg.revision)
    return load_tokenizer(cfg.tokenizer or cfg.name_or_path, revision=cfg.revision,
                          trust_remote_code=cfg.trust_remote_code, padding_side=padding_side)


def load_causal_lm(cfg: ModelConfig, *, path: str | None = None):
    """The causal LM of ``cfg`` (or the one at ``path``, with ``cfg``'s dtype and trust settings)."""
    from transformers import AutoModelForCausalLM

    name = checkpoint(path or cfg.name_or_path, "model", revision=None if path else cfg.revision)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name, dtype=_torch_dtype(cfg.dtype), revision=None if path else cfg.revision,
            trust_remote_code=cfg.trust_remote_code, use_safetensors=True)
    except OSError as err:
        raise ConfigError(f"cannot load a causal LM from '{name}': {_where(name)}{err}") from None
    return fuse_gelu(model)


def fingerprint(name_or_path: str, revision: str | None = None, _depth: int = 0) -> str:
    """What identifies a model's weights: for a local folder, a hash of its weight and
    config files' names, sizes and modification times (so a model trained again into the
    same folder reads as another), and for a peft adapter's folder its base model's
    fingerprint too; for a hub id, the revision."""
    import hashlib
    import json

    path = Path(name_or_path)
    if not path.is_dir():
        return revision or "main"
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.suffix in (".safetensors", ".json", ".bin"):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    adapter = path / "adapter_config.json"
    if adapter.is_file() and _depth < 4:  # an adapter on an adapter, but never round a loop for ever
        try:
            base = json.loads(adapter.read_text(encoding="utf-8")).get("base_model_name_or_path")
        except (OSError, ValueError, AttributeError):
            base = None
        if isinstance(base, str) and base:
            h.update(f"base:{base}:{fingerprint(base, None, _depth + 1)};".encode())
    return h.hexdigest()[:16]


def checkpoint(name: str, what: str, *, revision: str | None = None) -> str:
    """``name`` unchanged when it is a folder here or a hub id ('gpt2', 'org/model') that
    can be loaded; a path to nothing, or a folder without a ``config.json`` (a model, or
    a peft adapter's) or any tokenizer file, is a :class:`ConfigError` now, before
    ``from_pretrained`` asks the hub for it. So is a hub id that is neither cached nor
    reachable (:func:`_check_hub_id`)."""
    path = Path(name).expanduser()
    if path.is_dir():
        wanted = ("config.json", "adapter_config.json") if what == "model" else _TOKENIZER_FILES
        if not any((path / f).exists() for f in wanted):
            raise ConfigError(f"'{name}' holds no {what} (no {' or '.join(wanted)}); give the folder that "
                              "save_pretrained wrote")
        if what == "model" and not any(path.glob("*.safetensors")) and any(path.glob("*.bin")):
            raise ConfigError(f"'{name}' holds its weights as pickled .bin files only; rlxf loads safetensors only "
                              "(unpickling can run code). Convert them once: load the model with transformers and "
                              "save_pretrained it again (safetensors is the default)")
        return name
    if path.exists():
        raise ConfigError(f"'{name}' is a file; give the folder that save_pretrained wrote for the {what}")
    if name.startswith(("/", ".", "~")) or name.endswith("/") or name.count("/") > 1 or "\\" in name:
        raise ConfigError(f"no folder '{name}' for the {what} (current folder: {os.getcwd()})")
    _check_hub_id(name, what, revision)
    return name


def _check_hub_id(name: str, what: str, revision: str | None) -> None:
    """Fail fast on a hub id that ``from_pretrained`` could only fail on slowly.

    A hub id in the Hugging Face cache passes without a network call (``from_pretrained``
    falls back to the cache at once when the hub is out of reach). One that is not cached
    is asked for once, without retries, within ``HF_HUB_ETAG_TIMEOUT`` seconds (default
    10): ``from_pretrained`` retries a file it lacks five times over ~23 s, and tries two
    files, so on a machine without network a misspelt name took ~48 s to fail. With
    ``HF_HUB_OFFLINE=1`` it is not asked for at all. A hub that answers, even with an
    error other than "no such repository", leaves the download to ``from_pretrained``.
    """
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HFValidationError, HfHubHTTPError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    try:
        if any(try_to_load_from_cache(name, f, revision=revision) is not None for f in _HUB_PROBE_FILES):
            return
    except HFValidationError as err:  # not a valid repo id: 'a b', 'x--y', ...
        raise ConfigError(f"no folder '{name}' for the {what} here ({os.getcwd()}), and it is no valid hub "
                          f"id: {err}") from None
    missing = f"no folder '{name}' for the {what} here ({os.getcwd()}), nor a cached hub model of that name"
    if constants.is_offline_mode():
        raise ConfigError(f"{missing}, and HF_HUB_OFFLINE=1 forbids downloading one; give the folder "
                          "save_pretrained wrote, or unset HF_HUB_OFFLINE (with network) to download it")
    try:
        get_hf_file_metadata(hf_hub_url(name, _HUB_PROBE_FILES[0], revision=revision),
                             timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except GatedRepoError:
        raise ConfigError(f"the hub id '{name}' is a gated model: accept its terms on {constants.ENDPOINT}/{name} "
                          "and log in (hf auth login), or give a local folder") from None
    except RepositoryNotFoundError:
        raise ConfigError(f"no folder '{name}' for the {what} here ({os.getcwd()}), and the hub "
                          f"({constants.ENDPOINT}) has no model '{name}' (a private one needs hf auth login); check "
                          "the spelling, or give the folder save_pretrained wrote") from None
    except RevisionNotFoundError:
        raise ConfigError(f"the hub model '{name}' has no revision '{revision}'; check the revision the config "
                          "sets") from None
    except (EntryNotFoundError, HfHubHTTPError):
        return  # the hub answered: from_pretrained downloads (and retries) as usual
    except Exception as err:  # no answer: no network, no DNS, a proxy or firewall in the way, a timeout
        raise ConfigError(f"{missing}, and the hub ({constants.ENDPOINT}) cannot be reached to download one "
                          f"({type(err).__name__}: {err}); give the folder save_pretrained wrote, check the "
                          "network (on a slow one raise HF_HUB_ETAG_TIMEOUT), or set HF_HUB_OFFLINE=1 to use only "
                          "cached models") from None


_HUB_PROBE_FILES = ("config.json", "tokenizer_config.json", "adapter_config.json")  # a checkpoint has one


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model",
                    "spiece.model", "tekken.json")


def _where(name: str) -> str:
    """The start of a load error for a name that is not a local folder: it was tried as a hub id."""
    return "" if Path(name).expanduser().is_dir() else f"no such folder here ({os.getcwd()}), and as a hub id: "


def base_model(model):
    """The Hugging Face model inside a peft wrapper (LoRA layers stay injected in it);
    ``model`` itself when it has none."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def max_positions(model) -> int | None:
    """The sequence length ``model`` was built for: ``n_positions`` or
    ``max_position_embeddings`` of its config; None when the config names neither.

    Past it a model with learned positions (GPT-2, OPT) fails with an index error and a
    rotary one (Llama, Qwen2) reads positions it never trained on.
    """
    config = base_model(model).config
    for key in ("n_positions", "max_position_embeddings"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def fit_length(key: str, length: int, model) -> int:
    """``length`` (the value of config key ``key``), or ``model``'s :func:`max_positions`
    when that is less, with a warning: a default meant for large models must not crash
    a small one."""
    limit = max_positions(model)
    if limit is None or length <= limit:
        return length
    log.warning("%s=%d is more than the model's %d positions: sequences are cut at %d", key, length, limit, limit)
    return limit


def auto_eager(requested: str | None, device, mixed_precision: str) -> bool:
    """Whether :func:`settle_attention` picks eager attention by itself."""
    return requested is None and device.type == "cpu" and mixed_precision == "bf16"


@contextlib.contextmanager
def attention_kernel(model, name: str | None):
    """Run ``model`` with attention implementation ``name`` inside the block (no change
    when ``name`` is None), and switch back after it."""
    inner = base_model(model)
    before = inner.config._attn_implementation
    if name is None or name == before:
        yield
        return
    inner.set_attn_implementation(name)
    try:
        yield
    finally:
        inner.set_attn_implementation(before)


def settle_attention(model, requested: str | None, device, mixed_precision: str = "no"):
    """Switch ``model`` to the ``requested`` attention implementation, or when that is
    null to the faster one for where it runs: on CPU under bf16 autocast the plain
    matmul + softmax ("eager") forward + backward measured 1.3-1.6x faster than
    PyTorch's SDPA kernel for 56-512 tokens (GPT-2 4x256, 2 threads); elsewhere SDPA
    stays. Both compute the same attention. Returns ``model``."""
    choice = "eager" if auto_eager(requested, device, mixed_precision) else requested
    if choice and model.config._attn_implementation != choice:
        try:
            model.set_attn_implementation(choice)
        except (ValueError, ImportError) as err:
            raise ConfigError(f"model.attn_implementation={choice}: {err}") from None
    return model


def keeps_logits(model) -> bool:
    """Whether ``model`` (maybe wrapped by DDP or peft) takes ``logits_to_keep``, as a count of
    last positions or as a boolean mask of positions: the LM head then runs only there."""
    return _forward_keeps_logits(type(base_model(getattr(model, "module", model))))  # DDP, then peft


@functools.cache
def _forward_keeps_logits(model_class: type) -> bool:
    """Answered once per model class: this runs on every micro-batch."""
    import inspect

    import transformers.modeling_utils

    if not hasattr(transformers.modeling_utils, "slice_logits_to_keep"):  # boolean masks came with it
        return False
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


def cache_keyword(model) -> str:
    """The keyword under which ``model`` (maybe wrapped by DDP or peft, or a bare backbone)
    takes a KV cache: ``cache`` since transformers 5.25 renamed it, ``past_key_values``
    before. 5.25 still takes the old name with a FutureWarning; 5.40 will not."""
    return _cache_keyword(type(base_model(getattr(model, "module", model))))


@functools.cache
def _cache_keyword(model_class: type) -> str:
    """Answered once per model class: this runs on every decoding step. A forward that
    names neither (a wrapper taking ``**kwargs``) passes it on to a model of the installed
    transformers, whose output classes tell its name."""
    import dataclasses
    import inspect

    from transformers.modeling_outputs import CausalLMOutputWithPast

    named = inspect.signature(model_class.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in named:
            return name
    return "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"


def returned_cache(output):
    """The KV cache a forward pass with ``use_cache=True`` returned, under the name the
    installed transformers gives it (see :func:`cache_keyword`)."""
    cache = getattr(output, "cache", None)  # transformers ≥ 5.25
    return cache if cache is not None else output.past_key_values


def fuse_gelu(model):
    """Replace GPT-2's ``gelu_new`` (tanh GELU written as seven element-wise ops, each kept
    for the backward pass) by PyTorch's one-kernel tanh GELU: the same formula, outputs
    equal to within 1e-6, about 5x faster forward + backward on CPU. The saved config is
    unchanged. Returns ``model``."""
    from transformers.activations import ACT2FN, NewGELUActivation

    for module in model.modules():
        for name, child in module.named_children():
            if isinstance(child, NewGELUActivation):
                setattr(module, name, ACT2FN["gelu_pytorch_tanh"])
    return model


def store_matmul_weights(model, dtype):
    """Store a frozen ``model``'s matmul weights (the weight and bias of every
    ``nn.Linear`` and GPT-2 ``Conv1D``) in ``dtype``, and copy its other parameters and
    buffers out of the file they were mapped from, so that the float32 copy is released.

    For a model that only runs under autocast to ``dtype`` this changes no output
    (autocast casts exactly these tensors to ``dtype`` before every matmul) and roughly
    halves its memory. A layer whose weight is tied to another module's (GPT-2's LM head
    is the token embedding) keeps float32. Returns ``model``."""
    from collections import Counter

    import torch
    from transformers.pytorch_utils import Conv1D

    uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, Conv1D)) and uses[id(module.weight)] == 1:
            for p in module.parameters(recurse=False):
                p.data = p.data.to(dtype)
    for t in [*model.parameters(), *model.buffers()]:
        if t.dtype != dtype:
            t.data = t.data.clone()
    return model


def disable_dropout(model) -> None:
    """Set every dropout probability to 0: RLHF needs the same log-probs in rollout and update."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def add_lora(model, lora: LoraConfig):
    """Wrap ``model`` with a fresh LoRA adapter; only the adapter's weights will train."""
    return peft_model(model, lora, task_type="CAUSAL_LM")


def peft_model(model, lora: LoraConfig, **extra):
    """``peft.get_peft_model`` with ``lora``'s settings (and peft ``LoraConfig`` keywords
    ``extra``). GPT-2's ``Conv1D`` layers store their weights transposed, which peft is
    told (``fan_in_fan_out``) rather than left to find out and warn of; target modules
    the model lacks are a :class:`ConfigError` naming the linear layers it has."""
    import torch
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_cfg = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                              target_modules=lora.target_modules or "all-linear",
                              fan_in_fan_out=any(type(m).__name__ == "Conv1D" for m in model.modules()), **extra)

    try:
        with warnings.catch_warnings():
            # peft (0.21) asks transformers 5.25's deprecated is_gradient_checkpointing: nothing for a user to change
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                                    category=FutureWarning)
            return get_peft_model(model, peft_cfg)
    except ValueError as err:
        if "target_modules" not in str(err) and "not found in the base model" not in str(err):
            raise
        linear = sorted({name.rpartition(".")[2] for name, m in model.named_modules()
                         if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"})
        raise ConfigError(f"model.lora.target_modules={list(peft_cfg.target_modules)} matches no layer of "
                          f"{type(model).__name__}; its linear layers are {linear} (or leave target_modules "
                          "null for all of them)") from None


def save_model(model, tokenizer, out: str | Path, *, merge_lora: bool = True, state_dict=None) -> Path:
    """Save in Hugging Face format (safetensors; ``state_dict`` instead of the model's own
    when given). A LoRA model is merged first, so ``AutoModelForCausalLM.from_pretrained(out)``
    loads it without peft. The weight files get the permissions the umask gives any new
    file (transformers writes them readable by their owner only)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if merge_lora and hasattr(model, "merge_and_unload"):
        import copy

        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(out, **({} if state_dict is None else {"state_dict": state_dict}))
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    from rlxf.data.readers import share_as_new

    for weights in out.glob("*.safetensors"):
        share_as_new(weights)
    return out
