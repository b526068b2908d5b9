"""Two 4-bit codes per byte, low nibble = even K index (MXFP4 and INT4 ``uint4b8`` alike)."""

from __future__ import annotations

import torch

from .errors import FormatError, check_dtype


def as_bytes(t: torch.Tensor, name: str | None = None, what: str = "packed tensor") -> torch.Tensor:
    """View int8/uint8 storage as uint8 (safetensors stores packed nibbles as I8)."""
    check_dtype(t, (torch.uint8, torch.int8), name, what)
    return t.view(torch.uint8)


def unpack_nibbles(packed: torch.Tensor, name: str | None = None) -> torch.Tensor:
    """``[..., K/2]`` bytes -> ``[..., K]`` uint8 codes 0..15, code k = nibble (k % 2) of byte k // 2."""
    b = as_bytes(packed, name)
    out = torch.stack((b & 0xF, b >> 4), dim=-1)
    return out.reshape(*b.shape[:-1], b.shape[-1] * 2)


def pack_nibbles(codes: torch.Tensor, name: str | None = None) -> torch.Tensor:
    """``[..., K]`` codes 0..15 (any integer dtype) -> ``[..., K/2]`` uint8."""
    if codes.dtype.is_floating_point or codes.dtype == torch.bool:
        raise FormatError(name, f"nibble codes must be an integer tensor, got {codes.dtype}")
    if codes.shape[-1] % 2:
        raise FormatError(name, f"cannot pack an odd number of codes along K ({codes.shape[-1]})")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) > 15):
        raise FormatError(name, "nibble codes must lie in 0..15")
    c = codes.to(torch.uint8).reshape(*codes.shape[:-1], codes.shape[-1] // 2, 2)
    return c[..., 0] | (c[..., 1] << 4)
