"""Test helpers shared by the test modules (not tests themselves).

* :mod:`.convert`    synthetic native checkpoints, shard surgery, running the CLI;
* :mod:`.dsv4int`    dsv4_int test checkpoints and where each tensor must land in SGLang's model;
* :mod:`.launch`     recorded ``nvidia-smi`` outputs, model folders, a fake ``nvidia-smi``;
* :mod:`.sglang_cpu` SGLang's real DeepSeek-V4 code on a CPU-only machine.

``REPO`` (the repository root) and ``PY`` (the interpreter pytest runs on) are defined here once.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
