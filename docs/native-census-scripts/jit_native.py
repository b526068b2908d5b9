"""Build the JIT .cuh modules the native checkpoint adds to the dsv4_int path, for one Ampere arch,
with SGLang's own builders, and print their resource usage. One process per arch (reference
marlin-jit.md: the JIT's arch-keyed caches are per process).
Usage: SGLANG_JIT_CACHE_DIR=/tmp/jit CUDA_HOME=<toolkit> python jit_native.py 86   (or 80)

The Marlin GEMMs need no build here: the native kernels are specialisations inside the same
``moe_wna16_marlin`` GEMM1/GEMM2 and ``gptq_marlin`` bf16 modules dsv4_int builds (weight type and
group size are runtime arguments), and sglang_ampere.quant.marlin_sass checks their SASS.
"""
import glob
import os
import subprocess
import sys
import time

from sglang.kernels.jit.utils import override_jit_cuda_arch

from sglang_ampere.cuda_tools import find_tool, read_res_usage, read_sass, sass_counts, total

arch = int(sys.argv[1]) if len(sys.argv) > 1 else 86
root = os.environ.get("SGLANG_JIT_CACHE_DIR") or os.path.expanduser("~/.cache/sglang/jit")
with override_jit_cuda_arch(arch // 10, arch % 10):
    from sglang.kernels.ops.moe.moe_topk_sum import _jit_topk_sum_module

    t0 = time.time()
    _jit_topk_sum_module()
    print(f"moe_topk_sum sm_{arch}: built in {time.time() - t0:.1f} s")
for so in glob.glob(f"{root}/sm{arch}/*topk_sum*/build-*/deps-*/*.so"):
    elf = subprocess.run([find_tool("cuobjdump"), "--list-elf", so], capture_output=True, text=True).stdout
    ptx = subprocess.run([find_tool("cuobjdump"), "--list-ptx", so], capture_output=True, text=True).stdout
    c = total(sass_counts(read_sass(so)))
    print(so)
    print("  ELF:", sorted(set(l.split(".")[-2] for l in elf.split() if l.endswith(".cubin"))), "PTX:", ".ptx" in ptx)
    print(f"  BPT.TRAP {c.traps}  LDL/STL {c.ldl}/{c.stl}")
    for name, r in read_res_usage(so).items():
        print(f"  {name[:90]}: REG {r.registers} STACK {r.stack} SHARED {r.shared} LOCAL {r.local}")
