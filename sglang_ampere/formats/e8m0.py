"""UE8M0 power-of-two scales: byte b means 2^(b - 127); byte 255 is NaN (an error here)."""

from __future__ import annotations

import torch

from .constants import E8M0_BIAS, E8M0_NAN
from .errors import FormatError, check_dtype

E8M0_DTYPE = torch.float8_e8m0fnu


def e8m0_bytes(t: torch.Tensor, name: str | None = None) -> torch.Tensor:
    check_dtype(t, (E8M0_DTYPE, torch.uint8), name, "an E8M0 scale")
    return t.view(torch.uint8)


def e8m0_to_float(t: torch.Tensor, name: str | None = None) -> torch.Tensor:
    """Decode E8M0 scales (float8_e8m0fnu or raw uint8) to float32, exactly.

    2^-127 (byte 0) is a float32 subnormal and is represented exactly.
    """
    b = e8m0_bytes(t, name)
    if b.numel() and bool((b == E8M0_NAN).any()):
        n = int((b == E8M0_NAN).sum())
        raise FormatError(name, f"{n} E8M0 scale byte(s) are 255 (NaN); the checkpoint is damaged")
    return torch.ldexp(torch.ones(b.shape, dtype=torch.float32, device=b.device), b.to(torch.int32) - E8M0_BIAS)


def e8m0_from_exponent(exp: torch.Tensor, name: str | None = None) -> torch.Tensor:
    """Encode integer exponents e (value 2^e) as E8M0, returned as float8_e8m0fnu."""
    e = exp.to(torch.int32)
    if e.numel() and (int(e.min()) < -E8M0_BIAS or int(e.max()) > E8M0_NAN - 1 - E8M0_BIAS):
        raise FormatError(name, "E8M0 exponent out of range [-127, 127]")
    return (e + E8M0_BIAS).to(torch.uint8).view(E8M0_DTYPE)
