"""The torch reference of dsv4_int's INT4 W4A16 routed experts (no SGLang import).

``W[n, k] = (stored[n, k] - 8) * scale[n, k // 32]`` (uint4b8 nibbles, low nibble = even k;
BF16 scales), summed over the top-k experts by :func:`.moe_reference.reference_moe` (SwiGLU
clamp, top-k weights, optional routed scaling). :mod:`.int4_moe` (the SGLang MoE method) runs
this off CUDA; the GPU checks and the device kit's runner compare SGLang's Marlin MoE against it.
It lives apart from the method so that a process without SGLang imports it rather than a copy.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..formats.int4 import int4_group_dequantize
from . import moe_reference


def dequantize_expert(packed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 ``[N, K]`` of one expert matrix."""
    return int4_group_dequantize(packed.view(torch.uint8), scale)


def reference_moe(x: torch.Tensor, w13: torch.Tensor, w13_scale: torch.Tensor, w2: torch.Tensor,
                  w2_scale: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                  swiglu_limit: Optional[float], routed_scaling_factor: Optional[float]) -> torch.Tensor:
    """Torch path in the Marlin numerics (:func:`.moe_reference.reference_moe`) on uint4b8
    experts; ``topk_ids < 0`` (not local) are skipped."""
    def weights(e: int):
        return dequantize_expert(w13[e], w13_scale[e]), dequantize_expert(w2[e], w2_scale[e])

    return moe_reference.reference_moe(x, weights, w2.shape[1], topk_weights, topk_ids, swiglu_limit,
                                       routed_scaling_factor)
