"""Test helpers shared by the test modules (not tests themselves).

* :mod:`.convert`    synthetic native checkpoints, shard surgery, running the CLI;
* :mod:`.cpu_server` prompts, checkpoints and the logprob bound of the CPU server tests;
* :mod:`.dsv4int`    dsv4_int test checkpoints and where each tensor must land in SGLang's model;
* :mod:`.launch`     recorded ``nvidia-smi`` outputs, model folders, a fake ``nvidia-smi``;
* :mod:`.sglang_cpu` SGLang's real DeepSeek-V4 code on a CPU-only machine.

``REPO`` (the repository root) and ``PY`` (the interpreter pytest runs on) are defined here once,
and :func:`run_snippet` (a Python snippet in a fresh process that prints ``RESULT<json>``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable


def run_snippet(code: str, env: dict | None = None, timeout: float = 300) -> dict:
    """Run ``code`` with :data:`PY` in a fresh process and return the JSON it printed after
    ``RESULT`` (a fresh process: SGLang's hooks and imports must not leak into this one).

    Raises ``AssertionError`` with the output's tail when no such line was printed.
    """
    p = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT")), None)
    if line is None:
        raise AssertionError(f"the snippet printed no RESULT line (exit {p.returncode}):\n"
                             f"{p.stdout[-2000:]}{p.stderr[-4000:]}")
    return json.loads(line[len("RESULT"):])
