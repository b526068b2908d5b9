"""SGLang's environment variables in tests: set for a block and restored exactly, and the check
(an autouse fixture in ``conftest.py``) that a test leaves them as it found them.

SGLang writes ``os.environ`` for good: ``envs.X.set(value)`` stores ``str(value)`` ("restoring"
with ``envs.X.set(old)`` leaves the string ``"True"`` where nothing was set, and
``envs.X.override`` restores only when its block does not raise), and building a ``ServerArgs``
exports some of its defaults (``SGLANG_ENABLE_TORCH_COMPILE=0``, ...).
"""

from __future__ import annotations

import contextlib
import os

PREFIX = "SGLANG_"
#: Set by ``helpers.sglang_cpu.init_sglang_cpu`` for the rest of the process, on purpose: exempt
#: from :func:`sglang_vars_unchanged`.
PROCESS_VARS = ("SGLANG_OPT_USE_TILELANG_MHC_PRE",)


def sglang_vars() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(PREFIX)}


@contextlib.contextmanager
def sglang_vars_restored():
    """Every ``SGLANG_*`` variable as it was before the block, also when the block raises."""
    before = sglang_vars()
    try:
        yield
    finally:
        for name in sglang_vars().keys() - before.keys():
            del os.environ[name]
        os.environ.update(before)


@contextlib.contextmanager
def sglang_env(**values):
    """SGLang's ``envs.NAME`` set to each value for the block, as ``envs.NAME.set`` writes it."""
    with sglang_vars_restored():
        os.environ.update({name: str(value) for name, value in values.items()})
        yield


@contextlib.contextmanager
def sglang_vars_unchanged():
    """Fail (``AssertionError``) when the block leaves an ``SGLANG_*`` variable set, changed or
    removed, :data:`PROCESS_VARS` excepted."""
    before = sglang_vars()
    yield
    after = sglang_vars()
    changed = {k: (before.get(k), after.get(k)) for k in sorted(before.keys() | after.keys())
               if before.get(k) != after.get(k) and k not in PROCESS_VARS}
    assert not changed, (f"the test left SGLang variables changed (name: (before, after)): {changed}; set them "
                         "with monkeypatch.setenv or helpers.environment.sglang_env")
