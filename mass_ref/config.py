"""Run configurations for the command line: YAML files validated into typed dataclasses.

``experiment`` picks the config class: ``toy_mass`` → :class:`RunConfig` (notebooks/03_mass_toy.ipynb),
``lm_mass`` → :class:`LMRunConfig` (the LM experiment of chapter 5, :mod:`mass_ref.lm.experiment`).
A config file has a fixed shape; every field is checked before any work starts, and every bad
field fails with a message that names it (dotted, e.g. ``mass.inner_lr``, ``model.tiny.heads``,
``methods[1]``) and says what is allowed. YAML lists become tuples where a field is a tuple.

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

```yaml
experiment: lm_mass           # the LM experiment (mass_ref.lm.experiment)
seed: 0                       # seeds are seed, seed+1, ..., seed+n_seeds-1
n_seeds: 3
output_dir: runs/lm_mass_tiny
steps: 40                     # meta-steps per (method, seed)
checkpoint_every: 5
methods: [mass_gold, mass, solver_grpo]   # keys of mass_ref.lm.experiment.TRAINED_METHODS
model:                        # any field of mass_ref.lm.experiment.LMModelSpec
  name: tiny                  # or smollm2, or hub (with hub_id: Qwen/Qwen2.5-0.5B-Instruct, dtype, device)
  lora_rank: 4
  tiny: {steps: 1500}         # any field of mass_ref.lm.TinyLMSpec (its task family is the "tiny" data)
data:                         # mass_ref.lm.LMDataSpec: train tiny|gsm8k, test tiny|gsm8k|math500, local paths
  train: tiny
  test: tiny
mass:                         # any field of mass_ref.lm.LMMassConfig but method/outer_mode (set per method)
  num_synthetic: 12
  inner_lr: 1.0
evaluate:
  n_problems: 100
  num_examples: 6
cache_dir: build/cache        # where the tiny LM / the SmolLM2 conversion is cached
```

Introduced in notebooks/03_mass_toy.ipynb (toy_mass) and notebooks/05_mass_llm.ipynb (lm_mass).
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import yaml

from mass_ref.toy.mass import ToyMassConfig

if TYPE_CHECKING:
    from mass_ref.lm.experiment import LMModelSpec
    from mass_ref.lm.mass import LMMassConfig
    from mass_ref.lm.problems import LMDataSpec


class ConfigError(ValueError):
    """A config file or field is invalid; the message names the field and the fix."""


def _positive_int(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where} must be a positive integer; got {value!r}.")


def _lm_types() -> dict[str, type]:
    """The LM layer's config classes, imported on first use (it loads transformers; toy runs never need it)."""
    from mass_ref.lm.experiment import LMModelSpec
    from mass_ref.lm.mass import LMMassConfig
    from mass_ref.lm.problems import LMDataSpec

    return {"LMModelSpec": LMModelSpec, "LMMassConfig": LMMassConfig, "LMDataSpec": LMDataSpec}


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
class _Run:
    """The fields every experiment shares: which one, where it writes, its seed and its step budget."""

    EXPERIMENT: ClassVar[str]
    NOT_IN_FILE: ClassVar[dict[str, str]] = {}
    """Dotted fields a config file may not give, and why (the experiment sets them)."""

    experiment: str
    output_dir: str
    seed: int = 0
    steps: int = 600
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        if self.experiment != self.EXPERIMENT:
            raise ConfigError(f"experiment must be {self.EXPERIMENT!r} for {type(self).__name__}; "
                              f"got {self.experiment!r}.")
        if not self.output_dir.strip():
            raise ConfigError(f"output_dir must be a non-empty path, e.g. runs/{self.EXPERIMENT}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer; got {self.seed!r}.")
        _positive_int(self.steps, "steps")
        _positive_int(self.checkpoint_every, "checkpoint_every")

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-ready data (tuples as lists): what ``config.yaml`` records, and a valid config itself."""
        return _plain(dataclasses.asdict(self))


@dataclass(frozen=True)
class RunConfig(_Run):
    """One toy MASS run (``experiment: toy_mass``): ``python -m mass_ref train --config FILE``."""

    EXPERIMENT: ClassVar[str] = "toy_mass"

    base: BaseSection = field(default_factory=BaseSection)
    mass: ToyMassConfig = field(default_factory=ToyMassConfig)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)


@dataclass(frozen=True)
class LMRunConfig(_Run):
    """The LM experiment (``experiment: lm_mass``): every method of ``methods`` × every seed, then evaluation.

    ``mass`` holds :class:`~mass_ref.lm.LMMassConfig` with its default ``method``/``outer_mode``:
    :func:`~mass_ref.lm.experiment.train_lm_methods` sets both per trained method, so a config
    file may not give them (and :meth:`to_dict` leaves them out).
    """

    EXPERIMENT: ClassVar[str] = "lm_mass"
    NOT_IN_FILE: ClassVar[dict[str, str]] = {
        f"mass.{name}": "is set per trained method from `methods` (mass_gold: mass/gold, mass: mass/verifier, "
                        "solver_grpo: solver_grpo/gold, see mass_ref.lm.experiment.TRAINED_METHODS); remove it"
        for name in ("method", "outer_mode")}

    steps: int = 40
    checkpoint_every: int = 5
    n_seeds: int = 3
    methods: tuple[str, ...] = ("mass_gold", "mass", "solver_grpo")
    model: LMModelSpec = field(default_factory=lambda: _lm_types()["LMModelSpec"]())
    data: LMDataSpec = field(default_factory=lambda: _lm_types()["LMDataSpec"]())
    mass: LMMassConfig = field(default_factory=lambda: _lm_types()["LMMassConfig"]())
    evaluate: EvaluateSection = field(default_factory=lambda: EvaluateSection(n_problems=100))
    cache_dir: str = "build/cache"

    def __post_init__(self) -> None:
        from mass_ref.lm.experiment import ALL_LINEAR, TRAINED_METHODS
        from mass_ref.lm.tiny import TinyLMSpec, task_problems

        super().__post_init__()
        _positive_int(self.n_seeds, "n_seeds")
        if not self.methods:
            raise ConfigError(f"methods must name at least one trained method of {sorted(TRAINED_METHODS)}.")
        for i, method in enumerate(self.methods):
            if method not in TRAINED_METHODS:
                raise ConfigError(f"methods[{i}] must be one of {sorted(TRAINED_METHODS)} (base, base_ttt and "
                                  f"tt_ss need no training and are always evaluated); got {method!r}.")
            if method in self.methods[:i]:
                raise ConfigError(f"methods[{i}] repeats {method!r}; name each method once.")
        if not self.cache_dir.strip():
            raise ConfigError("cache_dir must be a non-empty path, e.g. build/cache.")
        for i, target in enumerate(self.model.lora_targets):  # else add_lora fails only after the model loads
            if target not in ALL_LINEAR:
                raise ConfigError(f"model.lora_targets[{i}] must be one of {ALL_LINEAR} (the linear layers of both "
                                  f"models); got {target!r}.")
        fraction = self.model.tiny.practice_fraction
        if not 0.0 <= fraction <= 1.0:  # else pretraining fails after the work started
            raise ConfigError(f"model.tiny.practice_fraction must be in [0, 1]; got {fraction!r}.")
        try:  # the task family (numbers, difficulties) must give both training and test problems
            task_problems(self.model.tiny, 0, split="test", seed=0)
        except ValueError as error:
            raise ConfigError(_dotted("model.tiny", TinyLMSpec, error)) from error

    @property
    def seeds(self) -> tuple[int, ...]:
        """``seed, seed + 1, ..., seed + n_seeds - 1``."""
        return tuple(range(self.seed, self.seed + self.n_seeds))

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        for dotted in self.NOT_IN_FILE:
            section, name = dotted.split(".")
            del data[section][name]
        return data


CONFIGS: dict[str, type[_Run]] = {"toy_mass": RunConfig, "lm_mass": LMRunConfig}
EXPERIMENTS = tuple(CONFIGS)


def _plain(data: Any) -> Any:
    if isinstance(data, dict):
        return {key: _plain(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_plain(value) for value in data]
    return data


def _dotted(where: str, cls: type, error: ValueError) -> str:
    """A section's own error, placed: ``inner_lr must be ...`` in ``mass`` → ``mass.inner_lr must be ...``."""
    text = str(error).removeprefix(f"{cls.__name__}.")
    if not where:
        return text
    first = re.split(r"[\s\[(]", text, maxsplit=1)[0]
    return f"{where}.{text}" if first in {f.name for f in dataclasses.fields(cls)} else f"{where}: {text}"


def _build(cls: type, data: Any, where: str, not_in_file: dict[str, str]) -> Any:
    """Instantiate dataclass ``cls`` from a mapping, checking names and types; ``where`` prefixes messages.

    ``not_in_file``: dotted fields that the file may not give, with the reason.
    """
    label = where or "the config file"
    if not isinstance(data, dict):
        raise ConfigError(f"{label} must be a mapping of field: value; got {type(data).__name__}.")
    hints = typing.get_type_hints(cls, localns=_lm_types() if cls is LMRunConfig else None)
    dotted_name = {f.name: f"{where}.{f.name}" if where else f.name for f in dataclasses.fields(cls)}
    for name in data:
        if dotted_name.get(name) in not_in_file:
            raise ConfigError(f"{dotted_name[name]} {not_in_file[dotted_name[name]]}.")
    names = [name for name, dotted in dotted_name.items() if dotted not in not_in_file]
    unknown = sorted(set(data) - set(names), key=str)
    if unknown:
        dotted = [f"{where}.{k}" if where else str(k) for k in unknown]
        raise ConfigError(f"unknown config field(s) {dotted}; {label} accepts {names}.")
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [f"{where}.{n}" if where else n for n in required if n not in data]
    if missing:
        raise ConfigError(f"missing required config field(s) {missing}.")
    values = {name: _value(hints[name], value, dotted_name[name], not_in_file) for name, value in data.items()}
    try:
        return cls(**values)
    except ConfigError:
        raise
    except ValueError as error:  # a section's own check, e.g. ToyMassConfig's
        raise ConfigError(_dotted(where, cls, error)) from error


def _value(expected: Any, value: Any, where: str, not_in_file: dict[str, str]) -> Any:
    """``value`` checked against the annotation ``expected``: a nested dataclass, a tuple or a scalar."""
    if dataclasses.is_dataclass(expected):
        return _build(expected, value, where, not_in_file)
    if typing.get_origin(expected) is tuple:
        args = typing.get_args(expected)
        variadic = len(args) == 2 and args[1] is Ellipsis
        if not isinstance(value, (list, tuple)) or not (variadic or len(value) == len(args)):
            names = [getattr(a, "__name__", str(a)) for a in args[:1 if variadic else None]]
            shape = f"a list of {names[0]}" if variadic else f"a list of {len(args)} values ({', '.join(names)})"
            raise ConfigError(f"{where} must be {shape}; got {value!r}.")
        types = args[:1] * len(value) if variadic else args
        return tuple(_value(t, v, f"{where}[{i}]", not_in_file) for i, (t, v) in enumerate(zip(types, value)))
    if not _has_type(value, expected):
        raise ConfigError(f"{where} must be of type {getattr(expected, '__name__', expected)}; got {value!r}.")
    return float(value) if expected is float else value


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


def parse_config(data: Any) -> RunConfig | LMRunConfig:
    """Validate a mapping (e.g. parsed YAML) into the config class its ``experiment`` names.

    Raises:
        ConfigError: naming the first bad field (dotted) and what it allows.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"the config file must be a mapping of field: value; got {type(data).__name__}.")
    if "experiment" not in data:
        raise ConfigError(f"missing required config field(s) ['experiment']; one of {EXPERIMENTS}.")
    cls = CONFIGS.get(data["experiment"]) if isinstance(data["experiment"], str) else None
    if cls is None:
        raise ConfigError(f"experiment must be one of {EXPERIMENTS}; got {data['experiment']!r}.")
    return _build(cls, data, "", cls.NOT_IN_FILE)


def load_config(path: str | Path) -> RunConfig | LMRunConfig:
    """Read and validate a YAML config file; raises :class:`ConfigError` naming the file or field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; see configs/ for examples.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from error
    return parse_config(data)
