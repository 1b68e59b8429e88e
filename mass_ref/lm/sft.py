"""Supervised fine-tuning batches and the per-example SFT loss that the inner loop weighs.

A batch holds n (prompt, answer) pairs as one right-padded tensor of ids. For example i with
prompt tokens p_1..p_P, answer tokens a_1..a_A and the end-of-sequence token a_{A+1} = eos,

    ℓ_i(θ) = −(1 / (A+1)) Σ_{t=1}^{A+1} log p_θ(a_t | p, a_{<t})       (mean over answer tokens)

and the weighted inner loss is L_in(θ) = Σ_i w_i ℓ_i(θ) (see :func:`mass_ref.inner.inner_adapt`).

Labels are masked by *position*, never by token id: the prompt and the padding get the label
−100 (ignored), the answer and exactly one eos keep theirs. Many models pad with their eos token
(SmolLM2: pad = eos = ``<|im_end|>``), so masking "label == pad" would also drop the real eos and
the model would never learn to stop. Training batches are right-padded; prompts for generation are
left-padded (:func:`left_pad_prompts`) so every sequence ends where generation starts.

Introduced in notebooks/04_lm_test_time_training.ipynb.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from mass_ref.inner import Forward

IGNORE_INDEX = -100
"""The label of a position that is not supervised (PyTorch's ``cross_entropy`` default)."""


@dataclass(frozen=True)
class SFTBatch:
    """n right-padded (prompt, answer) sequences of length T.

    Attributes:
        input_ids: ``[n, T]`` token ids, ``prompt + answer + eos``, then padding.
        attention_mask: ``[n, T]``, 1 on real tokens, 0 on padding.
        labels: ``[n, T]``, equal to ``input_ids`` on the answer and its eos, −100 elsewhere.
            Position t is predicted from positions < t (the loss shifts by one).
    """

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device | str) -> SFTBatch:
        """The same batch on ``device``."""
        return SFTBatch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))

    def num_supervised(self) -> Tensor:
        """The number of supervised tokens per example (answer + eos), shape ``[n]``."""
        return (self.labels != IGNORE_INDEX).sum(-1)


def collate_sft(
    prompt_ids: Sequence[Sequence[int]],
    answer_ids: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    eos_token_id: int,
) -> SFTBatch:
    """Concatenate ``prompt + answer + [eos]`` per example, right-pad, and mask labels by position.

    Args:
        prompt_ids: n lists of prompt token ids (may be empty).
        answer_ids: n lists of answer token ids; one ``eos_token_id`` is appended to each.
        pad_token_id: the id written into padding positions (may equal ``eos_token_id``).
        eos_token_id: the end-of-sequence id, supervised once after each answer.

    Returns:
        An :class:`SFTBatch` of length T = max_i (P_i + A_i + 1).
    """
    if len(prompt_ids) != len(answer_ids) or not prompt_ids:
        raise ValueError(
            f"need the same positive number of prompts and answers; got {len(prompt_ids)} and {len(answer_ids)}."
        )
    rows = [(list(p), [*a, eos_token_id]) for p, a in zip(prompt_ids, answer_ids)]
    length = max(len(p) + len(a) for p, a in rows)
    n = len(rows)
    input_ids = torch.full((n, length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((n, length), dtype=torch.long)
    labels = torch.full((n, length), IGNORE_INDEX, dtype=torch.long)
    for i, (prompt, answer) in enumerate(rows):
        end = len(prompt) + len(answer)
        input_ids[i, :end] = torch.tensor(prompt + answer, dtype=torch.long)
        attention_mask[i, :end] = 1
        labels[i, len(prompt) : end] = torch.tensor(answer, dtype=torch.long)  # by position, not by id
    return SFTBatch(input_ids, attention_mask, labels)


def sft_batch(
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    *,
    add_bos: bool = False,
) -> SFTBatch:
    """Tokenise n (prompt, answer) pairs into a right-padded :class:`SFTBatch`.

    Prompt and answer are tokenised separately with ``add_special_tokens=False`` (so the boundary
    between them is exact), then ``collate_sft`` appends eos and masks the prompt and padding.
    The padding id is ``tokenizer.pad_token_id``, or eos when the tokenizer has none.

    Args:
        tokenizer: any ``transformers`` tokenizer with an eos token.
        pairs: n ``(prompt, answer)`` strings, e.g. ``("Question: 2 + 3?\\nAnswer:", " 5")``.
        add_bos: prepend ``tokenizer.bos_token_id`` to each prompt (the tiny LM's pretraining does
            the same when asked; SmolLM2's bos is a chat token, leave it False there).

    Returns:
        An :class:`SFTBatch` (long tensors on the CPU).

    Introduced in notebooks/04_lm_test_time_training.ipynb.
    """
    eos, pad = eos_and_pad_ids(tokenizer)
    bos = [bos_id(tokenizer)] if add_bos else []
    prompts = [bos + encode_text(tokenizer, p) for p, _ in pairs]
    answers = [encode_text(tokenizer, a) for _, a in pairs]
    return collate_sft(prompts, answers, pad_token_id=pad, eos_token_id=eos)


def left_pad_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], *, add_bos: bool = False
) -> tuple[Tensor, Tensor]:
    """Left-padded prompt ids for batched generation: ``(input_ids [n, P], attention_mask [n, P])``.

    With left padding every row's last position is its last prompt token, so ``model.generate``
    continues all rows from the same column.

    Introduced in notebooks/04_lm_test_time_training.ipynb.
    """
    if not prompts:
        raise ValueError("need at least one prompt.")
    _, pad = eos_and_pad_ids(tokenizer)
    bos = [bos_id(tokenizer)] if add_bos else []
    rows = [bos + encode_text(tokenizer, p) for p in prompts]
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            input_ids[i, length - len(row) :] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, length - len(row) :] = 1
    return input_ids, attention_mask


def sft_losses_per_example(forward: Forward, batch: SFTBatch) -> Tensor:
    """ℓ_i = mean next-token cross-entropy over example i's answer tokens and eos, shape ``[n]``.

    This is the ``loss_fn(forward, batch)`` that :func:`mass_ref.inner.inner_adapt` expects:
    ``forward(**kwargs)`` runs the (possibly adapted) causal LM; it is asked for the logits of the
    supervised positions only (``logits_to_keep``, a transformers ``...ForCausalLM`` argument) and
    returns ``.logits [n, kept, V]``.
    Logits at position t−1 score the label at t; positions labelled −100 are ignored. Weighted SFT
    is then ``inner_adapt(model, sft_losses_per_example, batch, weights=w, backend="torch.func",
    params=lora_parameters(model))``.

    Introduced in notebooks/04_lm_test_time_training.ipynb.
    """
    targets = batch.labels[:, 1:]
    supervised = targets != IGNORE_INDEX
    # Only positions that score some row's answer need logits ([n, T, V] is most of the memory and a
    # fifth of the time for a 49k vocabulary): ``logits_to_keep`` (transformers) applies the LM head there.
    keep = supervised.any(0).nonzero().flatten()
    logits = forward(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False,
                     logits_to_keep=keep).logits  # [n, len(keep), V]
    return _example_means(logits, targets[:, keep], supervised, keep)


def token_losses_to_example_means(logits: Tensor, labels: Tensor) -> Tensor:
    """Shifted cross-entropy averaged over each row's supervised positions: ``[n, T, V], [n, T] → [n]``.

    Raises:
        ValueError: a row with no supervised token (its mean would be 0/0).
    """
    targets = labels[:, 1:]
    return _example_means(logits[:, :-1], targets, targets != IGNORE_INDEX, None)


def _example_means(logits: Tensor, targets: Tensor, supervised: Tensor, keep: Tensor | None) -> Tensor:
    """Mean CE per row from the logits of the positions ``keep`` (None: all T−1), targets aligned with them.

    The per-position losses are put back on all T−1 positions before the sum, so keeping fewer
    positions sums the same numbers in the same order.
    """
    counts = supervised.sum(-1)
    if bool((counts == 0).any()):
        raise ValueError("every example needs at least one supervised (answer) token; got a row with none.")
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX,
                                           reduction="none")  # [n, kept], 0 where ignored
    if keep is not None:
        ce = ce.new_zeros(supervised.shape).index_copy(1, keep, ce)  # [n, T−1]
    return ce.sum(-1) / counts.to(ce.dtype)


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """The token ids of ``text`` alone, with no special tokens (``[]`` for the empty string).

    Prompts and answers are encoded separately with this, so the boundary between them is exact.
    """
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def eos_and_pad_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    """``(eos, pad)`` token ids; pad falls back to eos when the tokenizer has none.

    Raises:
        ValueError: the tokenizer has no eos token (SFT appends one after every answer).
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos token; SFT appends one after every answer.")
    pad = tokenizer.pad_token_id
    return eos, eos if pad is None else pad


def bos_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokenizer's bos id, for ``add_bos=True``.

    Raises:
        ValueError: the tokenizer has no bos token (pass ``add_bos=False``).
    """
    if tokenizer.bos_token_id is None:
        raise ValueError("add_bos=True but the tokenizer has no bos token.")
    return tokenizer.bos_token_id
