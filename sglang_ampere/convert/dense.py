"""Dense projections: FP8 e4m3 + 128x128 block scale -> INT8 W8A16 (or BF16).

``x`` is the exact dequantized value (``fp8 * scale`` in float32). Then, with
``A = max(absmax, 2^-126)`` per 128x128 block (``block``) or per output row (``channel``):

* scale ``s = max(bf16(fl32(A / 127)), 2^-126)`` (floored like the expert scales, so a zero
  block stores a normal scale and code 0);
* ``q = clamp(round_half_even(fl32(x / s)), -127, 127)`` — computed with the stored BF16 scale,
  so ``q * s`` is exactly what a loader reconstructs;
* ``block``: int8 ``[N, K]`` + BF16 ``[ceil(N/128), ceil(K/128)]``;
  ``channel``: uint8 ``[N, K]`` holding ``q + 128`` + BF16 ``[N]``;
* ``--keep-bf16``: ``bf16(x)`` (exact for e4m3 values times power-of-two scales).

Work is done in row chunks that are a multiple of 128, so memory stays small for any width.
"""

from __future__ import annotations

from typing import Iterator

import torch

from ..formats.blocks import block_absmax, expand_block_scale
from ..formats.constants import ABSMAX_FLOOR, BLOCK, INT8_CHANNEL_BIAS, INT8_MAX
from ..formats.fp8 import fp8_block_dequantize

#: Rows converted at a time (one block row: the temporaries stay in cache, measured fastest).
CHUNK_ROWS = 128


def _scale_from_absmax(amax: torch.Tensor) -> torch.Tensor:
    """float32 absmax -> float32 values of the stored BF16 scale."""
    a = amax.float().clamp(min=ABSMAX_FLOOR)
    return (a / INT8_MAX).to(torch.bfloat16).float().clamp(min=ABSMAX_FLOOR)


def _codes(x: torch.Tensor, s_full: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.round(x / s_full), -INT8_MAX, INT8_MAX)


def _whole_blocks(n: int, k: int) -> bool:
    return n % BLOCK == 0 and k % BLOCK == 0


def int8_block(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 ``[n, k]`` -> (int8 ``[n, k]``, bf16 ``[ceil(n/128), ceil(k/128)]``)."""
    n, k = x.shape
    if _whole_blocks(n, k):      # the real shapes: 4-D views instead of expanded scales
        v = x.view(n // BLOCK, BLOCK, k // BLOCK, BLOCK)
        s = _scale_from_absmax(v.abs().amax(dim=(1, 3)))
        q = _codes(v, s.view(n // BLOCK, 1, k // BLOCK, 1)).to(torch.int8).view(n, k)
        return q, s.to(torch.bfloat16)
    s = _scale_from_absmax(block_absmax(x))
    q = _codes(x, expand_block_scale(s, *x.shape)).to(torch.int8)
    return q, s.to(torch.bfloat16)


def _dequantize(w: torch.Tensor, scale: torch.Tensor, name: str | None) -> torch.Tensor:
    """Exact FP8 block dequantization (``fp8_block_dequantize``), with a view-based fast path."""
    n, k = w.shape
    if not _whole_blocks(n, k):
        return fp8_block_dequantize(w, scale, name)
    from ..formats.errors import FormatError
    from ..formats.fp8 import scale_to_float

    if tuple(scale.shape) != (n // BLOCK, k // BLOCK):
        return fp8_block_dequantize(w, scale, name)   # raises the shape error
    nan = (w.view(torch.uint8) & 0x7F) == 0x7F
    if bool(nan.any()):
        raise FormatError(name, f"{int(nan.sum())} FP8 weight byte(s) are NaN")
    s = scale_to_float(scale, name)
    return (w.float().view(n // BLOCK, BLOCK, k // BLOCK, BLOCK) * s.view(n // BLOCK, 1, k // BLOCK, 1)).view(n, k)


def uint8_channel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 ``[n, k]`` -> (uint8 ``[n, k]`` = q + 128, bf16 ``[n]``)."""
    s = _scale_from_absmax(x.abs().amax(dim=1))
    q = _codes(x, s.unsqueeze(1))
    return (q.to(torch.int16) + INT8_CHANNEL_BIAS).to(torch.uint8), s.to(torch.bfloat16)


def convert_dense(weight: torch.Tensor, scale: torch.Tensor, mode: str, name: str | None = None,
                  rows: int = CHUNK_ROWS, stats: list | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``("weight", chunk)`` for consecutive row chunks, then ``("scale", full scale)``.

    ``mode``: ``"block"``, ``"channel"`` or ``"bf16"`` (no scale is yielded for ``bf16``).
    ``stats`` (optional list) receives ``[signal, noise]`` sums (float32 accumulation).
    """
    n, k = weight.shape
    rows = max(BLOCK, rows - rows % BLOCK)
    scales = []
    sig = noise = 0.0
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        x = _dequantize(weight[r0:r1], scale[r0 // BLOCK: -(-r1 // BLOCK)], name)
        if mode == "block":
            q, s = int8_block(x)
            if stats is not None:
                if _whole_blocks(*x.shape):
                    nb, kb = s.shape
                    deq = (q.float().view(nb, BLOCK, kb, BLOCK) * s.float().view(nb, 1, kb, 1)).view(x.shape)
                else:
                    deq = q.float() * expand_block_scale(s.float(), *x.shape)
        elif mode == "channel":
            q, s = uint8_channel(x)
            deq = (q.float() - INT8_CHANNEL_BIAS) * s.float().unsqueeze(1) if stats is not None else None
        elif mode == "bf16":
            q, s = x.to(torch.bfloat16), None
            deq = q.float() if stats is not None else None
        else:
            raise ValueError(f"unknown dense mode {mode!r}")
        if stats is not None:     # float32 sums (pairwise): plenty for a reported SNR
            sig += float(torch.linalg.vector_norm(x)) ** 2
            noise += float(torch.linalg.vector_norm(x - deq)) ** 2
        yield "weight", q
        if s is not None:
            scales.append(s)
    if stats is not None:
        stats[:] = [sig, noise]
    if scales:
        yield "scale", torch.cat(scales, dim=0)
