"""Native MXFP4 routed experts: the torch reference of SGLang's MXFP4 Marlin MoE (no SGLang import).

Checkpoint layout (``ffn.experts.E.w{1,2,3}.{weight,scale}``), as SGLang's ``Mxfp4MarlinMoEMethod``
loads it: ``w13_weight`` int8 ``[E, 2I, H/2]`` (rows ``[w1; w3]``, two E2M1 codes per byte, low
nibble = even K), ``w2_weight`` int8 ``[E, H, I/2]``, ``w13_weight_scale_inv`` E8M0 ``[E, 2I, H/32]``,
``w2_weight_scale_inv`` E8M0 ``[E, H, I/32]``.

Contract, per token ``t`` with experts ``e_j`` and top-k weights ``p_j``::

    W[n, k] = e2m1(code[n, k]) * 2^(scale[n, k // 32] - 127)
    h       = x_t @ W13[e]^T;  g, u = h[:I], h[I:]
    g       = min(g, L);  u = clamp(u, -L, L)        L = swiglu_limit (skipped when None)
    y_t     = sum_j p_j * (silu(g) * u) @ W2[e_j]^T  (* routed_scaling_factor, when given)

Routed scaling is applied exactly once. SGLang's ``Mxfp4MarlinMoEMethod`` sets
``fuse_routed_scaling_factor_in_topk = True``: TopK multiplies ``p_j`` by the factor and the
Marlin MXFP4 runner does a plain top-k sum (``fused_marlin_moe``: "Top-k weights (incl. routed
scaling) are already applied"), so its callers pass ``routed_scaling_factor=None`` here with
already-scaled weights. The numerics follow the kernel: BF16 weights (exact: an E2M1 value times
a power of two), BF16 activations and intermediates, float32 sum over the top-k.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..formats.mxfp4 import mxfp4_dequantize
from .moe_reference import reference_moe


def reference_mxfp4_moe(x: torch.Tensor, w13: torch.Tensor, w13_scale: torch.Tensor, w2: torch.Tensor,
                        w2_scale: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                        swiglu_limit: Optional[float], routed_scaling_factor: Optional[float] = None) -> torch.Tensor:
    """:func:`reference_moe` on checkpoint-layout MXFP4 experts (see the module docstring)."""
    if w13.shape[1] != 2 * 2 * w2.shape[2] or w13.shape[2] * 2 != w2.shape[1]:
        raise ValueError(f"MXFP4 expert shapes do not fit: w13 {tuple(w13.shape)}, w2 {tuple(w2.shape)} "
                         "(want [E, 2I, H/2] and [E, H, I/2])")

    def weights(e: int):
        # Decoded on the host one expert at a time (an oracle, not a fast path); reference_moe moves it back.
        return (mxfp4_dequantize(w13[e].cpu(), w13_scale[e].cpu(), f"w13[{e}]"),
                mxfp4_dequantize(w2[e].cpu(), w2_scale[e].cpu(), f"w2[{e}]"))

    return reference_moe(x, weights, w2.shape[1], topk_weights, topk_ids, swiglu_limit, routed_scaling_factor)
