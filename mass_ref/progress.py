"""Progress bars that a headless run can switch off: tqdm, unless the caller or ``$TQDM_DISABLE`` says no.

Interactive runs (a terminal, Jupyter with ipywidgets) get tqdm's bars. ``scripts/run_notebooks.py`` sets
``TQDM_DISABLE=1`` so that stored notebook outputs hold results, not bars. tqdm reads that variable only for
arguments a call leaves out, so a call that passes ``disable=`` itself would ignore it: every bar of the
package goes through :func:`progress_bar`, which honours both.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_enabled(enabled: bool = True) -> bool:
    """``enabled``, unless ``$TQDM_DISABLE`` is set to anything but "", "0" or "false"."""
    return enabled and os.environ.get("TQDM_DISABLE", "").strip().lower() in ("", "0", "false")


def progress_bar(iterable: Iterable[T], *, enabled: bool = True, **kwargs: Any) -> tqdm[T]:
    """``tqdm(iterable, **kwargs)``, switched off when ``enabled`` is False or ``$TQDM_DISABLE`` is set."""
    return tqdm(iterable, disable=not progress_enabled(enabled), **kwargs)
