"""MASS on a causal LM with LoRA: one meta-step and the Solver-GRPO baseline step.

The LM's LoRA tensors φ are its trainable "self" (the base weights stay frozen). For a meta-batch
of training problems T_b with gold solutions R*_b, one MASS meta-step does

1. generate: m completions c_bi ~ π_φ(· | prompt(T_b)), parsed into pairs (p_bi, a_bi): new related
   problems, or attempts at T_b itself (``config.practice``, :mod:`mass_ref.lm.practice`);
   unparseable ones are dropped from the inner loop and penalised in step 6;
2. score:    s_bi = c · softmax_i z_η(T_b, p_bi, a_bi)  (:class:`~mass_ref.lm.scorer.LMScorer`: a ranking within the
             problem times a learned step scale c; 1/m without a scorer);
3. adapt:    φ'_b = K differentiable SGD steps on Σ_i s_bi ℓ_SFT(φ; p_bi, a_bi), from φ
             (:func:`~mass_ref.lm.models.inner_adapt_lora`, ``torch.func`` over the LoRA tensors);
4. outer:    gold (MASS_gold):  L_b = ℓ_SFT(φ'_b; T_b, R*_b)
             verifier (MASS):   y_bj ~ π_φ'_b(· | T_b), j = 1..k;  A_bj = group-normalised 1[y_bj correct];
                                L_b = − mean_j A_bj log π_φ'_b(y_bj | T_b)       (GRPO, on-policy: ratio 1)
             (the answers are sampled at step 5's own φ'_b, handed over by ``weight_meta_gradient(on_adapted=)``:
             no second inner loop; a group whose k answers are all right or all wrong has L_b ≡ 0, and its
             backward pass is skipped);
5. attribute: g_bi = ∂L_b/∂s_bi through the inner steps (second order); η ← Adam(∇_η mean_b L_b);
6. generator: rewards r_bi = −g_bi, advantages normalised over the valid examples of each problem
   (unparseable: ``invalid_advantage``), clipped GRPO on φ plus γ·L_solve
   (:func:`~mass_ref.lm.policy_update.clipped_policy_update`), where L_solve = mean_b ℓ_SFT(φ; T_b, R*_b)
   keeps the shared model a solver.

Log-probabilities of a completion are its mean token log-probability (sequence-level ratio,
length-normalised), computed on the decoded text. The **Solver GRPO** baseline spends the same
budget on RL for solving directly: k answers per training problem from π_φ, verifier rewards,
clipped GRPO on φ. The trainer (:func:`~mass_ref.lm.trainer.train_lm_mass`) runs these steps,
checkpointed, resumable and optionally data-parallel.

Introduced in notebooks/05_mass_llm.ipynb.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from mass_ref.grpo import group_advantages
from mass_ref.lm.amp import check_precision, fp32_scope
from mass_ref.lm.formats import PromptFormat
from mass_ref.lm.generate import sample_answers
from mass_ref.lm.memory import layer_checkpointing
from mass_ref.lm.models import lora_parameters, require_eager_attention
from mass_ref.lm.policy_update import GradientAverager, clipped_policy_update
from mass_ref.lm.practice import (check_practice_kind, parse_practice_completion, practice_is_right, practice_prompt_for,
                                  scorer_context)
from mass_ref.lm.scorer import LMScorer, scorer_features
from mass_ref.lm.sft import sft_batch, sft_losses_per_example
from mass_ref.lm.ttt import restored_lora
from mass_ref.metagrad import check_meta_gradient_mode, weight_meta_gradient
from mass_ref.tasks.arithmetic import ArithmeticProblem
from mass_ref.tasks.verify import is_correct

__all__ = ["LMMassConfig", "completion_logprobs", "layer_checkpointing", "lm_meta_step", "problem_seed",
           "solver_grpo_step"]

METHODS = ("mass", "solver_grpo")
OUTER_MODES = ("gold", "verifier")


@dataclass(frozen=True)
class LMMassConfig:
    """Hyper-parameters of LM meta-training (paper symbols in brackets; unpublished ones are ours).

    Attributes:
        method: "mass" (meta-learning) or "solver_grpo" (the RL-on-solving baseline, same budget).
        practice: what the generator writes (:data:`~mass_ref.lm.practice.PRACTICE_KINDS`): "related"
            (new problems like T, the paper's) or "self" (attempts at T itself, chapter 5's default).
        outer_mode: "gold" (MASS_gold: CE of R*) or "verifier" (MASS: GRPO with a verifier reward).
        train_generator, train_scorer: which parts MASS meta-learns.
        num_synthetic: m examples per problem in meta-training (paper: 12).
        num_inner_steps: differentiable inner SGD steps in meta-training (paper: 2).
        inner_lr: α of the inner SGD on the LoRA tensors (also used at test time).
        meta_batch_size: training problems per step.
        generator_lr, scorer_lr: Adam step sizes for φ (generator / solver) and η.
        scorer_hidden_states: whether the scorer reads the answer's hidden states beside its three
            statistics (:class:`~mass_ref.lm.scorer.LMScorer`; False: a linear ranking of the statistics).
        clip_eps: PPO clip ε. ppo_epochs: policy updates per batch of samples (with 1 the update is
            on-policy, the ratio is 1 and the clip never acts: plain policy gradient; the clip needs ≥ 2).
        gamma_solve: γ, weight of L_solve in the generator's loss.
        num_answers: k answers sampled per problem (verifier outer loss, Solver GRPO).
        temperature: sampling temperature of practice problems and answers.
        practice_max_new_tokens, answer_max_new_tokens: generation lengths.
        invalid_advantage: the advantage of an unparseable practice completion.
        meta_gradient: how step 5 differentiates through the inner loop, one of
            :data:`~mass_ref.metagrad.META_GRADIENT_MODES` ("unroll": one graph through all K steps;
            "checkpointed"/"forward_over_reverse": exact at one step's memory; "first_order"/"truncated":
            approximations; chapter 6). truncate: the steps kept by "truncated".
        per_problem_seeds: sample each problem's completions from its own seed (a function of the
            step seed and the problem's index in the step's batch) instead of one stream for the batch.
            Data-parallel training needs it (a rank's samples must not depend on the other ranks'
            problems); chapter 5's runs used the batch stream (False).
        precision: the compute precision of the step (:data:`PRECISIONS`): "auto" picks bf16 autocast on
            a GPU with native bf16 (compute capability >= 8.0) and fp32 everywhere else; "bf16" forces
            bf16 autocast; "fp32" turns autocast off. The LoRA tensors and the scorer stay fp32 in every
            case (:func:`~mass_ref.lm.amp.resolve_precision`).
        micro_batch_size: sequences per forward/backward pass in the policy updates (the generator's
            m × meta_batch_size completions, Solver GRPO's k × meta_batch_size answers); None: all at once.
            The gradient is the same (summed over chunks); the peak memory is bounded by the chunk.
        gradient_checkpointing: recompute the transformer's layers in the backward of the generator's
            policy update (the largest first-order batch, m × meta_batch_size completions).
    """

    method: str = "mass"
    outer_mode: str = "gold"
    practice: str = "related"
    train_generator: bool = True
    train_scorer: bool = True
    num_synthetic: int = 12
    num_inner_steps: int = 2
    inner_lr: float = 1.0
    meta_batch_size: int = 4
    generator_lr: float = 1e-3
    scorer_lr: float = 1e-3
    scorer_hidden_states: bool = True
    clip_eps: float = 0.2
    ppo_epochs: int = 1
    gamma_solve: float = 0.1
    num_answers: int = 4
    temperature: float = 1.0
    practice_max_new_tokens: int = 96
    answer_max_new_tokens: int = 48
    invalid_advantage: float = -1.0
    meta_gradient: str = "unroll"
    truncate: int | None = None
    per_problem_seeds: bool = False
    precision: str = "auto"
    micro_batch_size: int | None = None
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}; got {self.method!r}.")
        if self.outer_mode not in OUTER_MODES:
            raise ValueError(f"outer_mode must be one of {OUTER_MODES}; got {self.outer_mode!r}.")
        check_practice_kind(self.practice)
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
        check_meta_gradient_mode(self.meta_gradient, self.truncate, self.num_inner_steps)
        check_precision(self.precision)
        size = self.micro_batch_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"micro_batch_size must be None (one pass) or an integer >= 1; got {size!r}.")


def completion_logprobs(
    forward: Callable[..., Any], tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat,
    prompts: Sequence[str], completions: Sequence[str], *, device: torch.device,
) -> Tensor:
    """Mean token log-probability of each completion (and its eos) given its prompt, shape ``[n]``."""
    batch = sft_batch(tokenizer, list(zip(prompts, completions)), add_bos=fmt.add_bos).to(device)
    return -sft_losses_per_example(forward, batch)


def _adapted_answer_sampler(model: nn.Module, tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat,
                            problem: ArithmeticProblem, config: LMMassConfig, seed: int,
                            answers: list[str]) -> Callable[[dict[str, Tensor]], None]:
    """The verifier's ``on_adapted`` hook: k answers y_bj ~ π_φ'(· | T_b), appended to ``answers``.

    φ' is the meta-gradient's own φ_K (no second inner loop), written into the LoRA tensors for the
    sampling and restored bit for bit after. That is safe while the meta-gradient is under way: its
    graph and its stored trajectory never hold the module's own LoRA storage at this point (the unroll
    adapts clones; the other modes rebuild each step's graph from fresh leaves). Sampling is not
    differentiated: the answers are constants of the outer loss.
    """

    def sample(adapted: dict[str, Tensor]) -> None:
        with restored_lora(model) as lora, torch.no_grad():
            for name, tensor in lora.items():
                tensor.copy_(adapted[name])
            (group,) = sample_answers(model, tokenizer, [fmt.solve(problem.question)], num_samples=config.num_answers,
                                      temperature=config.temperature, max_new_tokens=config.answer_max_new_tokens,
                                      seed=seed, add_bos=fmt.add_bos)
        answers.extend(group)

    return sample


def _outer_loss(adapted: Callable[..., Any], tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat,
                problem: ArithmeticProblem, answers: list[str] | None, device: torch.device) -> Tensor:
    """L_b of step 4: the gold solution's CE (``answers`` None) or GRPO on the k answers with verifier rewards."""
    if answers is None:
        batch = sft_batch(tokenizer, [fmt.solve_pair(problem.question, problem.solution)], add_bos=fmt.add_bos)
        return sft_losses_per_example(adapted, batch.to(device)).mean()
    rewards = torch.tensor([float(is_correct(a, problem.answer)) for a in answers], device=device)
    advantages = group_advantages(rewards)
    if not bool(advantages.any()):  # all k answers right, or all wrong: L_b ≡ 0, so every attribution is 0
        return torch.zeros((), device=device)  # a constant: the meta-gradient skips its backward pass
    logp = completion_logprobs(adapted, tokenizer, fmt, [fmt.solve(problem.question)] * len(answers), answers,
                               device=device)
    return -(advantages * logp).mean()


def _pass_rate(problem: ArithmeticProblem, answers: list[str] | None) -> float:
    """The fraction of correct answers among the k samples (NaN in gold mode: none are sampled)."""
    return float("nan") if answers is None else sum(is_correct(a, problem.answer) for a in answers) / len(answers)


def problem_seed(step_seed: int, index: int) -> int:
    """The sampling seed of the problem at ``index`` of a step's batch (``per_problem_seeds``)."""
    return step_seed + 104_729 * (index + 1)


def _sample_groups(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[str], *, num_samples: int,
                   max_new_tokens: int, config: LMMassConfig, seed: int, first_index: int,
                   add_bos: bool) -> list[list[str]]:
    """``num_samples`` completions per prompt: one stream for the batch, or one per problem."""
    options = dict(num_samples=num_samples, temperature=config.temperature, max_new_tokens=max_new_tokens,
                   add_bos=add_bos)
    if not config.per_problem_seeds:
        return sample_answers(model, tokenizer, prompts, seed=seed, **options)
    return [sample_answers(model, tokenizer, [prompt], seed=problem_seed(seed, first_index + b), **options)[0]
            for b, prompt in enumerate(prompts)]


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
    first_index: int = 0,
    average_gradients: GradientAverager | None = None,
) -> dict[str, float]:
    """One MASS meta-step (steps 1–6 above) on ``problems``; updates φ and/or η in place.

    Data parallel (:class:`~mass_ref.distributed.DataParallel`): each rank passes its shard of the
    step's batch, ``first_index`` = the shard's position in the batch (it seeds the shard's samples
    as the full batch would with ``per_problem_seeds``) and ``average_gradients``, which averages
    the ranks' ``.grad`` before every optimiser step. Each rank's losses are means over its shard,
    so with equal shards the average is the full batch's gradient.
    """
    lora = lora_parameters(model)
    device = next(iter(lora.values())).device
    if config.meta_gradient != "first_order":
        require_eager_attention(model)
    m, batch_size = config.num_synthetic, len(problems)
    prompts = [practice_prompt_for(fmt, config.practice, p.question) for p in problems]
    completions = _sample_groups(model, tokenizer, prompts, num_samples=m, max_new_tokens=config.practice_max_new_tokens,
                                 config=config, seed=seed, first_index=first_index, add_bos=fmt.add_bos)
    use_scorer = config.train_scorer and scorer is not None
    outer, passes, advantages, rights, right_weights = [], [], [], [], []
    for b, (problem, group) in enumerate(zip(problems, completions)):
        raw = [parse_practice_completion(config.practice, problem.question, c) for c in group]
        valid = [i for i, pair in enumerate(raw) if pair is not None]
        attribution = torch.zeros(m)
        if valid:
            examples = [fmt.solve_pair(*raw[i]) for i in valid]
            if use_scorer:
                features = scorer_features(model, tokenizer, examples, add_bos=fmt.add_bos,
                                           context=scorer_context(config.practice, problem.question))
                with fp32_scope(device):  # s_i stay fp32 under a bf16 autocast (1/3 is not 0.33203125)
                    weights = scorer(features.to(device, torch.float32))
            else:
                weights = torch.full((len(valid),), 1.0 / len(valid), device=device, requires_grad=True)
            batch = sft_batch(tokenizer, examples, add_bos=fmt.add_bos).to(device)
            answers: list[str] | None = None if config.outer_mode == "gold" else []
            sampler = None if answers is None else _adapted_answer_sampler(
                model, tokenizer, fmt, problem, config, seed + 7919 * (first_index + b + 1), answers)
            meta = weight_meta_gradient(
                model, sft_losses_per_example, batch,
                lambda adapted, problem=problem, answers=answers: _outer_loss(adapted, tokenizer, fmt, problem,
                                                                              answers, device),
                weights=weights, inner_lr=config.inner_lr, num_steps=config.num_inner_steps, params=lora,
                mode=config.meta_gradient, truncate=config.truncate, with_params=False, on_adapted=sampler)
            if use_scorer:
                weights.backward(meta.weights / batch_size)  # chain rule into η: ∇_η mean_b L_b
            attribution[valid] = meta.weights.cpu().float()
            outer.append(meta.outer_loss.item())
            passes.append(_pass_rate(problem, answers))
            relative = (weights * len(valid) / weights.sum()).detach().cpu().tolist()  # 1 is uniform, whatever c
            for i, w in zip(valid, relative):
                right = practice_is_right(config.practice, problem, *raw[i])
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
        if average_gradients is not None:
            average_gradients(list(scorer.parameters()))
        optimizers["scorer"].step()
        optimizers["scorer"].zero_grad(set_to_none=True)
    policy_loss = float("nan")
    if config.train_generator:
        flat_prompts = [p for p in prompts for _ in range(m)]
        flat_completions = [c for group in completions for c in group]
        gold = sft_batch(tokenizer, [fmt.solve_pair(p.question, p.solution) for p in problems], add_bos=fmt.add_bos)
        policy_loss = clipped_policy_update(
            model, optimizers["generator"],
            lambda s: completion_logprobs(model, tokenizer, fmt, flat_prompts[s], flat_completions[s],
                                          device=device),
            torch.cat(advantages).to(device), **_policy_options(config),
            extra_loss=(lambda: config.gamma_solve * sft_losses_per_example(model, gold.to(device)).mean())
            if config.gamma_solve > 0 else None, average_gradients=average_gradients)
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


def _policy_options(config: LMMassConfig) -> dict[str, Any]:
    """The keyword arguments of :func:`~mass_ref.lm.policy_update.clipped_policy_update` a config sets."""
    return dict(ppo_epochs=config.ppo_epochs, clip_eps=config.clip_eps, micro_batch_size=config.micro_batch_size,
                gradient_checkpointing=config.gradient_checkpointing)


def solver_grpo_step(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    fmt: PromptFormat,
    problems: Sequence[ArithmeticProblem],
    config: LMMassConfig,
    optimizers: dict[str, torch.optim.Optimizer],
    *,
    seed: int,
    first_index: int = 0,
    average_gradients: GradientAverager | None = None,
) -> dict[str, float]:
    """One Solver-GRPO step: k answers per problem from π_φ, verifier rewards, clipped GRPO on φ.

    ``first_index`` and ``average_gradients``: data parallel, as in :func:`lm_meta_step`.
    """
    device = next(iter(lora_parameters(model).values())).device
    prompts = [fmt.solve(p.question) for p in problems]
    answers = _sample_groups(model, tokenizer, prompts, num_samples=config.num_answers,
                             max_new_tokens=config.answer_max_new_tokens, config=config, seed=seed,
                             first_index=first_index, add_bos=fmt.add_bos)
    rewards = torch.tensor([[float(is_correct(a, p.answer)) for a in group] for p, group in zip(problems, answers)])
    flat_prompts = [p for p in prompts for _ in range(config.num_answers)]
    flat_answers = [a for group in answers for a in group]
    policy_loss = clipped_policy_update(
        model, optimizers["generator"],
        lambda s: completion_logprobs(model, tokenizer, fmt, flat_prompts[s], flat_answers[s], device=device),
        group_advantages(rewards).flatten().to(device), **_policy_options(config), average_gradients=average_gradients)
    return {"answer_pass_rate": rewards.mean().item(), "policy_loss": policy_loss}
