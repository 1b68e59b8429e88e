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


def on_page_markdown(markdown: str, **kwargs) -> str:
    return PATTERN.sub(lambda m: _table(m.group(1), m.group(2)), markdown)
