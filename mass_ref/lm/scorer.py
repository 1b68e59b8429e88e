"""The LM scorer s_η: a small head over the frozen model's pooled hidden states of (T, p_i, a_i).

For a target question T and m synthetic examples (p_i, a_i) the scorer reads the text
``"Problem: T\\n" + p_i + a_i`` with the *base* model (LoRA adapters disabled, no gradient), takes
the mean of the last layer's hidden states over the tokens, h_i ∈ R^H, and maps it to a weight

    s_i = (4 / m) · σ(f_η(h_i) − log 3),       f_η = Linear(H, d) → tanh → Linear(d, 1)

f_η's last layer starts at zero, so an untrained scorer gives s_i = 1/m (plain SFT, what TT-SS
uses); the sigmoid keeps every weight in (0, 4/m), so a trained scorer can switch an example off
or count it up to four times, but cannot make the inner loss ascend on one. The features depend
only on the frozen base model, so they are computed once per example, outside every graph.

Introduced in notebooks/05_mass_llm.ipynb.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from mass_ref.lm.sft import left_pad_prompts

__all__ = ["LMScorer", "pooled_features"]


def pooled_features(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    target: str,
    examples: Sequence[tuple[str, str]],
    *,
    batch_size: int = 16,
) -> Tensor:
    """Mean-pooled last hidden states of ``"Problem: T\\n" + prompt + answer``, shape ``[m, H]`` (no grad, model dtype).

    A peft model is read with its adapters disabled, so the features do not move while the
    adapters are meta-trained.
    """
    if not examples:
        raise ValueError("examples is empty; the scorer needs at least one (prompt, answer) pair.")
    texts = [f"Problem: {target}\n{prompt}{answer}" for prompt, answer in examples]
    disable = getattr(model, "disable_adapter", None)
    features = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), (disable() if disable is not None else contextlib.nullcontext()):
            for start in range(0, len(texts), batch_size):
                ids, mask = left_pad_prompts(tokenizer, texts[start : start + batch_size])
                device = next(model.parameters()).device
                out = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True,
                            use_cache=False)
                hidden, weight = out.hidden_states[-1], mask.to(device).unsqueeze(-1).to(out.hidden_states[-1].dtype)
                features.append((hidden * weight).sum(1) / weight.sum(1))
    finally:
        model.train(was_training)
    return torch.cat(features)


class LMScorer(nn.Module):
    """s_η: pooled features ``[m, H]`` → weights ``[m]`` in (0, 4/m); exactly 1/m at initialisation."""

    def __init__(self, feature_size: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(feature_size), nn.Linear(feature_size, hidden), nn.Tanh(),
                                 nn.Linear(hidden, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, features: Tensor) -> Tensor:
        if features.ndim != 2:
            raise ValueError(f"features must have shape [m, H]; got {tuple(features.shape)}.")
        m = features.shape[0]
        features = features.to(self.net[1].weight.dtype)  # the frozen LM may run in another precision
        return 4.0 / m * torch.sigmoid(self.net(features) - math.log(3.0))[..., 0]
