"""Run a Python snippet in a fresh process where SGLang, TileLang, TVM and sgl_kernel cannot be imported
(what a bare GPU machine with only torch looks like to the device kit)."""

from __future__ import annotations

import subprocess
import textwrap

from . import PY, REPO

#: Prepended to a snippet: an import hook that refuses the four packages.
BLOCK = textwrap.dedent("""
    import importlib.abc, sys
    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("sglang", "tilelang", "tvm", "sgl_kernel"):
                raise ImportError("blocked for this test: " + name)
    sys.meta_path.insert(0, _Block())
""")


def run_blocked(code: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-c", BLOCK + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=str(REPO))
