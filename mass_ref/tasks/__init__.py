"""Task families: each module samples problems and knows their answers."""

from mass_ref.tasks.sine import SineTasks, sample_sine_tasks, sine_function

__all__ = ["SineTasks", "sample_sine_tasks", "sine_function"]
