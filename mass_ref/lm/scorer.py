"""The LM scorer s_η: ranks one problem's m practice examples and turns the ranking into weights.

Features (:func:`scorer_features`, computed once per example by the *base* model, adapters disabled,
no gradient, so they do not move while φ is meta-trained). For example i = (p_i, a_i), read as
``context + p_i + a_i``:

* h_i ∈ R^H: the last layer's hidden states, averaged over the positions that predict a_i's tokens;
* the model's own confidence in a_i: its geometric-mean token probability exp(−mean NLL) and its
  least likely token's probability exp(−max NLL) (a single wrong digit in ``12 * 3 = 38`` shows up
  in the minimum);
* v_i: the share of the m examples whose final answer equals a_i's (self-consistency's vote);
* e_i: the share of a_i's worked equations whose arithmetic holds
  (:func:`~mass_ref.lm.practice.equations_hold`): a label-free check of the steps, computed exactly
  rather than by the model.

All four statistics lie in [0, 1]. That matters for learning them: Adam moves every weight by about
the same amount per step, so a feature on a larger scale (a raw NLL of 0–10 nats) would get a larger
say in the ranking for no other reason.

Weights: a ranking normalised within each problem (a softmax with a learned temperature
τ = exp(log τ)) times one learned, global step-size multiplier c = exp(log c)::

    u_i = (exp(−nll_mean_i), exp(−nll_max_i), v_i, e_i)
    z_i = f_η(LayerNorm(h_i), u_i) + b_η · u_i,   f_η = Linear → tanh → Linear   (hidden states on)
    z_i = b_η · u_i                                                               (hidden states off)
    s_i = c · exp(z_i / τ) / Σ_j exp(z_j / τ)      (Σ_i s_i = c: the inner step is c·α)

The linear term b_η · u_i lets the four scalar signals act directly instead of competing with H
hidden-state inputs. ``use_hidden_states=False`` keeps only that term: six numbers in all (b_η, τ,
c). Chapter 5 measured why one would: meta-trained for 100 steps of 4 problems, the hidden-state
network ranks the training problems' attempts but not those of held-out skill combinations, while
the statistics rank both alike. It also measured why e_i is there: the model's own confidence and
vote rank its attempts (AUC ≈ 0.8) but pick a right one no more often than its greedy answer is
right, because they mostly restate what greedy decoding already prefers; a wrong step does not. f_η's last layer and b_η start at zero and c at 1, so an untrained scorer gives
s_i = 1/m, exactly TT-SS's weights. The two parts are kept apart on purpose: the softmax can only
*re-rank* one problem's examples, and c (:attr:`LMScorer.step_scale`, reported by chapter 5) says
how large a step the meta-gradient wants on such data; c → 0 would mean "do not update at all",
which a softmax alone could never hide. ∂L/∂log c = Σ_i s_i ∂L/∂s_i comes through the same chain
rule as the rest of η. :meth:`LMScorer.logits` gives z_i/τ, comparable across problems (for AUCs).

Introduced in notebooks/05_mass_llm.ipynb.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from mass_ref.lm.practice import answer_agreement, equations_hold
from mass_ref.lm.sft import IGNORE_INDEX, sft_batch

__all__ = ["NUM_STATS", "LMScorer", "scorer_features"]

NUM_STATS = 4
"""Scalar features after the hidden state: exp(−mean token NLL), exp(−max token NLL), answer agreement, equations that hold."""


def scorer_features(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[tuple[str, str]],
    *,
    context: str = "",
    add_bos: bool = False,
    batch_size: int = 16,
) -> Tensor:
    """Features of m examples for :class:`LMScorer`, shape ``[m, H + NUM_STATS]`` (no grad, float32).

    ``context`` is prepended to every prompt (e.g. ``"Problem: T\\n"`` for related practice, so the
    scorer sees the target). A peft model is read with its adapters disabled. Under a bf16 autocast the
    forward runs in bf16, the features are still float32 (the scorer runs in fp32: :func:`~mass_ref.lm.amp.fp32_scope`).
    """
    if not examples:
        raise ValueError("examples is empty; the scorer needs at least one (prompt, answer) pair.")
    pairs = [(context + prompt, answer) for prompt, answer in examples]
    votes = torch.tensor(answer_agreement([answer for _, answer in examples]), dtype=torch.float32)
    checks = torch.tensor([equations_hold(answer) for _, answer in examples], dtype=torch.float32)
    disable = getattr(model, "disable_adapter", None)
    device = next(model.parameters()).device
    rows = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), (disable() if disable is not None else contextlib.nullcontext()):
            for start in range(0, len(pairs), batch_size):
                batch = sft_batch(tokenizer, pairs[start:start + batch_size], add_bos=add_bos).to(device)
                targets = batch.labels[:, 1:]
                predicts = (targets != IGNORE_INDEX).float()  # position t predicts a supervised token at t + 1
                keep = predicts.any(0).nonzero().flatten()  # the LM head runs only where some answer is scored
                out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True,
                            use_cache=False, logits_to_keep=keep)
                nll = torch.nn.functional.cross_entropy(out.logits.float().transpose(1, 2), targets[:, keep],
                                                        ignore_index=IGNORE_INDEX, reduction="none")
                nll = nll.new_zeros(targets.shape).index_copy(1, keep, nll)  # [n, T−1], 0 where not scored
                count = predicts.sum(-1)
                hidden = (out.hidden_states[-1][:, :-1].float() * predicts.unsqueeze(-1)).sum(1) / count.unsqueeze(-1)
                confidence = torch.stack([(-nll.sum(-1) / count).exp(), (-nll.max(-1).values).exp()], dim=-1)
                rows.append(torch.cat([hidden, confidence], dim=-1).cpu())
    finally:
        model.train(was_training)
    return torch.cat([torch.cat(rows), votes.unsqueeze(-1), checks.unsqueeze(-1)], dim=-1)


class LMScorer(nn.Module):
    """s_η: features ``[m, H + NUM_STATS]`` → weights ``[m]`` summing to c (learned); 1/m at initialisation.

    ``use_hidden_states=False``: the hidden-state columns are ignored (z = b_η · u), see the module docstring.
    """

    def __init__(self, hidden_size: int, hidden: int = 64, *, use_hidden_states: bool = True) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.use_hidden_states = use_hidden_states
        if use_hidden_states:
            self.norm = nn.LayerNorm(hidden_size)
            self.net = nn.Sequential(nn.Linear(hidden_size + NUM_STATS, hidden), nn.Tanh(), nn.Linear(hidden, 1))
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)
        self.stats = nn.Linear(NUM_STATS, 1, bias=False)  # b_η
        nn.init.zeros_(self.stats.weight)
        self.log_temperature = nn.Parameter(torch.zeros(()))
        self.log_step_scale = nn.Parameter(torch.zeros(()))

    @property
    def step_scale(self) -> float:
        """c: the learned multiplier of the inner step size (the weights of one problem sum to c)."""
        return float(self.log_step_scale.detach().exp())

    def logits(self, features: Tensor) -> Tensor:
        """z_i / τ, shape ``[m]``: comparable across problems (the softmax's input)."""
        expected = self.hidden_size + NUM_STATS
        if features.ndim != 2 or features.shape[-1] != expected:
            raise ValueError(f"features must have shape [m, {expected}] (scorer_features of a model with hidden "
                             f"size {self.hidden_size}); got {tuple(features.shape)}.")
        features = features.to(self.log_temperature.dtype)
        hidden, stats = features[:, :self.hidden_size], features[:, self.hidden_size:]
        z = self.stats(stats)[..., 0]
        if self.use_hidden_states:
            z = z + self.net(torch.cat([self.norm(hidden), stats], dim=-1))[..., 0]
        return z / self.log_temperature.exp()

    def forward(self, features: Tensor) -> Tensor:
        return self.log_step_scale.exp() * torch.softmax(self.logits(features), dim=0)
