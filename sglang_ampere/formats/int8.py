"""Dense INT8 of dsv4_int, two variants.

* block:   int8 ``[N, K]`` in -127..127, BF16 scales ``[ceil(N/128), ceil(K/128)]``.
* channel: uint8 ``[N, K]`` holding value + 128 (``uint8b128``), one BF16 scale per row ``[N]``.
"""

from __future__ import annotations

import torch

from .blocks import check_block_scale, expand_block_scale
from .constants import BLOCK, INT8_CHANNEL_BIAS, INT8_MAX
from .errors import FormatError, check_dtype


def int8_block_dequantize(
    q: torch.Tensor, scale: torch.Tensor, name: str | None = None, block: int = BLOCK
) -> torch.Tensor:
    check_dtype(q, torch.int8, name, "a block INT8 weight")
    check_dtype(scale, torch.bfloat16, name, "a block INT8 scale")
    check_block_scale(q, scale, name, block)
    return q.float() * expand_block_scale(scale.float(), *q.shape, block=block)


def pack_uint8b128(q: torch.Tensor, name: str | None = None) -> torch.Tensor:
    """Signed int8 codes in -127..127 -> uint8 (value + 128)."""
    check_dtype(q, torch.int8, name, "INT8 codes")
    if q.numel() and int(q.min()) < -INT8_MAX:
        raise FormatError(name, f"INT8 codes must lie in -{INT8_MAX}..{INT8_MAX} (found -128)")
    return (q.to(torch.int16) + INT8_CHANNEL_BIAS).to(torch.uint8)


def unpack_uint8b128(u: torch.Tensor, name: str | None = None) -> torch.Tensor:
    check_dtype(u, torch.uint8, name, "a channel INT8 (uint8b128) weight")
    return (u.to(torch.int16) - INT8_CHANNEL_BIAS).to(torch.int8)


def uint8_channel_dequantize(u: torch.Tensor, scale: torch.Tensor, name: str | None = None) -> torch.Tensor:
    check_dtype(scale, torch.bfloat16, name, "a channel INT8 scale")
    q = unpack_uint8b128(u, name)
    if q.dim() != 2 or tuple(scale.shape) != (q.shape[0],):
        raise FormatError(
            name,
            f"channel scale shape {tuple(scale.shape)} does not fit weight {tuple(q.shape)} (expected {(q.shape[0],)})",
        )
    return q.float() * scale.float().unsqueeze(1)
