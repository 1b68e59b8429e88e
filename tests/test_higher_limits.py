"""Where higher 0.2.1 works (plain modules, GPT-2) and where it is refused up front (peft, Llama)."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import Tensor
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from mass_ref import inner_adapt

VOCAB, SEQ = 32, 8


def lm_loss_per_example(forward, batch: Tensor) -> Tensor:
    """Next-token cross-entropy averaged over positions, one value per sequence: ``[n]``."""
    logits = forward(input_ids=batch).logits[:, :-1]
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1), reduction="none")
    return ce.view(batch.shape[0], -1).mean(-1)


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=SEQ,
                         attn_implementation="eager", bos_token_id=0, eos_token_id=1)
    return LlamaForCausalLM(config).double().eval()


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2, n_positions=SEQ,
                        attn_implementation="eager", bos_token_id=0, eos_token_id=1)
    return GPT2LMHeadModel(config).double().eval()  # eval: dropout would make the backends differ


def batch() -> Tensor:
    return torch.randint(0, VOCAB, (3, SEQ), generator=torch.Generator().manual_seed(0))


def test_higher_refuses_llama_and_names_torch_func() -> None:
    with pytest.raises(ValueError, match="torch.func"):
        inner_adapt(tiny_llama(), lm_loss_per_example, batch(), inner_lr=0.1, backend="higher")


def test_higher_refuses_peft_and_names_torch_func() -> None:
    model = get_peft_model(tiny_gpt2(), LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True))
    with pytest.raises(ValueError, match="peft.*torch.func"):
        inner_adapt(model, lm_loss_per_example, batch(), inner_lr=0.1, backend="higher")


def test_higher_and_torch_func_agree_on_gpt2() -> None:
    model, data = tiny_gpt2(), batch()
    reference = copy.deepcopy(model)  # a plain, non-differentiable SGD loop (tied embeddings included)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        lm_loss_per_example(reference, data).mean().backward()
        optimizer.step()
    values = []
    for backend in ("higher", "torch.func"):
        adapted = inner_adapt(model, lm_loss_per_example, data, inner_lr=0.1, num_steps=2, backend=backend)
        loss = lm_loss_per_example(adapted, data).mean()
        values.append((loss.detach(), torch.autograd.grad(loss, model.lm_head.weight)[0]))
    assert abs(values[0][0] - values[1][0]).item() <= 1e-10
    assert abs(values[0][0] - lm_loss_per_example(reference, data).mean()).item() <= 1e-10
    assert (values[0][1] - values[1][1]).abs().max().item() <= 1e-10


def test_torch_func_adapts_only_lora_tensors_of_a_peft_llama() -> None:
    model = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    lora = {name: p for name, p in model.named_parameters() if "lora_" in name}
    assert lora and all(p.requires_grad for p in lora.values())
    data = batch()
    before = lm_loss_per_example(model, data).mean()
    adapted = inner_adapt(model, lm_loss_per_example, data, inner_lr=0.5, num_steps=2, backend="torch.func", params=lora)
    after = lm_loss_per_example(adapted, data).mean()
    assert set(adapted.params) == set(lora)
    assert after < before  # the update moved the LoRA tensors downhill
    grads = torch.autograd.grad(after, list(lora.values()))
    assert any(g.abs().sum() > 0 for g in grads)
