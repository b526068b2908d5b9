"""E2M1 (FP4) codes and MXFP4 tensors.

An E2M1 code is 4 bits: bit 3 is the sign, bits 0..2 index E2M1_MAGNITUDES. An MXFP4 tensor
stores ``[N, K/2]`` bytes (two codes per byte, low nibble = even K index) and one E8M0 scale
per MXFP4_GROUP consecutive K elements, ``[N, K/32]``.
"""

from __future__ import annotations

import torch

from .constants import E2M1_MAGNITUDES, E2M1_MAX, MXFP4_GROUP
from .e8m0 import e8m0_from_exponent, e8m0_to_float
from .errors import FormatError
from .nibbles import pack_nibbles, unpack_nibbles


def e2m1_table(dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """The 16 E2M1 values indexed by code (codes 8..15 are the negatives; code 8 is -0.0)."""
    mags = torch.tensor(E2M1_MAGNITUDES, dtype=torch.float64, device=device)
    return torch.cat((mags, -mags)).to(dtype)


def e2m1_decode(codes: torch.Tensor) -> torch.Tensor:
    """Codes 0..15 (any integer dtype) -> float32 values, on the codes' device."""
    return e2m1_table(device=codes.device)[codes.long()]


def e2m1_encode(values: torch.Tensor) -> torch.Tensor:
    """Nearest E2M1 code for each value (ties go to the smaller magnitude); |x| > 6 saturates."""
    mags = torch.tensor(E2M1_MAGNITUDES, dtype=torch.float32, device=values.device)
    a = values.float().abs().clamp(max=E2M1_MAX)
    idx = (a.unsqueeze(-1) - mags).abs().argmin(dim=-1)  # argmin keeps the first (smaller) on ties
    return (idx | ((values < 0).to(torch.long) << 3)).to(torch.uint8)


def _check_pair(packed: torch.Tensor, scale: torch.Tensor, name: str | None) -> None:
    if packed.dim() != 2 or scale.dim() != 2:
        raise FormatError(
            name, f"MXFP4 weight and scale must be 2-D, got {tuple(packed.shape)} and {tuple(scale.shape)}"
        )
    n, half_k = packed.shape
    want = (n, (2 * half_k) // MXFP4_GROUP)
    if (2 * half_k) % MXFP4_GROUP or tuple(scale.shape) != want:
        raise FormatError(
            name, f"MXFP4 scale shape {tuple(scale.shape)} does not fit weight {tuple(packed.shape)} (expected {want})"
        )


def mxfp4_dequantize(packed: torch.Tensor, scale: torch.Tensor, name: str | None = None) -> torch.Tensor:
    """``[N, K/2]`` packed E2M1 + ``[N, K/32]`` E8M0 -> float32 ``[N, K]`` (exact)."""
    _check_pair(packed, scale, name)
    vals = e2m1_decode(unpack_nibbles(packed, name))
    s = e8m0_to_float(scale, name)
    n, k = vals.shape
    out = (vals.view(n, k // MXFP4_GROUP, MXFP4_GROUP) * s.unsqueeze(-1)).view(n, k)
    if not bool(torch.isfinite(out).all()):
        raise FormatError(name, "MXFP4 values overflow float32 (E8M0 scale too large for the codes)")
    return out


def mxfp4_quantize(x: torch.Tensor, name: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """float ``[N, K]`` -> (uint8 ``[N, K/2]``, float8_e8m0fnu ``[N, K/32]``).

    Per group the scale is the smallest power of two with absmax / scale <= 6, so no value
    saturates; each value then takes its nearest E2M1 code. (The rule DeepSeek's own
    quantizer uses; ``synth`` uses it to make realistic native experts.)
    """
    if x.dim() != 2 or x.shape[1] % MXFP4_GROUP:
        raise FormatError(name, f"MXFP4 needs a 2-D tensor with K % {MXFP4_GROUP} == 0, got {tuple(x.shape)}")
    n, k = x.shape
    g = x.float().view(n, k // MXFP4_GROUP, MXFP4_GROUP)
    amax = g.abs().amax(dim=-1).clamp(min=2.0**-120)
    exp = torch.ceil(torch.log2(amax / E2M1_MAX)).to(torch.int32)
    # log2 rounding can land one off; fix so that amax / 2^exp <= 6 with the smallest exp.
    exp = torch.where(amax / torch.ldexp(torch.ones_like(amax), exp) > E2M1_MAX, exp + 1, exp)
    exp = torch.where(amax / torch.ldexp(torch.ones_like(amax), exp - 1) <= E2M1_MAX, exp - 1, exp)
    scaled = g / torch.ldexp(torch.ones_like(amax), exp).unsqueeze(-1)
    codes = e2m1_encode(scaled).view(n, k)
    return pack_nibbles(codes, name), e8m0_from_exponent(exp, name)
