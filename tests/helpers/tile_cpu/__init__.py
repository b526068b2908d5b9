"""TileLang tile programs on the CPU, for tests only (not shipped in the wheel).

* :mod:`.shim`   the patches that lower our GPU tile programs for TileLang 0.1.12's CPU target;
* :mod:`.runner` a script that runs every kernel family (and the mutation controls) through the
  shim in a process of its own and prints the verdicts as JSON (``tests/test_tile_cpu.py``).
"""

from pathlib import Path


def runner_path() -> Path:
    return Path(__file__).with_name("runner.py")
