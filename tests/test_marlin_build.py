"""CI builds the exact Marlin kernels dsv4_int runs for sm_86 and checks their machine code.

Uses nvcc (no GPU or driver needed) through ``sglang_ampere.quant.marlin_sass``, which
instantiates only our specialisations with SGLang's JIT preamble and flags: uint8b128 group
128 and per-channel dense (30 kernels), uint4b8 group-32 MoE in both GEMM variants
(20 kernels), BF16. The numbers go to benchmarks/RESULTS.md ("Marlin kernels").
"""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("sglang")

from sglang_ampere.cuda_tools import find_tool
from sglang_ampere.quant import marlin_sass


def _toolchain_or_skip():
    try:
        marlin_sass.cuda_home()
        find_tool("cuobjdump")
    except FileNotFoundError as e:
        pytest.skip(f"no CUDA toolchain: {e}")
    if shutil.which("c++") is None:
        pytest.skip("no host C++ compiler")


@pytest.mark.slow
@pytest.mark.parametrize("kind,count", [("dense", 30), ("moe", 20)])
def test_marlin_kernels_build_for_sm86_with_bf16_tensor_cores_and_no_traps(kind, count, tmp_path):
    _toolchain_or_skip()
    res = marlin_sass.build(kind, 86, tmp_path)
    assert res.elf_archs == ["86"], f"expected only sm_86 machine code, got {res.elf_archs}"
    assert not res.has_ptx, "PTX embedded: the driver could JIT something we did not inspect"
    rows = marlin_sass.marlin_kernels(res)
    assert len(rows) == count
    assert len({tuple(sorted(c.items())) for c, _ in rows}) == count            # all distinct configs
    for cfg, s in rows:
        assert s.hmma > 0 and s.hmma == s.hmma_bf16, f"{cfg}: HMMA {s.hmma}, BF16 {s.hmma_bf16}"
        assert s.imma == 0, f"{cfg}: integer MMA"
        assert 0 < s.registers <= 255
        if cfg["m"] == 1:                                                       # decode tiles: no spills
            assert s.spill_stores == 0 and s.spill_loads == 0, f"{cfg}: spills {s.spill_stores}/{s.spill_loads}"
    assert sum(k.traps for k in res.kernels.values()) == 0, "BPT.TRAP in the object"
    variants = {c["variant"] for c, _ in rows}
    assert variants == ({"g128 (block)", "per-channel"} if kind == "dense" else {"GEMM1 (gate/up)", "GEMM2 (down)"})


def test_instantiation_tables_cover_sglang_dispatch():
    """Our list is SGLang's COMMON_GET_IF table for these types (read from the .cuh)."""
    import re

    root = marlin_sass._jit_root() / "csrc" / "gemm"
    for header, m1, m234 in (("marlin/gptq_marlin.cuh", marlin_sass.DENSE_M1, marlin_sass.DENSE_M234),
                             ("marlin_moe/moe_wna16_marlin.cuh", marlin_sass.MOE_M1, marlin_sass.MOE_M234)):
        text = (root / header).read_text()
        block = text[text.index("#define COMMON_GET_IF(W_TYPE)"):]
        block = block[: block.index("\n\n")]
        got_m1 = [
            (int(t), int(n), int(k))
            for n, k, t in re.findall(r"COMMON_GET_IF_M1\(W_TYPE, (\d+), (\d+), (\d+)\)", block)
        ]
        got_m234 = [
            (int(t), int(n), int(k))
            for n, k, t in re.findall(r"COMMON_GET_IF_M234\(W_TYPE, (\d+), (\d+), (\d+)\)", block)
        ]
        assert got_m1 == m1 and got_m234 == m234, header
        assert "COMMON_GET_IF(host::kU4B8)" in text and "COMMON_GET_IF(host::kU8B128)" in text
    assert len(marlin_sass.instantiations("dense")) == 30 and len(marlin_sass.instantiations("moe")) == 20
