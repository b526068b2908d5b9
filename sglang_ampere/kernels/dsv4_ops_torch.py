"""Torch stand-ins for the CUDA-only ops on SGLang 0.5.23's DeepSeek-V4 forward path.

Each function here has exactly the signature and the in-place / return behaviour of the SGLang
function it replaces, so a patch can substitute it by name; it is written from that kernel's
CUDA / Triton / TileLang source (named in each docstring with file:line), not from the project's
reference forward. Paths below: ``kernels/...`` is ``site-packages/sglang/kernels/...``, the rest
is under ``site-packages/sglang/srt/``. No SGLang import here (pure torch), so the module loads
without SGLang and runs on any device.

Which module attribute to replace (the caller's binding: a ``from X import f`` at module level
binds ``f`` in the caller, so patching ``X.f`` alone does not reach it; an import inside a
function reads ``X.f`` at call time):

Table (row numbers are those of ``/work/shared/reference/cpu-serving.md``; "replace" is the
module attribute a patch must set; ``srt.`` is ``sglang.srt.``, ``kops.`` is ``sglang.kernels.ops.``):

=====================================  ======================================================================
stand-in (row)                         SGLang function  ->  attribute(s) to replace
=====================================  ======================================================================
``fused_q_norm_rope`` (3)              ``kops.attention.dsv4.norm_rope.fused_q_norm_rope`` (:193, CUDA JIT)
                                       -> ``srt.models.deepseek_v4.fused_q_norm_rope`` (called :1798/1802/1823)
``fused_rope_inplace`` (4)             ``kops.attention.dsv4.norm_rope.fused_rope_inplace`` (:142, CUDA JIT)
                                       -> ``srt.models.deepseek_v4.fused_rope_inplace`` (:1810; inverse :2954)
``fused_k_norm_rope_flashmla`` (5)     ``kops.attention.dsv4.norm_rope.fused_k_norm_rope_flashmla`` (:304)
                                       -> ``srt.mem_cache.deepseek_v4_memory_pool.fused_k_norm_rope_flashmla``
                                       (:2218, from ``models/deepseek_v4.py:1858``)
``fused_store_cache`` (5, 6)           ``kops.attention.dsv4.attn.fused_store_cache`` (:75, CUDA JIT)
                                       -> ``srt.mem_cache.deepseek_v4_memory_pool.fused_store_cache``
                                       (:357 c4/c128, :703 index-K: the compressor's stores,
                                       ``layers/attention/dsv4/compressor_v2.py:347/353``; :2185 SWA)
``hc_split_sinkhorn`` (8)              ``kops.layernorm.mhc.hc_split_sinkhorn`` (:427, TileLang kernel :242)
                                       -> ``kops.layernorm.mhc.hc_split_sinkhorn``, then
                                       ``srt.models.deepseek_v4.get_mhc_ops.cache_clear()`` (it is
                                       ``functools.cache``d and imports the name on first call; :3483)
``mhc_combine`` (9)                    ``kops.layernorm.mhc.mhc_combine`` (:2743, Triton)
                                       -> ``kops.layernorm.mhc.mhc_combine`` (imported inside the
                                       function at ``models/deepseek_v4.py:3491``, :4591)
``fused_hc_head`` (10)                 ``kops.layernorm.mhc_head.fused_hc_head`` (:90, Triton)
                                       -> ``kops.layernorm.mhc_head.fused_hc_head`` (imported inside
                                       ``hc_head``, ``models/deepseek_v4.py:3933``)
``silu_and_mul_clamp`` (11)            ``kops.activation.silu_and_mul_clamp.silu_and_mul_clamp`` (:57)
                                       -> ``srt.models.deepseek_v2.silu_and_mul_clamp`` (:490, shared expert)
``init_compression_metadata`` (1)      ``kops.attention.dsv4.metadata_kernel.init_compression_metadata``
                                       (:245, Triton kernel :68) -> ``srt.layers.attention.``
                                       ``deepseek_v4_backend._init_compression_metadata_triton`` (the
                                       alias it is imported under at :43; called :772)
``fused_q_indexer_rope_hadamard_``     ``kops.attention.dsv4.norm_rope.fused_q_indexer_rope_hadamard_quant``
``quant`` (7)                          (:223) -> ``srt.layers.attention.dsv4.indexer.``
                                       ``fused_q_indexer_rope_hadamard_quant`` (:1242)
=====================================  ======================================================================

Rounding: every stand-in computes in float32 where the kernel does and rounds to bf16 / e4m3 at
the points the kernel does (stated per function). What cannot be reproduced bit for bit: the
order of float32 reductions (warp trees vs torch's), fused multiply-adds the CUDA compiler
contracts, and ``-use_fast_math`` / ``rsqrtf`` approximations; these move a float32 result by
an ulp or so, which can flip a bf16 / e4m3 rounding now and then. The GPU check
(:mod:`sglang_ampere.kernels.dsv4_ops_selfchecks`) bounds that against the real kernels.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .kv_layout import (
    DATA_ROW_BYTES,
    HEAD_DIM,
    NUM_SCALES,
    ROPE_DIM,
    TOKEN_BYTES,
    encode_rows,
)

E4M3_MAX = 448.0
#: Smallest absmax the FP8 writers use (``fmaxf(1e-4f, abs_max)`` in the .cuh sources).
AMAX_FLOOR = 1e-4
INDEX_DIM = 128  # C4 indexer head dim / index-K entry width
INDEX_ENTRY_BYTES = INDEX_DIM + 4


# ------------------------------------------------------------------------------------------
# helpers


def _freqs_real(freqs_cis: torch.Tensor) -> torch.Tensor:
    """``[max_pos, rope_dim/2]`` complex64 -> ``[max_pos, rope_dim]`` float32 ``(cos, sin)`` pairs,
    what every wrapper in ``norm_rope.py`` hands its kernel (``view_as_real(...).flatten(-2)``).
    A real ``[max_pos, rope_dim]`` table is taken as already in that form."""
    if freqs_cis.is_complex():
        return torch.view_as_real(freqs_cis).flatten(-2).float()
    return freqs_cis.float()


def _cos_sin(freqs_cis: torch.Tensor, positions: torch.Tensor, device) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """(cos ``[B, rd/2]``, sin ``[B, rd/2]``, rd) at ``positions`` (float32)."""
    table = _freqs_real(freqs_cis).to(device)
    cs = table[positions.to(device=device, dtype=torch.long)]
    return cs[:, 0::2], cs[:, 1::2], table.shape[-1]


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """Interleaved pairs ``(x[2i], x[2i+1])`` of float32 ``x [B, ..., rd]`` times ``cos + i sin``
    (conjugate when ``inverse``), float32 in and out, in the .cuh's expression order."""
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (cos.shape[-1],)
    c, s = cos.reshape(shape), sin.reshape(shape)
    xr, xi = x[..., 0::2], x[..., 1::2]
    if inverse:
        out = (xr * c + xi * s, xi * c - xr * s)
    else:
        out = (xr * c - xi * s, xr * s + xi * c)
    return torch.stack(out, dim=-1).flatten(-2)


def _layout_name(layout) -> str:
    return str(getattr(layout, "value", layout)).lower()


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised Sylvester Walsh-Hadamard transform of the last dim (a power of two), one
    butterfly stage per index bit from bit 0 up, lower index ``a + b``, upper ``a - b``: the
    order of float32 adds of the indexer kernels' 2 in-lane + 5 shuffle stages."""
    n = x.shape[-1]
    h = 1
    while h < n:
        y = x.unflatten(-1, (n // (2 * h), 2, h))
        a, b = y[..., 0, :], y[..., 1, :]
        x = torch.stack((a + b, a - b), dim=-2).flatten(-3)
        h *= 2
    return x


def _to_e4m3(x: torch.Tensor) -> torch.Tensor:
    """``pack_fp8``: clip to +-448, then round to nearest even e4m3fn (``cvt.rn.satfinite``)."""
    return x.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)


# ------------------------------------------------------------------------------------------
# row 4: RoPE in place


def fused_rope_inplace(
    q: torch.Tensor,
    k: Optional[torch.Tensor],
    freqs_cis: torch.Tensor,
    positions: torch.Tensor,
    inverse: bool = False,
) -> None:
    """Stand-in for ``fused_rope_inplace`` (``kernels/ops/attention/dsv4/norm_rope.py:142``;
    CUDA ``kernels/jit/csrc/deepseek_v4/rope.cuh:34`` ``deepseek_rope_kernel``).

    Math, per token ``b`` and head: ``q[b, h]`` (and ``k[b, h]``) are ``rd/2`` interleaved
    complex pairs ``x = (x[2i], x[2i+1])`` rotated in place by ``f = freqs_cis[positions[b], i]``::

        forward:  (xr*fr - xi*fi,  xr*fi + xi*fr)        (x * f)
        inverse:  (xr*fr + xi*fi,  xi*fr - xr*fi)        (x * conj f)

    Rounding: the bf16 pair is widened to float32, rotated in float32, rounded once to bf16
    (RNE). ``q``: ``[B, Hq, rd]`` (any batch/head strides, last stride 1, e.g. the view
    ``q[..., -64:]``), ``k``: ``[B, Hk, rd]`` or None. The CUDA kernel takes bf16 and rd = 64
    only; this takes any float dtype and rd = 2 * freqs_cis.shape[-1].

    Call sites: ``models/deepseek_v4.py:1810`` (q RoPE when ``q_head_norm`` is off) and
    ``:2954`` (inverse RoPE of the attention output); replace
    ``sglang.srt.models.deepseek_v4.fused_rope_inplace``.
    """
    for t in (q, k):
        if t is None or t.shape[0] == 0:
            continue
        cos, sin, rd = _cos_sin(freqs_cis, positions, t.device)
        _require(t.dim() == 3 and t.shape[-1] == rd,
                 f"fused_rope_inplace: expected [B, H, {rd}], got {tuple(t.shape)}")
        t.copy_(_rotate(t.float(), cos, sin, inverse).to(t.dtype))


# ------------------------------------------------------------------------------------------
# row 3: q RMSNorm (no weight) + RoPE


def fused_q_norm_rope(
    q_input: torch.Tensor,
    q_output: torch.Tensor,
    eps: Optional[float],
    freqs_cis: torch.Tensor,
    positions: torch.Tensor,
) -> None:
    """Stand-in for ``fused_q_norm_rope`` (``kernels/ops/attention/dsv4/norm_rope.py:193``;
    CUDA ``kernels/jit/csrc/deepseek_v4/main_norm_rope.cuh:81`` ``fused_q_norm_rope``).

    Math, per token and head of ``q_input [B, H, D]`` (D = 512 on DeepSeek-V4)::

        y = x / sqrt(sum(x^2) / D + eps)        (no weight; skipped when eps is None)
        y[D-rd:] = RoPE(y[D-rd:], positions)    (forward, interleaved pairs, rd = 64)

    Rounding (kernel order): x widened to float32, sum of squares and ``rsqrt`` in float32,
    ``x * norm_factor`` rounded to the input dtype (bf16) -- *before* the RoPE; the RoPE tail
    is that bf16 value widened, rotated in float32 and rounded to bf16 again. The NoPE part is
    the once-rounded normed value. With eps None the input is copied and only the tail rotated.
    When ``q_output`` is float8_e4m3fn the wrapper runs the bf16 kernel into a temporary and
    ``copy_``\\ s it (torch's bf16 -> e4m3fn conversion); so does this.

    ``q_output`` is written, ``q_input`` is left as it was (they may alias).

    Call sites: ``models/deepseek_v4.py:1823`` (``q_head_norm``), :1798/:1802 (eps None);
    replace ``sglang.srt.models.deepseek_v4.fused_q_norm_rope``.
    """
    _require(q_input.dim() == 3 and q_output.shape == q_input.shape,
             f"fused_q_norm_rope: q_input {tuple(q_input.shape)} / q_output {tuple(q_output.shape)}")
    if q_input.shape[0] == 0:
        return
    dtype = q_input.dtype
    head_dim = q_input.shape[-1]
    cos, sin, rd = _cos_sin(freqs_cis, positions, q_input.device)
    if eps is not None:
        x = q_input.float()
        norm = torch.rsqrt(x.square().sum(-1, keepdim=True) / head_dim + eps)
        y = (x * norm).to(dtype)
    else:
        y = q_input.clone()
    y[..., head_dim - rd:] = _rotate(y[..., head_dim - rd:].float(), cos, sin).to(dtype)
    q_output.copy_(y)


# ------------------------------------------------------------------------------------------
# row 5: kv RMSNorm + RoPE + FP8 store into the paged SWA cache (and the plain store)


def _store_v4(kvcache: torch.Tensor, loc: torch.Tensor, rows: torch.Tensor, page_size: int) -> None:
    """Encode float32 ``rows [n, 512]`` (kv_layout.encode_rows: the .cuh's UE8M0 / e4m3 / bf16
    rules) and write the 576 data bytes and the 7 scale bytes of each row at flat slot
    ``loc[i]`` of ``kvcache [pages, >= page_size*584]`` uint8; the pad byte is left untouched,
    as the kernels leave it."""
    _require(kvcache.dtype == torch.uint8 and kvcache.dim() == 2
             and kvcache.shape[1] >= page_size * TOKEN_BYTES,
             f"expected a uint8 [pages, >= {page_size * TOKEN_BYTES}] cache, got "
             f"{tuple(kvcache.shape)} {kvcache.dtype}")
    if rows.shape[0] == 0:
        return
    data, scale = encode_rows(rows)
    loc = loc.to(device=kvcache.device, dtype=torch.long)
    page, slot = loc // page_size, loc % page_size
    cols = torch.arange(DATA_ROW_BYTES, device=kvcache.device)
    kvcache[page[:, None], (slot * DATA_ROW_BYTES)[:, None] + cols] = data.to(kvcache.device)
    cols = torch.arange(NUM_SCALES, device=kvcache.device)
    base = page_size * DATA_ROW_BYTES
    kvcache[page[:, None], base + (slot * (NUM_SCALES + 1))[:, None] + cols] = \
        scale[:, :NUM_SCALES].to(kvcache.device)


def fused_k_norm_rope_flashmla(
    kv: torch.Tensor,
    kv_weight: torch.Tensor,
    eps: float,
    freqs_cis: torch.Tensor,
    positions: torch.Tensor,
    out_loc: torch.Tensor,
    kvcache: torch.Tensor,
    page_size: int,
    layout="v4",
    q: Optional[torch.Tensor] = None,
) -> None:
    """Stand-in for ``fused_k_norm_rope_flashmla`` (``kernels/ops/attention/dsv4/norm_rope.py:304``;
    CUDA ``kernels/jit/csrc/deepseek_v4/main_norm_rope.cuh:323``, V4 layout branch :413-439).

    Math, per token row ``x = kv[b]`` (512 wide; ``kv`` may be a row-strided slice)::

        d = x / sqrt(sum(x^2) / 512 + eps) * w           (w = kv_weight)
        d[448:] = RoPE(d[448:], positions[b])             (forward, interleaved, 64 dims)
        cache[out_loc[b]] = V4 row of d                   (skipped when out_loc[b] < 0)

    Rounding (kernel order): float32 throughout, ``(x * norm_factor) * w`` is **not** rounded
    to bf16 before the RoPE or the quantization (unlike the q kernel and unlike the V4.1
    layouts); the RoPE tail is rotated in float32 and rounded to bf16 once; each 64-value NoPE
    group gets ``s = 2^ceil(log2(max(1e-4, amax) / 448))`` (UE8M0 byte, ``cast_to_ue8m0``) and
    ``e4m3(clip(d * 2^-e, +-448))`` RNE. That is exactly ``kv_layout.encode_rows`` fed float32
    rows (checked against ``fp8_utils.cuh``: same floor, same round-up of the scale, division
    by a power of two is the kernel's multiply by its reciprocal); the pad byte of the scale row
    is not written (the kernel does not write it; ``kv_layout.write_rows`` writes 0).

    ``kvcache``: uint8 ``[pages, page_bytes]`` (the pool's raw SWA buffer); slot ``loc`` is page
    ``loc // page_size``, row ``loc % page_size``. Only ``layout`` V4 is supported (the V4.1
    layouts are sm_100 only). ``q`` (ROCm only in SGLang): its last 64 dims of every head are
    rotated in place with the same positions, rounded as :func:`fused_rope_inplace` (HIP rounds
    the cross product first; not modelled).

    Call site: ``mem_cache/deepseek_v4_memory_pool.py:2218``
    (``set_swa_key_buffer_radix_fused_norm_rope``, from ``models/deepseek_v4.py:1858``); replace
    ``sglang.srt.mem_cache.deepseek_v4_memory_pool.fused_k_norm_rope_flashmla``.
    """
    if _layout_name(layout) != "v4":
        raise NotImplementedError(f"fused_k_norm_rope_flashmla stand-in: layout {layout!r} (V4 only)")
    _require(kv.dim() == 2 and kv.shape[-1] == HEAD_DIM,
             f"fused_k_norm_rope_flashmla: expected kv [B, {HEAD_DIM}], got {tuple(kv.shape)}")
    if kv.shape[0] == 0:
        return
    cos, sin, rd = _cos_sin(freqs_cis, positions, kv.device)
    _require(rd == ROPE_DIM, f"fused_k_norm_rope_flashmla: rope dim {rd}, expected {ROPE_DIM}")
    x = kv.float()
    norm = torch.rsqrt(x.square().sum(-1, keepdim=True) / HEAD_DIM + eps)
    d = x * norm * kv_weight.float()
    d = torch.cat((d[:, : HEAD_DIM - rd], _rotate(d[:, HEAD_DIM - rd:], cos, sin)), dim=-1)
    if q is not None:
        fused_rope_inplace(q[..., q.shape[-1] - rd:], None, freqs_cis, positions)
    keep = out_loc >= 0
    _store_v4(kvcache, out_loc[keep], d[keep.to(d.device)], page_size)


def fused_store_cache(
    input: torch.Tensor,
    cache: torch.Tensor,
    indices: torch.Tensor,
    *,
    page_size: int,
    type: str,
    layout="v4",
    freqs_cis: Optional[torch.Tensor] = None,
) -> None:
    """Stand-in for ``fused_store_cache`` (``kernels/ops/attention/dsv4/attn.py:75``; CUDA
    ``kernels/jit/csrc/deepseek_v4/store.cuh``), the V4 FlashMLA and indexer stores.

    ``type="flashmla"`` (``store.cuh:47``): ``input [N, 512]`` (bf16, normed and rotated) ->
    the V4 row at slot ``indices[i]``: per 64-value NoPE group the UE8M0 scale
    ``2^ceil(log2(max(1e-4, amax) / 448))`` and e4m3 ``clip(x / s)``; the 64 RoPE values are
    stored as bf16 (a copy of the input's). Same encoding as :func:`fused_k_norm_rope_flashmla`.

    ``type="indexer"`` (``store.cuh:147``): ``input [N, 128]`` -> index-K page entry: float32
    scale ``s = max(1e-4, amax) / 448`` (not a power of two), ``inv = 1 / s`` rounded to float32,
    values ``e4m3(clip(x * inv))``; page ``p = idx // page_size`` is ``page_size * 128`` key bytes
    then ``page_size`` float32 scales: key at ``p*132*page_size + j*128``, scale at
    ``p*132*page_size + 128*page_size + 4j``. (Multiplying by the rounded reciprocal, not
    dividing by the scale, matters: the two differ by one e4m3 code for a few values in 10^7.)

    The kernels store every row (a negative index would write out of bounds); this skips rows
    with a negative index. ``cache``: uint8 ``[pages, page_bytes]``.

    Call sites: ``mem_cache/deepseek_v4_memory_pool.py:357`` (c4 / c128 compressed caches,
    from the compressor ``layers/attention/dsv4/compressor_v2.py:353``), :703 (index-K cache,
    from :347), :2185 (SWA store, reached only with ``SGLANG_DSV4_USE_BF16_KV_QUANT_SOURCE`` or
    ``save_kv_cache=True``); replace
    ``sglang.srt.mem_cache.deepseek_v4_memory_pool.fused_store_cache``.
    """
    if freqs_cis is not None or _layout_name(layout) != "v4":
        raise NotImplementedError("fused_store_cache stand-in: V4 layout without in-kernel RoPE only")
    keep = indices >= 0
    idx = indices[keep].to(device=cache.device, dtype=torch.long)
    rows = input[keep.to(input.device)]
    if type == "flashmla":
        _require(input.dim() == 2 and input.shape[-1] == HEAD_DIM,
                 f"fused_store_cache: expected input [N, {HEAD_DIM}], got {tuple(input.shape)}")
        _store_v4(cache, idx, rows.float(), page_size)
        return
    if type != "indexer":
        raise ValueError(f"fused_store_cache: unknown type {type!r}")
    _require(input.dim() == 2 and input.shape[-1] == INDEX_DIM,
             f"fused_store_cache: expected input [N, {INDEX_DIM}], got {tuple(input.shape)}")
    flat = cache.view(torch.uint8)
    _require(flat.dim() == 2 and flat.shape[1] >= page_size * INDEX_ENTRY_BYTES,
             f"fused_store_cache: expected a uint8 [pages, >= {page_size * INDEX_ENTRY_BYTES}] cache")
    if rows.shape[0] == 0:
        return
    x = rows.float()
    scale = torch.clamp(x.abs().amax(-1), min=AMAX_FLOOR) / E4M3_MAX
    inv = 1.0 / scale
    codes = _to_e4m3(x * inv[:, None]).view(torch.uint8).to(cache.device)
    page, j = idx // page_size, idx % page_size
    cols = torch.arange(INDEX_DIM, device=cache.device)
    flat[page[:, None], (j * INDEX_DIM)[:, None] + cols] = codes
    cols = torch.arange(4, device=cache.device)
    sbytes = scale.contiguous().view(torch.uint8).reshape(-1, 4).to(cache.device)
    flat[page[:, None], INDEX_DIM * page_size + (j * 4)[:, None] + cols] = sbytes


# ------------------------------------------------------------------------------------------
# row 7: indexer q: RoPE + Hadamard + FP8 quantization


def fused_q_indexer_rope_hadamard_quant(
    q_input: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: float,
    freqs_cis: torch.Tensor,
    positions: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stand-in for ``fused_q_indexer_rope_hadamard_quant``
    (``kernels/ops/attention/dsv4/norm_rope.py:223``; CUDA
    ``kernels/jit/csrc/deepseek_v4/main_norm_rope.cuh:739``, V4 variant: RoPE on the trailing
    64 dims, Hadamard on).

    Math, per token ``b`` and head ``h`` of ``q_input [B, H, 128]``::

        x[64:] = RoPE(x[64:], positions[b])          (forward, interleaved pairs)
        y      = H_128 x / sqrt(128)                 (Sylvester Hadamard, natural order)
        s      = max(1e-4, max|y|) / 448             (float32, not a power of two)
        q_fp8  = e4m3(clip(y * (1/s), +-448))
        weights_out[b, h, 0] = weight[b, h] * weight_scale * s

    Rounding: x widened to float32; the RoPE result is **not** rounded to bf16; the butterfly
    stages add in the kernel's order (:func:`_fwht`); the ``1/sqrt(128)`` factor, ``1/s`` and
    the products are float32; ``weights_out`` is ``(w * weight_scale) * s`` in float32.
    (The kernel's ``rsqrt(128.f)`` may be ``rsqrtf``, an ulp from the correctly rounded value
    used here.)

    Returns ``(q_fp8 [B, H, 128] float8_e4m3fn, weights_out [B, H, 1] float32)``, new tensors.

    Call site: ``layers/attention/dsv4/indexer.py:1242`` (``compute_q``); replace
    ``sglang.srt.layers.attention.dsv4.indexer.fused_q_indexer_rope_hadamard_quant``.
    """
    _require(q_input.dim() == 3 and q_input.shape[-1] == INDEX_DIM,
             f"fused_q_indexer_rope_hadamard_quant: expected [B, H, {INDEX_DIM}], got {tuple(q_input.shape)}")
    b, h, d = q_input.shape
    if b == 0:
        return (torch.empty(q_input.shape, dtype=torch.float8_e4m3fn, device=q_input.device),
                torch.empty((b, h, 1), dtype=torch.float32, device=q_input.device))
    cos, sin, rd = _cos_sin(freqs_cis, positions, q_input.device)
    x = q_input.float()
    x = torch.cat((x[..., : d - rd], _rotate(x[..., d - rd:], cos, sin)), dim=-1)
    y = _fwht(x) * torch.tensor(d ** -0.5, dtype=torch.float32)
    scale = torch.clamp(y.abs().amax(-1), min=AMAX_FLOOR) / E4M3_MAX            # [B, H]
    inv = 1.0 / scale
    q_fp8 = _to_e4m3(y * inv[..., None])
    weights_out = (weight.float() * torch.tensor(weight_scale, dtype=torch.float32) * scale).unsqueeze(-1)
    return q_fp8, weights_out


# ------------------------------------------------------------------------------------------
# rows 8-10: hyper-connections (mHC)


def hc_split_sinkhorn(
    mixes: torch.Tensor,
    hc_scale: torch.Tensor,
    hc_base: torch.Tensor,
    hc_mult: int = 4,
    sinkhorn_iters: int = 20,
    eps: float = 1e-6,
):
    """Stand-in for ``hc_split_sinkhorn`` (``kernels/ops/layernorm/mhc.py:427``; TileLang kernel
    ``hc_split_sinkhorn_kernel`` at ``mhc.py:242``).

    Math, per row ``m = mixes[b, s]`` (``(2 + hc) * hc`` values; ``a = hc_scale``,
    ``c = hc_base``)::

        pre[j]   = sigmoid(m[j] * a[0] + c[j]) + eps
        post[j]  = 2 * sigmoid(m[hc + j] * a[1] + c[hc + j])
        C[j, k]  = m[2hc + j*hc + k] * a[2] + c[2hc + j*hc + k]
        C        = softmax_k(C) + eps                       (row max subtracted, exp, / row sum)
        C[j, k] /= (sum_j C[j, k] + eps)                     (columns)
        repeat sinkhorn_iters - 1 times: rows /(row sum + eps), then columns /(col sum + eps)

    All in float32 (the kernel's buffers are float32; ``eps`` is added after the softmax
    division and inside every normalising denominator). Same math as SGLang's own
    ``_mhc_pre_torch`` (``mhc.py:1900``) and the project's ``reference.ops.sinkhorn_split``.

    Returns ``(pre [b, s, hc], post [b, s, hc], comb [b, s, hc, hc])`` in ``mixes``' dtype.

    Call site: ``models/deepseek_v4.py:3483`` via ``get_mhc_ops().hc_split_sinkhorn`` (also
    ``models/deepseek_v4_mhc.py:336``); replace ``sglang.kernels.ops.layernorm.mhc.hc_split_sinkhorn``
    and clear ``sglang.srt.models.deepseek_v4.get_mhc_ops``'s cache.
    """
    b, s, _ = mixes.shape
    hc = hc_mult
    m = mixes.reshape(b * s, (2 + hc) * hc).float()
    a = hc_scale.float().to(m.device)
    c = hc_base.float().to(m.device)
    pre = torch.sigmoid(m[:, :hc] * a[0] + c[:hc]) + eps
    post = 2 * torch.sigmoid(m[:, hc: 2 * hc] * a[1] + c[hc: 2 * hc])
    comb = m[:, 2 * hc:].reshape(-1, hc, hc) * a[2] + c[2 * hc:].reshape(hc, hc)
    comb = torch.exp(comb - comb.amax(-1, keepdim=True))
    comb = comb / comb.sum(-1, keepdim=True) + eps
    comb = comb / (comb.sum(-2, keepdim=True) + eps)
    for _ in range(sinkhorn_iters - 1):
        comb = comb / (comb.sum(-1, keepdim=True) + eps)
        comb = comb / (comb.sum(-2, keepdim=True) + eps)
    dt = mixes.dtype
    return (pre.reshape(b, s, hc).to(dt), post.reshape(b, s, hc).to(dt),
            comb.reshape(b, s, hc, hc).to(dt))


def mhc_combine(x_flat: torch.Tensor, pre: torch.Tensor, hc: int, out_dtype: torch.dtype) -> torch.Tensor:
    """Stand-in for ``mhc_combine`` (``kernels/ops/layernorm/mhc.py:2743``; Triton
    ``_mhc_combine_kernel`` at ``mhc.py:2162``).

    Math: ``y[m, h] = sum_k pre[m, k] * x_flat[m, k*H + h]`` with ``H = x_flat.shape[1] // hc``.
    Rounding: float32 accumulator, terms added in order k = 0..hc-1 (the Triton compiler may
    contract each step into an fma), one rounding to ``out_dtype`` at the end. Returns a new
    ``[M, H]`` tensor.

    Call sites: ``models/deepseek_v4.py:3502`` (``hc_pre``, ``x_flat`` float32) and :4594;
    replace ``sglang.kernels.ops.layernorm.mhc.mhc_combine`` (imported inside the function).
    """
    m = x_flat.shape[0]
    h = x_flat.shape[1] // hc
    acc = torch.zeros((m, h), dtype=torch.float32, device=x_flat.device)
    for k in range(hc):
        acc = acc + pre[:, k: k + 1].float() * x_flat[:, k * h: (k + 1) * h].float()
    return acc.to(out_dtype)


def fused_hc_head(
    x: torch.Tensor,
    hc_fn: torch.Tensor,
    hc_scale: torch.Tensor,
    hc_base: torch.Tensor,
    norm_eps: float,
    hc_eps: float,
) -> torch.Tensor:
    """Stand-in for ``fused_hc_head`` (``kernels/ops/layernorm/mhc_head.py:90``; Triton
    ``_hc_head_kernel`` at ``mhc_head.py:31``).

    Math, per token of ``x [T, hc, D]`` with ``v = x[t].flatten()`` (K = hc * D)::

        r      = 1 / sqrt(sum(v^2) / K + norm_eps)
        pre[m] = sigmoid(<hc_fn[m], v> * r * hc_scale + hc_base[m]) + hc_eps
        y      = sum_m pre[m] * x[t, m]                         (rounded to x.dtype)

    Rounding: float32 values; the two reductions over K (sum of squares and the ``hc_fn``
    products, which the kernel sums in float32 tiles of 512) are accumulated in float64 here
    and rounded to float32 (order-independent, and never TF32 on a GPU); ``mix * r * scale``
    in that order; the weighted sum over m in float32; one rounding to ``x.dtype``. This is
    SGLang's ``hc_head_torch`` (``models/deepseek_v4.py:664``) computed the same way (the
    Triton kernel computes the same formula; ``hc_head_torch`` uses ``mean`` = sum / K).

    Call site: ``models/deepseek_v4.py:3935`` (``DeepseekV4Model.hc_head``, any non-empty
    batch); replace ``sglang.kernels.ops.layernorm.mhc_head.fused_hc_head``.
    """
    t, hc, d = x.shape
    v = x.reshape(t, hc * d)
    v64 = v.double()
    sumsq = v64.square().sum(-1).float()
    mix = (v64 @ hc_fn.double().t()).float()                               # [T, hc]
    r = torch.rsqrt(sumsq / (hc * d) + norm_eps)
    pre = torch.sigmoid(mix * r[:, None] * hc_scale.float().reshape(()) + hc_base.float()) + hc_eps
    y = (pre[:, :, None] * x.float()).sum(1)
    return y.to(x.dtype)


# ------------------------------------------------------------------------------------------
# row 11: shared-expert SwiGLU with clamp


def silu_and_mul_clamp(input: torch.Tensor, output: torch.Tensor, swiglu_limit: float) -> None:
    """Stand-in for ``silu_and_mul_clamp`` (``kernels/ops/activation/silu_and_mul_clamp.py:57``;
    CUDA ``kernels/jit/csrc/deepseek_v4/silu_and_mul_masked_post_quant.cuh:234``
    ``silu_mul_clamp_kernel`` with ``silu_and_mul<true>`` at :40, built with ``-use_fast_math``).

    Math, per row of ``input [M, 2N]`` = ``[gate | up]``, into ``output [M, N]``::

        L    = bf16(swiglu_limit)
        g    = min(gate, L)                    (gate clamped from above only)
        u    = clamp(up, -L, L)                (up clamped on both sides)
        out  = g / (1 + exp(-g)) * u

    Rounding: the clamps are done in bf16 (``__hmin2`` / ``__hmax2``; an fp16 input is first
    converted to bf16 through float32), then float32 silu and product, one rounding to
    ``output``'s dtype. The kernel's ``__expf`` and fast division are approximate to a few
    float32 ulps. Two fast-math edge rules are mirrored: ``__fdividef`` returns 0 when the
    denominator exceeds 2^126 (a gate below about -87.3, where silu is ~1e-36 anyway), and
    float32 subnormal results are flushed to zero (``-ftz``). Same formula as the project's
    ``reference.ops.swiglu`` (which clamps in float32 and returns float32).

    Call site: ``models/deepseek_v2.py:490`` (the shared expert's ``DeepseekV2MLP``); replace
    ``sglang.srt.models.deepseek_v2.silu_and_mul_clamp``.
    """
    n = output.shape[-1]
    _require(input.shape[-1] == 2 * n and input.shape[:-1] == output.shape[:-1],
             f"silu_and_mul_clamp: input {tuple(input.shape)} / output {tuple(output.shape)}")
    bf = input if input.dtype == torch.bfloat16 else input.float().to(torch.bfloat16)
    lim = torch.tensor(float(swiglu_limit), dtype=torch.float32).to(torch.bfloat16).to(bf.device)
    g = torch.minimum(bf[..., :n], lim).float()
    u = torch.maximum(bf[..., n:], -lim)
    u = torch.minimum(u, lim).float()
    den = 1.0 + torch.exp(-g)
    silu = torch.where(den > 2.0 ** 126, torch.zeros_like(g), g / den)
    val = silu * u
    tiny = 2.0 ** -126                                                   # FLT_MIN: ftz below it
    val = torch.where((silu.abs() < tiny) | (val.abs() < tiny), torch.zeros_like(val), val)
    output.copy_(val.to(output.dtype))


# ------------------------------------------------------------------------------------------
# row 1: compressed-attention metadata


def init_compression_metadata(
    seq_lens: torch.Tensor,
    positions: torch.Tensor,
    raw_out_loc: torch.Tensor,
    page_table: Optional[torch.Tensor] = None,
    page_size: int = 0,
    compute_page_indices: bool = True,
):
    """Stand-in for ``init_compression_metadata`` (``kernels/ops/attention/dsv4/metadata_kernel.py:245``
    -> ``_init_compressed_attn_metadata_triton`` :148, Triton kernel
    ``_init_compressed_attn_metadata_kernel`` :68).

    Per metadata row ``b < bs = len(seq_lens)`` (``L = seq_lens[b]``, ``p = positions[b]``) and,
    for the write rows ``b < len(raw_out_loc)``, ``o = raw_out_loc[b]``::

        c4_out_loc[b]         = o // 4    if L % 4 == 0    else 0        (int64, write rows only)
        c4_positions[b]       = p & ~3                                  (int32)
        c4_seq_lens_raw[b]    = L // 4,   c4_seq_lens_clamp1[b] = max(L // 4, 1)
        c128_*                  the same with 128
        c128_page_indices[b, i] = page_table[b, i // P'] * P' + i % P'   if i < L // 128 else -1
                                  (P' = page_size // 128, i < P' * max_pages; int32)

    Integer division truncates (C / Triton semantics; SGLang passes non-negative values). The
    Triton kernel reads ``page_table`` as row-major with row stride ``max_pages`` (a
    contiguous table, as the backend passes); this reads rows ``page_table[:bs]``.

    Returns the 9-tuple ``(c4_out_loc, c4_positions, c4_seq_lens_raw, c4_seq_lens_clamp1,
    c128_out_loc, c128_positions, c128_seq_lens_raw, c128_seq_lens_clamp1, c128_page_indices)``
    (the last None when ``compute_page_indices`` is False).

    Call site: ``layers/attention/deepseek_v4_backend.py:772`` (``init_compression_metadata``
    of the metadata, name imported as ``_init_compression_metadata_triton`` at :43); replace
    ``sglang.srt.layers.attention.deepseek_v4_backend._init_compression_metadata_triton``.
    """
    bs = seq_lens.shape[0]
    nw = raw_out_loc.shape[0]
    _require(nw <= bs, f"raw_out_loc has {nw} rows, expected at most {bs} metadata rows")
    dev = seq_lens.device
    lens = seq_lens.to(torch.int64)
    pos = positions.to(device=dev, dtype=torch.int64)
    out = raw_out_loc.to(device=dev, dtype=torch.int64)
    res = []
    for ratio in (4, 128):
        compress = (lens[:nw] % ratio) == 0
        out_loc = torch.where(compress, torch.div(out, ratio, rounding_mode="trunc"),
                              torch.zeros_like(out))
        raw = torch.div(lens, ratio, rounding_mode="trunc")
        res += [out_loc, (pos & ~(ratio - 1)).to(torch.int32), raw.to(torch.int32),
                raw.clamp(min=1).to(torch.int32)]
    if compute_page_indices:
        _require(page_table is not None, "page_table required when compute_page_indices=True")
        _require(page_size >= 128 and page_size % 128 == 0,
                 "page_size must be a multiple of 128 when compute_page_indices=True")
        max_pages = page_table.shape[1]
        cps = page_size // 128
        offs = torch.arange(cps * max_pages, device=dev)
        vals = page_table[:bs].to(device=dev, dtype=torch.int64)[:, offs // cps] * cps + offs % cps
        valid = offs[None, :] < (lens // 128)[:, None]
        res.append(torch.where(valid, vals, torch.full_like(vals, -1)).to(torch.int32))
    else:
        res.append(None)
    return tuple(res)


_init_compressed_attn_metadata_triton = init_compression_metadata
