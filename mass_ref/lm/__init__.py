"""Language models for the LM chapters: a locally trained tokenizer, a tiny Llama, SmolLM2-135M
offline, LoRA adapters, and the weighted SFT loss the inner loop differentiates.

Introduced in notebooks/04_lm_test_time_training.ipynb (models, LoRA, test-time training),
notebooks/05_mass_llm.ipynb (scorer, meta-training, evaluation of the methods) and
notebooks/07_mass_gpu.ipynb (hub models, GSM8K/MATH-500 problem sources, data-parallel training).
The cost measurements of notebooks/06_scalable_metagradients.ipynb live in
:mod:`mass_ref.lm.metagrad_cost` (import it explicitly).
"""

from mass_ref.lm.models import (
    EAGER_IMPLEMENTATIONS,
    inner_adapt_lora,
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
from mass_ref.lm.amp import PRECISIONS, resolve_precision
from mass_ref.lm.generate import accuracy, default_gold, generate_answers, sample_answers
from mass_ref.lm.timing import time_sft_and_meta_step
from mass_ref.lm.formats import PLAIN, PromptFormat, chat_format, parse_practice, pretraining_corpus
from mass_ref.lm.tiny import TinyLMSpec, pretrained_tiny_lm, task_problems
from mass_ref.lm.scorer import NUM_STATS, LMScorer, scorer_features
from mass_ref.lm.mass import (LMMassConfig, completion_logprobs, layer_checkpointing, lm_meta_step, problem_seed,
                              solver_grpo_step)
from mass_ref.lm.policy_update import GradientAverager, clipped_policy_update
from mass_ref.lm.problems import LMDataSpec, ProblemSource, TextProblem, text_problems
from mass_ref.lm.trainer import train_lm_mass
from mass_ref.lm.spec import ALL_LINEAR, LMModelSpec, load_lm_for_mass
from mass_ref.lm.experiment import (
    EVAL_METHODS,
    PAIRED_DIFFERENCES,
    SHIPPED_RUNS,
    TINY_ONLY_ROWS,
    TRAINED_METHODS,
    as_problem_source,
    checkpoint_path,
    evaluate_lm_methods,
    evaluation_rows,
    load_trained_state,
    model_fingerprint,
    train_lm_methods,
    use_shipped_runs,
)
from mass_ref.lm.run_config import LMRunConfig, run_memory_estimates
from mass_ref.lm.memory import (MemoryEstimate, ModelShape, generation_memory, measure_peak_bytes, meta_gradient_memory,
                                 policy_chunk_memory, weights_memory)
from mass_ref.lm.summary import model_results, summarize_lm_methods
from mass_ref.lm.practice import (
    PRACTICE_KINDS,
    answer_agreement,
    equations_hold,
    parse_practice_completion,
    practice_is_right,
    practice_prompt_for,
)
from mass_ref.lm.evaluate import (
    PracticeSet,
    checked_only,
    practice_sets,
    random_practice,
    related_practice,
    right_only,
    scorer_auc,
    selection_rates,
    ttt_results,
)
from mass_ref.lm.per_problem_lora import PerProblemLoRA, per_problem_lora, sgd_per_problem, stack_lora
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
    "inner_adapt_lora",
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
    "PerProblemLoRA",
    "per_problem_lora",
    "sgd_per_problem",
    "stack_lora",
    "default_gold",
    "generate_answers",
    "lora_sft_steps",
    "lora_sft_steps_on_batch",
    "sample_answers",
    "time_sft_and_meta_step",
    "ttt_accuracy",
    # prompts, the tiny arithmetic LM
    "PLAIN",
    "PromptFormat",
    "TinyLMSpec",
    "chat_format",
    "parse_practice",
    "pretrained_tiny_lm",
    "pretraining_corpus",
    "task_problems",
    # MASS on an LM
    "LMMassConfig",
    "LMScorer",
    "PRECISIONS",
    "resolve_precision",
    "PracticeSet",
    "completion_logprobs",
    "clipped_policy_update",
    "GradientAverager",
    "layer_checkpointing",
    # the memory model (docs/scaling.md)
    "MemoryEstimate",
    "ModelShape",
    "generation_memory",
    "measure_peak_bytes",
    "meta_gradient_memory",
    "policy_chunk_memory",
    "run_memory_estimates",
    "weights_memory",
    "lm_meta_step",
    "NUM_STATS",
    "PRACTICE_KINDS",
    "answer_agreement",
    "equations_hold",
    "parse_practice_completion",
    "practice_is_right",
    "practice_prompt_for",
    "checked_only",
    "practice_sets",
    "right_only",
    "scorer_features",
    "random_practice",
    "related_practice",
    "scorer_auc",
    "selection_rates",
    "solver_grpo_step",
    "ttt_results",
    "problem_seed",
    "train_lm_mass",
    # problem sources (chapter 7)
    "LMDataSpec",
    "ProblemSource",
    "TextProblem",
    "text_problems",
    # the chapter-5 experiment
    "ALL_LINEAR",
    "EVAL_METHODS",
    "LMModelSpec",
    "LMRunConfig",
    "PAIRED_DIFFERENCES",
    "SHIPPED_RUNS",
    "TINY_ONLY_ROWS",
    "TRAINED_METHODS",
    "as_problem_source",
    "checkpoint_path",
    "evaluate_lm_methods",
    "evaluation_rows",
    "load_trained_state",
    "load_lm_for_mass",
    "model_fingerprint",
    "model_results",
    "summarize_lm_methods",
    "train_lm_methods",
    "use_shipped_runs",
]
