"""The torch reference of dsv4_int's INT8 W8A16 dense layers (no SGLang import).

Contract (both variants): ``y = x @ W^T (+ bias)`` with ``W[n, k] = q[n, k] * s(n, k)`` where

* block:   ``q`` = int8 ``[N, K]`` in -127..127, ``s(n, k) = scale[n // 128, k // 128]`` (BF16);
* channel: ``q`` = uint8 ``[N, K]`` minus 128,     ``s(n, k) = scale[n]`` (BF16).

:mod:`.int8_linear` (the SGLang linear method) runs this off CUDA, and the GPU checks
(:mod:`.selfchecks`, the device kit's runner) compare SGLang's Marlin W8A16 GEMM against it. It
lives apart from the method so that a process without SGLang (the device kit on a bare GPU
machine) imports the same function rather than a copy.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..formats.int8 import int8_block_dequantize, uint8_channel_dequantize

#: The two dsv4_int INT8 variants (``quantization_config``'s ``strategy``).
STRATEGIES = ("block", "channel")


def dequantize(weight: torch.Tensor, scale: torch.Tensor, strategy: str, name: Optional[str] = None) -> torch.Tensor:
    """float32 ``[N, K]`` from a checkpoint-layout INT8 weight and its BF16 scale."""
    if strategy == "block":
        return int8_block_dequantize(weight, scale, name)
    if strategy == "channel":
        return uint8_channel_dequantize(weight, scale, name)
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")


def reference_linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, strategy: str,
                     bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The torch path: BF16 dequantized weight (as Marlin forms it), matmul in x's dtype."""
    w = dequantize(weight, scale, strategy).to(x.dtype)
    return F.linear(x, w, bias)
