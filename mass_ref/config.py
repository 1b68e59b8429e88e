"""Run configurations for the command line: YAML files validated into typed dataclasses.

This module is the generic part: the dataclass-from-YAML validator, the fields every run shares
(:class:`ExperimentConfig`) and the registry :data:`EXPERIMENTS`, which maps a file's
``experiment`` to the module that defines its config class and runs it. Each experiment keeps its
own config next to its code, and is imported only when a file names it (so this module imports
no experiment):

- ``toy_mass`` → :mod:`mass_ref.toy.experiment` (:class:`~mass_ref.toy.experiment.ToyRunConfig`,
  notebooks/03_mass_toy.ipynb);
- ``lm_mass`` → :mod:`mass_ref.lm.run_config` (:class:`~mass_ref.lm.run_config.LMRunConfig`, the LM
  experiment of chapter 5, :mod:`mass_ref.lm.experiment`).

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
model:                        # any field of mass_ref.lm.spec.LMModelSpec
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
import importlib
import math
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import yaml

__all__ = ["CONFIG_DIR", "EXPERIMENTS", "ConfigError", "EvaluateSection", "ExperimentConfig", "check_positive_int",
           "config_file", "experiment_module", "input_path", "load_config", "parse_config", "place_error",
           "shipped_configs"]


class ConfigError(ValueError):
    """A config file or field is invalid; the message names the field and the fix."""


def check_positive_int(value: Any, where: str) -> None:
    """Raise :class:`ConfigError` naming ``where`` unless ``value`` is an integer >= 1 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where} must be a positive integer; got {value!r}.")


@dataclass(frozen=True)
class EvaluateSection:
    """Held-out evaluation: problems, and the test-time budget (m examples, inner steps)."""

    n_problems: int = 300
    num_examples: int = 6
    num_inner_steps: int = 1

    def __post_init__(self) -> None:
        for name in ("n_problems", "num_examples", "num_inner_steps"):
            check_positive_int(getattr(self, name), f"evaluate.{name}")


@dataclass(frozen=True)
class ExperimentConfig:
    """The fields every experiment's run config shares: which one, where it writes, its seed and step budget.

    A subclass sets ``EXPERIMENT`` (its name in :data:`EXPERIMENTS`) and adds its sections as
    dataclass fields; nested dataclasses, tuples and scalars are validated by :func:`parse_config`.
    """

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
        check_positive_int(self.steps, "steps")
        check_positive_int(self.checkpoint_every, "checkpoint_every")

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-ready data (tuples as lists): what ``config.yaml`` records, and a valid config itself."""
        return _plain(dataclasses.asdict(self))


EXPERIMENTS: dict[str, str] = {"toy_mass": "mass_ref.toy.experiment", "lm_mass": "mass_ref.lm.run_config"}
"""Experiment name → the module that runs it, imported on first use. Such a module defines

- ``CONFIG``: its :class:`ExperimentConfig` subclass (``EXPERIMENT`` = the name);
- ``train(config, *, progress, stop_after) -> result`` and ``evaluate(config, *, progress) -> result``:
  what ``python -m mass_ref train|evaluate`` run (resumable, writing into ``config.output_dir``);
- ``report(config, command, result) -> None``: prints a result for the command line.
"""


def experiment_module(name: str) -> ModuleType:
    """The module of experiment ``name`` (see :data:`EXPERIMENTS`), imported now.

    Raises:
        ConfigError: ``name`` is not a registered experiment.
    """
    if not isinstance(name, str) or name not in EXPERIMENTS:
        raise ConfigError(f"experiment must be one of {tuple(EXPERIMENTS)}; got {name!r}.")
    return importlib.import_module(EXPERIMENTS[name])


def _plain(data: Any) -> Any:
    if isinstance(data, dict):
        return {key: _plain(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_plain(value) for value in data]
    return data


def place_error(where: str, cls: type, error: ValueError) -> str:
    """A section's own error, placed: ``inner_lr must be ...`` in ``mass`` → ``mass.inner_lr must be ...``.

    ``cls`` is the section's dataclass: a message that starts with one of its fields is prefixed
    ``where.``, any other with ``where: ``.
    """
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
    hints = typing.get_type_hints(cls)  # each class's own module resolves its annotations
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
        raise ConfigError(place_error(where, cls, error)) from error


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
    if expected is float and not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number; got {value!r}.")
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


def parse_config(data: Any) -> ExperimentConfig:
    """Validate a mapping (e.g. parsed YAML) into the config class its ``experiment`` names.

    Raises:
        ConfigError: naming the first bad field (dotted) and what it allows.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"the config file must be a mapping of field: value; got {type(data).__name__}.")
    if "experiment" not in data:
        raise ConfigError(f"missing required config field(s) ['experiment']; one of {tuple(EXPERIMENTS)}.")
    cls: type[ExperimentConfig] = experiment_module(data["experiment"]).CONFIG
    return _build(cls, data, "", cls.NOT_IN_FILE)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading floats as YAML 1.2 does: ``1e-2`` and ``3E5`` are floats.

    PyYAML follows YAML 1.1, where a float needs a dot (``1.0e-2``), so ``inner_lr: 1e-2`` would be
    the *string* "1e-2"; every float a user would write is read as one here.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


CONFIG_DIR = Path(__file__).resolve().parent / "configs"
"""The configs that ship with the package (``configs/`` in a checkout links here)."""
PACKAGE_PARENT = Path(__file__).resolve().parent.parent
"""The folder holding the ``mass_ref`` package: a checkout's root, or site-packages after ``pip install``."""


def shipped_configs() -> list[str]:
    """The names of the configs that ship with the package (``lm_mass_tiny``, ...)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def config_file(path: str | Path) -> Path:
    """The YAML file ``path`` names: the file itself if it exists, else the shipped config of that name.

    ``configs/lm_mass_tiny.yaml``, ``lm_mass_tiny.yaml`` and ``lm_mass_tiny`` all name the shipped
    ``mass_ref/configs/lm_mass_tiny.yaml`` wherever the command runs (a checkout, Colab, a pip install).
    """
    path = Path(path).expanduser()
    if path.is_file() or not (len(path.parts) == 1 or path.parent.name == "configs"):
        return path
    name = path.name if path.suffix == ".yaml" else f"{path.name}.yaml"
    return CONFIG_DIR / name if (CONFIG_DIR / name).is_file() else path


def input_path(path: str | Path) -> Path:
    """A file or folder a config reads (a model folder, a data file), relative paths resolved.

    As given when it exists (absolute, or relative to the working directory); else relative to
    :data:`PACKAGE_PARENT`, so ``mass_ref/...`` paths name files that ship with the package from
    any working directory and after ``pip install``. A path found nowhere is returned as given (the
    caller's error names it).
    """
    given = Path(path).expanduser()
    if given.is_absolute() or given.exists():
        return given
    shipped = PACKAGE_PARENT / given
    return shipped if shipped.exists() else given


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate a YAML config file (or a shipped config by name, :func:`config_file`).

    Raises:
        ConfigError: naming the file or the field.
    """
    path = config_file(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; the shipped configs are {shipped_configs()} "
                          "(e.g. --config configs/lm_mass_smoke.yaml).")
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from error
    return parse_config(data)
