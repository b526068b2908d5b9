"""``sglang-ampere kernel-report``: compile every TileLang kernel for an arch and inspect its SASS.

No GPU is needed: TileLang lowers each kernel to CUDA C++, nvcc compiles it to a cubin for the
chosen architecture, and cuobjdump/nvdisasm (they ship with Triton) read back, per kernel:

* registers per thread, static + dynamic shared memory per block, local memory per thread
  (spill stores/loads show up as local memory; ptxas also reports them),
* tensor-core instructions (``HMMA``) and trap instructions (``BPT.TRAP``: what nvcc emits for
  an instruction the arch lacks, for example an FP8 MMA on sm_86),

and checks them: HMMA > 0, no traps, no spills/local memory, shared memory within the arch's
per-block limit. Exit status 0 when every kernel passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..cuda_tools import find_tool, read_sass, sass_counts, total
from ..gpus import add_gpu_flag

#: Largest shared memory one block may use (opt-in), bytes.
SMEM_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 87: 163 * 1024, 89: 99 * 1024}
ARCHES = ("sm_86", "sm_80")


@dataclass
class KernelResult:
    name: str
    arch: str
    cubin: str = ""
    registers: int = -1
    shared_static: int = -1
    shared_dynamic: int = -1
    local_bytes: int = -1
    spill_stores: int = -1
    spill_loads: int = -1
    hmma: int = -1
    ldl_stl: int = -1     # local-memory load/store instructions in the SASS
    traps: int = -1
    compile_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def shared_total(self) -> int:
        return max(self.shared_static, 0) + max(self.shared_dynamic, 0)

    @property
    def ok(self) -> bool:
        return not self.problems


def kernel_modules() -> tuple:
    """The modules whose ``report_specs(arch)`` kernel-report compiles (sparse MLA, C4 indexer);
    each also has ``build``, ``target_for`` and ``PASS_CONFIGS``."""
    from ..kernels import tilelang_indexer, tilelang_mla

    return (tilelang_mla, tilelang_indexer)


def _module_of(spec):
    """The kernel module a spec belongs to (its class is defined there)."""
    return sys.modules[type(spec).__module__]


def lower_to_cuda(spec, arch: int) -> tuple[str, int]:
    """(CUDA C++ source, dynamic shared memory bytes per block) of one kernel, lowered by TileLang
    with its module's target and pass configuration."""
    import tilelang
    from tilelang import tvm

    M = _module_of(spec)

    tgt = tvm.target.Target(M.target_for(arch))
    with tvm.transform.PassContext(opt_level=3, config=M.PASS_CONFIGS), tgt:
        art = tilelang.lower(M.build(spec), target=tgt)
    dyn = 0
    for _, func in art.device_mod.functions.items():
        if func.attrs is not None and "dyn_shared_memory_buf" in func.attrs:
            dyn = max(dyn, int(func.attrs["dyn_shared_memory_buf"]))
    return art.kernel_source, dyn


def nvcc_cubin(source: str, arch: int, out: Path) -> str:
    """Compile with the flags TileLang's JIT uses; returns ptxas' verbose output."""
    from tilelang.env import CUTLASS_INCLUDE_DIR, TILELANG_TEMPLATE_PATH

    src = out.with_suffix(".cu")
    src.write_text(source)
    cmd = [find_tool("nvcc"), "--cubin", "-O3", "-lineinfo", f"-arch=sm_{arch}", "-std=c++20",
           f"-I{TILELANG_TEMPLATE_PATH}", f"-I{CUTLASS_INCLUDE_DIR}", "-w",
           "--ptxas-options=--verbose", "-o", str(out), str(src)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"nvcc failed for {src} (command: {' '.join(cmd)}):\n{p.stderr[-4000:]}")
    return p.stdout + p.stderr


def inspect_cubin(cubin: Path, r: KernelResult, ptxas_log: str = "") -> None:
    """Fill registers/shared/local from ``cuobjdump -res-usage`` and counts from the SASS."""
    res = subprocess.run([find_tool("cuobjdump"), "-res-usage", str(cubin)], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"cuobjdump -res-usage {cubin} failed: {res.stderr}")
    m = re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)", res.stdout)
    if not m:
        raise RuntimeError(f"could not parse cuobjdump -res-usage output for {cubin}:\n{res.stdout}")
    r.registers, stack, r.shared_static, r.local_bytes = (int(x) for x in m.groups())
    r.local_bytes = max(r.local_bytes, stack)
    counts = total(sass_counts(read_sass(cubin)))
    r.hmma, r.traps, r.ldl_stl = counts.hmma, counts.traps, counts.ldl + counts.stl
    stores = re.findall(r"(\d+) bytes spill stores", ptxas_log)
    loads = re.findall(r"(\d+) bytes spill loads", ptxas_log)
    r.spill_stores = sum(int(x) for x in stores) if stores else (0 if r.local_bytes == 0 else -1)
    r.spill_loads = sum(int(x) for x in loads) if loads else (0 if r.local_bytes == 0 else -1)


def check(r: KernelResult, arch: int) -> None:
    limit = SMEM_LIMIT.get(arch, 99 * 1024)
    if r.hmma <= 0:
        r.problems.append("no tensor-core (HMMA) instruction in the SASS")
    if r.traps != 0:
        r.problems.append(f"{r.traps} BPT.TRAP instruction(s): the code uses something sm_{arch} lacks")
    if r.local_bytes != 0 or r.spill_stores != 0 or r.spill_loads != 0 or r.ldl_stl > 0:
        r.problems.append(f"register spills / local memory ({r.local_bytes} B local, "
                          f"{r.spill_stores} B spill stores, {r.spill_loads} B spill loads, "
                          f"{r.ldl_stl} LDL/STL instructions)")
    if r.shared_total > limit:
        r.problems.append(f"{r.shared_total} B shared memory > sm_{arch} limit {limit} B")


def report(arch: int, out_dir: Path, only: str | None = None, log=None) -> list[KernelResult]:
    """Compile and inspect every TileLang kernel for sm_{arch}; cubins and sources go to out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for spec in [s for m in kernel_modules() for s in m.report_specs(arch)]:
        if only and only not in spec.name:
            continue
        r = KernelResult(spec.name, f"sm_{arch}")
        t0 = time.time()
        try:
            cubin = out_dir / f"{spec.name}.sm_{arch}.cubin"
            source, r.shared_dynamic = lower_to_cuda(spec, arch)   # TileLang sizes it at launch
            ptxas = nvcc_cubin(source, arch, cubin)
            r.cubin = str(cubin)
            inspect_cubin(cubin, r, ptxas)
            check(r, arch)
        except Exception as e:  # report every kernel, then fail
            r.problems.append(f"{type(e).__name__}: {e}")
        r.compile_s = round(time.time() - t0, 1)
        results.append(r)
        if log:
            log(_line(r))
    return results


def _line(r: KernelResult) -> str:
    status = "ok" if r.ok else "FAIL: " + "; ".join(r.problems)
    return (f"{r.name:<38} {r.arch}  reg {r.registers:>3}  smem {r.shared_total:>6} B  "
            f"local {r.local_bytes:>3} B  LDL/STL {r.ldl_stl}  HMMA {r.hmma:>4}  traps {r.traps}  "
            f"{r.compile_s:>5.1f}s  {status}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_gpu_flag(parser, "sm86", "target architecture: sm86 (default) or sm80")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--out", default=None, help="directory for the cubins and CUDA sources "
                        "(default: a temporary directory that is removed afterwards)")
    parser.add_argument("--only", default=None, help="compile only kernels whose name contains this")


def run(args: argparse.Namespace) -> int:
    arch = args.gpu.number
    if arch not in SMEM_LIMIT:
        print(f"kernel-report: sm_{arch} is not a target of these kernels; use --gpu sm86 or sm80",
              file=sys.stderr)
        return 2
    try:
        import tilelang  # noqa: F401
    except ImportError:
        print("kernel-report needs TileLang 0.1.12 (it comes with SGLang 0.5.23: "
              "pip install 'sglang-ampere[serve]')", file=sys.stderr)
        return 2
    try:
        find_tool("nvcc"), find_tool("cuobjdump"), find_tool("nvdisasm")
    except FileNotFoundError as e:
        print(f"kernel-report: {e}", file=sys.stderr)
        return 2
    tmp = None
    if args.out:
        out = Path(args.out)
    else:
        tmp = tempfile.mkdtemp(prefix="sglang-ampere-kernels-")
        out = Path(tmp)
    try:
        results = report(arch, out, args.only, log=None if args.json else print)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        payload = [dict(asdict(r), shared_total=r.shared_total, ok=r.ok) for r in results]
        print(json.dumps({"arch": f"sm_{arch}", "smem_limit": SMEM_LIMIT[arch], "kernels": payload}, indent=2))
    elif results:
        bad = sum(not r.ok for r in results)
        print(f"{len(results) - bad}/{len(results)} kernels pass for sm_{arch}"
              + ("" if not args.out else f"; cubins in {out}"))
    if not results:
        print("kernel-report: no kernel matched --only", file=sys.stderr)
        return 1
    return 0 if all(r.ok for r in results) else 1
