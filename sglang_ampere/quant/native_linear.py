"""Native FP8 dense layers (W8A16) on the Ampere path: the torch reference and the layout facts.

The native DeepSeek-V4 checkpoint stores every dense linear as FP8 e4m3fn ``[N, K]`` with a
128x128 block scale (E8M0 in V4-Flash, float32 in Flash-Base) under ``X.scale``; SGLang's
``Fp8LinearMethod`` loads it as ``weight`` (e4m3fn ``[N, K]``) and ``weight_scale_inv``
(float32 ``[ceil(N/128), ceil(K/128)]``; E8M0 values are powers of two, so the float32 copy is
exact). Contract::

    y = x @ W^T (+ bias)        W[n, k] = fp8[n, k] * scale[n // 128, k // 128]

On sm_80..sm_88 SGLang runs this through FP8 Marlin, weight-only (``Fp8LinearMethod.use_marlin``,
auto-enabled by ``can_auto_enable_marlin_fp8``; forced by ``SGLANG_FORCE_FP8_MARLIN=1``):
``prepare_fp8_layer_for_marlin`` repacks the FP8 bytes into int32 Marlin words and turns the
block scales into group-128 BF16 scales, deleting ``weight_scale_inv``; no BF16 copy of the weight
is kept. Activations stay BF16 (no FP8 activation quantization).

:func:`reference_fp8_linear` is what the GPU self-check compares FP8 Marlin against: the weight
dequantized exactly in float32, rounded to the activation dtype (BF16, which holds every
e4m3 x 2^e product exactly), then one ``F.linear``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..formats.fp8 import fp8_block_dequantize

#: The FP8 Marlin repack leaves the weight as int32 words (4 FP8 bytes each).
MARLIN_WEIGHT_DTYPE = torch.int32


def reference_fp8_linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                         bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """W8A16 in torch: the dequantized weight in x's dtype, one matmul."""
    w = fp8_block_dequantize(weight.cpu(), scale.cpu()).to(device=x.device, dtype=x.dtype)
    return F.linear(x, w, bias)


def weight_copies(layer: torch.nn.Module, n: int, k: int, dtypes=(torch.bfloat16, torch.float16, torch.float32)):
    """Names of the layer's parameters and buffers that could hold a dequantized copy of its
    ``[N, K]`` weight (a floating tensor with at least N*K elements). Empty after FP8 Marlin."""
    tensors = list(layer.named_parameters(recurse=False)) + list(layer.named_buffers(recurse=False))
    tensors += [(name, v) for name, v in vars(layer).items() if isinstance(v, torch.Tensor)]
    return sorted({name for name, t in tensors if t is not None and t.dtype in dtypes and t.numel() >= n * k})
