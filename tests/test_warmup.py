"""`sglang-ampere warmup`: SGLang's own JIT builders, forced to sm_86 on a CPU-only machine."""

import glob
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sglang_ampere import warmup
from sglang_ampere.cuda_tools import find_cuda_home

CLI = Path(sys.executable).parent / "sglang-ampere"


def _fake_build(root: Path, arch_dir: str, module_dir: str) -> None:
    leaf = root / arch_dir / module_dir / "build-0123" / "deps-4567"
    leaf.mkdir(parents=True)
    (leaf / f"{module_dir}.so").write_bytes(b"\x7fELF")


def test_cold_cache_lists_missing_modules_and_the_fix(tmp_path):
    notes = warmup.cold_cache_notes("sm86", {"SGLANG_JIT_CACHE_DIR": str(tmp_path)})
    assert len(notes) == 1
    for t in warmup.targets_for("sm86"):
        assert t.key in notes[0]
    assert notes[0].endswith("sglang-ampere warmup --gpu sm86")


def test_warm_cache_says_nothing(tmp_path):
    for t in warmup.targets_for("sm86"):
        _fake_build(tmp_path, "sm86", t.cache_glob.replace("*", "false"))
    assert warmup.cold_cache_notes("sm86", {"SGLANG_JIT_CACHE_DIR": str(tmp_path)}) == []
    # another arch's builds do not count (sm90 lives in sm90a/)
    assert warmup.cold_cache_notes("sm80", {"SGLANG_JIT_CACHE_DIR": str(tmp_path)})


def test_topk_v1_is_only_needed_below_sm90():
    assert "topk_v1" in [t.key for t in warmup.targets_for("sm86")]
    assert "topk_v1" not in [t.key for t in warmup.targets_for("sm90")]


def test_cuda_home_behind_an_nvcc_wrapper(tmp_path):
    toolkit = tmp_path / "cuda-99.0"
    (toolkit / "lib64").mkdir(parents=True)
    (toolkit / "lib64" / "libcudart.so.99").write_bytes(b"")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "nvcc"
    wrapper.write_text(f'#!/bin/sh\nexec {toolkit}/bin/nvcc "$@"\n')
    wrapper.chmod(0o755)
    assert find_cuda_home({"PATH": str(bindir)}) == str(toolkit)
    assert find_cuda_home({"PATH": str(bindir), "CUDA_HOME": "/opt/x"}) == "/opt/x"


def test_unknown_arch_is_refused():
    with pytest.raises(SystemExit, match="unknown --gpu 'sm75'; known: sm80, sm86, sm89, sm90, sm120"):
        warmup._resolve_arch("sm75")


@pytest.mark.slow
def test_builders_exist_in_pinned_sglang():
    import importlib

    for t in warmup.TARGETS:
        fn = getattr(importlib.import_module(t.module), t.builder)
        params = inspect.signature(inspect.unwrap(fn)).parameters
        assert len(t.args) <= len(params), t


@pytest.mark.slow
def test_warmup_builds_the_cheapest_kernel_into_the_cache(tmp_path):
    """The cheapest module (Marlin repack, ~10 s) through the real command, no GPU."""
    cheapest = warmup.TARGETS[0]
    cache = tmp_path / "jit"
    cmd = [str(CLI)] if CLI.exists() else [sys.executable, "-m", "sglang_ampere.cli"]
    env = {k: v for k, v in os.environ.items() if k != "SGLANG_JIT_CACHE_DIR"}
    proc = subprocess.run(cmd + ["warmup", "--gpu", "sm86", "--only", cheapest.key, "--cache-dir", str(cache)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"PASS  {cheapest.key}" in proc.stdout
    assert "kernels" in proc.stderr            # the progress bar
    built = glob.glob(str(cache / "sm86" / cheapest.cache_glob / "build-*" / "deps-*" / "*.so"))
    assert len(built) == 1 and os.path.getsize(built[0]) > 10_000
    # launch now reports only the remaining modules as cold
    notes = warmup.cold_cache_notes("sm86", {"SGLANG_JIT_CACHE_DIR": str(cache)})
    assert cheapest.key not in notes[0].split("is cold for sm86:")[1].split("will be")[0]
    listing = subprocess.run(cmd + ["warmup", "--gpu", "sm86", "--list", "--cache-dir", str(cache)],
                             capture_output=True, text=True, timeout=120, env=env).stdout
    assert [l.split()[:2] for l in listing.splitlines()][0] == [cheapest.key, "built"]
    assert all(l.split()[1] == "cold" for l in listing.splitlines()[1:])
