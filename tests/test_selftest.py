"""`sglang-ampere selftest`: the table, lazy providers, and the no-GPU exit code."""

import subprocess
import sys
import types
from pathlib import Path

import pytest

from sglang_ampere.commands import selftest

CLI = Path(sys.executable).parent / "sglang-ampere"


@pytest.fixture
def fake_providers(monkeypatch):
    good = types.ModuleType("fake_checks_good")

    def boom():
        raise AssertionError("max abs err 3.1e-1 > 2e-2 vs torch reference")

    good.gpu_checks = lambda: [("int4 marlin moe [T=1]", lambda: "max abs err 1.2e-3"), ("sparse mla decode", boom)]
    monkeypatch.setitem(sys.modules, "fake_checks_good", good)
    return ("fake_checks_good", "fake_checks_missing_module")


def test_table_with_pass_fail_and_missing_provider(fake_providers, capsys):
    import io
    out = io.StringIO()
    rc = selftest.run_selftest("NVIDIA GeForce RTX 3090 (sm86)", providers=fake_providers, out=out)
    text = out.getvalue()
    assert rc == 1
    rows = {line.split("  ")[0].strip(): line for line in text.splitlines()[2:-1]}
    assert "PASS" in rows["int4 marlin moe [T=1]"] and "max abs err 1.2e-3" in rows["int4 marlin moe [T=1]"]
    assert "FAIL" in rows["sparse mla decode"] and "AssertionError: max abs err 3.1e-1" in rows["sparse mla decode"]
    assert "FAIL" in rows["fake_checks_missing_module"] and "cannot load checks" in rows["fake_checks_missing_module"]
    assert text.rstrip().endswith("1 passed, 2 failed")


def test_filter_and_all_pass(fake_providers):
    import io
    rc = selftest.run_selftest("x", providers=fake_providers[:1], match="marlin", out=io.StringIO())
    assert rc == 0


def test_no_gpu_distinct_exit_code():
    import io
    out = io.StringIO()
    assert selftest.run_selftest(None, out=out) == selftest.EXIT_NO_GPU == 3
    assert "no CUDA GPU available" in out.getvalue()


def test_real_command_on_this_machine():
    """CI has no GPU: the console script must say so and exit 3 (on a GPU box it runs the checks)."""
    import torch

    cmd = [str(CLI)] if CLI.exists() else [sys.executable, "-m", "sglang_ampere.cli"]
    proc = subprocess.run(cmd + ["selftest"], capture_output=True, text=True, timeout=300)
    if torch.cuda.is_available():
        assert proc.returncode in (0, 1) and "passed" in proc.stdout
    else:
        assert proc.returncode == 3 and "no CUDA GPU available" in proc.stdout
