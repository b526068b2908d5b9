"""Compile every TileLang kernel (sparse MLA, C4 indexer) for sm_86 and sm_80 (nvcc, no GPU) and inspect SASS."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest

from sglang_ampere import cli
from sglang_ampere.commands import kernel_report as K
from sglang_ampere.cuda_tools import find_tool
from sglang_ampere.gpus import Arch

pytest.importorskip("tilelang")
if shutil.which("nvcc") is None:
    pytest.skip("nvcc is not installed; kernel-report needs the CUDA toolkit's nvcc", allow_module_level=True)


def _run_report(arch: str, out: Path) -> dict:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli.main(["kernel-report", "--gpu", arch, "--json", "--out", str(out)])
    data = json.loads(buf.getvalue())
    data["rc"] = rc
    return data


@pytest.fixture(scope="module", params=["sm_86", "sm_80"])
def report(request, tmp_path_factory):
    arch = request.param
    return arch, _run_report(arch, tmp_path_factory.mktemp(arch))


@pytest.mark.slow
def test_every_kernel_is_clean(report):
    arch, data = report
    kernels = data["kernels"]
    names = {k["name"] for k in kernels}
    # decode and prefill, dense and paged (window + each compressed cache kind)
    assert any("dense_prefill" in n for n in names) and any("dense_decode" in n for n in names)
    for kind in ("c4", "c128", "swa"):
        assert any(f"paged_{kind}_prefill" in n for n in names) and any(f"paged_{kind}_decode" in n for n in names)
    # the C4 indexer logits kernel: one-split (prefill) and split (decode) forms
    assert {"indexer_logits_prefill_h64", "indexer_logits_decode_s16_h64"} <= names
    for k in kernels:
        assert k["problems"] == [], f"{k['name']} ({arch}): {k['problems']}"
        assert k["hmma"] > 0, k
        assert k["traps"] == 0, k
        assert k["local_bytes"] == 0 and k["spill_stores"] == 0 and k["spill_loads"] == 0 and k["ldl_stl"] == 0, k
        assert 0 < k["shared_total"] <= K.SMEM_LIMIT[int(arch[3:])], k
        assert k["registers"] <= 255, k
        assert Path(k["cubin"]).stat().st_size > 1000 and arch in k["cubin"]
    assert data["rc"] == 0


@pytest.mark.slow
def test_cubins_are_for_the_requested_arch(report):
    import subprocess

    arch, data = report
    cubin = data["kernels"][0]["cubin"]
    out = subprocess.run([find_tool("cuobjdump"), "-sass", cubin], capture_output=True, text=True).stdout
    assert f"code for {arch}" in out and f"EF_CUDA_SM{arch[3:]}" in out


def test_report_covers_every_kernel_module():
    from sglang_ampere.kernels import tilelang_indexer, tilelang_mla

    assert K.kernel_modules() == (tilelang_mla, tilelang_indexer)
    for arch in (86, 80):
        specs = tilelang_indexer.report_specs(arch)
        assert len(specs) == 2 and all(K._module_of(s) is tilelang_indexer for s in specs)
        assert K._module_of(tilelang_mla.report_specs(arch)[0]) is tilelang_mla


def test_checks_can_fail():
    r = K.KernelResult("x", "sm_86", registers=255, shared_static=0, shared_dynamic=120 * 1024,
                       local_bytes=16, spill_stores=16, spill_loads=8, ldl_stl=4, hmma=0, traps=3)
    K.check(r, 86)
    text = " ".join(r.problems)
    assert not r.ok
    assert "HMMA" in text and "BPT.TRAP" in text and "spills" in text and "shared memory" in text
    good = K.KernelResult("y", "sm_80", registers=128, shared_static=0, shared_dynamic=120 * 1024,
                          local_bytes=0, spill_stores=0, spill_loads=0, ldl_stl=0, hmma=64, traps=0)
    K.check(good, 80)
    assert good.ok                                   # 120 KB fits sm_80's 163 KB, not sm_86's 99 KB


def test_bad_arch_is_explained(capsys):
    with pytest.raises(ValueError, match="sm_86"):
        Arch("ampere")
    with pytest.raises(SystemExit) as exc:
        cli.main(["kernel-report", "--gpu", "ampere"])
    assert exc.value.code == 2 and "sm_86" in capsys.readouterr().err
    assert cli.main(["kernel-report", "--arch", "sm_75", "--only", "x"]) == 2
    assert cli.main(["kernel-report", "--gpu", "sm75", "--only", "x"]) == 2


def test_gpu_flag_is_the_old_arch_flag():
    import argparse

    parser = argparse.ArgumentParser()
    K.add_arguments(parser)
    for spelling in ("sm_86", "sm86", "86"):
        assert parser.parse_args(["--gpu", spelling]).gpu == parser.parse_args(["--arch", "sm_86"]).gpu == "sm86"
    assert parser.parse_args([]).gpu.number == 86 and parser.parse_args(["--gpu", "sm_80"]).gpu.number == 80
