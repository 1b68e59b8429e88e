"""MASS on a causal LM with LoRA: one meta-step, the Solver-GRPO baseline step, and the trainer.

The LM's LoRA tensors φ are its trainable "self" (the base weights stay frozen). For a meta-batch
of training problems T_b with gold solutions R*_b, one MASS meta-step does

1. generate: m completions c_bi ~ π_φ(· | practice(T_b)), parsed into pairs (p_bi, a_bi)
   (unparseable ones are dropped from the inner loop and penalised in step 6);
2. score:    s_bi = s_η(T_b, p_bi, a_bi)  (:class:`~mass_ref.lm.scorer.LMScorer`; 1/m without one);
3. adapt:    φ'_b = K differentiable SGD steps on Σ_i s_bi ℓ_SFT(φ; p_bi, a_bi), from φ
             (:func:`~mass_ref.lm.models.adapt_lora`, ``torch.func`` over the LoRA tensors);
4. outer:    gold (MASS_gold):  L_b = ℓ_SFT(φ'_b; T_b, R*_b)
             verifier (MASS):   y_bj ~ π_φ'_b(· | T_b), j = 1..k;  A_bj = group-normalised 1[y_bj correct];
                                L_b = − mean_j A_bj log π_φ'_b(y_bj | T_b)       (GRPO, on-policy: ratio 1)
5. attribute: g_bi = ∂L_b/∂s_bi through the inner steps (second order); η ← Adam(∇_η mean_b L_b);
6. generator: rewards r_bi = −g_bi, advantages normalised over the valid examples of each problem
   (unparseable: ``invalid_advantage``), clipped GRPO on φ plus γ·L_solve, where
   L_solve = mean_b ℓ_SFT(φ; T_b, R*_b) keeps the shared model a solver.

Log-probabilities of a completion are its mean token log-probability (sequence-level ratio,
length-normalised), computed on the decoded text. The **Solver GRPO** baseline spends the same
budget on RL for solving directly: k answers per training problem from π_φ, verifier rewards,
clipped GRPO on φ. Problems and sampling seeds depend only on ``(seed, step)``, so a resumed run
draws exactly what an uninterrupted one would.

Introduced in notebooks/05_mass_llm.ipynb.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from os import PathLike
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from mass_ref.checkpoint import load_checkpoint, save_checkpoint
from mass_ref.grpo import clipped_policy_loss, group_advantages
from mass_ref.lm.formats import PromptFormat, parse_practice
from mass_ref.lm.generate import sample_answers
from mass_ref.lm.models import adapt_lora, lora_parameters
from mass_ref.lm.scorer import LMScorer, pooled_features
from mass_ref.lm.sft import SFTBatch, sft_batch, sft_losses_per_example
from mass_ref.lm.ttt import lora_sft_steps_on_batch, restored_lora
from mass_ref.tasks.arithmetic import ArithmeticProblem, solve_question
from mass_ref.tasks.verify import extract_answer, is_correct

__all__ = ["LMMassConfig", "completion_logprobs", "lm_meta_step", "solver_grpo_step", "synthetic_is_right",
           "train_lm_mass"]

METHODS = ("mass", "solver_grpo")
OUTER_MODES = ("gold", "verifier")


@dataclass(frozen=True)
class LMMassConfig:
    """Hyper-parameters of LM meta-training (paper symbols in brackets; unpublished ones are ours).

    Attributes:
        method: "mass" (meta-learning) or "solver_grpo" (the RL-on-solving baseline, same budget).
        outer_mode: "gold" (MASS_gold: CE of R*) or "verifier" (MASS: GRPO with a verifier reward).
        train_generator, train_scorer: which parts MASS meta-learns.
        num_synthetic: m examples per problem in meta-training (paper: 12).
        num_inner_steps: differentiable inner SGD steps in meta-training (paper: 2).
        inner_lr: α of the inner SGD on the LoRA tensors (also used at test time).
        meta_batch_size: training problems per step.
        generator_lr, scorer_lr: Adam step sizes for φ (generator / solver) and η.
        clip_eps: PPO clip ε. ppo_epochs: policy updates per batch of samples.
        gamma_solve: γ, weight of L_solve in the generator's loss.
        num_answers: k answers sampled per problem (verifier outer loss, Solver GRPO).
        temperature: sampling temperature of practice problems and answers.
        practice_max_new_tokens, answer_max_new_tokens: generation lengths.
        invalid_advantage: the advantage of an unparseable practice completion.
    """

    method: str = "mass"
    outer_mode: str = "gold"
    train_generator: bool = True
    train_scorer: bool = True
    num_synthetic: int = 12
    num_inner_steps: int = 2
    inner_lr: float = 1.0
    meta_batch_size: int = 4
    generator_lr: float = 1e-3
    scorer_lr: float = 1e-3
    clip_eps: float = 0.2
    ppo_epochs: int = 1
    gamma_solve: float = 0.1
    num_answers: int = 4
    temperature: float = 1.0
    practice_max_new_tokens: int = 96
    answer_max_new_tokens: int = 48
    invalid_advantage: float = -1.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}; got {self.method!r}.")
        if self.outer_mode not in OUTER_MODES:
            raise ValueError(f"outer_mode must be one of {OUTER_MODES}; got {self.outer_mode!r}.")
        if self.method == "mass" and not (self.train_generator or self.train_scorer):
            raise ValueError("train_generator and train_scorer are both False: there is nothing to meta-train.")
        for name, low in (("num_synthetic", 2), ("num_answers", 2), ("num_inner_steps", 1), ("meta_batch_size", 1),
                          ("ppo_epochs", 1), ("practice_max_new_tokens", 1), ("answer_max_new_tokens", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}; got {value!r}.")
        for name in ("inner_lr", "generator_lr", "scorer_lr", "clip_eps", "temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive; got {getattr(self, name)!r}.")
        if self.gamma_solve < 0:
            raise ValueError(f"gamma_solve must be >= 0; got {self.gamma_solve!r}.")


def completion_logprobs(
    forward: Callable[..., Any], tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat,
    prompts: Sequence[str], completions: Sequence[str], *, device: torch.device,
) -> Tensor:
    """Mean token log-probability of each completion (and its eos) given its prompt, shape ``[n]``."""
    batch = sft_batch(tokenizer, list(zip(prompts, completions)), add_bos=fmt.add_bos).to(device)
    return -sft_losses_per_example(forward, batch)


def synthetic_is_right(question: str, solution: str) -> bool | None:
    """Whether a generated solution's final answer is the generated question's true answer.

    None when the question cannot be read back with the task's templates (the truth is unknown).
    """
    solved = solve_question(question)
    if solved is None:
        return None
    predicted = extract_answer(solution)
    return predicted is not None and is_correct(predicted, solved[0])


def _sample_adapted_answers(model: nn.Module, tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat,
                             problem: ArithmeticProblem, batch: SFTBatch, weights: Tensor, config: LMMassConfig,
                             seed: int) -> list[str]:
    """k answers sampled from π_φ' (verifier mode), before the differentiable inner loop is built.

    φ' is reached by the same K weighted SGD steps taken in place (no graph) and restored after
    sampling: writing into the LoRA tensors while a graph that saved them is alive would make its
    backward fail, and differentiating through sampling is not needed (the answers are constants).
    """
    with restored_lora(model):
        lora_sft_steps_on_batch(model, batch, steps=config.num_inner_steps, lr=config.inner_lr, optimizer="sgd",
                                weights=weights.detach())
        (answers,) = sample_answers(model, tokenizer, [fmt.solve(problem.question)], num_samples=config.num_answers,
                                    temperature=config.temperature, max_new_tokens=config.answer_max_new_tokens,
                                    seed=seed, add_bos=fmt.add_bos)
    return answers


def _outer_loss(adapted: Callable[..., Any], tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat,
                problem: ArithmeticProblem, answers: list[str] | None, device: torch.device) -> tuple[Tensor, float]:
    """L_b of step 4 and the fraction of correct answers among the k samples (NaN in gold mode)."""
    if answers is None:
        batch = sft_batch(tokenizer, [fmt.solve_pair(problem.question, problem.solution)], add_bos=fmt.add_bos)
        return sft_losses_per_example(adapted, batch.to(device)).mean(), float("nan")
    rewards = torch.tensor([float(is_correct(a, problem.answer)) for a in answers], device=device)
    advantages = group_advantages(rewards)
    logp = completion_logprobs(adapted, tokenizer, fmt, [fmt.solve(problem.question)] * len(answers), answers,
                               device=device)
    return -(advantages * logp).mean(), rewards.mean().item()


def _policy_update(model: nn.Module, optimizer: torch.optim.Optimizer, logp_fn: Callable[[], Tensor],
                   advantages: Tensor, config: LMMassConfig, extra_loss: Callable[[], Tensor] | None) -> float:
    """``ppo_epochs`` clipped GRPO updates of the LoRA tensors; returns the last surrogate loss."""
    params = list(lora_parameters(model).values())
    with torch.no_grad():
        logp_old = logp_fn()
    value = 0.0
    for _ in range(config.ppo_epochs):
        loss = clipped_policy_loss(logp_fn(), logp_old, advantages, config.clip_eps)
        value = loss.item()
        if extra_loss is not None:
            loss = loss + extra_loss()
        grads = torch.autograd.grad(loss, params)  # φ only: the frozen base gets no .grad
        for p, g in zip(params, grads):
            p.grad = g
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return value


def lm_meta_step(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    fmt: PromptFormat,
    scorer: LMScorer | None,
    problems: Sequence[ArithmeticProblem],
    config: LMMassConfig,
    optimizers: dict[str, torch.optim.Optimizer],
    *,
    seed: int,
) -> dict[str, float]:
    """One MASS meta-step (steps 1–6 above) on ``problems``; updates φ and/or η in place."""
    lora = lora_parameters(model)
    device = next(iter(lora.values())).device
    m, batch_size = config.num_synthetic, len(problems)
    prompts = [fmt.practice(p.question) for p in problems]
    completions = sample_answers(model, tokenizer, prompts, num_samples=m, temperature=config.temperature,
                                 max_new_tokens=config.practice_max_new_tokens, seed=seed, add_bos=fmt.add_bos)
    use_scorer = config.train_scorer and scorer is not None
    outer, passes, advantages, rights, right_weights = [], [], [], [], []
    for b, (problem, group) in enumerate(zip(problems, completions)):
        raw = [parse_practice(c) for c in group]
        valid = [i for i, pair in enumerate(raw) if pair is not None]
        attribution = torch.zeros(m)
        if valid:
            examples = [fmt.solve_pair(*raw[i]) for i in valid]
            if use_scorer:
                weights = scorer(pooled_features(model, tokenizer, problem.question, examples).to(device))
            else:
                weights = torch.full((len(valid),), 1.0 / len(valid), device=device, requires_grad=True)
            batch = sft_batch(tokenizer, examples, add_bos=fmt.add_bos).to(device)
            answers = None if config.outer_mode == "gold" else _sample_adapted_answers(
                model, tokenizer, fmt, problem, batch, weights, config, seed + 7919 * (b + 1))
            adapted = adapt_lora(model, batch, inner_lr=config.inner_lr, num_steps=config.num_inner_steps,
                                 weights=weights, params=lora)
            loss, passed = _outer_loss(adapted, tokenizer, fmt, problem, answers, device)
            (grad,) = torch.autograd.grad(loss, weights)
            if use_scorer:
                weights.backward(grad / batch_size)  # chain rule into η: ∇_η mean_b L_b
            attribution[valid] = grad.detach().cpu().float()
            outer.append(loss.item())
            passes.append(passed)
            for i, w in zip(valid, weights.detach().cpu().tolist()):
                right = synthetic_is_right(*raw[i])
                if right is not None:
                    rights.append(float(right))
                    right_weights.append(w)
        advantage = torch.full((m,), config.invalid_advantage)
        if len(valid) >= 2:
            advantage[valid] = group_advantages(-attribution[valid])
        elif valid:
            advantage[valid] = 0.0
        advantages.append(advantage)
    if use_scorer:
        optimizers["scorer"].step()
        optimizers["scorer"].zero_grad(set_to_none=True)
    policy_loss = float("nan")
    if config.train_generator:
        flat_prompts = [p for p in prompts for _ in range(m)]
        flat_completions = [c for group in completions for c in group]
        gold = sft_batch(tokenizer, [fmt.solve_pair(p.question, p.solution) for p in problems], add_bos=fmt.add_bos)
        policy_loss = _policy_update(
            model, optimizers["generator"],
            lambda: completion_logprobs(model, tokenizer, fmt, flat_prompts, flat_completions, device=device),
            torch.cat(advantages).to(device), config,
            (lambda: config.gamma_solve * sft_losses_per_example(model, gold.to(device)).mean())
            if config.gamma_solve > 0 else None)
    valid_fraction = sum(float(a != config.invalid_advantage) for adv in advantages for a in adv.tolist()) / (m * batch_size)
    return {
        "outer_loss": sum(outer) / len(outer) if outer else float("nan"),
        "answer_pass_rate": sum(passes) / len(passes) if passes else float("nan"),
        "valid_fraction": valid_fraction,
        "synthetic_right_fraction": sum(rights) / len(rights) if rights else float("nan"),
        "weight_right_minus_wrong": _mean_gap(right_weights, rights),
        "policy_loss": policy_loss,
    }


def _mean_gap(weights: list[float], rights: list[float]) -> float:
    right = [w for w, r in zip(weights, rights) if r]
    wrong = [w for w, r in zip(weights, rights) if not r]
    return sum(right) / len(right) - sum(wrong) / len(wrong) if right and wrong else float("nan")


def solver_grpo_step(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    fmt: PromptFormat,
    problems: Sequence[ArithmeticProblem],
    config: LMMassConfig,
    optimizers: dict[str, torch.optim.Optimizer],
    *,
    seed: int,
) -> dict[str, float]:
    """One Solver-GRPO step: k answers per problem from π_φ, verifier rewards, clipped GRPO on φ."""
    device = next(iter(lora_parameters(model).values())).device
    prompts = [fmt.solve(p.question) for p in problems]
    answers = sample_answers(model, tokenizer, prompts, num_samples=config.num_answers, temperature=config.temperature,
                             max_new_tokens=config.answer_max_new_tokens, seed=seed, add_bos=fmt.add_bos)
    rewards = torch.tensor([[float(is_correct(a, p.answer)) for a in group] for p, group in zip(problems, answers)])
    flat_prompts = [p for p in prompts for _ in range(config.num_answers)]
    flat_answers = [a for group in answers for a in group]
    policy_loss = _policy_update(
        model, optimizers["generator"],
        lambda: completion_logprobs(model, tokenizer, fmt, flat_prompts, flat_answers, device=device),
        group_advantages(rewards).flatten().to(device), config, None)
    return {"answer_pass_rate": rewards.mean().item(), "policy_loss": policy_loss}


def train_lm_mass(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    fmt: PromptFormat,
    scorer: LMScorer | None,
    config: LMMassConfig,
    problems_for_step: Callable[[int], Sequence[ArithmeticProblem]],
    *,
    steps: int,
    seed: int,
    checkpoint_path: str | PathLike[str] | None = None,
    checkpoint_every: int = 10,
    stop_after: int | None = None,
    progress: bool = True,
    on_checkpoint: Callable[[list[dict[str, float]]], None] | None = None,
) -> list[dict[str, float]]:
    """Meta-train (``method="mass"``) or RL-train (``"solver_grpo"``) the LoRA tensors φ and scorer η in place.

    ``problems_for_step(t)`` gives the training problems of step t (a pure function of t). With
    ``checkpoint_path`` the LoRA tensors, the scorer, the optimisers and the history are saved
    every ``checkpoint_every`` steps and at the end; the same call resumes from the checkpoint and
    reaches the same final state as an uninterrupted run. ``stop_after`` stops early on purpose.

    Returns:
        One dict of diagnostics per step (see :func:`lm_meta_step`, :func:`solver_grpo_step`).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer; got {steps!r}.")
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be a positive integer; got {checkpoint_every!r}.")
    if config.method == "mass" and config.train_scorer and scorer is None:
        raise ValueError("config.train_scorer is True but scorer is None; pass an LMScorer or set train_scorer=False.")
    lora = lora_parameters(model)
    if not lora:
        raise ValueError("the model has no LoRA tensors; wrap it with add_lora(model) first.")
    optimizers: dict[str, torch.optim.Optimizer] = {
        "generator": torch.optim.Adam(list(lora.values()), lr=config.generator_lr)}
    if scorer is not None:
        optimizers["scorer"] = torch.optim.Adam(scorer.parameters(), lr=config.scorer_lr)
    history: list[dict[str, float]] = []
    state = load_checkpoint(checkpoint_path)
    if state is not None:
        if state["config"] != asdict(config) or state["seed"] != seed:
            raise ValueError(f"checkpoint {checkpoint_path} was written by a run with another config or seed; "
                             "delete it or pass the same config and seed to resume.")
        with torch.no_grad():
            for name, tensor in lora.items():
                tensor.copy_(state["lora"][name])
        if scorer is not None:
            scorer.load_state_dict(state["scorer"])
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        history = state["history"]

    def checkpoint() -> None:
        if checkpoint_path is not None:
            save_checkpoint(checkpoint_path, {
                "config": asdict(config), "seed": seed, "history": history,
                "lora": {name: t.detach().cpu().clone() for name, t in lora.items()},
                "scorer": None if scorer is None else scorer.state_dict(),
                "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()}})
        if on_checkpoint is not None:
            on_checkpoint(history)

    label = "Solver GRPO" if config.method == "solver_grpo" else f"MASS ({config.outer_mode})"
    end = steps if stop_after is None else max(len(history), min(steps, stop_after))
    for step in tqdm(range(len(history), end), desc=label, disable=not progress, initial=len(history), total=steps):
        problems, step_seed = problems_for_step(step), seed * 1_000_003 + step
        if config.method == "solver_grpo":
            history.append(solver_grpo_step(model, tokenizer, fmt, problems, config, optimizers, seed=step_seed))
        else:
            history.append(lm_meta_step(model, tokenizer, fmt, scorer, problems, config, optimizers, seed=step_seed))
        if (step + 1) % checkpoint_every == 0 or step + 1 == end:
            checkpoint()
    return history
