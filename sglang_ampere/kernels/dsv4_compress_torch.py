"""Torch stand-ins for SGLang 0.5.23's DeepSeek-V4 compressor kernels (CPU serving path).

SGLang's compressor (``srt/layers/attention/dsv4/compressor_v2.py``: ``forward_unified`` ->
``_forward_compress_all_in_one``, and ``create_paged_compressor_data``) calls four CUDA JIT
entry points of ``kernels/ops/attention/dsv4/compress.py``. This module computes the same
bytes and values in plain torch, reading and writing the same tensors (SGLang's
compress-state pool, its c4/c128 extra-key caches and the C4 indexer's key cache), so the
compressor code runs unchanged on CPU and the compressor state lives where SGLang's radix
cache expects it (page-tail rows of the C4 ring follow the SWA pages; the C128 ring is
request-scoped).

=====================================  ============================================================
this module                            replaces (paths under ``site-packages/sglang/``)
=====================================  ============================================================
``plan_prefill(...) -> (plan_c,        ``CompressorPrefillPlan.generate`` (``kernels/ops/attention/
plan_w)``                              dsv4/compress.py:254``) -> ``plan_compress_prefill``
                                       (``kernels/jit/csrc/deepseek_v4/c_plan.cuh:442``, host path
                                       571-635 + ``plan_compress_prefill_kernel_1`` 251-309)
``plan_decode(...) -> plan_d``         ``CompressorDecodePlan.generate`` (``compress.py:167``) ->
                                       ``plan_compress_decode`` (``c_plan.cuh:637``, kernel 311-348)
``compress_forward(buf, x, ape,        ``compress_forward`` (``compress.py:404``, non-online) ->
*plan, head_dim=, compress_ratio=,     ``FlashCompress4Kernel`` (``c4_v2.cuh``) /
is_decode=, out=None)``                ``FlashCompress128Kernel`` (``c128_v2.cuh``)
``compress_norm_rope_store(kv, plan,   ``compress_norm_rope_store`` (``compress.py:445``) ->
is_decode=, compress_ratio=, ...)``    ``FusedNormRopeKernel::forward`` (``fused_norm_rope_v2.cuh``),
                                       V4 layout, head_dim 512 (main) and 128 (indexer, FP8)
=====================================  ============================================================

SGLang's wrappers take a plan NamedTuple; here the plan tensors are passed as they are
(``plan_d`` for decode, ``plan_c, plan_w`` for prefill) and ``is_decode`` / ``compress_ratio``
are explicit. Two adapters keep SGLang's own signatures (duck-typed on the NamedTuple, no
import): :func:`compress_forward_for_plan` and :func:`compress_norm_rope_store_for_plan`.
Wiring them in (what ``tests/test_dsv4_compress_torch.py`` does with monkeypatch)::

    compressor_v2.compress_forward = compress_forward_for_plan
    compressor_v2.compress_norm_rope_store = compress_norm_rope_store_for_plan
    CompressorPrefillPlan.generate = staticmethod(lambda compress_ratio, *a, **k:
        CompressorPrefillPlan(compress_ratio, *plan_prefill(compress_ratio, *a, **k)))
    CompressorDecodePlan.generate = staticmethod(lambda compress_ratio, *a, **k:
        CompressorDecodePlan(compress_ratio, plan_decode(compress_ratio, *a, **k)))

(``plan_prefill`` / ``plan_decode`` take ``generate``'s arguments in its order and names.)
Not ported: the online c128 compressor (``SGLANG_OPT_USE_ONLINE_COMPRESS``), the legacy
planners, FP4 indexer keys, the bf16 / fp8 two-pool / V4.1 stores.

Plan byte layouts (``kernels/jit/include/sgl_kernel/deepseek_v4/compress_v2.cuh:18-60``,
little-endian, one row per entry)::

    DecodePlan   16 B: u32 seq_len | i32 write_loc | i32 read_page_0 | i32 read_page_1
    CompressPlan 16 B: u32 seq_len | u16 ragged_id | u16 buffer_len | i32 read_page_0
                       | i32 read_page_1          invalid: seq_len 0xFFFFFFFF, 0, 0, -1, -1
    WritePlan     8 B: u32 ragged_id | i32 write_loc                 invalid: 0xFFFFFFFF, -1

The state pool rows ("elements") are addressed as the planner translates a token position
``p`` of request ``rid`` (``c_plan.cuh:257-264``; C integer division/remainder)::

    ratio 128, or use_req_ring:   loc(p) = rid * ring_size + p % ring_size
    ratio 4:                      s = full_to_state[req_to_token[rid, p]]   (the SWA slot)
                                  loc(p) = (s / swa_page_size) * ring_size + s % ring_size
    read pages are loc / ratio in the state buffer viewed [-1, ratio, last_dim].

No SGLang import here; everything is plain torch on the tensors' own device.
"""

from __future__ import annotations

import torch

from . import kv_layout as L

_INVALID_U32 = 0xFFFFFFFF
_MAX_TOKENS = 65536  # ragged_id is a u16 (c_plan.cuh:495, kMaxTokens)
_FLT_MAX = torch.finfo(torch.float32).max
_ROPE_DIM = 64
_CHUNK_VALUES = 1 << 21  # window rows x channels gathered per torch step (bounds memory)


# ------------------------------------------------------------------------------------------
# small helpers


def _ratio(compress_ratio) -> int:
    r = int(compress_ratio)
    if r not in (4, 128):
        raise ValueError(f"compress_ratio must be 4 or 128, got {compress_ratio!r}")
    return r


def _cdiv(a: torch.Tensor, b: int) -> torch.Tensor:
    """C integer division (truncates toward zero), as the .cuh computes it."""
    return torch.div(a, b, rounding_mode="trunc")


def _cmod(a: torch.Tensor, b: int) -> torch.Tensor:
    """C remainder (sign of the dividend)."""
    return torch.fmod(a, b)


def _i32(v: torch.Tensor) -> torch.Tensor:
    """Wrap int64 values to int32 two's complement (a C ``static_cast<int32_t>``)."""
    v = v.to(torch.int64) & 0xFFFFFFFF
    return torch.where(v >= 2**31, v - 2**32, v)


def _pack(fields: list[tuple[torch.Tensor, int]], device) -> torch.Tensor:
    """Little-endian bytes of int64 columns: ``[(values [N], nbytes), ...]`` -> uint8 [N, sum]."""
    cols = []
    for v, nbytes in fields:
        v = v.to(torch.int64)
        for k in range(nbytes):
            cols.append((v >> (8 * k)) & 0xFF)
    if not cols or cols[0].numel() == 0:
        total = sum(n for _, n in fields)
        return torch.empty((0, total), dtype=torch.uint8, device=device)
    return torch.stack(cols, dim=1).to(torch.uint8).to(device)


def _field(plan: torch.Tensor, offset: int, nbytes: int, signed: bool) -> torch.Tensor:
    """Read one little-endian integer column of a uint8 plan tensor as int64."""
    b = plan[:, offset: offset + nbytes].to(torch.int64)
    v = torch.zeros(plan.shape[0], dtype=torch.int64, device=plan.device)
    for k in range(nbytes):
        v |= b[:, k] << (8 * k)
    if signed:
        top = 1 << (8 * nbytes - 1)
        v = torch.where(v >= top, v - 2 * top, v)
    return v


def _check_plan(plan: torch.Tensor, row_bytes: int, name: str) -> None:
    if plan.dtype != torch.uint8 or plan.ndim != 2 or plan.shape[1] != row_bytes:
        raise ValueError(f"{name}: expected a uint8 [N, {row_bytes}] plan, got "
                         f"{tuple(plan.shape)} {plan.dtype}")


def unpack_plan_c(plan_c: torch.Tensor) -> dict[str, torch.Tensor]:
    """CompressPlan rows -> int64 columns ``seq_len, ragged_id, buffer_len, read_page_0/1``."""
    _check_plan(plan_c, 16, "plan_c")
    return {"seq_len": _field(plan_c, 0, 4, False), "ragged_id": _field(plan_c, 4, 2, False),
            "buffer_len": _field(plan_c, 6, 2, False), "read_page_0": _field(plan_c, 8, 4, True),
            "read_page_1": _field(plan_c, 12, 4, True)}


def unpack_plan_w(plan_w: torch.Tensor) -> dict[str, torch.Tensor]:
    """WritePlan rows -> int64 columns ``ragged_id, write_loc``."""
    _check_plan(plan_w, 8, "plan_w")
    return {"ragged_id": _field(plan_w, 0, 4, False), "write_loc": _field(plan_w, 4, 4, True)}


def unpack_plan_d(plan_d: torch.Tensor) -> dict[str, torch.Tensor]:
    """DecodePlan rows -> int64 columns ``seq_len, write_loc, read_page_0, read_page_1``."""
    _check_plan(plan_d, 16, "plan_d")
    return {"seq_len": _field(plan_d, 0, 4, False), "write_loc": _field(plan_d, 4, 4, True),
            "read_page_0": _field(plan_d, 8, 4, True), "read_page_1": _field(plan_d, 12, 4, True)}


class _Locator:
    """State-pool element of (request row ``rid``, position ``p``), ``c_plan.cuh:257-264``."""

    def __init__(self, ratio, req_to_token, full_to_state, swa_page_size, ring_size, use_req_ring):
        self.ratio, self.sps, self.ring = ratio, int(swa_page_size), int(ring_size)
        self.request_ring = ratio == 128 or bool(use_req_ring)
        self.r2t, self.f2s = req_to_token, full_to_state

    def loc(self, rid: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        rid, pos = rid.to(torch.int64).cpu(), pos.to(torch.int64).cpu()
        if self.request_ring:
            return _i32(rid * self.ring + _cmod(pos, self.ring))
        if rid.numel() == 0:
            return rid
        if (pos < 0).any() or (pos >= self.r2t.shape[1]).any() or (rid < 0).any() \
                or (rid >= self.r2t.shape[0]).any():
            raise IndexError(f"req_to_token {tuple(self.r2t.shape)} has no entry for rows "
                             f"{rid.tolist()} at positions {pos.tolist()}")
        raw = self.r2t[rid.to(self.r2t.device), pos.to(self.r2t.device)].to(torch.int64).cpu()
        if (raw < 0).any() or (raw >= self.f2s.shape[0]).any():
            raise IndexError(f"full_to_state ({self.f2s.shape[0]} slots) has no entry for full "
                             f"locations {raw.tolist()}")
        swa = _i32(self.f2s[raw.to(self.f2s.device)].to(torch.int64).cpu())  # int32 swa_loc
        return _i32(_cdiv(swa, self.sps) * self.ring + _cmod(swa, self.ring))


# ------------------------------------------------------------------------------------------
# 1. planner


def plan_prefill(
    compress_ratio: int,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    extend_lens: torch.Tensor,
    req_to_token: torch.Tensor,
    full_to_state: torch.Tensor,
    swa_page_size: int,
    ring_size: int,
    num_q_tokens: int,
    use_cuda_graph: bool = False,
    use_req_ring: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefill plans ``(plan_c [num_c, 16], plan_w [num_w, 8])`` uint8 (``c_plan.cuh:442-635``,
    the CPU-input host loop 571-601, then ``plan_compress_prefill_kernel_1`` 251-309).

    Tokens are ragged: request ``i`` (``prefix = seq_len - extend_len``) owns ragged ids
    ``base_i .. base_i + extend_len - 1`` for positions ``prefix .. seq_len - 1``. With
    ``window = 2r`` (r = 4, overlapping) or ``r`` (r = 128) and ``j`` the index in the extend:

    * a compress entry for every position ``p`` with ``(p + 1) % r == 0``, in request then
      position order: ``seq_len = p + 1``, ``ragged_id``, ``buffer_len = window - min(j + 1,
      window)`` (window rows that precede this extend and so come from the state buffer);
      ``read_page_0 = loc(max(p - r, 0)) / r``, ``read_page_1 = loc(p) / r`` when
      ``buffer_len > 0``; otherwise they stay ``-1`` and the batch index (the kernel leaves
      stage-0 values there).
    * a write entry for every position with ``p >= min(last_c - (r if r == 4 else 0),
      seq_len - mtp_pad)`` (``last_c = seq_len // r * r``, ``mtp_pad = ring - window + 2`` if
      ``ring > window`` else 0), and for r = 4 without ``use_req_ring`` also every SWA-page
      tail position ``p % swa_page_size >= swa_page_size - 4`` (what a prefix match at a
      page boundary reads back): ``ragged_id``, ``write_loc = loc(p)``.

    ``use_cuda_graph`` pads both to ``num_q_tokens`` rows with invalid entries. Raises
    ``ValueError`` for what the CUDA ``RuntimeCheck`` s reject, ``IndexError`` for a position
    or full location that the tables do not hold.
    """
    ratio = _ratio(compress_ratio)
    if use_req_ring and ratio != 4:
        raise ValueError("use_req_ring is only defined for compress_ratio 4")
    seq = [int(v) for v in seq_lens.reshape(-1).tolist()]
    ext = [int(v) for v in extend_lens.reshape(-1).tolist()]
    rids = req_pool_indices.reshape(-1).to(torch.int64).cpu()
    bs, num_q = len(seq), int(num_q_tokens)
    if len(ext) != bs or rids.numel() != bs:
        raise ValueError(f"batch sizes differ: seq_lens {bs}, extend_lens {len(ext)}, "
                         f"req_pool_indices {rids.numel()}")
    if not (bs < _MAX_TOKENS and bs <= num_q <= _MAX_TOKENS):
        raise ValueError(f"need batch_size ({bs}) <= num_q_tokens ({num_q}) <= {_MAX_TOKENS}")
    sps, ring = int(swa_page_size), int(ring_size)
    if ring <= 0 or sps % ring or ring % ratio:
        raise ValueError(f"need swa_page_size ({sps}) % ring_size ({ring}) == 0 and "
                         f"ring_size % compress_ratio ({ratio}) == 0")
    overlap = ratio == 4
    window = ratio * (2 if overlap else 1)
    mtp_pad = ring - window + 2 if ring > window else 0

    c_seq, c_rag, c_buf, c_bid, w_rag, w_bid, w_pos = [], [], [], [], [], [], []
    base = 0
    for i in range(bs):
        sl, el = seq[i], ext[i]
        if not 0 < el <= sl:
            raise ValueError(f"request {i}: need 0 < extend_len ({el}) <= seq_len ({sl})")
        j = torch.arange(el, dtype=torch.int64)
        pos = sl - el + j
        c = (pos + 1) % ratio == 0
        c_seq.append(pos[c] + 1)
        c_rag.append(base + j[c])
        c_buf.append(window - torch.clamp(j[c] + 1, max=window))
        c_bid.append(torch.full((int(c.sum()),), i, dtype=torch.int64))
        last_c = sl // ratio * ratio
        first_w = min(last_c - (ratio if overlap else 0), sl - mtp_pad)
        w = pos >= first_w
        if overlap and not use_req_ring:
            w |= pos % sps >= sps - ratio
        w_rag.append(base + j[w])
        w_bid.append(torch.full((int(w.sum()),), i, dtype=torch.int64))
        w_pos.append(pos[w])
        base += el
    if base != num_q:
        raise ValueError(f"sum(extend_lens) = {base} but num_q_tokens = {num_q}")

    loc = _Locator(ratio, req_to_token, full_to_state, sps, ring, use_req_ring)
    c_seq, c_rag, c_buf, c_bid = (torch.cat(t) if t else torch.zeros(0, dtype=torch.int64)
                                  for t in (c_seq, c_rag, c_buf, c_bid))
    rp0 = torch.full_like(c_seq, -1)
    rp1 = c_bid.clone()
    need = c_buf > 0
    if need.any():
        p1 = c_seq[need] - 1
        p0 = torch.clamp(p1 - ratio, min=0)
        r = rids[c_bid[need]]
        rp0[need] = _cdiv(loc.loc(r, p0), ratio)
        rp1[need] = _cdiv(loc.loc(r, p1), ratio)
    w_rag, w_bid, w_pos = (torch.cat(t) if t else torch.zeros(0, dtype=torch.int64)
                           for t in (w_rag, w_bid, w_pos))
    w_loc = loc.loc(rids[w_bid], w_pos) if w_pos.numel() else w_pos

    if use_cuda_graph:
        pad_c, pad_w = num_q - c_seq.numel(), num_q - w_rag.numel()
        c_seq = torch.cat([c_seq, torch.full((pad_c,), _INVALID_U32, dtype=torch.int64)])
        c_rag = torch.cat([c_rag, torch.zeros(pad_c, dtype=torch.int64)])
        c_buf = torch.cat([c_buf, torch.zeros(pad_c, dtype=torch.int64)])
        rp0 = torch.cat([rp0, torch.full((pad_c,), -1, dtype=torch.int64)])
        rp1 = torch.cat([rp1, torch.full((pad_c,), -1, dtype=torch.int64)])
        w_rag = torch.cat([w_rag, torch.full((pad_w,), _INVALID_U32, dtype=torch.int64)])
        w_loc = torch.cat([w_loc, torch.full((pad_w,), -1, dtype=torch.int64)])
    dev = req_pool_indices.device
    plan_c = _pack([(c_seq, 4), (c_rag, 2), (c_buf, 2), (rp0, 4), (rp1, 4)], dev)
    plan_w = _pack([(w_rag, 4), (w_loc, 4)], dev)
    return plan_c, plan_w


def plan_decode(
    compress_ratio: int,
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    full_to_state: torch.Tensor,
    seq_lens: torch.Tensor,
    swa_page_size: int,
    ring_size: int,
    use_req_ring: bool = False,
) -> torch.Tensor:
    """Decode plan ``plan_d [batch, 16]`` uint8 (``c_plan.cuh:637-688``, kernel 311-348).

    Per request (``seq_len`` counts the token being decoded, at position ``p = seq_len - 1``):
    ``write_loc = loc(p)``, ``read_page_0 = loc(max(p - r, 0)) / r``,
    ``read_page_1 = loc(p) / r`` (see the module docstring for ``loc``).
    """
    ratio = _ratio(compress_ratio)
    if use_req_ring and ratio != 4:
        raise ValueError("use_req_ring is only defined for compress_ratio 4")
    seq = seq_lens.reshape(-1).to(torch.int64).cpu()
    rids = req_pool_indices.reshape(-1).to(torch.int64).cpu()
    if seq.numel() != rids.numel():
        raise ValueError(f"batch sizes differ: seq_lens {seq.numel()}, req_pool_indices "
                         f"{rids.numel()}")
    if int(ring_size) <= 0:
        raise ValueError(f"ring_size must be positive, got {ring_size}")
    loc = _Locator(ratio, req_to_token, full_to_state, swa_page_size, ring_size, use_req_ring)
    p1 = seq - 1
    p0 = torch.clamp(p1 - ratio, min=0)
    write = loc.loc(rids, p1)
    rp0 = _cdiv(loc.loc(rids, p0), ratio)
    rp1 = _cdiv(write, ratio)
    return _pack([(seq, 4), (write, 4), (rp0, 4), (rp1, 4)], req_pool_indices.device)


# ------------------------------------------------------------------------------------------
# 2. gated softmax pooling over the kv/score state


def _pool(kv: torch.Tensor, score: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``out[c, d] = sum_k kv[c,k,d] e^(s - m) / sum_k e^(s - m)``, ``s = score + bias[k]``,
    ``m = max_k s`` (float32, as ``c4_v2.cuh:181-215`` / ``c128_v2.cuh:169-245``)."""
    s = score.float() + bias.float()[None]
    m = s.amax(dim=1, keepdim=True)
    e = torch.exp(s - m)
    return (kv.float() * e).sum(dim=1) / e.sum(dim=1)


def _check_index(idx: torch.Tensor, used: torch.Tensor, n: int, what: str) -> None:
    bad = used & ((idx < 0) | (idx >= n))
    if bad.any():
        raise IndexError(f"{what}: index {idx[bad][:8].tolist()} outside [0, {n})")


def compress_forward(
    kv_score_buffer: torch.Tensor,
    kv_score_input: torch.Tensor,
    ape: torch.Tensor,
    *plan_tensors: torch.Tensor,
    head_dim: int,
    compress_ratio: int,
    is_decode: bool,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gated softmax pooling of ``r`` (r = 128) or ``2r`` (r = 4) rows into one compressed row,
    reading and updating the state buffer (``c4_v2.cuh``, ``c128_v2.cuh``; the non-online
    ``compress_forward`` of ``compress.py:404``).

    Math, for the entry that ends at position ``p = seq_len - 1`` (``seq_len % r == 0``), row
    ``x_q`` of position ``q`` split as ``| kv_ov | kv | sc_ov | sc |`` (r = 4, ``head_dim``
    each) or ``| kv | sc |`` (r = 128), ``ape`` viewed ``[window, head_dim]``::

        r = 128: k = 0..127 -> position p-127+k, (kv, sc) of that row, bias ape[k]
        r = 4:   k = 0..3   -> position p-7+k, (kv_ov, sc_ov), bias ape[k]     (only if p >= 7:
                                 for seq_len == 4 these are kv 0, score -FLT_MAX)
                 k = 4..7   -> position p-7+k, (kv, sc),       bias ape[k]
        out[d] = sum_k kv_k[d] exp(s_k[d] - m[d]) / sum_k exp(s_k[d] - m[d]),
                 s_k = sc_k + bias_k, m = max_k s_k                         (float32)

    Where the rows come from:

    * prefill (``plan_c, plan_w``): window slot ``k < buffer_len`` is element ``k`` (r = 128) or
      ``k % 4`` of state page ``read_page_1`` (``read_page_0`` for r = 4, k < 4); the others are
      ragged rows ``ragged_id - (window - 1) + k`` of ``kv_score_input``. ``out`` row ``i`` is
      plan_c row ``i`` (invalid rows not written). Then every ``plan_w`` row copies input row
      ``ragged_id`` into state element ``write_loc`` (after all compressions, as the kernels
      run: compress kernel first, ``c4_v2.cuh:480-487``).
    * decode (``plan_d``, one row per request): input row ``b`` is first stored at state element
      ``write_loc``; then, if ``seq_len % 4 == 0`` (r = 4) or ``write_loc % 128 == 127``
      (r = 128), all window rows come from the state pages (``read_page_0`` for the overlap
      half, ``read_page_1`` otherwise). ``out`` row ``b`` of a non-compressing request is
      not written.

    ``kv_score_buffer`` is the pool's state viewed ``[-1, r, last_dim]`` (``last_dim = 4 *
    head_dim`` for r = 4, ``2 * head_dim`` for r = 128; contiguous); buffer values are cast to
    the input dtype before the math, as the mixed-dtype kernels do; ``ape`` is cast to the input
    dtype (``compress.py:439``). ``out`` defaults to a zeroed ``[rows of plan_c / plan_d,
    head_dim]`` tensor of the input dtype (SGLang allocates it uninitialised). Returns ``out``.
    """
    ratio = _ratio(compress_ratio)
    hd = int(head_dim)
    overlap = ratio == 4
    window = 2 * ratio if overlap else ratio
    last = hd * (4 if overlap else 2)
    if kv_score_buffer.ndim != 3 or tuple(kv_score_buffer.shape[1:]) != (ratio, last):
        raise ValueError(f"kv_score_buffer: expected [-1, {ratio}, {last}], got "
                         f"{tuple(kv_score_buffer.shape)}")
    if not kv_score_buffer.is_contiguous():
        raise ValueError("kv_score_buffer must be contiguous (it is written through a flat view)")
    if kv_score_input.ndim != 2 or kv_score_input.shape[1] != last:
        raise ValueError(f"kv_score_input: expected [N, {last}], got {tuple(kv_score_input.shape)}")
    bias = ape.reshape(-1, hd) if ape.numel() == window * hd else None
    if bias is None:
        raise ValueError(f"ape: expected {window} x {hd} values, got {tuple(ape.shape)}")
    in_dt = kv_score_input.dtype
    bias = bias.to(in_dt)
    flat = kv_score_buffer.view(-1, last)
    n_state, n_in = flat.shape[0], kv_score_input.shape[0]

    if is_decode:
        if len(plan_tensors) != 1:
            raise ValueError("decode takes one plan tensor (plan_d)")
        p = unpack_plan_d(plan_tensors[0])
        rows = p["seq_len"].numel()
        if rows != n_in:
            raise ValueError(f"plan_d has {rows} rows for {n_in} input rows")
    else:
        if len(plan_tensors) != 2:
            raise ValueError("prefill takes two plan tensors (plan_c, plan_w)")
        p = unpack_plan_c(plan_tensors[0])
        pw = unpack_plan_w(plan_tensors[1])
        rows = p["seq_len"].numel()
        if pw["ragged_id"].numel() > n_in:
            raise ValueError(f"plan_w has {pw['ragged_id'].numel()} rows for {n_in} input rows")
    if out is None:
        out = kv_score_input.new_zeros((rows, hd))
    elif tuple(out.shape) != (rows, hd):
        raise ValueError(f"out: expected [{rows}, {hd}], got {tuple(out.shape)}")
    dev = kv_score_input.device
    k = torch.arange(window)

    if is_decode:
        wl = p["write_loc"]
        _check_index(wl, torch.ones_like(wl, dtype=torch.bool), n_state, "decode write_loc")
        flat[wl.to(dev)] = kv_score_input.to(flat.dtype)
        seq = p["seq_len"]
        if overlap:
            sel = (seq % 4 == 0).nonzero().flatten()
        else:
            sel = (wl % 128 == 127).nonzero().flatten()
        seq = seq[sel]
        buffer_len = torch.full_like(seq, window)
        ragged = sel  # unused: every window row comes from the state
        rp0, rp1 = p["read_page_0"][sel], p["read_page_1"][sel]
        out_rows = sel
    else:
        valid = p["seq_len"] != _INVALID_U32
        sel = valid.nonzero().flatten()
        seq, ragged, buffer_len = p["seq_len"][sel], p["ragged_id"][sel], p["buffer_len"][sel]
        rp0, rp1 = p["read_page_0"][sel], p["read_page_1"][sel]
        out_rows = sel

    step = max(1, _CHUNK_VALUES // (window * last))
    for s in range(0, seq.numel(), step):
        e = slice(s, s + step)
        c_seq, c_rag, c_blen = seq[e], ragged[e], buffer_len[e]
        from_buf = k[None, :] < c_blen[:, None]                       # [C, window]
        if overlap:
            has_ov = (c_seq > 4)[:, None] | (k[None, :] >= 4)           # absent first window
            page = torch.where(k[None, :] < 4, rp0[e][:, None], rp1[e][:, None])
            elem = page * ratio + (k % 4)[None, :]
        else:
            has_ov = torch.ones_like(from_buf)
            elem = rp1[e][:, None] * ratio + k[None, :]
        src = c_rag[:, None] - (window - 1) + k[None, :]
        _check_index(elem, from_buf & has_ov, n_state, "state element")
        _check_index(src, ~from_buf & has_ov, n_in, "ragged input row")
        elem_d = elem.clamp(0, n_state - 1).to(dev)
        src_d = src.clamp(0, max(n_in - 1, 0)).to(dev)
        fb = from_buf.to(dev)[..., None]
        if n_in:
            x = torch.where(fb, flat[elem_d].to(in_dt), kv_score_input[src_d])
        else:
            x = flat[elem_d].to(in_dt)
        if overlap:  # | kv_ov | kv | sc_ov | sc |: overlap half for k < 4
            kv = torch.cat([x[:, :4, 0:hd], x[:, 4:, hd:2 * hd]], dim=1)
            sc = torch.cat([x[:, :4, 2 * hd:3 * hd], x[:, 4:, 3 * hd:4 * hd]], dim=1)
            absent = (~has_ov).to(dev)[..., None]
            kv = torch.where(absent, torch.zeros((), dtype=in_dt, device=dev), kv)
            sc = torch.where(absent, torch.tensor(-_FLT_MAX, dtype=torch.float32).to(in_dt)
                             .to(dev), sc)
        else:
            kv, sc = x[..., :hd], x[..., hd:]
        out[out_rows[e].to(out.device)] = _pool(kv, sc, bias).to(out.dtype).to(out.device)

    if not is_decode and pw["ragged_id"].numel():
        ok = pw["ragged_id"] != _INVALID_U32
        rag, wl = pw["ragged_id"][ok], pw["write_loc"][ok]
        _check_index(rag, torch.ones_like(rag, dtype=torch.bool), n_in, "plan_w ragged_id")
        _check_index(wl, torch.ones_like(wl, dtype=torch.bool), n_state, "plan_w write_loc")
        flat[wl.to(dev)] = kv_score_input[rag.to(dev)].to(flat.dtype)
    return out


# ------------------------------------------------------------------------------------------
# 3. RMSNorm + RoPE (+ Hadamard) + FP8 store


def _hadamard128(x: torch.Tensor) -> torch.Tensor:
    """Sylvester-ordered Walsh-Hadamard of the last dim, butterflies bit 0 first, times
    ``rsqrt(128)`` (the order and float32 rounding of ``fused_norm_rope_v2.cuh:157-195``)."""
    n = x.shape[-1]
    y = x.float()
    b = 1
    while b < n:
        y = y.reshape(-1, n // (2 * b), 2, b)
        lo, hi = y[:, :, 0], y[:, :, 1]
        y = torch.stack((lo + hi, lo - hi), dim=2)
        b *= 2
    return y.reshape(x.shape) * torch.rsqrt(torch.tensor(float(n), dtype=torch.float32))


def _layout_name(layout) -> str:
    return str(getattr(layout, "name", layout)).split(".")[-1].upper()


def compress_norm_rope_store(
    kv: torch.Tensor,
    plan_tensor: torch.Tensor,
    *,
    is_decode: bool,
    compress_ratio: int,
    norm_weight: torch.Tensor,
    norm_eps: float,
    freq_cis: torch.Tensor,
    out_loc: torch.Tensor,
    kvcache: torch.Tensor,
    page_size: int,
    use_fp4: bool = False,
    bf16_store: bool = False,
    kvcache_scale: torch.Tensor | None = None,
    rope_cache=None,
    fp4_k_write_metadata=None,
    layout="V4",
    fp8_2buff: bool = False,
    kvcache_rope: torch.Tensor | None = None,
) -> None:
    """RMSNorm, RoPE at the entry's first position and the FP8 store of compressed rows
    (``fused_norm_rope_v2.cuh``: ``fused_norm_rope_flashmla`` 401-573 for head_dim 512,
    ``fused_norm_rope_indexer`` 71-235 for head_dim 128; ``compress_norm_rope_store`` of
    ``compress.py:445`` with ``layout=V4`` and none of fp4 / bf16_store / fp8_2buff).

    Row ``i`` of ``kv`` belongs to plan row ``i`` (``plan_c`` for prefill: skipped if invalid,
    stored at ``out_loc[ragged_id]``; ``plan_d`` for decode: skipped unless ``seq_len % r ==
    0``, stored at ``out_loc[i]``). With ``pos = seq_len - r`` and ``f = freq_cis[pos]``
    (complex, 32 pairs), in float32::

        y = x * rsqrt(mean(x^2) + eps) * w            (w cast to kv's dtype first)
        y[-64:] as 32 interleaved (re, im) pairs  <-  pair * f
        head_dim 512 -> extra-key cache, KVLayout.V4 page (kv_layout.write_rows):
            nope = bf16(y[:448]) in 7 groups of 64: scale 2^ceil(log2(max(amax, 1e-4) / 448))
            (UE8M0 byte), e4m3(nope / scale); rope = bf16(y[448:])
        head_dim 128 -> index-K cache (kv_layout.write_index_keys), 64 entries a page:
            y = H y / sqrt(128) (Sylvester Hadamard); scale = max(amax, 1e-4) / 448 (float32),
            e4m3(y * (1 / scale)) and the float32 scale

    ``kvcache`` is the uint8 ``[pages, page_bytes]`` pool (``page_bytes`` = 576-padded 584 *
    page_size, or 132 * page_size for the indexer). Raises ``NotImplementedError`` for the
    variants not ported and ``ValueError`` / ``IndexError`` for bad shapes or locations.
    """
    ratio = _ratio(compress_ratio)
    if use_fp4 or bf16_store or fp8_2buff or kvcache_scale is not None or rope_cache is not None \
            or fp4_k_write_metadata is not None or kvcache_rope is not None:
        raise NotImplementedError("only the FP8 V4 store is ported (no fp4 / bf16_store / "
                                  "fp8_2buff / HIP variants)")
    if _layout_name(layout) != "V4":
        raise NotImplementedError(f"only KVLayout.V4 is ported, got {layout!r}")
    if kv.ndim != 2 or kv.shape[1] not in (L.HEAD_DIM, L.INDEX_DIM):
        raise ValueError(f"kv: expected [N, 512] or [N, 128], got {tuple(kv.shape)}")
    hd = kv.shape[1]
    n = kv.shape[0]
    if is_decode:
        p = unpack_plan_d(plan_tensor)
        if p["seq_len"].numel() != n or out_loc.numel() != n:
            raise ValueError(f"decode: plan_d rows {p['seq_len'].numel()} and out_loc "
                             f"{out_loc.numel()} must equal kv rows {n}")
        sel = (p["seq_len"] % ratio == 0).nonzero().flatten()
        loc_idx = sel
    else:
        p = unpack_plan_c(plan_tensor)
        if p["seq_len"].numel() != n:
            raise ValueError(f"prefill: plan_c rows {p['seq_len'].numel()} != kv rows {n}")
        sel = (p["seq_len"] != _INVALID_U32).nonzero().flatten()
        loc_idx = p["ragged_id"][sel]
        _check_index(loc_idx, torch.ones_like(loc_idx, dtype=torch.bool), out_loc.numel(),
                     "out_loc[ragged_id]")
    if sel.numel() == 0:
        return
    pos = p["seq_len"][sel] - ratio
    freqs = torch.view_as_real(freq_cis).flatten(-2) if freq_cis.is_complex() else freq_cis
    freqs = freqs.float().reshape(freqs.shape[0], -1)
    if freqs.shape[1] != _ROPE_DIM:
        raise ValueError(f"freq_cis: expected 32 complex (64 real) values a row, got "
                         f"{tuple(freq_cis.shape)}")
    _check_index(pos, torch.ones_like(pos, dtype=torch.bool), freqs.shape[0], "rope position")
    dev = kv.device

    x = kv[sel.to(dev)].float()
    w = norm_weight.to(kv.dtype).float().to(dev)
    y = x * torch.rsqrt(x.square().sum(-1, keepdim=True) / hd + float(norm_eps)) * w
    f = freqs.to(dev)[pos.to(dev)].view(-1, _ROPE_DIM // 2, 2)
    r = y[:, -_ROPE_DIM:].reshape(-1, _ROPE_DIM // 2, 2)
    re, im = r[..., 0], r[..., 1]
    fr, fi = f[..., 0], f[..., 1]
    rot = torch.stack((re * fr - im * fi, re * fi + im * fr), dim=-1).reshape(-1, _ROPE_DIM)
    slots = out_loc.reshape(-1).to(torch.int64).cpu()[loc_idx]

    if kvcache.dtype != torch.uint8 or kvcache.ndim != 2 or kvcache.stride(1) != 1:
        raise ValueError(f"kvcache: expected a uint8 [pages, page_bytes] pool, got "
                         f"{tuple(kvcache.shape)} {kvcache.dtype} strides {kvcache.stride()}")
    if hd == L.HEAD_DIM:
        want = L.page_bytes(int(page_size))
        if kvcache.shape[1] != want or (kvcache.shape[0] > 1 and kvcache.stride(0) != want):
            raise ValueError(f"kvcache: a V4 page of {page_size} tokens is {want} bytes, got "
                             f"{tuple(kvcache.shape)} strides {kvcache.stride()}")
        _check_index(slots, torch.ones_like(slots, dtype=torch.bool),
                     kvcache.shape[0] * int(page_size), "extra-key slot")
        # nope goes through bf16 before the quantization (fused_norm_rope_v2.cuh:550-553)
        nope = y[:, : L.NOPE_DIM].to(torch.bfloat16).float()
        L.write_rows(kvcache, slots, torch.cat([nope, rot], dim=1), int(page_size))
    else:
        if int(page_size) != L.INDEX_PAGE_SIZE:
            raise NotImplementedError(f"index-K pages of {page_size} entries (only "
                                      f"{L.INDEX_PAGE_SIZE} is ported)")
        if kvcache.shape[1] != L.INDEX_PAGE_BYTES or (kvcache.shape[0] > 1
                                                       and kvcache.stride(0) != L.INDEX_PAGE_BYTES):
            raise ValueError(f"kvcache: an index-K page is {L.INDEX_PAGE_BYTES} bytes, got "
                             f"{tuple(kvcache.shape)} strides {kvcache.stride()}")
        _check_index(slots, torch.ones_like(slots, dtype=torch.bool),
                     kvcache.shape[0] * L.INDEX_PAGE_SIZE, "index-K slot")
        keys = _hadamard128(torch.cat([y[:, :-_ROPE_DIM], rot], dim=1))
        L.write_index_keys(kvcache, slots, keys)


# ------------------------------------------------------------------------------------------
# adapters with SGLang's call signatures (duck-typed on its plan NamedTuples; no import)


def compress_forward_for_plan(kv_score_buffer, kv_score_input, ape, plan, *, head_dim,
                              compress_ratio, out=None, is_online=False):
    """``compress.py:404`` ``compress_forward``'s signature over :func:`compress_forward`:
    ``plan`` is a ``CompressorDecodePlan`` / ``CompressorPrefillPlan`` (``plan[1:3]`` are its
    tensors, as the CUDA call passes them)."""
    if is_online:
        raise NotImplementedError("the online c128 compressor (SGLANG_OPT_USE_ONLINE_COMPRESS) "
                                  "is not ported")
    if int(plan.compress_ratio) != int(compress_ratio):
        raise ValueError(f"plan is for ratio {plan.compress_ratio}, call for {compress_ratio}")
    tensors = (plan[1],) if plan.is_decode else (plan[1], plan[2])
    return compress_forward(kv_score_buffer, kv_score_input, ape, *tensors, head_dim=head_dim,
                            compress_ratio=compress_ratio, is_decode=plan.is_decode, out=out)


def compress_norm_rope_store_for_plan(kv, plan, **kwargs) -> None:
    """``compress.py:445`` ``compress_norm_rope_store``'s signature over
    :func:`compress_norm_rope_store` (SGLang's keyword arguments pass through)."""
    compress_norm_rope_store(kv, plan[1], is_decode=plan.is_decode,
                             compress_ratio=plan.compress_ratio, **kwargs)
