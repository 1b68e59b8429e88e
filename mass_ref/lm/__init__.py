"""Language models for the LM chapters: a locally trained tokenizer, a tiny Llama, SmolLM2-135M
offline, LoRA adapters, and the weighted SFT loss the inner loop differentiates.

To be introduced in notebooks/04_lm_test_time_training.ipynb (not written yet).
"""

from mass_ref.lm.models import (
    EAGER_IMPLEMENTATIONS,
    adapt_lora,
    add_lora,
    build_tiny_lm,
    load_lm,
    load_smollm2,
    lora_parameters,
    pretrain_lm,
    require_eager_attention,
    save_lm,
    smollm2_gguf_path,
    tiny_llama_config,
)
from mass_ref.lm.sft import (
    IGNORE_INDEX,
    SFTBatch,
    collate_sft,
    left_pad_prompts,
    sft_batch,
    sft_losses_per_example,
    token_losses_to_example_means,
)
from mass_ref.lm.precision import EXACT_EAGER, use_exact_float64
from mass_ref.lm.tokenizer import train_tokenizer
from mass_ref.lm.generate import accuracy, default_gold, generate_answers, sample_answers
from mass_ref.lm.timing import time_sft_and_meta_step
from mass_ref.lm.ttt import (
    OPTIMIZERS,
    adapted_lora,
    lora_sft_steps,
    lora_sft_steps_on_batch,
    restored_lora,
    ttt_accuracy,
)

__all__ = [
    "EAGER_IMPLEMENTATIONS",
    "EXACT_EAGER",
    "OPTIMIZERS",
    "IGNORE_INDEX",
    "SFTBatch",
    "adapt_lora",
    "add_lora",
    "build_tiny_lm",
    "collate_sft",
    "left_pad_prompts",
    "load_lm",
    "load_smollm2",
    "lora_parameters",
    "pretrain_lm",
    "require_eager_attention",
    "restored_lora",
    "save_lm",
    "sft_batch",
    "sft_losses_per_example",
    "smollm2_gguf_path",
    "tiny_llama_config",
    "token_losses_to_example_means",
    "train_tokenizer",
    "use_exact_float64",
    # answering and test-time training
    "accuracy",
    "adapted_lora",
    "default_gold",
    "generate_answers",
    "lora_sft_steps",
    "lora_sft_steps_on_batch",
    "sample_answers",
    "time_sft_and_meta_step",
    "ttt_accuracy",
]
