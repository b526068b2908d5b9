"""Build exactly the Marlin kernels our checkpoints run, for one Ampere arch, and read their SASS.

SGLang JIT-compiles Marlin on first use, and every module compiles the whole dispatch table
(188-272 kernels, several minutes each on 2 cores). CI only needs the specialisations our
methods dispatch to, so this writes one translation unit with the same preamble SGLang's JIT
generates (tvm-ffi headers + the ``.cuh``) that takes the address of just those
``Marlin<...>`` kernels, and compiles it with the JIT's flags for the target arch
(``-gencode=arch=compute_XX,code=sm_XX -DSGL_CUDA_ARCH=XX0 -std=c++20 -O3
--expt-relaxed-constexpr``). The per-kernel SASS equals the full module's (reference
marlin-jit.md section 2).

Instantiations (BF16 activations, ``pipe_stages`` = 4). The tile tables are the ``*_GET_IF``
table SGLang's ``get_marlin_kernel`` has for the weight type, restricted to the tiles its
``determine_exec_config`` can pick on sm_8x (``small_batch_thread_configs`` for m=1,
``large_batch_thread_configs`` for m>1; only an ``SGL_CUDA_ARCH == 900`` override reaches the
MXFP4 (n=4, k=8) tile). ``tests/test_marlin_build.py`` re-derives all of this from the ``.cuh``.

dsv4_int (our converted checkpoint):

* ``dense``: ``gptq_marlin.cuh`` ``Marlin<__nv_bfloat16, kU8B128, threads, m, n, k, m8, 4, G, false>``
  with G = 8 (group 128, block variant) and -1 (per-channel variant): 30 kernels.
* ``moe``: ``moe_wna16_marlin.cuh`` ``Marlin<__nv_bfloat16, kU4B8, kBFloat16, threads, m, n, k, m8, 4,
  2 (group 32), false, EP=false, bias=false, sorted=true, zero_inactive=Z, prefix=true>``
  with Z = false (GEMM1, gate/up) and true (GEMM2, down), as ``fused_marlin_moe`` calls
  them without expert parallelism: 20 kernels.

native (the released FP8/FP4 checkpoint, ``Fp8Config`` with ``is_fp4_experts``):

* ``dense_fp8``: ``Fp8LinearMethod`` with ``use_marlin`` (``can_auto_enable_marlin_fp8``: 80 <= sm < 89)
  -> ``apply_fp8_marlin_linear`` -> ``gptq_marlin.cuh`` ``Marlin<__nv_bfloat16, kFE4M3fn, threads, m, n,
  k, m8, 4, 8, false>`` from its ``BIGGROUP_GET_IF`` table: ``prepare_fp8_layer_for_marlin`` turns the
  128x128 block scales into BF16 per-row group-128 scales (group = ``weight_block_size[1]``), so
  ``group_blocks`` = 8; per-channel (-1) would only be reached by a layer whose K is one group
  (128), which no DeepSeek-V4 FP8 linear has up to TP=8: 15 kernels.
* ``moe_mxfp4``: ``Mxfp4MarlinMoEMethod`` -> ``fused_marlin_moe`` (E8M0 scales select
  ``float4_e2m1f``) -> ``moe_wna16_marlin.cuh`` ``MXFP4_GET_IF`` ``Marlin<__nv_bfloat16, kFE2M1f,
  kFE8M0fnu, threads, m, n, k, m8, 4, 2 (group 32), false, false, false, true, Z, true>``, Z as for
  ``moe``; the same two JIT modules as ``moe`` (weight type and group are runtime arguments):
  20 kernels.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ..checkpoint_format import DSV4_INT, NATIVE
from ..cuda_tools import (
    STATIC_SHARED_LIMIT,
    SassCounts,
    find_cuda_home,
    find_tool,
    read_res_usage,
    read_sass,
    sass_counts,
)

#: (threads, thread_n_blocks, thread_k_blocks) per table, m=1 and m=2..4 (SGLang 0.5.23), as
#: dispatched on sm_8x. The FP8 dense table (``BIGGROUP_GET_IF``) has the same tiles as uint8b128's
#: ``COMMON_GET_IF``; the MXFP4 MoE table's extra m=1 (128, 4, 8) tile is picked only on sm_90.
DENSE_M1 = [(256, 8, 8), (128, 8, 4), (128, 4, 8)]
DENSE_M234 = [(256, 16, 4), (128, 8, 4), (128, 4, 8)]
MOE_M1 = [(256, 8, 8), (128, 8, 4)]
MOE_M234 = [(256, 16, 4), (128, 8, 4)]


@dataclass(frozen=True)
class KernelKind:
    """One family of Marlin specialisations we dispatch: header, template arguments, tables."""
    name: str
    checkpoint: str          # the checkpoint format that runs it: DSV4_INT or NATIVE
    header: str              # under sglang/kernels/jit/csrc/gemm/
    table_macro: str         # the *_GET_IF macro get_marlin_kernel uses for this weight type
    w_type: str              # sglang::host ScalarType constant
    s_type: str | None       # MoE only: the scale type template argument
    group_blocks: tuple[int, ...]
    m1: tuple[tuple[int, int, int], ...]
    m234: tuple[tuple[int, int, int], ...]
    title: str

    @property
    def moe(self) -> bool:
        return self.s_type is not None


KINDS: dict[str, KernelKind] = {k.name: k for k in (
    KernelKind("dense", DSV4_INT, "marlin/gptq_marlin.cuh", "COMMON_GET_IF", "kU8B128", None, (8, -1),
               tuple(DENSE_M1), tuple(DENSE_M234), "W8A16 dense (`gptq_marlin`, uint8b128, BF16)"),
    KernelKind("moe", DSV4_INT, "marlin_moe/moe_wna16_marlin.cuh", "COMMON_GET_IF", "kU4B8", "kBFloat16", (2,),
               tuple(MOE_M1), tuple(MOE_M234),
               "W4A16 MoE (`moe_wna16_marlin`, uint4b8 group 32, BF16 scales; EP off, sorted ids, "
               "inactive-prefix count)"),
    KernelKind("dense_fp8", NATIVE, "marlin/gptq_marlin.cuh", "BIGGROUP_GET_IF", "kFE4M3fn", None, (8,),
               tuple(DENSE_M1), tuple(DENSE_M234),
               "FP8 W8A16 dense (`gptq_marlin`, float8_e4m3fn group 128 from 128x128 block scales, BF16)"),
    KernelKind("moe_mxfp4", NATIVE, "marlin_moe/moe_wna16_marlin.cuh", "MXFP4_GET_IF", "kFE2M1f", "kFE8M0fnu",
               (2,), tuple(MOE_M1), tuple(MOE_M234),
               "MXFP4 MoE (`moe_wna16_marlin`, float4_e2m1f group 32, E8M0 scales; EP off, sorted ids, "
               "inactive-prefix count)"),
)}


def kinds_for(checkpoint: str) -> list[str]:
    """The kernel kinds a checkpoint format (``checkpoint_format.DSV4_INT`` or ``NATIVE``) runs."""
    names = [k.name for k in KINDS.values() if k.checkpoint == checkpoint]
    if not names:
        raise ValueError(f"checkpoint must be one of {sorted({k.checkpoint for k in KINDS.values()})}, "
                         f"got {checkpoint!r}")
    return names


def _kind(kind: str) -> KernelKind:
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}") from None


def _tiles(m1, m234):
    for threads, n, k in m1:
        for m8 in (True, False):
            yield threads, 1, n, k, m8
    for threads, n, k in m234:
        for m in (2, 3, 4):
            yield threads, m, n, k, False


def _b(v: bool) -> str:
    return "true" if v else "false"


def instantiations(kind: str) -> list[str]:
    """C++ template-ids of every kernel of ``kind`` (a key of :data:`KINDS`)."""
    spec = _kind(kind)
    out = []
    w = f"sglang::host::{spec.w_type}.id()"
    if not spec.moe:
        for group_blocks in spec.group_blocks:
            for threads, m, n, k, m8 in _tiles(spec.m1, spec.m234):
                out.append(
                    f"sglang::device::marlin::Marlin<__nv_bfloat16, {w}, {threads}, {m}, {n}, "
                    f"{k}, {_b(m8)}, sglang::device::marlin::pipe_stages, {group_blocks}, false>"
                )
    else:
        (group_blocks,) = spec.group_blocks
        for zero_inactive in (False, True):
            for threads, m, n, k, m8 in _tiles(spec.m1, spec.m234):
                out.append(
                    f"sglang::device::marlin_moe::Marlin<__nv_bfloat16, {w}, sglang::host::{spec.s_type}.id(), "
                    f"{threads}, {m}, {n}, {k}, {_b(m8)}, sglang::device::marlin::pipe_stages, {group_blocks}, "
                    f"false, false, false, true, {_b(zero_inactive)}, true>"
                )
    return out


def _jit_root() -> Path:
    import sglang.kernels.jit as jit

    return Path(jit.__file__).parent


def translation_unit(kind: str) -> str:
    header = _kind(kind).header
    lines = [
        "#include <tvm/ffi/container/tensor.h>",
        "#include <tvm/ffi/dtype.h>",
        "#include <tvm/ffi/error.h>",
        "#include <tvm/ffi/extra/c_env_api.h>",
        "#include <tvm/ffi/function.h>",
        f'#include "{_jit_root() / "csrc" / "gemm" / header}"',
        "// Taking each kernel's address instantiates exactly these specialisations.",
        f"extern \"C\" void* sglang_ampere_{kind}_kernels[] = {{",
    ]
    lines += [f"    (void*)&{inst}," for inst in instantiations(kind)]
    lines.append("};")
    return "\n".join(lines) + "\n"


def cuda_home() -> Path:
    home = find_cuda_home()
    if home is None:
        raise FileNotFoundError("no CUDA toolkit found (set CUDA_HOME to the folder with bin/nvcc and include/)")
    return Path(home)


@dataclass
class KernelStats(SassCounts):
    """SASS instruction counts (from :mod:`sglang_ampere.cuda_tools`) plus ptxas' figures and the
    static shared memory ``cuobjdump -res-usage`` reports (Marlin's tile buffers are dynamic)."""
    name: str = ""
    registers: int = 0
    stack: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    static_shared: int = 0


@dataclass
class BuildResult:
    kind: str
    arch: int
    obj: Path
    elf_archs: list[str] = field(default_factory=list)
    has_ptx: bool = False
    kernels: dict[str, KernelStats] = field(default_factory=dict)
    seconds: float = 0.0


def build(kind: str, arch: int, out_dir: Path, timeout: int = 900) -> BuildResult:
    """Compile the TU for ``sm_<arch>`` (e.g. 86) into ``out_dir`` and inspect it."""
    import time

    import tvm_ffi

    out_dir.mkdir(parents=True, exist_ok=True)
    src = out_dir / f"{kind}_sm{arch}.cu"
    obj = out_dir / f"{kind}_sm{arch}.o"
    src.write_text(translation_unit(kind))
    home = cuda_home()
    cmd = [str(home / "bin" / "nvcc"), "-Xcompiler", "-fPIC", f"-gencode=arch=compute_{arch},code=sm_{arch}",
           f"-DSGL_CUDA_ARCH={arch * 10}", "-std=c++20", "-O3", "--expt-relaxed-constexpr", "-Xptxas=-v",
           f"-I{Path(tvm_ffi.__file__).parent / 'include'}", f"-I{_jit_root() / 'include'}",
           "-c", str(src), "-o", str(obj)]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"nvcc failed for {kind} sm_{arch}:\n{proc.stderr[-4000:]}")
    res = BuildResult(kind, arch, obj, seconds=time.time() - t0)
    _parse_ptxas(proc.stderr, res)
    _inspect(res)
    return res


def _parse_ptxas(log: str, res: BuildResult) -> None:
    current = None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\S+)' for 'sm_(\d+)'", line)
        if m:
            current = res.kernels.setdefault(m.group(1), KernelStats(name=m.group(1)))
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            current.stack, current.spill_stores, current.spill_loads = map(int, m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current.registers = int(m.group(1))


def _inspect(res: BuildResult) -> None:
    cuobjdump = find_tool("cuobjdump")
    elf = subprocess.run([cuobjdump, "--list-elf", str(res.obj)], capture_output=True, text=True, check=True).stdout
    res.elf_archs = sorted(set(re.findall(r"sm_(\d+)", elf)))
    ptx = subprocess.run([cuobjdump, "--list-ptx", str(res.obj)], capture_output=True, text=True).stdout
    res.has_ptx = ".ptx" in ptx
    for name, counts in sass_counts(read_sass(res.obj)).items():
        if name:
            stats = res.kernels.setdefault(name, KernelStats(name=name))
            stats += counts
    for name, usage in read_res_usage(res.obj).items():
        res.kernels.setdefault(name, KernelStats(name=name)).static_shared = usage.shared


def demangle(names: list[str]) -> dict[str, str]:
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
        return dict(zip(names, out.splitlines()))
    except (OSError, subprocess.CalledProcessError):
        return {n: n for n in names}


def template_args(demangled: str) -> list[str]:
    m = re.search(r"Marlin<(.*)>\(", demangled)
    return [a.strip() for a in m.group(1).split(",")] if m else []


def config_of(kind: str, demangled: str) -> dict:
    """Tile config and variant of one Marlin kernel, from its demangled template arguments."""
    a = template_args(demangled)
    if not _kind(kind).moe:   # scalar, w_type, threads, m, n, k, m8, stages, group_blocks, zp_float
        threads, m, n, k, m8, _, group = a[2:9]
        variant = "g128 (block)" if group == "8" else "per-channel"
    else:  # scalar, w_type, s_type, threads, m, n, k, m8, stages, group, zp, ep, bias, sorted, zero, prefix
        threads, m, n, k, m8, _, group = a[3:10]
        variant = "GEMM2 (down)" if a[14] == "true" else "GEMM1 (gate/up)"
    return {"variant": variant, "threads": int(threads), "m": int(m), "n": int(n), "k": int(k), "m8": m8 == "true"}


def marlin_kernels(res: BuildResult) -> list[tuple[dict, KernelStats]]:
    names = [n for n in res.kernels if "Marlin" in n and "MarlinDefault" not in n]
    dm = demangle(names)
    rows = [(config_of(res.kind, dm[n]), res.kernels[n]) for n in names if "Marlin<" in dm[n]]
    return sorted(rows, key=lambda r: (r[0]["variant"], r[0]["m"], r[0]["threads"], r[0]["n"], not r[0]["m8"]))


SECTION = "## Marlin kernels"


def section_markdown(results: list[BuildResult], when: str) -> str:
    arches = ", ".join(f"sm_{a}" for a in sorted({r.arch for r in results}))
    lines = [
        SECTION, "",
        f"Measured {when} by `python -m sglang_ampere.quant.marlin_sass --arch 86 --arch 80 --write "
        "benchmarks/RESULTS.md`",
        f"(the same builds as `tests/test_marlin_build.py`), on the CPU machine above, with nvcc "
        f"{_nvcc_version()}, for {arches}.",
        "It compiles only the Marlin specialisations dsv4_int and the native FP8/FP4 checkpoint dispatch to, with",
        "SGLang's JIT preamble and flags",
        "(`sglang_ampere/quant/marlin_sass.py`), and reads the machine code with `cuobjdump`.",
        "Stack and spill figures come from `ptxas -v`; LDL/STL are local-memory instructions in the SASS.",
        f"Static shared memory comes from `cuobjdump -res-usage` and must stay within {STATIC_SHARED_LIMIT // 1024} "
        "KiB; Marlin's tile",
        "buffers are dynamic shared memory sized at launch, so whether a tile config fits sm_86's 99 KB",
        "(sm_80: 163 KB) per block is decided at launch and not checked here (`sglang-ampere selftest` runs",
        "the kernels on a GPU). Build times are wall seconds for one TU on the 2 shared cores.",
        "",
    ]
    for r in results:
        rows = marlin_kernels(r)
        spec = _kind(r.kind)
        title = f"{spec.title} [{spec.checkpoint}, `{r.kind}`]"
        total_hmma = sum(s.hmma for _, s in rows)
        lines += [
            f"### {title}, sm_{r.arch}",
            "",
            f"{len(rows)} kernels, built in {r.seconds:.0f} s. ELF: {', '.join('sm_' + a for a in r.elf_archs)}; "
            f"PTX embedded: {'yes' if r.has_ptx else 'no'}. HMMA: {total_hmma} (all BF16: "
            f"{'yes' if all(s.hmma == s.hmma_bf16 for _, s in rows) else 'NO'}). IMMA: {sum(s.imma for _, s in rows)}. "
            f"BPT.TRAP (all kernels in the object): {sum(s.traps for s in r.kernels.values())}. "
            f"Max static shared: {max((s.static_shared for _, s in rows), default=0)} B.",
            "",
            "| variant | threads | m blocks | n blocks | k blocks | m=8 | registers | stack B | spill st/ld B | HMMA "
            "| LDL/STL | static smem B |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c, s in rows:
            lines.append(
                f"| {c['variant']} | {c['threads']} | {c['m']} | {c['n']} | {c['k']} | {'yes' if c['m8'] else 'no'} | "
                f"{s.registers} | {s.stack} | {s.spill_stores}/{s.spill_loads} | {s.hmma} | {s.ldl}/{s.stl} | "
                f"{s.static_shared} |"
            )
        lines.append("")
    return "\n".join(lines)


def _nvcc_version() -> str:
    try:
        out = subprocess.run([str(cuda_home() / "bin" / "nvcc"), "--version"], capture_output=True, text=True).stdout
        m = re.search(r"release ([\d.]+), V([\d.]+)", out)
        return m.group(2) if m else "?"
    except (OSError, FileNotFoundError):
        return "?"


def update_results(path: Path, section: str) -> None:
    """Replace (or append) only the "## Marlin kernels" section of RESULTS.md."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    start = text.find(SECTION + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    else:
        nxt = text.find("\n## ", start + len(SECTION))
        end = len(text) if nxt < 0 else nxt + 1
        text = text[:start] + section.rstrip("\n") + "\n" + ("\n" + text[end:] if nxt >= 0 else "")
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import datetime
    import tempfile

    p = argparse.ArgumentParser(description="build the Marlin kernels our checkpoints run for Ampere arches and "
                                            "report their SASS")
    p.add_argument("--arch", type=int, action="append", help="86 or 80; repeat for both (default: 86)")
    p.add_argument("--kind", action="append", choices=sorted(KINDS), help="repeat; default: all kinds")
    p.add_argument("--write", type=Path, help="update the 'Marlin kernels' section of this RESULTS.md")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        results = [build(kind, arch, Path(tmp)) for arch in (args.arch or [86]) for kind in (args.kind or KINDS)]
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    section = section_markdown(results, when)
    if args.write:
        update_results(args.write, section)
    print(section)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
