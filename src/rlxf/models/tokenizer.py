"""Training a byte-level BPE tokenizer (GPT-2's scheme) on the user's own text.

Real checkpoints ship their tokenizer; this is for models rlxf builds from scratch
(Tinyworld, and small models on a user's data where no hub is reachable).
"""

from __future__ import annotations

from collections.abc import Iterable

SPECIAL_TOKENS = {"pad_token": "<|pad|>", "eos_token": "<|endoftext|>", "unk_token": "<|unk|>"}


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2,
                        model_max_length: int = 1024):
    """A ``PreTrainedTokenizerFast`` trained on ``texts``; saves with ``save_pretrained``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, model_max_length=model_max_length,
                                   clean_up_tokenization_spaces=False, **SPECIAL_TOKENS)
