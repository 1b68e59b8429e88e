"""Repository-root conftest: makes `solutions/` (exercise solutions, checked by tests) importable,
and holds the repository-wide hooks (the unit tests' shared fixtures are in tests/conftest.py).

Every notebook cell that nbval collects is marked ``slow``: a notebook is a chain of cells sharing
one kernel, so its cells run together or not at all, and a whole smoke-profile notebook takes
seconds to tens of seconds. ``make test-fast`` (``pytest -m "not slow"``) therefore runs no
notebook, while ``make test`` runs them all. The hook lives here, not in tests/conftest.py, because
a conftest only loads once pytest collects its folder: tests/conftest.py is not loaded by
``pytest notebooks/``, this one always is.
"""

from __future__ import annotations

import pytest


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.suffix == ".ipynb":  # nbval's cells (any notebook, wherever it was collected from)
            item.add_marker(pytest.mark.slow)
