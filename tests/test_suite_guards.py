"""The suite's own guards: the helpers' asserts survive ``python -O``, and no test leaves an
``SGLANG_*`` variable changed (``conftest.py``, ``helpers/environment.py``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import PY, REPO
from helpers.environment import PROCESS_VARS, sglang_env, sglang_vars_unchanged

PROBE = "SGLANG_AMPERE_TEST_GUARD_PROBE"

# A test module calling a helper whose assert must fail (the environment check, on a leak) and
# the same helper on a passing condition.
_PROBE_TESTS = f'''
import os
from helpers.environment import sglang_vars_unchanged

def test_helper_assert_fails():
    try:
        with sglang_vars_unchanged():
            os.environ["{PROBE}"] = "1"
    finally:
        os.environ.pop("{PROBE}", None)

def test_helper_assert_passes():
    with sglang_vars_unchanged():
        pass
'''


def _pytest_O(tmp_path, *plugins: str) -> str:
    """``python -O -m pytest`` on the probe module, with ``tests/`` importable."""
    (tmp_path / "test_probe.py").write_text(_PROBE_TESTS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)])}
    p = subprocess.run([PY, "-O", "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugins, "--rootdir",
                        str(tmp_path), str(tmp_path / "test_probe.py")],
                       capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path))
    return p.stdout + p.stderr


def test_helpers_asserts_survive_python_O(tmp_path):
    # with this suite's conftest (loaded as a plugin, as pytest loads it for tests/): rewritten
    out = _pytest_O(tmp_path, "-p", "conftest")
    assert "1 failed, 1 passed" in out and "FAILED test_probe.py::test_helper_assert_fails" in out, out
    assert "left SGLang variables changed" in out and PROBE in out, out
    # control: without the registration -O strips the helper's assert and the leak passes
    out = _pytest_O(tmp_path)
    assert "2 passed" in out, out


def test_every_loaded_helper_module_is_rewritten():
    names = [n for n in sys.modules if n == "helpers" or n.startswith("helpers.")]
    assert "helpers.environment" in names
    plain = [n for n in names if type(sys.modules[n].__loader__).__name__ != "AssertionRewritingHook"]
    assert not plain, f"helpers imported before conftest registered them for assert rewriting: {plain}"


def test_a_leaked_sglang_variable_fails_the_check():
    """Negative control: what ``envs.X.set(old)`` leaves where nothing was set, a changed value and
    a removed one are each caught; the variables ``init_sglang_cpu`` sets for good are not."""
    try:
        with pytest.raises(AssertionError, match=f"{PROBE}': \\(None, 'True'\\)"):
            with sglang_vars_unchanged():
                os.environ[PROBE] = "True"
        with pytest.raises(AssertionError, match=f"{PROBE}': \\('True', 'False'\\)"):
            with sglang_vars_unchanged():
                os.environ[PROBE] = "False"
        with pytest.raises(AssertionError, match=f"{PROBE}': \\('False', None\\)"):
            with sglang_vars_unchanged():
                del os.environ[PROBE]
    finally:
        os.environ.pop(PROBE, None)
    with sglang_env(**{PROCESS_VARS[0]: "probe"}):
        with sglang_vars_unchanged():
            os.environ[PROCESS_VARS[0]] = "False"


def test_sglang_env_restores_exactly_also_when_the_block_raises(monkeypatch):
    monkeypatch.setenv(PROBE + "_KEPT", "x")
    with sglang_vars_unchanged():
        with sglang_env(**{PROBE: True, PROBE + "_KEPT": 0}):
            assert (os.environ[PROBE], os.environ[PROBE + "_KEPT"]) == ("True", "0")   # as envs.X.set writes
        with pytest.raises(RuntimeError):
            with sglang_env(**{PROBE: False}):
                os.environ[PROBE + "_NEW"] = "1"                    # SGLang exporting a default
                raise RuntimeError
    assert PROBE not in os.environ and PROBE + "_NEW" not in os.environ and os.environ[PROBE + "_KEPT"] == "x"
