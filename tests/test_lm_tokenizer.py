"""The locally trained byte-level BPE tokenizer: special ids, digits, and a save/reload round trip."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from mass_ref.lm import train_tokenizer

CORPUS = [f"Question: What is {a} + {b}?\nAnswer: {a + b}" for a in range(15) for b in range(15)]
UNSEEN = ["Question: What is 1234 * 56?\nAnswer: 69104", "héllo wörld ✓ {tabs}\tand\nnewlines", " leading space"]


def test_tokenizer_special_ids_digits_and_lossless_decoding() -> None:
    tokenizer = train_tokenizer(CORPUS, vocab_size=300)
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert 259 < len(tokenizer) <= 300  # merges were learned on top of bytes + specials
    ids = tokenizer("Answer: 1234", add_special_tokens=False).input_ids
    assert tokenizer.convert_ids_to_tokens(ids)[-4:] == ["1", "2", "3", "4"]  # one token per digit
    assert tokenizer("x").input_ids == tokenizer("x", add_special_tokens=False).input_ids  # no auto bos/eos
    for text in CORPUS[:5] + UNSEEN:
        assert tokenizer.decode(tokenizer(text).input_ids) == text


def test_tokenizer_save_and_reload_with_autotokenizer_gives_identical_ids(tmp_path) -> None:
    tokenizer = train_tokenizer(CORPUS, vocab_size=300, save_dir=tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert len(reloaded) == len(tokenizer)
    assert (reloaded.pad_token_id, reloaded.bos_token_id, reloaded.eos_token_id) == (0, 1, 2)
    for text in CORPUS[::17] + UNSEEN:
        assert reloaded(text, add_special_tokens=False).input_ids == tokenizer(text, add_special_tokens=False).input_ids
        assert reloaded(text).input_ids == tokenizer(text).input_ids


def test_tokenizer_refuses_a_vocabulary_smaller_than_the_byte_alphabet() -> None:
    with pytest.raises(ValueError, match="259"):
        train_tokenizer(CORPUS, vocab_size=100)
