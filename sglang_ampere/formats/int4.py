"""INT4 ``uint4b8``: signed -8..7 stored as value + 8, two per byte, low nibble = even K index.

The dsv4_int routed experts are ``[N, K/2]`` such bytes (safetensors I8) with one BF16 scale
per INT4_GROUP K elements, ``[N, K/32]``; value = (stored - 8) * scale.
"""

from __future__ import annotations

import torch

from .constants import INT4_BIAS, INT4_GROUP, INT4_MAX, INT4_MIN
from .errors import FormatError, check_dtype
from .nibbles import pack_nibbles, unpack_nibbles


def pack_uint4b8(q: torch.Tensor, name: str | None = None) -> torch.Tensor:
    """Signed codes ``[N, K]`` in -8..7 -> uint8 ``[N, K/2]``."""
    if q.dtype.is_floating_point:
        raise FormatError(name, f"INT4 codes must be an integer tensor, got {q.dtype}")
    if q.numel() and (int(q.min()) < INT4_MIN or int(q.max()) > INT4_MAX):
        raise FormatError(name, f"INT4 codes must lie in {INT4_MIN}..{INT4_MAX}")
    return pack_nibbles(q.to(torch.int16) + INT4_BIAS, name)


def unpack_uint4b8(packed: torch.Tensor, name: str | None = None) -> torch.Tensor:
    """uint8/int8 ``[N, K/2]`` -> int8 codes ``[N, K]`` in -8..7."""
    return (unpack_nibbles(packed, name).to(torch.int8) - INT4_BIAS)


def int4_group_dequantize(
    packed: torch.Tensor, scale: torch.Tensor, name: str | None = None, group: int = INT4_GROUP
) -> torch.Tensor:
    """``[N, K/2]`` uint4b8 + BF16 ``[N, K/group]`` -> float32 ``[N, K]``."""
    check_dtype(scale, torch.bfloat16, name, "an INT4 group scale")
    n, half_k = packed.shape
    k = 2 * half_k
    if k % group or tuple(scale.shape) != (n, k // group):
        raise FormatError(
            name,
            f"INT4 scale shape {tuple(scale.shape)} does not fit weight {tuple(packed.shape)} (expected "
            f"{(n, k // group)})",
        )
    q = unpack_uint4b8(packed, name).float().view(n, k // group, group)
    return (q * scale.float().unsqueeze(-1)).view(n, k)
