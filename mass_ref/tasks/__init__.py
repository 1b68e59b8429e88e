"""Task families: each module samples problems and knows their answers."""

from mass_ref.tasks.arithmetic import (
    ArithmeticProblem,
    arithmetic_dataset,
    sample_arithmetic_problems,
    split_by_skill_combination,
    to_records,
)
from mass_ref.tasks.benchmarks import BenchmarkUnavailableError, load_gsm8k, load_math500, read_records
from mass_ref.tasks.sine import SineTasks, sample_sine_tasks, sine_function
from mass_ref.tasks.verify import extract_answer, is_correct, normalize_number

__all__ = [
    "ArithmeticProblem",
    "BenchmarkUnavailableError",
    "SineTasks",
    "arithmetic_dataset",
    "extract_answer",
    "is_correct",
    "load_gsm8k",
    "load_math500",
    "normalize_number",
    "read_records",
    "sample_arithmetic_problems",
    "sample_sine_tasks",
    "sine_function",
    "split_by_skill_combination",
    "to_records",
]
