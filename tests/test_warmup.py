"""`sglang-ampere warmup`: SGLang's own JIT builders, forced to sm_86 on a CPU-only machine."""

import glob
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sglang_ampere import jit_cache
from sglang_ampere.commands import warmup
from sglang_ampere.cuda_tools import find_cuda_home
from sglang_ampere.synth import REAL

CLI = Path(sys.executable).parent / "sglang-ampere"


def _fake_build(root: Path, arch_dir: str, module_dir: str) -> None:
    leaf = root / arch_dir / module_dir / "build-0123" / "deps-4567"
    leaf.mkdir(parents=True)
    (leaf / f"{module_dir}.so").write_bytes(b"\x7fELF")


def test_cold_cache_lists_missing_modules_and_the_fix(tmp_path):
    notes = jit_cache.cold_cache_notes("sm86", {"SGLANG_JIT_CACHE_DIR": str(tmp_path)})
    assert len(notes) == 1 and (notes[0].level, notes[0].code) == ("note", "jit.cold-cache")
    for t in jit_cache.targets_for("sm86"):
        assert t.key in notes[0].text
    assert str(notes[0]).startswith("note: SGLang's JIT cache")
    assert notes[0].text.endswith("sglang-ampere warmup --gpu sm86")


def test_warm_cache_says_nothing(tmp_path):
    for t in jit_cache.targets_for("sm86"):
        _fake_build(tmp_path, "sm86", t.cache_glob.replace("*", "false"))
    assert jit_cache.cold_cache_notes("sm86", {"SGLANG_JIT_CACHE_DIR": str(tmp_path)}) == []
    # another arch's builds do not count (sm90 lives in sm90a/)
    assert jit_cache.cold_cache_notes("sm80", {"SGLANG_JIT_CACHE_DIR": str(tmp_path)})


def test_topk_v1_is_only_needed_below_sm90():
    assert "topk_v1" in [t.key for t in jit_cache.targets_for("sm86")]
    assert "topk_v1" not in [t.key for t in jit_cache.targets_for("sm90")]


def test_checkpoint_selects_what_its_path_runs():
    every = {t.key for t in jit_cache.targets_for("sm86")}
    native = {t.key for t in jit_cache.targets_for("sm86", "native")}
    dsv4_int = {t.key for t in jit_cache.targets_for("sm86", "dsv4_int")}
    # one set of Marlin modules serves both formats; the MXFP4 final reduce only the native one
    marlin = {"gptq_marlin_repack", "gptq_marlin", "moe_marlin_gemm1", "moe_marlin_gemm2"}
    assert marlin <= native and marlin <= dsv4_int
    assert native - dsv4_int == {"moe_topk_sum"} and dsv4_int <= native
    assert native | dsv4_int == every
    with pytest.raises(ValueError, match="checkpoint must be one of dsv4_int, native"):
        jit_cache.targets_for("sm86", "int4")


def test_native_reduce_target_is_what_fused_marlin_moe_calls_for_mxfp4():
    """The MXFP4 branch of SGLang's fused_marlin_moe sums the top-k outputs with moe_topk_sum, whose
    builder is the target's (dsv4_int's INT4 experts take sgl_kernel's prebuilt moe_sum_reduce)."""
    import importlib

    from sglang.srt.layers.moe.fused_moe_triton import fused_marlin_moe

    src = inspect.getsource(fused_marlin_moe.fused_marlin_moe)
    mxfp4_branch = src[src.index("if is_mxfp4_marlin:\n        # Top-k"):]
    target = next(t for t in jit_cache.TARGETS if t.key == "moe_topk_sum")
    assert f"from {target.module} import moe_topk_sum" in mxfp4_branch
    assert target.builder in inspect.getsource(importlib.import_module(target.module).moe_topk_sum)
    assert target.checkpoints == ("native",)


def test_cold_cache_note_for_a_native_checkpoint_names_its_modules_and_the_fix(tmp_path):
    env = {"SGLANG_JIT_CACHE_DIR": str(tmp_path)}
    for t in jit_cache.targets_for("sm86", "dsv4_int"):
        _fake_build(tmp_path, "sm86", t.cache_glob.replace("*", "false"))
    assert jit_cache.cold_cache_notes("sm86", env, "dsv4_int") == []
    (note,) = jit_cache.cold_cache_notes("sm86", env, "native")
    assert "is cold for sm86: moe_topk_sum will be compiled" in note.text
    assert note.text.endswith("sglang-ampere warmup --gpu sm86 --checkpoint native")


def test_speculative_selects_mtps_modules():
    """MTP's draft-tree and verify-sampling modules only for --speculative mtp (or no choice given)."""
    mtp_only = {"spec_tree", "spec_sampling"}
    assert mtp_only <= {t.key for t in jit_cache.targets_for("sm86")}
    assert mtp_only <= {t.key for t in jit_cache.targets_for("sm86", speculative="mtp")}
    for choice in ("none", "dspark"):
        keys = {t.key for t in jit_cache.targets_for("sm86", speculative=choice)}
        assert not keys & mtp_only and "gptq_marlin" in keys, choice
    with pytest.raises(ValueError, match="speculative must be one of none, mtp, dspark"):
        jit_cache.targets_for("sm86", speculative="eagle")


def test_cold_cache_note_for_mtp_names_its_modules_and_the_fix(tmp_path):
    env = {"SGLANG_JIT_CACHE_DIR": str(tmp_path)}
    for t in jit_cache.targets_for("sm86", "dsv4_int", "none"):
        _fake_build(tmp_path, "sm86", t.cache_glob.replace("*", "false"))
    assert jit_cache.cold_cache_notes("sm86", env, "dsv4_int", "none") == []
    (note,) = jit_cache.cold_cache_notes("sm86", env, "dsv4_int", "mtp")
    assert "is cold for sm86: spec_tree, spec_sampling will be compiled" in note.text
    assert note.text.endswith("sglang-ampere warmup --gpu sm86 --checkpoint dsv4_int --speculative mtp")


def test_mtp_targets_are_what_eagle_runs_on_cuda():
    """SGLang's EAGLE on CUDA takes the tree module's kernels and, when sampling, the sampling
    module with vec_size gcd(4, vocab) and deterministic=True: the targets' builder arguments."""
    import importlib
    import math

    from sglang.kernels.ops.speculative import spec_tree, verify_sampling
    from sglang.srt.speculative import eagle_utils

    tree, sampling = (next(t for t in jit_cache.TARGETS if t.key == k) for k in ("spec_tree", "spec_sampling"))
    assert f"from {tree.module} import" in inspect.getsource(spec_tree)
    assert f"from {sampling.module} import" in inspect.getsource(verify_sampling)
    for t in (tree, sampling):
        assert t.builder in inspect.getsource(importlib.import_module(t.module)), t.key
    verify = inspect.getsource(eagle_utils)
    call = verify[verify.index("sampling_fn(\n"):]
    assert "deterministic=True" in call[:call.index("\n        )")]
    vec_size, deterministic = sampling.args
    assert deterministic is True and vec_size == math.gcd(4, REAL.vocab)     # the release's vocabulary
    assert "math.gcd(4, target_probs.shape[-1])" in inspect.getsource(importlib.import_module(sampling.module))


def test_checkpoint_option_takes_a_format_or_a_folder(tmp_path):
    import json

    assert warmup.resolve_checkpoint(None) is None
    assert warmup.resolve_checkpoint("native") == "native"
    native = tmp_path / "native"
    native.mkdir()
    (native / "config.json").write_text(json.dumps({"quantization_config": {
        "quant_method": "fp8", "weight_block_size": [128, 128], "routed_experts_quant_method": "mxfp4"}}))
    assert warmup.resolve_checkpoint(str(native)) == "native"
    other = tmp_path / "awq"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "awq"}}))
    with pytest.raises(SystemExit, match="not a DeepSeek-V4-Flash checkpoint this package serves"):
        warmup.resolve_checkpoint(str(other))
    with pytest.raises(SystemExit, match="neither a format"):
        warmup.resolve_checkpoint(str(tmp_path / "missing"))


def test_list_shows_the_native_modules_and_their_formats(tmp_path, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    warmup.add_arguments(parser)
    args = parser.parse_args(["--gpu", "sm86", "--list", "--checkpoint", "native", "--cache-dir", str(tmp_path)])
    old = os.environ.get("SGLANG_JIT_CACHE_DIR")
    try:
        assert warmup.run(args) == 0
    finally:
        if old is None:
            os.environ.pop("SGLANG_JIT_CACHE_DIR", None)
        else:
            os.environ["SGLANG_JIT_CACHE_DIR"] = old
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()}
    assert set(rows) == {t.key for t in jit_cache.targets_for("sm86", "native")}
    assert rows["moe_topk_sum"][1] == "cold" and rows["moe_topk_sum"][4] == "native"
    assert rows["moe_marlin_gemm1"][4] == "dsv4_int+native" and "MXFP4" in " ".join(rows["moe_marlin_gemm1"])


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
        warmup.resolve_arch("sm75")


def test_gpu_flag_takes_every_spelling_and_the_old_one(tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    warmup.add_arguments(parser)
    spellings = [["--gpu", "86"], ["--gpu", "sm_86"], ["--gpu", "SM86"], ["--arch", "sm86"]]
    assert {parser.parse_args(argv).gpu for argv in spellings} == {"sm86"}
    assert warmup.resolve_arch(parser.parse_args(["--gpu", "86"]).gpu) == "sm86"
    assert parser.parse_args([]).gpu == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["--gpu", "ampere"])


@pytest.mark.slow
def test_builders_exist_in_pinned_sglang():
    import importlib

    for t in jit_cache.TARGETS:
        fn = getattr(importlib.import_module(t.module), t.builder)
        params = inspect.signature(inspect.unwrap(fn)).parameters
        assert len(t.args) <= len(params), t


@pytest.mark.slow
def test_warmup_builds_the_cheapest_kernel_into_the_cache(tmp_path):
    """The cheapest module (Marlin repack, ~10 s) through the real command, no GPU."""
    cheapest = jit_cache.TARGETS[0]
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
    notes = jit_cache.cold_cache_notes("sm86", {"SGLANG_JIT_CACHE_DIR": str(cache)})
    assert cheapest.key not in notes[0].text.split("is cold for sm86:")[1].split("will be")[0]
    listing = subprocess.run(cmd + ["warmup", "--gpu", "sm86", "--list", "--cache-dir", str(cache)],
                             capture_output=True, text=True, timeout=120, env=env).stdout
    assert [l.split()[:2] for l in listing.splitlines()][0] == [cheapest.key, "built"]
    assert all(l.split()[1] == "cold" for l in listing.splitlines()[1:])


def test_a_failed_build_reports_the_compilers_error_line():
    """SGLang's build error ends with the build's stderr heading (measured: a shadowed CUDA header
    left warmup printing 'RuntimeError: stderr:'); the report takes the compiler's error line, or
    the last line when there is none (control)."""
    text = ("Failed to build JIT module sgl_kernel_jit_speculative_tree in /tmp/x\n"
            "[1/2] nvcc -Werror=return-type -Xcompiler=-Werror ... tree.cuh\nFAILED: cuda.o\n"
            "stub.c:16:945: error: macro \"__cudaLaunch\" passed 2 arguments, but takes just 1\n"
            "ninja: build stopped: subcommand failed.\n\nstderr:\n\n")
    assert jit_cache.error_line(text).startswith("stub.c:16:945: error: macro \"__cudaLaunch\"")
    assert jit_cache.error_line("nvcc not found\n\n") == "nvcc not found"
    assert jit_cache.error_line("") == ""
