"""CI builds the exact Marlin kernels our checkpoints run and checks their machine code.

Uses nvcc (no GPU or driver needed) through ``sglang_ampere.quant.marlin_sass``, which
instantiates only our specialisations with SGLang's JIT preamble and flags, BF16 activations:

* dsv4_int, sm_86: uint8b128 group 128 and per-channel dense (30 kernels), uint4b8 group-32 MoE in
  both GEMM variants (20 kernels);
* native FP8/FP4 checkpoint, sm_86 and sm_80: float8_e4m3fn group-128 dense (15 kernels, what
  ``Fp8LinearMethod`` runs through FP8 Marlin below sm_89) and float4_e2m1f group-32 MoE with E8M0
  scales in both GEMM variants (20 kernels, what ``Mxfp4MarlinMoEMethod`` runs once its SM90/SM120
  gate is lifted).

Each build is one translation unit, 25-50 s on the 2-core CI host. The numbers go to
benchmarks/RESULTS.md ("Marlin kernels").
"""

from __future__ import annotations

import re
import shutil

import pytest

pytest.importorskip("sglang")

from sglang_ampere.cuda_tools import STATIC_SHARED_LIMIT, find_tool
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


#: m=4 (64-row) tiles sit at the 255-register cap and spill a few bytes, on sm_90a as well (SGLang's
#: own production arch for these kernels; docs/native-census-scripts/marlin_sm90a_compare.py). Smaller
#: tiles, which carry decode and small batches, must have no local memory at all.
M4_STACK_LIMIT = 16


@pytest.mark.slow
@pytest.mark.parametrize("arch", [86, 80])
@pytest.mark.parametrize("kind,count", [("dense_fp8", 15), ("moe_mxfp4", 20)])
def test_native_marlin_kernels_build_clean_for_ampere(kind, count, arch, tmp_path):
    _toolchain_or_skip()
    res = marlin_sass.build(kind, arch, tmp_path)
    assert res.elf_archs == [str(arch)], f"expected only sm_{arch} machine code, got {res.elf_archs}"
    assert not res.has_ptx, "PTX embedded: the driver could JIT something we did not inspect"
    rows = marlin_sass.marlin_kernels(res)
    assert len(rows) == count == len(marlin_sass.instantiations(kind))
    assert len({tuple(sorted(c.items())) for c, _ in rows}) == count
    for cfg, s in rows:
        assert s.hmma > 0 and s.hmma == s.hmma_bf16, f"{kind} sm_{arch} {cfg}: HMMA {s.hmma}, BF16 {s.hmma_bf16}"
        assert s.imma == 0 and s.traps == 0, f"{kind} sm_{arch} {cfg}: IMMA {s.imma}, BPT.TRAP {s.traps}"
        assert 0 < s.registers <= 255
        assert s.static_shared <= STATIC_SHARED_LIMIT, f"{kind} sm_{arch} {cfg}: static smem {s.static_shared} B"
        local = (s.stack, s.spill_stores, s.spill_loads, s.ldl, s.stl)
        if cfg["m"] < 4:
            assert local == (0, 0, 0, 0, 0), f"{kind} sm_{arch} {cfg}: local memory (stack/spill/LDL/STL) {local}"
        else:
            assert s.stack <= M4_STACK_LIMIT, f"{kind} sm_{arch} {cfg}: {s.stack} B stack"
    assert sum(k.traps for k in res.kernels.values()) == 0, "BPT.TRAP in the object"
    variants = {c["variant"] for c, _ in rows}
    assert variants == ({"g128 (block)"} if kind == "dense_fp8" else {"GEMM1 (gate/up)", "GEMM2 (down)"})


def _macro_block(text: str, macro: str) -> str:
    start = text.index(f"#define {macro}(W_TYPE)")
    return text[start: text.index("\n\n", start)]


def _tile_rows(text: str, macro: str, m: str) -> list[tuple[int, int, int]]:
    """(threads, n blocks, k blocks) of the ``<macro>_M<m>`` rows of a ``<macro>`` table."""
    rows = re.findall(rf"{macro}_{m}\(W_TYPE, (\d+), (\d+), (\d+)\)", _macro_block(text, macro))
    return [(int(t), int(n), int(k)) for n, k, t in rows]


def _group_blocks(text: str, macro: str) -> set[int]:
    """GROUP_BLOCKS values the ``<macro>_M1`` / ``_M234`` rows instantiate (is_zp_float false)."""
    out = set()
    for sub in ("M1", "M234"):
        start = text.index(f"#define {macro}_{sub}(W_TYPE")
        block = text[start: text.index("\n\n", start)]
        row = r"_GET_IF\(W_TYPE, \d, N_BLOCKS, K_BLOCKS, \w+, (-?\d+), NUM_THREADS, false\)"
        out |= {int(g) for g in re.findall(row, block)}
    return out


def _thread_configs(text: str, name: str) -> list[tuple[int, int, int]]:
    """``determine_exec_config``'s tile list ``{thread_k, thread_n, threads}`` as (threads, n, k) blocks."""
    start = text.index(f"thread_config_t {name}[] = {{")
    block = text[start: text.index("};", start)]
    return [(int(t), int(n) // 16, int(k) // 16) for k, n, t in re.findall(r"\{(\d+), (\d+), (\d+)\}", block)]


def test_instantiation_tables_cover_sglang_dispatch():
    """Each kind's tiles are SGLang's *_GET_IF table for its weight type, restricted to the tiles
    determine_exec_config can pick on sm_8x, and its group sizes are in that table (read from the .cuh)."""
    root = marlin_sass._jit_root() / "csrc" / "gemm"
    for spec in marlin_sass.KINDS.values():
        text = (root / spec.header).read_text()
        assert f"{spec.table_macro}(host::{spec.w_type})" in text, f"{spec.name}: {spec.w_type} not dispatched"
        small = _thread_configs(text, "small_batch_thread_configs")
        large = _thread_configs(text, "large_batch_thread_configs")
        want_m1 = [t for t in _tile_rows(text, spec.table_macro, "M1") if t in small]
        want_m234 = [t for t in _tile_rows(text, spec.table_macro, "M234") if t in large]
        assert list(spec.m1) == want_m1 and list(spec.m234) == want_m234, spec.name
        assert set(spec.group_blocks) <= _group_blocks(text, spec.table_macro), spec.name
    # The MXFP4 table's extra m=1 tile is only picked by an sm_90 override, which is why it is left out.
    moe = (root / "marlin_moe/moe_wna16_marlin.cuh").read_text()
    extra = set(_tile_rows(moe, "MXFP4_GET_IF", "M1")) - set(marlin_sass.KINDS["moe_mxfp4"].m1)
    assert extra == {(128, 4, 8)} and "#if SGL_CUDA_ARCH == 900" in moe
    assert {k: len(marlin_sass.instantiations(k)) for k in marlin_sass.KINDS} == {
        "dense": 30, "moe": 20, "dense_fp8": 15, "moe_mxfp4": 20}


def test_native_kinds_are_what_the_native_quant_path_dispatches():
    """The native kinds' types and groups follow SGLang's own Python dispatch: FP8 Marlin linears pass
    float8_e4m3fn with the checkpoint's block width as group size; MXFP4 Marlin MoE passes E8M0 scales,
    which select float4_e2m1f, with group 32."""
    import inspect

    from sglang.srt.layers.moe.fused_moe_triton import fused_marlin_moe
    from sglang.srt.layers.quantization import marlin_utils_fp4, marlin_utils_fp8

    fp8 = inspect.getsource(marlin_utils_fp8)
    assert "b_q_type=scalar_types.float8_e4m3fn" in fp8
    assert "group_size = -1 if weight_block_size is None else weight_block_size[1]" in fp8
    assert marlin_sass.KINDS["dense_fp8"].group_blocks == (128 // 16,)
    assert "group_size = 32" in inspect.getsource(marlin_utils_fp4.prepare_moe_mxfp4_layer_for_marlin)
    assert marlin_sass.KINDS["moe_mxfp4"].group_blocks == (32 // 16,)
    # get_scalar_type imports sgl_kernel, which needs a GPU; read its rule instead of calling it.
    rule = inspect.getsource(fused_marlin_moe.get_scalar_type)
    assert "scales.dtype == torch.float8_e8m0fnu" in rule and "return scalar_types.float4_e2m1f" in rule
    assert marlin_sass.KINDS["moe_mxfp4"].w_type == "kFE2M1f" and marlin_sass.KINDS["moe_mxfp4"].s_type == "kFE8M0fnu"
    assert {marlin_sass.KINDS[k].checkpoint for k in ("dense_fp8", "moe_mxfp4")} == {"native"}
    assert marlin_sass.kinds_for("native") == ["dense_fp8", "moe_mxfp4"]


def test_res_usage_parser_reads_static_shared_memory_per_kernel():
    from sglang_ampere.cuda_tools import parse_res_usage

    text = """
Resource usage:
 Common:
  GLOBAL:0
 Function _Z4kernA:
  REG:255 STACK:8 SHARED:0 LOCAL:0 CONSTANT[0]:456 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function _Z4kernB:
  REG:40 STACK:0 SHARED:49664 LOCAL:16 CONSTANT[0]:400 TEXTURE:0 SURFACE:0 SAMPLER:0
"""
    got = parse_res_usage(text)
    assert set(got) == {"_Z4kernA", "_Z4kernB"}
    assert (got["_Z4kernA"].registers, got["_Z4kernA"].stack, got["_Z4kernA"].shared) == (255, 8, 0)
    assert (got["_Z4kernB"].shared, got["_Z4kernB"].local) == (49664, 16)
    assert got["_Z4kernB"].shared > STATIC_SHARED_LIMIT >= got["_Z4kernA"].shared
