"""Sparse MLA (DeepSeek-V4 attention) for GPUs without FlashMLA: the contract and the torch path.

The computation
---------------
DeepSeek-V4-Flash attention is multi-query: every layer stores ONE 512-wide row per position
(448 "NoPE" + 64 RoPE dims, RoPE already applied) that is both the key and the value. Each query
token ``t`` has its own candidate rows: its sliding window (the last 128 positions) plus its
compressed entries (top-512 picked by the indexer on ratio-4 layers, every compressed entry on
ratio-128 layers). For every head ``h`` (64 heads)::

    valid(t, k)  = indices[t, k] >= 0  and  indices[t, k] < N  and  k < topk_length[t]
    s[t, h, k]   = sm_scale * <q[t, h, :], kv[indices[t, k], :]>          (valid k only)
    m            = max_k s[t, h, k]
    den          = sum_k exp(s[t, h, k] - m) + exp(attn_sink[h] - m)
    out[t, h, :] = sum_k exp(s[t, h, k] - m) * kv[indices[t, k], :] / den

The sink is a learned per-head logit that joins the softmax denominator and contributes no
value. A token with no valid slot gets zeros. Duplicate indices count once per occurrence (as
in FlashMLA). Accumulation is float32; the output has q's dtype. ``lse`` (returned by the
paged form, as FlashMLA does) is ``m + log(sum_k exp(s - m))`` *without* the sink, and +inf
for a token with no valid slot.

Two argument forms
------------------
* dense: ``sparse_mla_torch(q [T,H,D], kv [N,D], indices [T,K] int32, attn_sink [H] f32,
  sm_scale)`` - the kernel contract; the TileLang kernel (``sparse_mla_tilelang``) has the same
  arguments and one reference checks both.
* paged: ``sparse_mla_paged_torch(**flash_mla_with_kvcache keywords)`` - what the DeepSeek-V4
  backend passes to FlashMLA: the sliding-window cache with ``indices``/``topk_length`` and,
  on compressed layers, the compressed cache with ``extra_indices_in_kvcache`` /
  ``extra_topk_length``; one softmax over both lists plus the sink. K/V rows are read from
  SGLang's paged FP8 cache (see :mod:`.kv_layout`) and decoded with integer operations only
  (sm_86 has no FP8 instructions): an e4m3 byte ``b`` with exponent ``e`` and mantissa ``m``
  becomes the float32 with bits ``sign | (e + 120) << 23 | m << 20`` (``e > 0``) or
  ``m * 2^-9`` (``e == 0``), times the UE8M0 scale ``2^(byte - 127)``; the RoPE half is bf16,
  i.e. the upper 16 bits of a float32.

Memory
------
The torch path is chunked over tokens and candidates with an online (flash-style) softmax,
so no intermediate exceeds ``SGLANG_AMPERE_TORCH_MLA_BUDGET_MB`` (default 256 MB) at any
context length. It does not synchronise with the host on CUDA while a graph is being captured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .. import envvars
from . import kv_layout as L

__all__ = [
    "sparse_mla_torch",
    "sparse_mla_paged_torch",
    "sparse_mla_tilelang",
    "sparse_mla_paged_tilelang",
    "decode_kv_rows",
    "plan_chunks",
]

_F32 = 4


def _budget_bytes(budget_mb: float | None) -> int:
    return envvars.budget_bytes(envvars.TORCH_MLA_BUDGET_MB, budget_mb)


@dataclass(frozen=True)
class ChunkPlan:
    tokens: int          # query tokens per chunk
    cands: int           # candidate slots per chunk
    largest_bytes: int   # size of the largest intermediate tensor of one chunk


def plan_chunks(T: int, H: int, D: int, K: int, budget: int, row_bytes: int | None = None) -> ChunkPlan:
    """Pick (tokens, candidates) per chunk so that every intermediate fits in ``budget`` bytes.

    Intermediates per chunk of ``tc`` tokens x ``kc`` candidates: the decoded rows
    ``[tc, kc, D]`` float32 (``row_bytes`` per candidate, larger for the paged decoder's integer
    temporaries), the logits/probabilities ``[tc, H, kc]`` float32, the accumulator
    ``[tc, H, D]`` float32.
    """
    row_bytes = D * _F32 if row_bytes is None else row_bytes
    per_cand = max(row_bytes, H * _F32)
    kc = max(1, min(K, budget // max(per_cand, 1)))
    per_tok = max(kc * per_cand, H * D * _F32)
    tc = max(1, min(T, budget // per_tok))
    largest = tc * max(kc * per_cand, H * D * _F32)
    return ChunkPlan(tc, kc, largest)


# A source of candidate rows: (indices [T, K] int, lengths [T] or None, number of rows,
# gather(idx [t, k] int64, all in range) -> [t, k, D] float32).
@dataclass
class _Source:
    indices: torch.Tensor
    lengths: torch.Tensor | None
    num_rows: int
    gather: Callable[[torch.Tensor], torch.Tensor]


def _attend(q: torch.Tensor, sources: list[_Source], attn_sink: torch.Tensor | None, sm_scale: float,
            dv: int, budget: int, row_bytes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Online softmax over all sources' valid slots; returns (out [T,H,dv] fp32, lse [T,H])."""
    T, H, D = q.shape
    dev = q.device
    out = torch.empty(T, H, dv, dtype=torch.float32, device=dev)
    lse_all = torch.empty(T, H, dtype=torch.float32, device=dev)
    if T == 0:
        return out, lse_all
    # Trim each list to its longest used prefix when that is free of host syncs.
    trimmed = []
    for src in sources:
        idx = src.indices
        if src.lengths is not None and not L.capturing(dev) and idx.shape[1] > 0:
            used = int(src.lengths.max().clamp(min=0, max=idx.shape[1]))
            idx = idx[:, :used]
        trimmed.append(idx)
    K = max([i.shape[1] for i in trimmed] + [1])
    plan = plan_chunks(T, H, D, K, budget, row_bytes)
    sink = None
    if attn_sink is not None:
        sink = attn_sink.to(device=dev, dtype=torch.float32).reshape(1, H)
    for t0 in range(0, T, plan.tokens):
        t1 = min(T, t0 + plan.tokens)
        qf = q[t0:t1].float()
        m = torch.full((t1 - t0, H), float("-inf"), device=dev)
        l = torch.zeros(t1 - t0, H, device=dev)
        acc = torch.zeros(t1 - t0, H, dv, device=dev)
        for src, idx_all in zip(sources, trimmed):
            lens = None if src.lengths is None else src.lengths[t0:t1].to(dev).long()[:, None]
            for k0 in range(0, idx_all.shape[1], plan.cands):
                idx = idx_all[t0:t1, k0:k0 + plan.cands].to(dev).long()
                valid = (idx >= 0) & (idx < src.num_rows)
                if lens is not None:
                    col = torch.arange(k0, k0 + idx.shape[1], device=dev)
                    valid &= col[None, :] < lens
                rows = src.gather(torch.where(valid, idx, torch.zeros_like(idx)))   # [t, k, D]
                s = torch.einsum("thd,tkd->thk", qf, rows) * sm_scale
                s = s.masked_fill(~valid[:, None, :], float("-inf"))
                m_new = torch.maximum(m, s.amax(-1))
                m_safe = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
                alpha = torch.exp(m - m_safe)
                p = torch.exp(s - m_safe[..., None])
                l = l * alpha + p.sum(-1)
                acc = acc * alpha[..., None] + torch.einsum("thk,tkd->thd", p, rows[..., :dv])
                m = m_new
                del rows, s, p
        has = torch.isfinite(m)
        big = m if sink is None else torch.maximum(m, sink)
        big = torch.where(torch.isfinite(big), big, torch.zeros_like(big))
        w = torch.exp(m - big)                                  # 0 where m = -inf
        den = l * w
        if sink is not None:
            den = den + torch.exp(sink - big)
        den = torch.where(has, den, torch.ones_like(den))
        o = acc * (w / den)[..., None]
        out[t0:t1] = torch.where(has[..., None], o, torch.zeros_like(o))
        lse_all[t0:t1] = torch.where(has, m + torch.log(torch.where(has, l, torch.ones_like(l))),
                                     torch.full_like(m, float("inf")))
    return out, lse_all


def _check_common(q: torch.Tensor, attn_sink: torch.Tensor | None) -> None:
    if q.ndim != 3:
        raise ValueError(f"q must be [tokens, heads, dim], got shape {tuple(q.shape)}")
    if attn_sink is not None and attn_sink.numel() != q.shape[1]:
        raise ValueError(f"attn_sink must have one value per head ({q.shape[1]}), got {attn_sink.numel()}")


def sparse_mla_torch(q: torch.Tensor, kv: torch.Tensor, indices: torch.Tensor, attn_sink: torch.Tensor | None,
                     sm_scale: float, topk_length: torch.Tensor | None = None, *,
                     budget_mb: float | None = None) -> torch.Tensor:
    """Dense-form sparse MLA (see the module docstring). Returns ``[T, H, D]`` in q's dtype.

    ``kv`` may be ``[N, D]`` or FlashMLA's ``[N, 1, D]``; ``indices`` ``[T, K]`` or
    ``[T, 1, K]``; ``topk_length`` (optional, ``[T]``) limits each token to its first slots.
    """
    _check_common(q, attn_sink)
    kv2 = kv.reshape(kv.shape[0], kv.shape[-1])
    idx = indices.reshape(indices.shape[0], indices.shape[-1])
    if kv2.shape[1] != q.shape[2] or idx.shape[0] != q.shape[0]:
        raise ValueError(f"shape mismatch: q {tuple(q.shape)}, kv {tuple(kv.shape)}, indices "
                         f"{tuple(indices.shape)}; expected q [T,H,D], kv [N,D], indices [T,K]")
    src = _Source(idx, topk_length, kv2.shape[0], lambda i: kv2[i].float())
    out, _ = _attend(q, [src], attn_sink, sm_scale, kv2.shape[1], _budget_bytes(budget_mb),
                     kv2.shape[1] * (_F32 + kv2.element_size()))
    return out.to(q.dtype)


# ---------------------------------------------------------------------------------------------
# Paged FP8 cache (KVLayout.V4)

def _paged_regions(k_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(data [P, ps, 576] uint8, scales [P, ps, 8] uint8, page_size) views of a pool view."""
    if k_cache.ndim != 4 or k_cache.shape[-1] != L.TOKEN_BYTES or k_cache.shape[2] != 1:
        raise ValueError(
            f"expected a DeepSeek-V4 paged cache view [pages, page_size, 1, {L.TOKEN_BYTES}] "
            f"(KVLayout.V4), got {tuple(k_cache.shape)}; V4.1 layouts are not supported on sm_86")
    c = k_cache.view(torch.uint8)
    P, ps = c.shape[0], c.shape[1]
    S = c.stride(0) if P > 1 else ps * L.TOKEN_BYTES
    if c.stride(1) != L.TOKEN_BYTES or c.stride(3) != 1 or S < ps * L.TOKEN_BYTES:
        raise ValueError(f"unexpected paged-cache strides {c.stride()}; pass the pool view "
                         "buf[:, :page_size*584].view(pages, page_size, 1, 584)")
    off = c.storage_offset()
    data = torch.as_strided(c, (P, ps, L.DATA_ROW_BYTES), (S, L.DATA_ROW_BYTES, 1), off)
    scale = torch.as_strided(c, (P, ps, L.SCALE_ROW_BYTES), (S, L.SCALE_ROW_BYTES, 1),
                             off + ps * L.DATA_ROW_BYTES)
    return data, scale, ps


def decode_kv_rows(data: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Integer-only decode: data ``[..., 576]`` uint8 + scale ``[..., 8]`` uint8 -> ``[..., 512]`` fp32."""
    val = L.e4m3_bytes_to_float(data[..., : L.NOPE_DIM])
    s = scale[..., : L.NUM_SCALES].to(torch.int32)
    # 2^(s-127) as float32 bits; byte 0 (2^-127, a subnormal) never comes from the writer.
    sf = torch.where(s > 0, (s << 23).view(torch.float32), torch.full_like(s, 0, dtype=torch.float32) + 2.0**-127)
    nope = (val.unflatten(-1, (L.NUM_SCALES, L.QUANT_GROUP)) * sf[..., None]).flatten(-2)
    r = data[..., L.NOPE_DIM:].to(torch.int32)
    rope = ((r[..., 0::2] | (r[..., 1::2] << 8)) << 16).view(torch.float32)
    return torch.cat([nope, rope], dim=-1)


def _paged_source(k_cache: torch.Tensor, indices: torch.Tensor, lengths: torch.Tensor | None) -> _Source:
    data, scale, ps = _paged_regions(k_cache)
    idx = indices.reshape(indices.shape[0], indices.shape[-1])

    def decode(i: torch.Tensor) -> torch.Tensor:
        p, s = i // ps, i % ps
        return decode_kv_rows(data[p, s], scale[p, s])

    def gather(i: torch.Tensor) -> torch.Tensor:
        if L.capturing(i.device):            # torch.unique's output size is data-dependent
            return decode(i)
        # Neighbouring queries select mostly the same rows: decode each row once (with the table
        # decode, the CPU server's 2300-token prefill went from 30 s to 8 s; benchmarks/RESULTS.md).
        rows, where = torch.unique(i, return_inverse=True)
        return decode(rows)[where]

    return _Source(idx, lengths, data.shape[0] * ps, gather)


def _check_paged_kwargs(block_table, cache_seqlens, causal, is_fp8_kvcache, indices, descale_q, descale_k) -> None:
    if indices is None:
        raise ValueError("only FlashMLA's sparse mode (indices=...) is implemented for sm_80/sm_86")
    if block_table is not None or cache_seqlens is not None:
        raise ValueError("block_table/cache_seqlens are not used in sparse mode; pass None")
    if causal:
        raise ValueError("sparse mode carries causality in the index lists; pass causal=False")
    if not is_fp8_kvcache:
        raise ValueError("only the FP8 DeepSeek-V4 cache layout is supported (is_fp8_kvcache=True)")
    if descale_q is not None or descale_k is not None:
        raise ValueError("descale_q/descale_k are not supported by the sm_80/sm_86 path")


def sparse_mla_paged_torch(q: torch.Tensor, k_cache: torch.Tensor, block_table=None, cache_seqlens=None,
                           head_dim_v: int = L.HEAD_DIM, tile_scheduler_metadata=None, num_splits=None,
                           softmax_scale: float | None = None, causal: bool = False,
                           is_fp8_kvcache: bool = True, indices: torch.Tensor | None = None,
                           attn_sink: torch.Tensor | None = None, extra_k_cache: torch.Tensor | None = None,
                           extra_indices_in_kvcache: torch.Tensor | None = None,
                           topk_length: torch.Tensor | None = None, extra_topk_length: torch.Tensor | None = None,
                           descale_q=None, descale_k=None, kv_format=None, use_legacy: bool | None = None,
                           *, budget_mb: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """FlashMLA ``flash_mla_with_kvcache`` (sparse, FP8 V4 cache) in torch.

    q ``[T, 1, H, 512]``; returns ``(out [T, 1, H, head_dim_v] q.dtype, lse [T, H, 1] fp32)``.
    ``tile_scheduler_metadata``, ``num_splits``, ``kv_format`` and ``use_legacy`` are accepted
    and ignored.
    """
    _check_paged_kwargs(block_table, cache_seqlens, causal, is_fp8_kvcache, indices, descale_q, descale_k)
    if q.ndim != 4 or q.shape[1] != 1:
        raise ValueError(f"q must be [tokens, 1, heads, 512] (one query per row), got {tuple(q.shape)}")
    q3 = q[:, 0]
    _check_common(q3, attn_sink)
    scale = q3.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    sources = [_paged_source(k_cache, indices, topk_length)]
    if extra_k_cache is not None:
        if extra_indices_in_kvcache is None:
            raise ValueError("extra_k_cache given without extra_indices_in_kvcache")
        sources.append(_paged_source(extra_k_cache, extra_indices_in_kvcache, extra_topk_length))
    row_bytes = L.HEAD_DIM * _F32 * 3 + L.TOKEN_BYTES
    out, lse = _attend(q3, sources, attn_sink, scale, head_dim_v, _budget_bytes(budget_mb), row_bytes)
    return out.to(q.dtype).unsqueeze(1), lse.unsqueeze(-1)


# ---------------------------------------------------------------------------------------------
# TileLang entry points (imported lazily: TileLang is needed only on the GPU path)

def sparse_mla_tilelang(q: torch.Tensor, kv: torch.Tensor, indices: torch.Tensor, attn_sink: torch.Tensor | None,
                        sm_scale: float, topk_length: torch.Tensor | None = None) -> torch.Tensor:
    """Dense-form sparse MLA on CUDA with the TileLang kernels (same contract as the torch path)."""
    from .tilelang_mla import sparse_mla_dense

    return sparse_mla_dense(q, kv, indices, attn_sink, sm_scale, topk_length)


def sparse_mla_paged_tilelang(q: torch.Tensor, k_cache: torch.Tensor, block_table=None, cache_seqlens=None,
                              head_dim_v: int = L.HEAD_DIM, tile_scheduler_metadata=None, num_splits=None,
                              softmax_scale: float | None = None, causal: bool = False,
                              is_fp8_kvcache: bool = True, indices: torch.Tensor | None = None,
                              attn_sink: torch.Tensor | None = None, extra_k_cache: torch.Tensor | None = None,
                              extra_indices_in_kvcache: torch.Tensor | None = None,
                              topk_length: torch.Tensor | None = None,
                              extra_topk_length: torch.Tensor | None = None,
                              descale_q=None, descale_k=None, kv_format=None,
                              use_legacy: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """FlashMLA ``flash_mla_with_kvcache`` (sparse, FP8 V4 cache) with the TileLang kernels."""
    _check_paged_kwargs(block_table, cache_seqlens, causal, is_fp8_kvcache, indices, descale_q, descale_k)
    from .tilelang_mla import sparse_mla_paged

    if head_dim_v != L.HEAD_DIM:
        raise ValueError(f"the TileLang path returns the full {L.HEAD_DIM}-wide rows; got head_dim_v={head_dim_v}")
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    return sparse_mla_paged(q, k_cache, indices, topk_length, attn_sink, scale,
                            extra_k_cache, extra_indices_in_kvcache, extra_topk_length)
