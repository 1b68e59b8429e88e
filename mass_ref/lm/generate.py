"""Answering with a causal LM: batched greedy decoding, k sampled solutions, and accuracy.

Decoding continues each prompt x = (x_1..x_P) one token at a time until eos or ``max_new_tokens``:

    greedy:   y_t = argmax_v  p_θ(v | x, y_{<t})
    sampled:  y_t ~ softmax(z_t / τ),   z_t = logits of p_θ(· | x, y_{<t}),  temperature τ > 0

Prompts are tokenised with ``add_special_tokens=False`` and **left**-padded
(:func:`mass_ref.lm.sft.left_pad_prompts`), so every row of a batch ends at the column where
generation starts; the attention mask hides the padding and ``generate`` derives position ids
from it, so a padded prompt continues exactly as it would alone (up to float rounding). Only the
continuation y is returned, decoded without special tokens (the eos and any padding after it
disappear). Prompts are processed in chunks of ``batch_size`` to bound memory (a batch of b
sequences of length L with eager attention keeps O(b · heads · L²) attention scores per layer).

Everything here runs in ``torch.no_grad`` with the model temporarily in eval mode, works for a
plain ``LlamaForCausalLM`` and for a peft-wrapped one, and is deterministic on the CPU: greedy
decoding always, sampling for a fixed ``(seed, batch_size)`` (the global RNG is left untouched).

Only the rules above apply, whatever model: each call builds its own ``GenerationConfig`` (no
repetition penalty, no top-k, top-p 1 unless asked) and hides the model's ``generation_config``
while it runs. A hub model ships one (Qwen2.5-Instruct's sets a repetition penalty, top_k 20, top_p 0.8
and temperature 0.7), and transformers >= 5 fills every setting a call leaves unset from it, so greedy
answers would otherwise depend on a penalty and τ-samples on a top-k cut nobody asked for.

Introduced in notebooks/04_lm_test_time_training.ipynb.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import torch
from torch import nn
from transformers import GenerationConfig, PreTrainedTokenizerBase

from mass_ref.lm.sft import left_pad_prompts
from mass_ref.tasks.verify import is_correct

Problem = TypeVar("Problem")

__all__ = ["accuracy", "default_gold", "eval_mode", "generate_answers", "sample_answers"]


def generate_answers(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 16,
    add_bos: bool = False,
) -> list[str]:
    """Greedy continuations of ``prompts``, one string per prompt (the prompt itself excluded).

    Args:
        model: a causal LM (``LlamaForCausalLM`` or a peft model wrapping one).
        tokenizer: its tokenizer; pad falls back to eos when the tokenizer has none.
        prompts: n prompt strings, tokenised with ``add_special_tokens=False``.
        max_new_tokens: at most this many generated tokens per prompt (eos stops earlier).
        batch_size: prompts per ``generate`` call.
        add_bos: prepend ``tokenizer.bos_token_id`` to every prompt (as in tiny-LM pretraining).

    Returns:
        n strings: ``decode(y, skip_special_tokens=True)`` of each continuation y.

    Introduced in notebooks/04_lm_test_time_training.ipynb.
    """
    _check_sizes(max_new_tokens, batch_size)
    options = dict(do_sample=False)
    return list(_generate(model, tokenizer, list(prompts), max_new_tokens, batch_size, add_bos, options))


def sample_answers(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    num_samples: int,
    temperature: float,
    max_new_tokens: int,
    seed: int,
    top_p: float = 1.0,
    batch_size: int = 16,
    add_bos: bool = False,
) -> list[list[str]]:
    """``num_samples`` sampled continuations per prompt (pure temperature sampling by default).

    Each prompt is repeated k = ``num_samples`` times and decoded with y_t ~ softmax(z_t / τ)
    (optionally restricted to the nucleus of mass ``top_p``; no top-k cut). The random stream is
    a forked RNG seeded with ``seed``: the same arguments (including ``batch_size``, which decides
    how draws are grouped) give the same samples, and the caller's global RNG is not advanced.
    Here ``batch_size`` counts sequences (prompt copies), not prompts.

    Returns:
        n lists of k strings, ``result[i][j]`` = the j-th sample for prompt i (GRPO's group).

    Introduced in notebooks/04_lm_test_time_training.ipynb.
    """
    _check_sizes(max_new_tokens, batch_size)
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1; got {num_samples!r}.")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (use generate_answers for greedy decoding); got {temperature!r}.")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1]; got {top_p!r}.")
    repeated = [p for p in prompts for _ in range(num_samples)]
    options = dict(do_sample=True, temperature=float(temperature), top_p=float(top_p), top_k=0)
    device = _device(model)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        flat = list(_generate(model, tokenizer, repeated, max_new_tokens, batch_size, add_bos, options))
    return [flat[i * num_samples : (i + 1) * num_samples] for i in range(len(prompts))]


def default_gold(problem: Any) -> str | int | float:
    """The reference answer of a problem: ``problem.answer`` (e.g. :class:`ArithmeticProblem`),
    or for a record dict its ``"final_answer"`` (GSM8K/MATH-500 loaders), else its ``"answer"``.

    Introduced in notebooks/04_lm_test_time_training.ipynb.
    """
    if isinstance(problem, Mapping):
        for key in ("final_answer", "answer"):
            if key in problem:
                return problem[key]
        raise ValueError(f"a problem dict needs a 'final_answer' or 'answer' key; got keys {sorted(problem)}.")
    if hasattr(problem, "answer"):
        return problem.answer
    raise ValueError(f"cannot find the gold answer of a {type(problem).__name__}; pass gold_fn=... .")


def accuracy(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[Problem],
    *,
    prompt_fn: Callable[[Problem], str],
    max_new_tokens: int,
    gold_fn: Callable[[Problem], str | int | float] = default_gold,
    batch_size: int = 16,
    add_bos: bool = False,
) -> tuple[float, list[bool]]:
    """Greedy accuracy: the fraction of problems whose answer passes :func:`~mass_ref.tasks.verify.is_correct`.

        acc = (1/n) Σ_i 1[ is_correct(greedy(prompt_fn(problem_i)), gold_fn(problem_i)) ]

    Returns:
        ``(acc, per_problem)``: acc in [0, 1] (0.0 for no problems) and one bool per problem.

    Introduced in notebooks/04_lm_test_time_training.ipynb.
    """
    if not problems:
        return 0.0, []
    answers = generate_answers(model, tokenizer, [prompt_fn(p) for p in problems],
                               max_new_tokens=max_new_tokens, batch_size=batch_size, add_bos=add_bos)
    correct = [is_correct(answer, gold_fn(p)) for answer, p in zip(answers, problems)]
    return sum(correct) / len(correct), correct


def _generate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    add_bos: bool,
    options: dict[str, Any],
) -> Iterator[str]:
    """Yield the continuation text of each prompt, in order, generating ``batch_size`` prompts at a time.

    ``options``: ``do_sample`` and, when sampling, ``temperature``, ``top_p``, ``top_k`` (see
    :func:`_generation_config`).
    """
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    device = _device(model)
    config = _generation_config(max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos, **options)
    with eval_mode(model), torch.no_grad(), _without_model_generation_config(model):
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            input_ids, attention_mask = left_pad_prompts(tokenizer, chunk, add_bos=add_bos)
            output = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), generation_config=config)
            for row in output[:, input_ids.shape[1] :].tolist():
                yield tokenizer.decode(row, skip_special_tokens=True)


def _generation_config(
    *,
    do_sample: bool,
    max_new_tokens: int,
    pad_token_id: int | None,
    eos_token_id: int | None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
) -> GenerationConfig:
    """A fresh ``GenerationConfig`` with every setting that changes the next-token rule explicit.

    Greedy (``do_sample=False``) is the plain argmax; sampling is softmax(z / τ), cut only to the
    nucleus ``top_p`` and (``top_k`` > 0) to the top k. No repetition penalty, one beam, one sequence.
    """
    sampling = dict(temperature=temperature, top_p=top_p, top_k=top_k) if do_sample else {}
    return GenerationConfig(
        do_sample=do_sample, num_beams=1, num_return_sequences=1, max_new_tokens=max_new_tokens,
        pad_token_id=pad_token_id, eos_token_id=eos_token_id, repetition_penalty=1.0, **sampling)


@contextlib.contextmanager
def _without_model_generation_config(model: nn.Module) -> Iterator[None]:
    """Swap the model's ``generation_config`` for an empty one inside the block.

    transformers (>= 5) fills each setting left unset (None) in the config passed to ``generate``
    from the model's own one, and some settings (``suppress_tokens``, ``min_p``, ...) are "off" only
    when None: hiding the model's config is the one way to leave none of them inherited. A peft model
    reads the config of the model it wraps.
    """
    get_base = getattr(model, "get_base_model", None)
    owner = get_base() if callable(get_base) else model
    saved = getattr(owner, "generation_config", None)
    if saved is None:
        yield
        return
    owner.generation_config = GenerationConfig()
    try:
        yield
    finally:
        owner.generation_config = saved


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model.eval()`` inside the block (no dropout), then the training flag it had before."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)




def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _check_sizes(max_new_tokens: int, batch_size: int) -> None:
    for name, value in (("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {value!r}.")
