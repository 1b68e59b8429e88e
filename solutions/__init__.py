"""Worked solutions to the notebooks' exercises; tests/test_solutions_*.py check each one."""
