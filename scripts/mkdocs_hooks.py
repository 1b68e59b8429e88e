"""mkdocs hook: quote committed results in the docs, read from their JSON at build time.

``{{ results:<profile>/<stem> }}`` becomes the chapter's tables (``scripts/results_tables.py``: the README's tables,
from ``results/<profile>/<stem>.json``) followed by every key of that file in a collapsed ``<details>`` block.
``{{ costs:<folder>/<stem> }}`` (``results/<folder>/<stem>.json``) or ``{{ costs:<path>.json }}`` (relative to the
repository root, e.g. ``mass_ref/lm/costs/metagrad_smollm2.json``) becomes a meta-gradient cost file as a table, one
row per measurement.
Quoting the JSON at build time keeps the Results page equal to what the notebooks computed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from results_tables import render_tables  # mkdocs puts this file's folder on sys.path while loading it

ROOT = Path(__file__).resolve().parent.parent
RESULTS = re.compile(r"\{\{\s*results:(\w+)/([\w.-]+)\s*\}\}")
COSTS = re.compile(r"\{\{\s*costs:([\w./-]+?)\s*\}\}")


def _load(root: Path, source: str, how: str) -> dict[str, Any]:
    """``root/source``; a missing file names itself and ``how`` to make it."""
    path = root / source
    if not path.is_file():
        raise FileNotFoundError(f"{path} is quoted by the docs but missing: {how}.")
    return json.loads(path.read_text())


def _all_keys(data: dict[str, Any], source: str) -> str:
    """Every key of a results file as a key/value table inside a collapsed ``<details>`` block."""
    shown = {key: f"{value:.4g}" if isinstance(value, float) else str(value).replace("|", r"\|")
             for key, value in data.items()}
    rows = [f"| `{key}` | {text} |" for key, text in shown.items()]
    return "\n".join([f'<details markdown="1">\n<summary>All {len(data)} keys of <code>{source}</code></summary>', "",
                      "| key | value |", "|---|---|", *rows, "", "</details>"])


def render_results(profile: str, stem: str, root: Path = ROOT) -> str:
    """The chapter's tables from ``results/<profile>/<stem>.json``, then all its keys, collapsed."""
    source = f"results/{profile}/{stem}.json"
    data = _load(root, source, "run `make refresh-outputs`")
    tables = render_tables(stem, data, source)
    return "\n\n".join(part for part in (f"From `{source}`:", tables, _all_keys(data, source)) if part)


def render_costs(where: str, root: Path = ROOT) -> str:
    """A meta-gradient cost file (``mass_ref.lm.metagrad_cost.save_costs``) as a table, one row per measurement.

    ``where`` is a ``.json`` path relative to ``root``, or ``<folder>/<stem>`` for ``results/<folder>/<stem>.json``.
    """
    source = where if where.endswith(".json") else f"results/{where}.json"
    data = _load(root, source, "run notebook 06 or bench_metagrad.py")
    machine = ", ".join(f"{k} {v}" for k, v in data["machine"].items() if v is not None)
    rows = [f"| {r['model']} | `{r['mode']}` | {r['K']} | {r['m']} | {r['seq_len']} | {r['peak_mb']:.0f} | "
            f"{r['seconds']:.2f} | {r['device']} |"
            for r in sorted(data["rows"], key=lambda r: (r["model"], r["mode"], r["seq_len"], r["K"]))]
    return "\n".join([f"`{source}` ({machine})", "",
                      "| model | mode | K | m | tokens | peak MiB | seconds | device |", "|---" * 8 + "|", *rows])


def expand(markdown: str, root: Path = ROOT) -> str:
    """``markdown`` with every ``{{ results:… }}`` and ``{{ costs:… }}`` placeholder replaced by its tables."""
    markdown = COSTS.sub(lambda m: render_costs(m.group(1), root), markdown)
    return RESULTS.sub(lambda m: render_results(m.group(1), m.group(2), root), markdown)


def on_page_markdown(markdown: str, **kwargs: object) -> str:
    """mkdocs event: expand the results placeholders of every page."""
    return expand(markdown)
