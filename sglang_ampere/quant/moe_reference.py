"""The routed-expert sum both MoE methods' torch references share (no SGLang import).

Per token ``t`` with experts ``e_j`` and top-k weights ``p_j``::

    h   = x_t @ W13[e]^T;  g, u = h[:I], h[I:]      (gate rows first)
    g   = min(g, L);  u = clamp(u, -L, L)           L = swiglu_limit (skipped when None)
    y_t = sum_j p_j * (silu(g) * u) @ W2[e_j]^T     (* routed_scaling_factor, when given)

in the Marlin kernels' numerics: weights dequantized to the activation dtype, intermediates in
that dtype, the top-k sum in float32. How ``W`` is decoded is the caller's
(:mod:`.int4_moe` for uint4b8 group 32, :mod:`.native_moe` for MXFP4), and so is whether the
routed scaling factor is applied here or already folded into ``p_j``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

#: ``e -> (W13 [2I, H], W2 [H, I])`` in float32 for one expert.
ExpertWeights = Callable[[int], tuple[torch.Tensor, torch.Tensor]]


def swiglu(h: torch.Tensor, swiglu_limit: Optional[float]) -> torch.Tensor:
    """``silu(gate) * up`` of ``[M, 2I]`` (gate first) with DeepSeek-V4's clamp (gate above, up both sides)."""
    inter = h.shape[-1] // 2
    gate, up = h[..., :inter], h[..., inter:]
    if swiglu_limit:
        gate = gate.clamp(max=swiglu_limit)
        up = up.clamp(min=-swiglu_limit, max=swiglu_limit)
    return F.silu(gate) * up


def reference_moe(x: torch.Tensor, expert_weights: ExpertWeights, num_hidden_out: int,
                  topk_weights: torch.Tensor, topk_ids: torch.Tensor, swiglu_limit: Optional[float],
                  routed_scaling_factor: Optional[float]) -> torch.Tensor:
    """The routed-expert sum in the kernel's numerics. ``expert_weights(e)`` gives float32
    ``(W13 [2I, H], W2 [H, I])``; ``topk_ids < 0`` (experts not on this rank) are skipped."""
    out = torch.zeros(x.shape[0], num_hidden_out, dtype=torch.float32, device=x.device)
    for e in torch.unique(topk_ids[topk_ids >= 0]).tolist():
        tok, slot = torch.nonzero(topk_ids == e, as_tuple=True)
        w13, w2 = expert_weights(int(e))
        h = F.linear(x[tok], w13.to(device=x.device, dtype=x.dtype))
        act = swiglu(h, swiglu_limit).to(x.dtype)
        y = F.linear(act, w2.to(device=x.device, dtype=x.dtype)).float()
        out.index_add_(0, tok, y * topk_weights[tok, slot].float().unsqueeze(1))
    if routed_scaling_factor is not None:
        out *= routed_scaling_factor
    return out.to(x.dtype)
