"""Test helpers shared by the test modules (not tests themselves).

* :mod:`.agreeable_draft` a native checkpoint whose MTP draft often agrees with the target;
* :mod:`.blocked`    a snippet in a process where SGLang, TileLang, TVM and sgl_kernel cannot import;
* :mod:`.convert`    synthetic native checkpoints, shard surgery, running the CLI;
* :mod:`.cpu_server` prompts, checkpoints and the logprob bound of the CPU server tests;
* :mod:`.dsv4int`    dsv4_int test checkpoints and where each tensor must land in SGLang's model;
* :mod:`.environment` SGLang's ``SGLANG_*`` variables set for a block, and the check none leaks;
* :mod:`.gpu`        the marks of ``tests/gpu/`` and the test running a check provider's checks;
* :mod:`.headers_only` headers-only checkpoints for the memory-plan tests;
* :mod:`.launch`     recorded ``nvidia-smi`` outputs, model folders, a fake ``nvidia-smi``;
* :mod:`.reference`  small synthetic checkpoints for the reference-forward tests;
* :mod:`.sglang_cpu` SGLang's real DeepSeek-V4 code on a CPU-only machine;
* :mod:`.tile_cpu`   our TileLang tile programs run on the CPU (a shim and a runner script).

Every test-side module shared by several test modules lives here (none imports another test
module). Their asserts are rewritten by pytest (``conftest.py`` registers this package), so they
hold under ``python -O`` too.

``REPO`` (the repository root) and ``PY`` (the interpreter pytest runs on) are defined here once,
with :func:`run_snippet` (a Python snippet in a fresh process that prints ``RESULT<json>``) and
:func:`decision_fixture` (a patch module's Ampere-path decision, pretended).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable


def run_snippet(code: str, env: dict | None = None, timeout: float = 300) -> dict:
    """Run ``code`` with :data:`PY` in a fresh process and return the JSON it printed after
    ``RESULT`` (a fresh process: SGLang's hooks and imports must not leak into this one).

    Raises ``AssertionError`` with the output's tail when no such line was printed.
    """
    p = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT")), None)
    assert line is not None, (f"the snippet printed no RESULT line (exit {p.returncode}):\n"
                              f"{p.stdout[-2000:]}{p.stderr[-4000:]}")
    return json.loads(line[len("RESULT"):])


def run_with_sglang(code: str, env: dict[str, str]) -> dict:
    """:func:`run_snippet` with ``env`` added to this process's environment; the test is skipped
    where SGLang is not installed."""
    pytest.importorskip("sglang")
    return run_snippet(code, env={**os.environ, **env})


def decision_fixture(module, ampere: bool):
    """A fixture under which ``module.needs_ampere_path()`` answers ``ampere`` (``True``: this
    process pretends to run on an sm_86 GPU)."""

    @pytest.fixture
    def decided(monkeypatch):
        monkeypatch.setattr(module, "needs_ampere_path", lambda: ampere)

    return decided
