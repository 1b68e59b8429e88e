# Repository-root conftest: makes `solutions/` (exercise solutions, checked by tests) importable.
