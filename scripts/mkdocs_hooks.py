"""mkdocs hook: render committed results/<profile>/*.json where a page says {{ results:<profile>/<stem> }}.

Quoting the JSON at build time keeps the Results page equal to what the notebooks computed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PATTERN = re.compile(r"\{\{\s*results:(\w+)/([\w.-]+)\s*\}\}")


def _table(profile: str, stem: str) -> str:
    path = ROOT / "results" / profile / f"{stem}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is quoted by the docs but missing: run `make refresh-outputs`.")
    rows = [f"| `{key}` | {value:.4g} |" if isinstance(value, float) else f"| `{key}` | {value} |"
            for key, value in json.loads(path.read_text()).items()]
    return "\n".join([f"`results/{profile}/{stem}.json`", "", "| key | value |", "|---|---|", *rows])


COSTS = re.compile(r"\{\{\s*costs:(\w+)/([\w.-]+)\s*\}\}")


def _costs(folder: str, stem: str) -> str:
    """A meta-gradient cost file (``mass_ref.lm.metagrad_cost.save_costs``) as a table, one row per measurement."""
    path = ROOT / "results" / folder / f"{stem}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is quoted by the docs but missing: run notebook 06 or bench_metagrad.py.")
    data = json.loads(path.read_text())
    machine = ", ".join(f"{k} {v}" for k, v in data["machine"].items() if v is not None)
    rows = [f"| {r['model']} | `{r['mode']}` | {r['K']} | {r['m']} | {r['seq_len']} | {r['peak_mb']:.0f} | "
            f"{r['seconds']:.2f} | {r['device']} |"
            for r in sorted(data["rows"], key=lambda r: (r["model"], r["mode"], r["seq_len"], r["K"]))]
    return "\n".join([f"`results/{folder}/{stem}.json` ({machine})", "",
                      "| model | mode | K | m | tokens | peak MiB | seconds | device |", "|---|---|---|---|---|---|---|---|",
                      *rows])


def on_page_markdown(markdown: str, **kwargs) -> str:
    markdown = COSTS.sub(lambda m: _costs(m.group(1), m.group(2)), markdown)
    return PATTERN.sub(lambda m: _table(m.group(1), m.group(2)), markdown)
