"""Build the native Marlin specialisations for sm_90a (SGLang's production arch for this path) with
the same TU and flags as sglang_ampere.quant.marlin_sass, to tell Ampere-specific register spills
from ones the kernels have everywhere. Usage: OUT_DIR=/tmp/x python marlin_sm90a_compare.py [kind...]
"""
import os
import subprocess
import sys
from pathlib import Path

import tvm_ffi

from sglang_ampere.quant import marlin_sass as ms

out = Path(os.environ.get("OUT_DIR", "/tmp/native-census")) / "sm90a"
out.mkdir(parents=True, exist_ok=True)
for kind in sys.argv[1:] or ["moe_mxfp4", "dense_fp8"]:
    src, obj = out / f"{kind}.cu", out / f"{kind}.o"
    src.write_text(ms.translation_unit(kind))
    cmd = [str(ms.cuda_home() / "bin" / "nvcc"), "-Xcompiler", "-fPIC", "-gencode=arch=compute_90a,code=sm_90a",
           "-DSGL_CUDA_ARCH=900", "-std=c++20", "-O3", "--expt-relaxed-constexpr", "-Xptxas=-v",
           f"-I{Path(tvm_ffi.__file__).parent / 'include'}", f"-I{ms._jit_root() / 'include'}", "-c", str(src),
           "-o", str(obj)]
    p = subprocess.run(cmd, capture_output=True, text=True, check=True)
    res = ms.BuildResult(kind, 90, obj)
    ms._parse_ptxas(p.stderr.replace("'sm_90a'", "'sm_90'"), res)  # its regex reads a numeric arch
    for cfg, s in ms.marlin_kernels(res):
        if s.stack or s.spill_stores or s.spill_loads:
            print(f"sm_90a {kind} {cfg}: regs {s.registers} stack {s.stack} B spill {s.spill_stores}/{s.spill_loads} B")
    print(f"sm_90a {kind}: {len(ms.marlin_kernels(res))} kernels built")
