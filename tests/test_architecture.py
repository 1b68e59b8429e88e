"""The package's dependency order, read from the source with ``ast``, so that it cannot rot.

Layers, lowest first; a module may import only from its own layer or from a lower-ranked one:

    core (0) ← tasks (1) ← sine chapters (2) ← toy | lm (3) ← toy experiment | lm experiment (4)
             ← package facades (5) ← command line (6)

Layers of the same rank are siblings and do not import each other (the toy and the LM never meet).
Every ``import`` counts: at module level, inside functions (lazy imports) and under
``TYPE_CHECKING``. Experiments are reached from the config by name (``mass_ref.config.EXPERIMENTS``),
a dotted path imported at run time: the test checks that those paths name experiment modules.
A new module must be placed in :data:`LAYERS`; the failure message says where the problem is.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mass_ref"

LAYERS: dict[str, tuple[int, tuple[str, ...]]] = {
    # shared machinery: no chapter, no task family
    "core": (0, ("inner", "_higher_backend", "metagrad", "attribution", "stats", "checkpoint", "results", "profiles",
                 "grpo", "config", "run_folder", "training", "distributed", "progress")),
    "tasks": (1, ("tasks", "tasks.arithmetic", "tasks.benchmarks", "tasks.sine", "tasks.verify")),
    "sine chapters": (2, ("maml", "distill")),
    "toy": (3, ("toy.base", "toy.evaluate", "toy.generator", "toy.mass", "toy.problems", "toy.scorer")),
    "lm": (3, ("lm.tokenizer", "lm.precision", "lm.amp", "lm.sft", "lm.formats", "lm.models", "lm.generate", "lm.tiny",
               "lm.practice", "lm.scorer", "lm.problems", "lm.ttt", "lm.per_problem_lora", "lm.timing",
               "lm.policy_update", "lm.mass", "lm.evaluate", "lm.trainer", "lm.spec", "lm.metagrad_cost", "lm.memory")),
    "toy experiment": (4, ("toy.experiment",)),
    "lm experiment": (4, ("lm.experiment", "lm.summary", "lm.run_config")),
    "package facades": (5, ("", "toy", "lm")),  # the __init__ files that re-export the public API
    "command line": (6, ("__main__",)),
}
"""Layer → (rank, modules relative to ``mass_ref``; ``""`` is ``mass_ref`` itself)."""

LAYER_OF = {f"mass_ref.{name}".rstrip("."): layer for layer, (_, names) in LAYERS.items() for name in names}
RANK = {layer: rank for layer, (rank, _) in LAYERS.items()}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SOURCES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str, path: Path) -> list[tuple[str, int, list[str]]]:
    """``(module, line, names)`` for every import of a ``mass_ref`` module in ``path`` (anywhere in the file)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names = [alias.name for alias in node.names]
            submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in SOURCES]  # from mass_ref import toy
            found += [(module, node.lineno, []) for module in submodules]
            if len(submodules) < len(names):
                found.append((base, node.lineno, [n for n in names if f"{base}.{n}" not in SOURCES]))
    return [(module, line, names) for module, line, names in found if module.split(".")[0] == "mass_ref"]


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(set(SOURCES) - set(LAYER_OF))
    assert not unplaced, f"place these modules in a layer of tests/test_architecture.py LAYERS: {unplaced}"
    gone = sorted(set(LAYER_OF) - set(SOURCES))
    assert not gone, f"LAYERS names modules that do not exist (remove them): {gone}"


def test_imports_go_only_to_the_same_or_a_lower_layer() -> None:
    violations = []
    for name, path in SOURCES.items():
        layer = LAYER_OF.get(name)
        if layer is None:
            continue  # reported by test_every_module_has_a_layer
        for target, line, _ in imported_modules(name, path):
            target_layer = LAYER_OF.get(target)
            if target_layer is None:
                violations.append(f"{path.relative_to(ROOT)}:{line} imports {target}, which is not a module")
            elif RANK[target_layer] > RANK[layer] or (RANK[target_layer] == RANK[layer] and target_layer != layer):
                violations.append(f"{path.relative_to(ROOT)}:{line} ({layer}, rank {RANK[layer]}) imports {target} "
                                  f"({target_layer}, rank {RANK[target_layer]})")
    assert not violations, ("upward or sideways imports (move the shared piece down into a lower layer, or the "
                            "importer up):\n  " + "\n  ".join(violations))


def test_the_config_registry_names_experiment_modules() -> None:
    from mass_ref.config import EXPERIMENTS

    for experiment, module in EXPERIMENTS.items():
        assert RANK[LAYER_OF[module]] == 4, f"EXPERIMENTS[{experiment!r}] = {module!r} is not an experiment module"


def test_no_module_imports_another_modules_private_names() -> None:
    found = {(name, target, imported) for name, path in SOURCES.items()
             for target, _, names in imported_modules(name, path) for imported in names
             if imported.startswith("_") and not imported.startswith("__")}
    new = sorted(found)
    assert not new, f"make these names public (no underscore, with a docstring) where they are shared: {new}"


@pytest.mark.parametrize(("source", "expected"), [
    ("from mass_ref.lm.models import add_lora", [("mass_ref.lm.models", ["add_lora"])]),
    ("from mass_ref import toy, inner_adapt", [("mass_ref.toy", []), ("mass_ref", ["inner_adapt"])]),
    ("def f():\n    import mass_ref.lm.experiment as e", [("mass_ref.lm.experiment", [])]),
    ("from .generator import SineGenerator", [("mass_ref.toy.generator", ["SineGenerator"])]),
    ("import torch\nfrom typing import Any", []),
])
def test_imports_are_read_at_module_level_inside_functions_and_relatively(tmp_path: Path, source: str,
                                                                            expected: list) -> None:
    path = tmp_path / "mass_ref" / "toy" / "example.py"
    path.parent.mkdir(parents=True)
    path.write_text(source + "\n")
    found = imported_modules("mass_ref.toy.example", path)
    assert [(module, names) for module, _, names in found] == expected


ARCHITECTURE_PAGE = ROOT / "docs" / "architecture.md"


def test_the_architecture_page_places_every_module_in_its_layer() -> None:
    """docs/architecture.md's table lists each module once, in the layer this file gives it."""
    placed: dict[str, str] = {}
    for line in ARCHITECTURE_PAGE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] in LAYERS:
            for module in (m.strip("` ") for m in cells[1].split(",")):
                name = module if module.startswith("mass_ref") else f"mass_ref.{module}"
                assert name not in placed, f"{name} is listed twice on the architecture page"
                placed[name] = cells[0]
    wrong = {name: (placed.get(name), layer) for name, layer in LAYER_OF.items() if placed.get(name) != layer}
    assert not wrong, f"architecture page vs LAYERS (page, test): {wrong}"


def test_every_dotted_name_on_the_architecture_page_exists() -> None:
    import importlib
    import re

    for dotted in sorted(set(re.findall(r"`(mass_ref(?:\.\w+)+)`", ARCHITECTURE_PAGE.read_text()))):
        parts = dotted.split(".")
        for cut in range(len(parts), 0, -1):  # the longest importable module prefix, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ModuleNotFoundError:
                continue
            for attribute in parts[cut:]:
                assert hasattr(obj, attribute), f"{dotted} on the architecture page does not exist"
                obj = getattr(obj, attribute)
            break
