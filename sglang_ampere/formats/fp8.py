"""FP8 e4m3fn with 128x128 block scales (E8M0 in V4-Flash, F32 in Flash-Base).

e4m3fn: 1 sign bit, 4 exponent bits (bias 7), 3 mantissa bits; exponent 0 is subnormal
(m/8 * 2^-6); bytes 0x7F/0xFF are NaN; there are no infinities; max 448.
"""

from __future__ import annotations

import torch

from .blocks import block_absmax, check_block_scale, expand_block_scale
from .constants import BLOCK, E4M3_MAX, E4M3_NAN_BYTES
from .e8m0 import E8M0_DTYPE, e8m0_from_exponent, e8m0_to_float
from .errors import FormatError, check_dtype

E4M3_DTYPE = torch.float8_e4m3fn


def e4m3_to_float(t: torch.Tensor, name: str | None = None) -> torch.Tensor:
    """e4m3fn (or its raw uint8 bytes) -> float32, exact; NaN bytes decode to NaN."""
    check_dtype(t, (E4M3_DTYPE, torch.uint8), name, "an FP8 e4m3fn tensor")
    return t.view(E4M3_DTYPE).float()


def float_to_e4m3(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest e4m3fn (ties to even), saturating at +-448."""
    return x.float().clamp(-E4M3_MAX, E4M3_MAX).to(E4M3_DTYPE)


def scale_to_float(scale: torch.Tensor, name: str | None = None) -> torch.Tensor:
    """A native block scale (E8M0 or F32) as float32."""
    check_dtype(scale, (E8M0_DTYPE, torch.float32), name, "an FP8 block scale")
    return e8m0_to_float(scale, name) if scale.dtype == E8M0_DTYPE else scale


def fp8_block_dequantize(
    weight: torch.Tensor, scale: torch.Tensor, name: str | None = None, block: int = BLOCK
) -> torch.Tensor:
    """FP8 ``[N, K]`` + block scale ``[ceil(N/128), ceil(K/128)]`` -> float32 ``[N, K]`` (exact)."""
    check_dtype(weight, E4M3_DTYPE, name, "an FP8 weight")
    check_block_scale(weight, scale, name, block)
    b = weight.view(torch.uint8)
    nan = (b == E4M3_NAN_BYTES[0]) | (b == E4M3_NAN_BYTES[1])
    if bool(nan.any()):
        raise FormatError(name, f"{int(nan.sum())} FP8 weight byte(s) are NaN")
    s = scale_to_float(scale, name)
    return weight.float() * expand_block_scale(s, *weight.shape, block=block)


def fp8_block_quantize(
    x: torch.Tensor, scale_dtype: torch.dtype = E8M0_DTYPE, block: int = BLOCK
) -> tuple[torch.Tensor, torch.Tensor]:
    """float ``[N, K]`` -> (e4m3fn ``[N, K]``, block scale) the way DeepSeek's release does it.

    E8M0: scale = 2^ceil(log2(absmax / 448)); F32: scale = absmax / 448.
    """
    amax = block_absmax(x.float(), block).clamp(min=2.0**-100)
    if scale_dtype == E8M0_DTYPE:
        scale_f = torch.exp2(torch.ceil(torch.log2(amax / E4M3_MAX)))
        scale_f = torch.where(amax / scale_f > E4M3_MAX, scale_f * 2, scale_f)
        scale = e8m0_from_exponent(torch.log2(scale_f).round())
    elif scale_dtype == torch.float32:
        scale_f = amax / E4M3_MAX
        scale = scale_f
    else:
        raise FormatError(None, f"FP8 block scales are E8M0 or float32, not {scale_dtype}")
    q = float_to_e4m3(x.float() / expand_block_scale(scale_f, *x.shape, block=block))
    return q, scale
