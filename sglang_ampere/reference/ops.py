"""The numeric building blocks of the DeepSeek-V4-Flash reference forward, one function each.

Notation: ``x`` rows are tokens; ``dt`` is the compute dtype (bfloat16 as served, or float32
for exact comparisons); "f32" means the step is computed in float32 whatever ``dt`` is, as
DeepSeek's inference code and SGLang do.

Products (GEMMs, einsums) go through :func:`gemm`: with ``dt = bfloat16`` BF16 operands give
BF16 results and "f32" steps use float32; with ``dt = float32`` every product, reduction and
transcendental function (exp, sigmoid, silu, softplus, cos/sin, rsqrt) is evaluated in float64
(:func:`acc_dtype`) and rounded to float32. That makes the float32 mode batch-invariant: a
row's result does not depend on how many rows share the operation (BLAS blocking and the
vector/scalar split of CPU kernels change float32 results by an ulp, and one ulp in front of
a fake quantization can move a value to the next FP8 / FP4 code), so a prefill over T tokens
and T single-token decode steps agree to rounding.

RMSNorm (f32, result in ``dt``)::

    rmsnorm(x, w) = w * x / sqrt(mean(x^2) + eps)

Interleaved (GPT-J) RoPE on the last ``rd`` dims, pairs ``(x[2i], x[2i+1])`` rotated by the
angle ``pos * f_i`` (inverse: by ``-pos * f_i``), with ``f_i = theta^(-2i/rd)``; with YaRN
(``original_seq_len > 0``, compressed layers)::

    low, high = correction range of (beta_fast, beta_slow) at original_seq_len
    ramp_i    = clamp((i - low) / (high - low), 0, 1)
    f_i      <- f_i / factor * ramp_i + f_i * (1 - ramp_i)

No YaRN magnitude scale (mscale) is applied, in DeepSeek's code and in SGLang 0.5.23 alike.

FP8 fake quantization (``fp8_fake_quant``, blocks of 64 along the last dim), what DeepSeek's
``act_quant(..., inplace=True)`` kernel computes::

    s = 2^ceil(log2(max(amax, 1e-4) * (1/448)))        power-of-two (UE8M0) scale, exact
    x <- e4m3(clamp(x / s, -448, 448)) * s             e4m3 = round to nearest even

FP4 fake quantization (``fp4_fake_quant``, blocks of 32), ``fp4_act_quant(..., inplace=True)``::

    s = 2^ceil(log2(max(amax, 6 * 2^-126) * (1/6)))
    x <- e2m1(clamp(x / s, -6, 6)) * s                 e2m1 grid {0, .5, 1, 1.5, 2, 3, 4, 6},
                                                       round to nearest, ties to the even code

Both really round to the grid (a port that only clamps and rescales is the identity there).

Hadamard rotation (indexer): ``x @ H_n / sqrt(n)``, ``H_n`` the Sylvester matrix
(``H_1 = [1]``, ``H_2n = [[H, H], [H, -H]]``).

Manifold hyper-connections: the residual is ``hc`` streams ``R [T, hc, D]``. Before a sub-layer,
with ``fn [(2+hc)*hc, hc*D]``, ``scale [3]``, ``base [(2+hc)*hc]`` (all f32)::

    mix   = (flatten(R) @ fn^T) / sqrt(mean(flatten(R)^2) + eps)
    pre_i = sigmoid(mix[i] * scale[0] + base[i]) + hc_eps                    i < hc
    post_i = 2 * sigmoid(mix[hc+i] * scale[1] + base[hc+i])
    C0[j,k] = mix[2hc + j*hc + k] * scale[2] + base[2hc + j*hc + k]
    C = softmax_k(C0) + hc_eps;  C /= colsum(C) + hc_eps
    repeat iters-1 times: C /= rowsum(C) + hc_eps;  C /= colsum(C) + hc_eps    (Sinkhorn)
    input = sum_i pre_i * R[i]                                                  (hc_pre)
    R'[k] = post_k * out + sum_j C[j,k] * R[j]                                  (hc_post)

and before the head: ``w_i = sigmoid(mix[i] * scale[0] + base[i]) + hc_eps``,
``h = sum_i w_i R[i]`` (``hc_head``).

Attention with a sink (f32 scores and softmax, result in ``dt``), over the candidate keys ``K`` of each
query (``mask``), one shared 512-wide row as key and value::

    s_k  = scale * <q, kv_k>,   m = max(max_k s_k, sink)
    out  = sum_k exp(s_k - m) kv_k / (sum_k exp(s_k - m) + exp(sink - m))
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from ..formats import E2M1_MAGNITUDES, E2M1_MAX, E4M3_MAX, float_to_e4m3

FP8_ACT_BLOCK = 64  # kv no-RoPE dims: one scale per 64
FP4_ACT_BLOCK = 32  # indexer q and k: one scale per 32
FP8_AMAX_FLOOR = 1e-4
FP4_AMAX_FLOOR = E2M1_MAX * 2.0**-126


def acc_dtype(dt: torch.dtype) -> torch.dtype:
    """Accumulation dtype of the "f32" steps: float64 in the float32 mode, else float32."""
    return torch.float64 if dt == torch.float32 else torch.float32


def gemm(a: torch.Tensor, b_t: torch.Tensor, dt: torch.dtype, out: torch.dtype | None = None) -> torch.Tensor:
    """``a @ b_t^T`` with operands in ``dt`` (accumulated in float64 when ``dt`` is float32)."""
    acc = torch.float64 if dt == torch.float32 else dt
    return (a.to(dt).to(acc) @ b_t.to(dt).to(acc).t()).to(out or dt)


def gemm_f32(a: torch.Tensor, b_t: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
    """An "f32" product: float32 operands and result (float64 accumulation in the float32 mode)."""
    acc = acc_dtype(dt)
    return (a.float().to(acc) @ b_t.float().to(acc).t()).float()


def rmsnorm(x: torch.Tensor, weight: torch.Tensor | None, eps: float, dt: torch.dtype) -> torch.Tensor:
    xf = x.float().to(acc_dtype(dt))
    y = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = weight.float().to(y.dtype) * y
    return y.float().to(dt)


# ------------------------------------------------------------------------------------------
# RoPE


def _correction_range(beta_fast: float, beta_slow: float, dim: int, base: float, orig: int) -> tuple[int, int]:
    def corr_dim(rot):
        return dim * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(base))

    low = math.floor(corr_dim(beta_fast))
    high = math.ceil(corr_dim(beta_slow))
    return max(low, 0), min(high, dim - 1)


@lru_cache(16)
def rope_frequencies(
    dim: int, base: float, original_seq_len: int, factor: float, beta_fast: float, beta_slow: float
) -> torch.Tensor:
    """``f_i`` (float32 ``[dim/2]``), YaRN-interpolated when ``original_seq_len > 0``."""
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    if original_seq_len > 0:
        low, high = _correction_range(beta_fast, beta_slow, dim, base, original_seq_len)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
        smooth = 1 - ramp
        freqs = freqs / factor * (1 - smooth) + freqs * smooth
    return freqs


def rope(x: torch.Tensor, pos: torch.Tensor, freqs: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """Rotate the last ``2 * len(freqs)`` dims of ``x [T, ..., d]`` at positions ``pos [T]``."""
    rd = 2 * freqs.numel()
    acc = acc_dtype(x.dtype)
    ang = torch.outer(pos.to(torch.float32), freqs.to(pos.device))  # [T, rd/2], f32 as DeepSeek
    cos, sin = torch.cos(ang.to(acc)).float().to(acc), torch.sin(ang.to(acc)).float().to(acc)
    if inverse:
        sin = -sin
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (rd // 2,)
    cos, sin = cos.view(shape), sin.view(shape)
    r = x[..., -rd:].float().to(acc).unflatten(-1, (-1, 2))
    a, b = r[..., 0], r[..., 1]
    rot = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2).float()
    return torch.cat((x[..., :-rd], rot.to(x.dtype)), dim=-1)


# ------------------------------------------------------------------------------------------
# Fake quantization


def pow2_ceil(v: torch.Tensor) -> torch.Tensor:
    """``2^ceil(log2 v)`` for positive float32 ``v``, exactly (from the exponent bits)."""
    m, e = torch.frexp(v)  # v = m * 2^e, m in [0.5, 1)
    e = torch.where(m == 0.5, e - 1, e)
    return torch.ldexp(torch.ones_like(v), e)


def fp8_fake_quant(x: torch.Tensor, block: int = FP8_ACT_BLOCK) -> torch.Tensor:
    """Quantize-dequantize to e4m3 with a power-of-two scale per ``block`` (see module doc)."""
    xb = x.float().unflatten(-1, (-1, block))
    amax = xb.abs().amax(-1, keepdim=True).clamp_min(FP8_AMAX_FLOOR)
    s = pow2_ceil(amax * torch.tensor(1.0 / E4M3_MAX, dtype=torch.float32))
    q = float_to_e4m3(xb / s).float()  # clamps to +-448 and rounds to nearest even
    return (q * s).flatten(-2).to(x.dtype)


_E2M1 = torch.tensor(E2M1_MAGNITUDES, dtype=torch.float32)


def e2m1_round(a: torch.Tensor) -> torch.Tensor:
    """Round float32 values to the E2M1 grid (nearest, ties to the even code), saturating at 6."""
    grid = _E2M1.to(a.device)
    mag = a.abs().clamp(max=E2M1_MAX)
    lo_i = (torch.searchsorted(grid, mag.contiguous(), right=True) - 1).clamp(0, grid.numel() - 2)
    lo, hi = grid[lo_i], grid[lo_i + 1]
    d_lo, d_hi = mag - lo, hi - mag
    up = (d_hi < d_lo) | ((d_hi == d_lo) & ((lo_i + 1) % 2 == 0))
    r = torch.where(up, hi, lo)
    return torch.where(a < 0, -r, r)


def fp4_fake_quant(x: torch.Tensor, block: int = FP4_ACT_BLOCK) -> torch.Tensor:
    """Quantize-dequantize to e2m1 with a power-of-two scale per ``block`` (see module doc)."""
    xb = x.float().unflatten(-1, (-1, block))
    amax = xb.abs().amax(-1, keepdim=True).clamp_min(FP4_AMAX_FLOOR)
    s = pow2_ceil(amax * torch.tensor(1.0 / E2M1_MAX, dtype=torch.float32))
    q = e2m1_round((xb / s).clamp(-E2M1_MAX, E2M1_MAX))
    return (q * s).flatten(-2).to(x.dtype)


@lru_cache(4)
def _sylvester(n: int) -> torch.Tensor:
    if n & (n - 1):
        raise ValueError(f"Hadamard size {n} is not a power of two")
    h = torch.ones(1, 1, dtype=torch.float32)
    while h.shape[0] < n:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    return h


def hadamard(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[-1]
    h = _sylvester(n).to(x.device)
    acc = acc_dtype(x.dtype)
    return (x.to(acc) @ h.to(acc) * n**-0.5).to(x.dtype)


# ------------------------------------------------------------------------------------------
# Hyper-connections


def hc_mixes(x: torch.Tensor, fn: torch.Tensor, eps: float) -> torch.Tensor:
    acc = acc_dtype(x.dtype)
    xf = x.flatten(1).float().to(acc)
    return (xf @ fn.float().to(acc).t() * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)).float()


def sinkhorn_split(
    mix: torch.Tensor,
    scale: torch.Tensor,
    base: torch.Tensor,
    hc: int,
    iters: int,
    eps: float,
    acc: torch.dtype = torch.float32,
):
    """``mix [T, (2+hc)*hc]`` -> pre ``[T, hc]``, post ``[T, hc]``, comb ``[T, hc, hc]`` (f32)."""
    mix, scale, base = mix.to(acc), scale.float().to(acc), base.float().to(acc)
    pre = torch.sigmoid(mix[:, :hc] * scale[0] + base[:hc]) + eps
    post = 2 * torch.sigmoid(mix[:, hc : 2 * hc] * scale[1] + base[hc : 2 * hc])
    c = mix[:, 2 * hc :].view(-1, hc, hc) * scale[2] + base[2 * hc :].view(hc, hc)
    c = torch.softmax(c, dim=-1) + eps
    c = c / (c.sum(-2, keepdim=True) + eps)
    for _ in range(iters - 1):
        c = c / (c.sum(-1, keepdim=True) + eps)
        c = c / (c.sum(-2, keepdim=True) + eps)
    return pre.float(), post.float(), c.float()


def hc_pre(r: torch.Tensor, fn, scale, base, hc: int, iters: int, norm_eps: float, hc_eps: float):
    """``R [T, hc, D]`` -> (sub-layer input ``[T, D]`` in R's dtype, post, comb)."""
    acc = acc_dtype(r.dtype)
    pre, post, comb = sinkhorn_split(hc_mixes(r, fn, norm_eps), scale, base, hc, iters, hc_eps, acc)
    y = (pre.to(acc).unsqueeze(-1) * r.to(acc)).sum(1)
    return y.float().to(r.dtype), post, comb


def hc_post(out: torch.Tensor, r: torch.Tensor, post: torch.Tensor, comb: torch.Tensor) -> torch.Tensor:
    """``R'[k] = post_k * out + sum_j comb[j, k] R[j]`` (f32, result in R's dtype)."""
    acc = acc_dtype(r.dtype)
    y = post.to(acc).unsqueeze(-1) * out.to(acc).unsqueeze(1) + (
        comb.to(acc).unsqueeze(-1) * r.to(acc).unsqueeze(2)
    ).sum(1)
    return y.float().to(r.dtype)


def hc_head(r: torch.Tensor, fn, scale, base, norm_eps: float, hc_eps: float) -> torch.Tensor:
    acc = acc_dtype(r.dtype)
    w = torch.sigmoid(hc_mixes(r, fn, norm_eps).to(acc) * scale.float()[0] + base.float().to(acc)) + hc_eps
    w = w.float().to(acc)
    return (w.unsqueeze(-1) * r.to(acc)).sum(1).float().to(r.dtype)


# ------------------------------------------------------------------------------------------
# Attention


def sink_attention(
    q: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor, sink: torch.Tensor, scale: float
) -> torch.Tensor:
    """``q [T, H, d]``, ``kv [N, d]``, ``mask [T, N]`` (True = candidate), ``sink [H]`` -> ``[T, H, d]``."""
    acc = acc_dtype(q.dtype)
    s = torch.einsum("thd,nd->thn", q.to(acc), kv.to(acc)) * scale
    s = s.masked_fill(~mask.unsqueeze(1), float("-inf"))
    sk = sink.to(acc).view(1, -1)
    m = torch.maximum(s.amax(-1), sk)
    p = torch.exp(s - m.unsqueeze(-1))
    den = p.sum(-1) + torch.exp(sk - m)
    out = (torch.einsum("thn,nd->thd", p, kv.to(acc)) / den.unsqueeze(-1)).float()
    return out.to(q.dtype)


def swiglu(gate: torch.Tensor, up: torch.Tensor, limit: float) -> torch.Tensor:
    """``silu(min(gate, L)) * clamp(up, -L, L)`` in f32 (no clamp when ``L <= 0``)."""
    acc = acc_dtype(gate.dtype)
    g, u = gate.float().to(acc), up.float().to(acc)
    if limit > 0:
        u = u.clamp(-limit, limit)
        g = g.clamp(max=limit)
    return (torch.nn.functional.silu(g) * u).float()
