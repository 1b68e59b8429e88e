"""A byte-level BPE tokenizer trained locally with ``tokenizers``, for the tiny language model.

Byte-level BPE starts from the 256 byte symbols and greedily merges the most frequent adjacent
pair until the vocabulary has ``vocab_size`` entries:

    V_0 = {256 bytes} ∪ specials,   V_{k+1} = V_k ∪ {ab},  (a, b) = argmax_{(a, b)} count(a b)

Digits are split one by one before BPE (as Llama does), so ``"123"`` is always the three tokens
``1 2 3``: a number is never hidden inside a merged token, which matters for arithmetic.
Every text is representable (no unknown token), and ``decode(encode(s)) == s``.

The result is a ``transformers`` fast tokenizer with ``<|bos|>``, ``<|eos|>`` and ``<|pad|>``
special tokens; it adds no special tokens on its own (callers add bos/eos explicitly), and
``save_pretrained`` / ``AutoTokenizer.from_pretrained`` round-trip it exactly.

Introduced in notebooks/04_lm_test_time_training.ipynb.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|eos|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)
"""Ids 0, 1, 2 of every tokenizer built here, in this order."""

MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)
"""The byte alphabet plus the special tokens: the smallest vocabulary that can encode any text."""


def train_tokenizer(
    texts: Iterable[str], *, vocab_size: int, save_dir: str | Path | None = None
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (digits split individually) on ``texts``.

    Args:
        texts: the training corpus, e.g. ``"Question: ...\\nAnswer: ..."`` strings.
        vocab_size: the final vocabulary size |V| ≥ 259 (256 bytes + pad, bos, eos); merges fill
            the rest. A small corpus may stop short of it (no pair left to merge).
        save_dir: if given, ``save_pretrained(save_dir)`` so ``AutoTokenizer.from_pretrained``
            reloads it.

    Returns:
        A fast tokenizer with ``pad_token_id = 0``, ``bos_token_id = 1``, ``eos_token_id = 2``,
        right padding, and no automatic special tokens (``tokenizer(s).input_ids`` is just
        the BPE ids of ``s``).

    Raises:
        ValueError: ``vocab_size`` below 259.

    Introduced in notebooks/04_lm_test_time_training.ipynb.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size must be at least {MIN_VOCAB_SIZE} (256 bytes + {len(SPECIAL_TOKENS)} special "
            f"tokens); got {vocab_size}."
        )
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    if save_dir is not None:
        tokenizer.save_pretrained(str(save_dir))
    return tokenizer
