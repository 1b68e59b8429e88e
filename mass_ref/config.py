"""Run configurations for the command line: YAML files validated into typed dataclasses.

A config file has a fixed shape; every field is checked before any work starts, and every bad
field fails with a message that names it (dotted, e.g. ``mass.inner_lr``) and says what is allowed:

```yaml
experiment: toy_mass          # which trainer (toy_mass: notebooks/03_mass_toy.ipynb)
seed: 0
output_dir: runs/toy_mass_gold
steps: 600                    # meta-steps
checkpoint_every: 100
base:                         # the pretrained parts (mass_ref.toy.build_toy_base)
  learner_iterations: 12000
  labeler_iterations: 3000
mass:                         # any field of mass_ref.toy.ToyMassConfig
  outer_mode: gold
evaluate:
  n_problems: 300
```

Introduced in notebooks/03_mass_toy.ipynb.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mass_ref.toy.mass import ToyMassConfig

EXPERIMENTS = ("toy_mass",)


class ConfigError(ValueError):
    """A config file or field is invalid; the message names the field and the fix."""


def _positive_int(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where} must be a positive integer; got {value!r}.")


@dataclass(frozen=True)
class BaseSection:
    """How long to pretrain the learner (MAML) and the generator's labeller."""

    learner_iterations: int = 12_000
    labeler_iterations: int = 3_000

    def __post_init__(self) -> None:
        _positive_int(self.learner_iterations, "base.learner_iterations")
        _positive_int(self.labeler_iterations, "base.labeler_iterations")


@dataclass(frozen=True)
class EvaluateSection:
    """Held-out evaluation: problems, and the test-time budget (m examples, inner steps)."""

    n_problems: int = 300
    num_examples: int = 6
    num_inner_steps: int = 1

    def __post_init__(self) -> None:
        for name in ("n_problems", "num_examples", "num_inner_steps"):
            _positive_int(getattr(self, name), f"evaluate.{name}")


@dataclass(frozen=True)
class RunConfig:
    """One training run: ``python -m mass_ref train --config FILE``."""

    experiment: str
    output_dir: str
    seed: int = 0
    steps: int = 600
    checkpoint_every: int = 100
    base: BaseSection = field(default_factory=BaseSection)
    mass: ToyMassConfig = field(default_factory=ToyMassConfig)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)

    def __post_init__(self) -> None:
        if self.experiment not in EXPERIMENTS:
            raise ConfigError(f"experiment must be one of {EXPERIMENTS}; got {self.experiment!r}.")
        if not self.output_dir.strip():
            raise ConfigError("output_dir must be a non-empty path, e.g. runs/toy_mass_gold.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer; got {self.seed!r}.")
        _positive_int(self.steps, "steps")
        _positive_int(self.checkpoint_every, "checkpoint_every")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, data: Any, where: str) -> Any:
    """Instantiate dataclass ``cls`` from a mapping, checking names and types; ``where`` prefixes messages."""
    label = where or "the config file"
    if not isinstance(data, dict):
        raise ConfigError(f"{label} must be a mapping of field: value; got {type(data).__name__}.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        dotted = [f"{where}.{k}" if where else str(k) for k in unknown]
        raise ConfigError(f"unknown config field(s) {dotted}; {label} accepts {names}.")
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [f"{where}.{n}" if where else n for n in required if n not in data]
    if missing:
        raise ConfigError(f"missing required config field(s) {missing}.")
    values = {}
    for name, value in data.items():
        dotted, expected = f"{where}.{name}" if where else name, hints[name]
        if dataclasses.is_dataclass(expected):
            values[name] = _build(expected, value, dotted)
        elif not _has_type(value, expected):
            raise ConfigError(f"{dotted} must be of type {getattr(expected, '__name__', expected)}; got {value!r}.")
        else:
            values[name] = float(value) if expected is float else value
    try:
        return cls(**values)
    except ConfigError:
        raise
    except ValueError as error:  # a section's own check, e.g. ToyMassConfig's
        raise ConfigError(f"{where}: {error}" if where else str(error)) from error


def _has_type(value: Any, expected: Any) -> bool:
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is str:
        return isinstance(value, str)
    return True


def parse_config(data: Any) -> RunConfig:
    """Validate a mapping (e.g. parsed YAML) into a :class:`RunConfig`; raises :class:`ConfigError`."""
    return _build(RunConfig, data, "")


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a YAML config file; raises :class:`ConfigError` naming the file or field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; see configs/ for examples.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from error
    return parse_config(data)
