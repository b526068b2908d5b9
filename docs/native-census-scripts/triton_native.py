"""Triton kernels the native checkpoint reaches (or would reach without its routes), compiled for
sm_86 (TARGET_CC=80 for sm_80) through tharness.py's fake driver: SGLang's real wrappers, CPU tensors,
compile only. Usage: TARGET_CC=86 python triton_native.py
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import torch  # noqa: E402
from tharness import LAUNCHES, attempt  # noqa: E402  (installs the fake driver first)

bf, f32, i32, f8 = torch.bfloat16, torch.float32, torch.int32, torch.float8_e4m3fn


# Census row N25 -- reached: Mxfp4MarlinMoEMethod folds the routed scaling factor into top-k
# (fuse_routed_scaling_factor_in_topk = True), so the router's APPLY_SCALE constexpr is True.
def router_apply_scale():
    from sglang.kernels.ops.moe.moe_fused_gate import moe_fused_gate
    for m in (1, 64):
        moe_fused_gate(torch.zeros(m, 256, dtype=f32), torch.zeros(256, dtype=bf), topk=6,
                       scoring_func="sqrtsoftplus", renormalize=True, routed_scaling_factor=1.5,
                       apply_routed_scaling_factor_on_output=True)


attempt("moe_fused_gate sqrtsoftplus APPLY_SCALE=True (topk.py:1713, native routed scaling in top-k)",
        router_apply_scale)


# Census row N10, negative control -- NOT reached: the block-FP8 Triton GEMM that Fp8LinearMethod.__init__ dispatches
# below sm_90 (fp8.py:548, fp8_utils.py:1204) and that FP8 Marlin replaces at apply (fp8.py:1313).
def block_fp8_triton_gemm():
    import sglang.kernels.ops.gemm.fp8_kernel as fk
    from sglang.kernels.ops.gemm.fp8_kernel import w8a8_block_fp8_matmul_triton
    fk.get_device_name = lambda *a: "NVIDIA GeForce RTX 3090"   # no device to ask; selects tuned configs
    a = torch.zeros(16, 512, dtype=f8)
    b = torch.zeros(256, 512, dtype=f8)
    w8a8_block_fp8_matmul_triton(a, b, torch.ones(16, 4, dtype=f32), torch.ones(2, 4, dtype=f32), [128, 128],
                                 output_dtype=bf)


attempt("w8a8_block_fp8_matmul_triton (dense FP8 fallback, not reached: FP8 Marlin)", block_fp8_triton_gemm)

print("\nSUMMARY")
seen = {}
for name, status, _ in LAUNCHES:
    seen.setdefault(name, set()).add(status)
for name, statuses in seen.items():
    print(name, sorted(statuses))
