"""The ``higher`` backend of :func:`mass_ref.inner.inner_adapt`: the only module that imports higher.

higher 0.2.1 rebuilds a module's class with a patched copy (``higher.monkeypatch``) whose
parameters are plain tensors, and a differentiable optimiser that writes θ_{t+1} = θ_t − α g_t
while keeping the graph. Two model kinds break that patching (measured, see ../shared/README.md):

* peft-wrapped models: ``TypeError: Cannot create a consistent method resolution order (MRO)``;
* Llama-family transformers models: ``MonkeyPatched.__init__() missing ... 'root'`` when the model
  slices its ``nn.ModuleList``.

Both are refused up front with a message that names the ``torch.func`` backend.

Introduced in notebooks/01_maml_sine.ipynb.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mass_ref.inner import PerExampleLoss, check_finite_trajectory, first_non_finite, weighted_inner_loss

# transformers architectures higher has been checked to patch (GPT-2 without peft).
HIGHER_SAFE_TRANSFORMERS = ("gpt2",)


def check_higher_can_patch(model: nn.Module) -> None:
    """Raise ``ValueError`` if higher 0.2.1 is known to fail on ``model``; otherwise do nothing."""
    for module in model.modules():
        if type(module).__module__.startswith("peft."):
            raise ValueError(
                f"backend='higher' cannot adapt a peft-wrapped model ({type(module).__name__}): higher "
                "0.2.1 fails to build its patched class (inconsistent MRO for bases Module, ABC). "
                "Use backend='torch.func' with params=<the LoRA tensors>."
            )
    is_transformers = any(cls.__module__.startswith("transformers.") for cls in type(model).__mro__)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if is_transformers and model_type not in HIGHER_SAFE_TRANSFORMERS:
        raise ValueError(
            f"backend='higher' cannot adapt {type(model).__name__} (model_type={model_type!r}): higher "
            "0.2.1 breaks when transformers models slice their nn.ModuleList (Llama family and most "
            f"others); it is verified only for {HIGHER_SAFE_TRANSFORMERS}. Use backend='torch.func'."
        )


def higher_inner_loop(
    model: nn.Module,
    loss_fn: PerExampleLoss,
    batch: Any,
    start: dict[str, Tensor],
    lrs: dict[str, float | Tensor],
    weights: Tensor | None,
    num_steps: int,
    first_order: bool,
) -> dict[str, Tensor]:
    """Run the inner loop with ``higher``; arguments as validated by ``inner_adapt``.

    Raises:
        ~mass_ref.inner.NonFiniteError: the loop diverged (names the step), as the kernel does.
    """
    check_higher_can_patch(model)
    import higher

    named = dict(model.named_parameters())
    # higher differentiates only tensors that require grad and would silently skip the others;
    # constants (e.g. values given under torch.no_grad) become fresh leaves, like torch.func does.
    start = {name: p if p.requires_grad else p.detach().requires_grad_() for name, p in start.items()}
    # One parameter group per adapted tensor, so that each may carry its own (tensor) step size.
    optimizer = torch.optim.SGD([{"params": [named[name]]} for name in start], lr=1.0)
    fmodel = higher.monkeypatch(model, copy_initial_weights=False, track_higher_grads=True)
    fmodel.update_params([start.get(name, p) for name, p in named.items()])
    diffopt = higher.get_diff_optim(
        optimizer,
        model.parameters(),
        fmodel=fmodel,
        track_higher_grads=True,
        override={"lr": [lrs[name] for name in start]},
    )
    # First order keeps higher's graph (so θ_K still depends on θ_0 and α) but treats the inner
    # gradients as constants; track_higher_grads=False would instead cut θ_K off from θ_0.
    callback = _detach_all if first_order else None
    states, losses = [start], []  # references to higher's own tensors: kept only to name a failing step
    with torch.enable_grad():  # the inner loop needs gradients even when called under no_grad
        for _ in range(num_steps):
            loss = weighted_inner_loss(loss_fn(fmodel, batch), weights)
            diffopt.step(loss, grad_callback=callback)
            fast = dict(zip(named, fmodel.fast_params))
            states.append({name: fast[name] for name in start})
            losses.append(loss.detach())
    # the kernel's check, once after the last step (see mass_ref.inner.check_finite_trajectory)
    check_finite_trajectory(losses, states[-1], locate=lambda: first_non_finite(states, losses, lrs))
    return states[-1]


def _detach_all(grads: Sequence[Tensor | None]) -> list[Tensor | None]:
    return [None if g is None else g.detach() for g in grads]
