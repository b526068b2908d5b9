"""The torch stand-ins for SGLang's DeepSeek-V4 compressor kernels (``kernels/dsv4_compress_torch``).

* the planner against plans written here from ``c_plan.cuh``'s rules (scalar Python, packed
  with ``struct``), including a literal hand-computed plan;
* ``compress_forward`` driven through chunked prefill and decode against float64 pooling over
  each request's whole history (the state buffer is NaN-poisoned, so reading a row that was
  never written shows up);
* ``compress_norm_rope_store`` against float64 RMSNorm/RoPE/Hadamard, decoded with
  ``kv_layout``'s torch-FP8 readers, within FP8 rounding;
* the index-key codec's rounding rule (SGLang's writers multiply by the reciprocal scale);
* SGLang's real ``compressor_v2`` (``create_paged_compressor_data`` + ``forward_unified``, real
  ``Compressor`` modules) on its real ``DeepSeekV4TokenToKVPool``, SWA allocator and (for prefix
  reuse) ``UnifiedRadixCache`` on CPU, the stand-ins patched in: batched prefill, the same prompts
  as two chunks, decode, a second request reusing the first one's cached prefix. Stored rows vs
  float64 math and the reference forward's ``compress``; state rows where SGLang's own pool code
  addresses them. Each property has a negative control (rows one slot off, ape without SGLang's
  reorder, the state ring offset by one, request-scoped C4 state).
"""

from __future__ import annotations

import struct

import pytest
import torch

from sglang_ampere.kernels import dsv4_compress_torch as C
from sglang_ampere.kernels import kv_layout as L

# ------------------------------------------------------------------------------------------
# planner: an independent scalar model of c_plan.cuh


def _loc(ratio, rid, p, r2t, f2s, sps, ring, req_ring):
    if ratio == 128 or req_ring:
        return rid * ring + p % ring
    s = int(f2s[int(r2t[rid, p])])                       # all non-negative: // == C division
    return (s // sps) * ring + s % ring


def _expected_prefill(ratio, rids, seqs, exts, r2t, f2s, sps, ring, req_ring=False,
                      num_q=None, cuda_graph=False):
    window = 8 if ratio == 4 else 128
    pad = ring - window + 2 if ring > window else 0
    rows_c, rows_w, base = [], [], 0
    for i, (rid, sl, el) in enumerate(zip(rids, seqs, exts)):
        last_c = sl // ratio * ratio
        first_w = min(last_c - (4 if ratio == 4 else 0), sl - pad)
        for j in range(el):
            p = sl - el + j
            if (p + 1) % ratio == 0:
                blen = window - min(j + 1, window)
                if blen > 0:
                    rp0 = _loc(ratio, rid, max(p - ratio, 0), r2t, f2s, sps, ring, req_ring) // ratio
                    rp1 = _loc(ratio, rid, p, r2t, f2s, sps, ring, req_ring) // ratio
                else:
                    rp0, rp1 = -1, i
                rows_c.append(struct.pack("<IHHii", p + 1, base + j, blen, rp0, rp1))
            tail = ratio == 4 and not req_ring and p % sps >= sps - 4
            if p >= first_w or tail:
                rows_w.append(struct.pack("<Ii", base + j, _loc(ratio, rid, p, r2t, f2s, sps, ring,
                                                               req_ring)))
        base += el
    if cuda_graph:
        rows_c += [struct.pack("<IHHii", 0xFFFFFFFF, 0, 0, -1, -1)] * (num_q - len(rows_c))
        rows_w += [struct.pack("<Ii", 0xFFFFFFFF, -1)] * (num_q - len(rows_w))
    return b"".join(rows_c), b"".join(rows_w)


def _tables(gen, n_req, max_len, sps):
    """req_to_token (int32) with random distinct full locations, full_to_state mapping each
    request's positions onto whole SWA pages of its own (position p at page offset p % sps)."""
    n_pages = n_req * (-(-max_len // sps))
    full = torch.randperm(n_req * max_len + 7, generator=gen)[: n_req * max_len] + 3
    r2t = full.view(n_req, max_len).to(torch.int32)
    pages = torch.randperm(n_pages, generator=gen).view(n_req, -1)
    f2s = torch.full((int(full.max()) + 1,), -7, dtype=torch.int64)
    pos = torch.arange(max_len)
    for r in range(n_req):
        f2s[r2t[r].long()] = pages[r, pos // sps] * sps + pos % sps
    return r2t, f2s, n_pages


def test_plan_literal():
    """One request, 6 tokens, ratio 4, swa pages of 16, ring 8, positions at full/SWA 32 + p."""
    r2t = torch.zeros(2, 8, dtype=torch.int32)
    r2t[1] = torch.arange(32, 40)
    f2s = torch.arange(64)
    plan_c, plan_w = C.plan_prefill(4, torch.tensor([1]), torch.tensor([6]), torch.tensor([6]),
                                    r2t, f2s, 16, 8, 6)
    # p = 3 compresses: seq_len 4, ragged 3, buffer_len 8 - 4 = 4; loc(3) = 2*8 + 3 = 19 -> page 4,
    # loc(0) = 16 -> page 4. first_w = min(4 - 4, 6) = 0: every position is written, loc 16 + p.
    assert plan_c.tolist() == [list(struct.pack("<IHHii", 4, 3, 4, 4, 4))]
    assert plan_w.tolist() == [list(struct.pack("<Ii", p, 16 + p)) for p in range(6)]
    plan_d = C.plan_decode(4, torch.tensor([1]), r2t, f2s, torch.tensor([8]), 16, 8)
    # p = 7: write loc 16 + 7 = 23, pages loc(3) // 4 = 4 and 23 // 4 = 5
    assert plan_d.tolist() == [list(struct.pack("<Iiii", 8, 23, 4, 5))]


@pytest.mark.parametrize("ratio,ring,req_ring", [(4, 8, False), (4, 16, True), (128, 128, False),
                                                 (128, 256, False)])
def test_plan_prefill_matches_rules(gen, ratio, ring, req_ring):
    sps = 16 if ratio == 4 else 256
    max_len = 700
    r2t, f2s, _ = _tables(gen, 5, max_len, sps)
    rids = [3, 0, 4]
    if ratio == 4:
        seqs, exts = [37, 6, 61], [14, 6, 29]          # prefixes 23, 0, 32; page tails inside
    else:
        seqs, exts = [300, 133, 690], [175, 133, 300]   # prefixes 125, 0, 390
    num_q = sum(exts)
    for cuda_graph in (False, True):
        plan_c, plan_w = C.plan_prefill(ratio, torch.tensor(rids), torch.tensor(seqs),
                                        torch.tensor(exts), r2t, f2s, sps, ring, num_q,
                                        use_cuda_graph=cuda_graph, use_req_ring=req_ring)
        want_c, want_w = _expected_prefill(ratio, rids, seqs, exts, r2t, f2s, sps, ring, req_ring,
                                           num_q, cuda_graph)
        assert plan_c.dtype == torch.uint8 and plan_c.shape[1] == 16 and plan_w.shape[1] == 8
        assert plan_c.numpy().tobytes() == want_c
        assert plan_w.numpy().tobytes() == want_w
        if ratio == 4 and not req_ring:
            assert any(r[6] for r in plan_c.tolist())      # some entries read the state
            # negative control: the same batch with an identity full -> SWA mapping differs
            other, _ = _expected_prefill(ratio, rids, seqs, exts, r2t, torch.arange(f2s.numel()),
                                         sps, ring, req_ring, num_q, cuda_graph)
            assert other != want_c
    # the fields read back
    f = C.unpack_plan_c(plan_c)
    assert f["seq_len"][0].item() % ratio == 0 and f["ragged_id"].dtype == torch.int64


@pytest.mark.parametrize("ratio,req_ring", [(4, False), (4, True), (128, False)])
def test_plan_decode_matches_rules(gen, ratio, req_ring):
    sps, ring = (16, 8 if not req_ring else 16) if ratio == 4 else (256, 128)
    r2t, f2s, _ = _tables(gen, 4, 600, sps)
    rids, seqs = [2, 0, 3, 1], [1, 4, 131, 517]
    plan_d = C.plan_decode(ratio, torch.tensor(rids), r2t, f2s, torch.tensor(seqs), sps, ring,
                           use_req_ring=req_ring)
    want = b""
    for rid, sl in zip(rids, seqs):
        w = _loc(ratio, rid, sl - 1, r2t, f2s, sps, ring, req_ring)
        r0 = _loc(ratio, rid, max(sl - 1 - ratio, 0), r2t, f2s, sps, ring, req_ring) // ratio
        want += struct.pack("<Iiii", sl, w, r0, w // ratio)
    assert plan_d.numpy().tobytes() == want


def test_plan_rejects_what_cuda_rejects():
    r2t = torch.arange(64, dtype=torch.int32).view(2, 32)
    f2s = torch.arange(64)
    args = dict(req_to_token=r2t, full_to_state=f2s, swa_page_size=16, ring_size=8)
    ok = C.plan_prefill(4, torch.tensor([0]), torch.tensor([9]), torch.tensor([5]), num_q_tokens=5,
                        **args)
    assert ok[0].shape[0] == 1
    with pytest.raises(ValueError):                    # extend 0
        C.plan_prefill(4, torch.tensor([0]), torch.tensor([9]), torch.tensor([0]), num_q_tokens=1,
                       **args)
    with pytest.raises(ValueError):                    # num_q_tokens != sum(extend)
        C.plan_prefill(4, torch.tensor([0]), torch.tensor([9]), torch.tensor([5]), num_q_tokens=6,
                       **args)
    with pytest.raises(ValueError):                    # ring not a multiple of the ratio
        C.plan_prefill(128, torch.tensor([0]), torch.tensor([9]), torch.tensor([5]),
                       num_q_tokens=5, **args)
    with pytest.raises(ValueError):                    # ratio
        C.plan_decode(8, torch.tensor([0]), r2t, f2s, torch.tensor([3]), 16, 8)
    with pytest.raises(IndexError):                    # a full location with no state slot
        C.plan_decode(4, torch.tensor([0]), r2t, f2s[:3], torch.tensor([9]), 16, 8)


# ------------------------------------------------------------------------------------------
# compress_forward: chunked prefill + decode against float64 pooling over the whole history


def _oracle_pool(hist: torch.Tensor, ape: torch.Tensor, p: int, ratio: int, hd: int) -> torch.Tensor:
    """float64 entry ending at position p. ``hist [T, last]`` rows ``| kv | score |`` (128) or
    ``| kv_ov | kv | sc_ov | sc |`` (4); ``ape [ratio, coff*hd]`` as in the checkpoint."""
    h, a = hist.double(), ape.double()
    if ratio == 128:
        rows = h[p - 127: p + 1]
        kv, sc = rows[:, :hd], rows[:, hd:] + a
    else:
        cur = h[p - 3: p + 1]
        kv, sc = cur[:, hd:2 * hd], cur[:, 3 * hd:] + a[:, hd:]
        if p >= 7:
            prev = h[p - 7: p - 3]
            kv = torch.cat([prev[:, :hd], kv])
            sc = torch.cat([prev[:, 2 * hd:3 * hd] + a[:, :hd], sc])
    return (kv * torch.softmax(sc, dim=0)).sum(0)


def _ape_for_kernel(ape: torch.Tensor, ratio: int) -> torch.Tensor:
    """SGLang's load-time reorder of the overlap ape (compressor.py:117-139): [4, 2d] -> [8, d]."""
    if ratio != 4:
        return ape
    a, b = ape.chunk(2, dim=-1)
    return torch.cat([a, b], dim=0)


# (prefix, extend) chunks per request, then decode steps
_SCHEDULE = {4: ([[13, 37, 6], [22, 3, 41]], 9), 128: ([[100, 150, 20], [27, 130, 300]], 3)}


def _run_compress(ratio, hd, gen, perturb=None):
    """Drive compress_forward through two prefill chunks and decode steps of 3 requests; returns
    (got, want) row pairs of every compressed entry."""
    sps, ring = (16, 8) if ratio == 4 else (256, 128)
    last = hd * (4 if ratio == 4 else 2)
    rids = [2, 0, 3]
    chunks, n_dec = _SCHEDULE[ratio]
    total = [sum(c[i] for c in chunks) + n_dec for i in range(3)]
    r2t, f2s, n_pages = _tables(gen, 4, max(total) + 1, sps)
    n_state = (n_pages * ring if ratio == 4 else 4 * ring) + ring + 1
    state = torch.full((-(-n_state // ratio) * ratio, last), float("nan"))
    ape = torch.randn(ratio, last // 2, generator=gen) * 0.5
    hist = [torch.randn(total[i], last, generator=gen) for i in range(3)]
    for h in hist:
        h[:, last // 2:] *= 2.0                              # scores: a sharper softmax
    oracle_ape = ape.roll(1, dims=0) if perturb == "ape_shift" else ape
    seqs, pairs = [0, 0, 0], []
    buf = state.view(-1, ratio, last)
    for step, ext in enumerate(chunks):
        if step == 1 and perturb == "roll_state":
            state.copy_(state.roll(1, dims=0))
        x = torch.cat([hist[i][seqs[i]: seqs[i] + ext[i]] for i in range(3)])
        new = [seqs[i] + ext[i] for i in range(3)]
        plan = C.plan_prefill(ratio, torch.tensor(rids), torch.tensor(new), torch.tensor(ext),
                              r2t, f2s, sps, ring, sum(ext))
        out = C.compress_forward(buf, x, _ape_for_kernel(ape, ratio), *plan, head_dim=hd,
                                 compress_ratio=ratio, is_decode=False)
        want = [_oracle_pool(hist[i], oracle_ape, p, ratio, hd)
                for i in range(3) for p in range(seqs[i], new[i]) if (p + 1) % ratio == 0]
        assert out.shape == (len(want), hd) and out.dtype == torch.float32
        pairs += list(zip(out, want))
        seqs = new
    for _ in range(n_dec):
        seqs = [s + 1 for s in seqs]
        x = torch.stack([hist[i][seqs[i] - 1] for i in range(3)])
        plan_d = C.plan_decode(ratio, torch.tensor(rids), r2t, f2s, torch.tensor(seqs), sps, ring)
        out = C.compress_forward(buf, x, _ape_for_kernel(ape, ratio), plan_d, head_dim=hd,
                                 compress_ratio=ratio, is_decode=True)
        for i in range(3):
            if seqs[i] % ratio == 0:
                pairs.append((out[i], _oracle_pool(hist[i], oracle_ape, seqs[i] - 1, ratio, hd)))
    return pairs


def _close(pairs) -> bool:
    return all(torch.allclose(g.double(), w, rtol=1e-5, atol=1e-5) for g, w in pairs)


@pytest.mark.parametrize("ratio,hd", [(4, 128), (4, 512), (128, 128)])
def test_compress_forward_prefill_chunks_and_decode(gen, ratio, hd):
    pairs = _run_compress(ratio, hd, gen)
    n = {4: 36, 128: 5}[ratio]
    assert len(pairs) >= n
    for g, w in pairs:
        torch.testing.assert_close(g.double(), w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ratio", [4, 128])
def test_compress_forward_negative_controls(gen, ratio):
    seed = int(torch.randint(0, 2**31, (1,), generator=gen))
    # the state ring moved by one row between the chunks
    assert not _close(_run_compress(ratio, 128, torch.Generator().manual_seed(seed), "roll_state"))
    # the oracle with the ape rows misaligned by one position
    assert not _close(_run_compress(ratio, 128, torch.Generator().manual_seed(seed), "ape_shift"))
    # the unperturbed run with the same seed passes
    assert _close(_run_compress(ratio, 128, torch.Generator().manual_seed(seed)))


def test_compress_forward_rejects_bad_input(gen):
    buf = torch.zeros(8, 4, 4 * 128)
    x = torch.randn(3, 4 * 128, generator=gen)
    plan_d = struct.pack("<Iiii", 4, 99, 0, 0)             # write_loc past the state
    with pytest.raises(IndexError):
        C.compress_forward(buf, x[:1], torch.zeros(8, 128), torch.tensor([list(plan_d)],
                           dtype=torch.uint8), head_dim=128, compress_ratio=4, is_decode=True)
    with pytest.raises(ValueError):                        # buffer not [-1, ratio, last]
        C.compress_forward(buf.view(-1, 2, 4 * 128), x, torch.zeros(8, 128),
                           torch.zeros(3, 16, dtype=torch.uint8), head_dim=128, compress_ratio=4,
                           is_decode=True)


# ------------------------------------------------------------------------------------------
# compress_norm_rope_store against float64 norm / RoPE / Hadamard, within FP8 rounding


def _sylvester(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def _oracle_store(x, w, eps, freq_cis, pos):
    """float64 rows as stored (before FP8): RMSNorm, RoPE of the last 64 dims at ``pos``, and
    for 128-wide (indexer) rows the Hadamard rotation."""
    x = x.double()
    y = x / torch.sqrt(x.square().mean(-1, keepdim=True) + eps) * w.double()
    f = freq_cis[pos].to(torch.complex128)
    rope = torch.view_as_real(torch.view_as_complex(y[:, -64:].reshape(-1, 32, 2).contiguous()) * f)
    y = torch.cat([y[:, :-64], rope.reshape(-1, 64)], dim=1)
    if x.shape[1] == 128:
        y = y @ _sylvester(128) / 128 ** 0.5
    return y


def _fp8_ok(got, want, scale):
    """|got - want| within e4m3 rounding (half a step: 1/16 relative for normals, 2^-10 * scale
    for subnormals), plus float32 noise."""
    scale = torch.as_tensor(scale, dtype=torch.float64)
    tol = torch.maximum(want.abs() / 16, scale * 2.0 ** -9) * 1.001 + 1e-6
    return bool(((got.double() - want).abs() <= tol).all())


def _freqs(gen, n=600):
    ang = torch.rand(n, 32, generator=gen, dtype=torch.float64) * 6.3
    return torch.polar(torch.ones_like(ang), ang).to(torch.complex64)


def _plan_rows(rows, fmt):
    return torch.tensor([list(struct.pack(fmt, *r)) for r in rows], dtype=torch.uint8)


@pytest.mark.parametrize("hd", [512, 128])
@pytest.mark.parametrize("is_decode", [False, True])
def test_norm_rope_store_against_float64(gen, hd, is_decode):
    ratio = 4 if hd == 128 else 128
    n, eps = 6, 1e-6
    freq = _freqs(gen)
    x = torch.randn(n, hd, generator=gen) * 3
    x[2, :64] *= 40                                        # one loud group / key
    w = torch.rand(hd, generator=gen) + 0.5
    if is_decode:
        seqs = [ratio * 3, ratio * 2 + 1, ratio, ratio * 4, ratio + 3, ratio * 2]
        plan = _plan_rows([(s, 0, 0, 0) for s in seqs], "<Iiii")
        out_loc = torch.tensor([7, 0, 2, 11, 0, 5])
        stored = [i for i, s in enumerate(seqs) if s % ratio == 0]
        slots = out_loc[stored]
    else:
        rows = [(ratio * 2, 9, 0, -1, 0), (ratio, 3, 1, 0, 0), (ratio * 4, 14, 0, -1, 1),
                (0xFFFFFFFF, 0, 0, -1, -1), (ratio * 3, 0, 0, -1, 1), (ratio, 7, 0, -1, 2)]
        plan = _plan_rows(rows, "<IHHii")
        out_loc = torch.arange(20) * 3 % 17                 # ragged id -> slot
        stored = [0, 1, 2, 4, 5]
        slots = out_loc[torch.tensor([rows[i][1] for i in stored])]
        seqs = [r[0] for r in rows]
    pos = torch.tensor([seqs[i] - ratio for i in stored])
    if hd == 512:
        cache = torch.full((12, L.page_bytes(2)), 0x5A, dtype=torch.uint8)
        page_size = 2
    else:
        cache = torch.full((1, L.INDEX_PAGE_BYTES), 0x5A, dtype=torch.uint8)
        page_size = 64
    before = cache.clone()
    C.compress_norm_rope_store(x, plan, is_decode=is_decode, compress_ratio=ratio, norm_weight=w,
                               norm_eps=eps, freq_cis=freq, out_loc=out_loc, kvcache=cache,
                               page_size=page_size)
    want = _oracle_store(x[stored], w, eps, freq, pos)
    if hd == 512:
        got = L.read_rows_reference(cache, slots, page_size)
        for g, e in zip(got, want):
            amax = e[:448].view(7, 64).abs().amax(-1)
            scale = torch.exp2(torch.ceil(torch.log2(amax.clamp(min=1e-4) / 448)))
            assert _fp8_ok(g[:448].view(7, 64), e[:448].view(7, 64), scale[:, None])
            torch.testing.assert_close(g[448:].double(), e[448:], rtol=2 ** -8, atol=1e-6)
        # negative control: the RoPE position off by one is outside bf16 rounding
        off = _oracle_store(x[stored], w, eps, freq, pos + 1)
        assert not torch.allclose(got[:, 448:].double(), off[:, 448:], rtol=2 ** -8, atol=1e-6)
        touched = torch.zeros_like(cache, dtype=torch.bool)
        for s in slots.tolist():
            pg, off_ = divmod(s, page_size)
            touched[pg, off_ * 576:(off_ + 1) * 576] = True
            touched[pg, page_size * 576 + off_ * 8: page_size * 576 + off_ * 8 + 8] = True
    else:
        keys, scales = L.read_index_keys_reference(cache)
        keys, scales = keys.reshape(-1, 128), scales.reshape(-1)
        for s, e in zip(slots.tolist(), want):
            sc = e.abs().max().clamp(min=1e-4) / 448
            torch.testing.assert_close(scales[s].double(), sc, rtol=1e-6, atol=0)
            assert _fp8_ok(keys[s] * scales[s], e, sc)
        # negative control: without the Hadamard rotation the keys are far off
        plain = _oracle_store(x[stored], w, eps, freq, pos) @ _sylvester(128) / 128 ** 0.5
        assert not all(_fp8_ok(keys[s] * scales[s], e, 1e-3) for s, e in zip(slots.tolist(), plain))
        touched = torch.zeros_like(cache, dtype=torch.bool)
        for s in slots.tolist():
            touched[0, s * 128:(s + 1) * 128] = True
            touched[0, 8192 + s * 4: 8192 + s * 4 + 4] = True
    # rows that are skipped (invalid plan rows, decode tokens that complete no entry) leave
    # the cache as it was
    assert torch.equal(cache[~touched], before[~touched])


def test_norm_rope_store_rejects_unported_variants(gen):
    x = torch.randn(1, 128, generator=gen)
    plan = _plan_rows([(4, 0, 0, 0)], "<Iiii")
    kw = dict(is_decode=True, compress_ratio=4, norm_weight=torch.ones(128), norm_eps=1e-6,
              freq_cis=_freqs(gen), out_loc=torch.tensor([3]),
              kvcache=torch.zeros(1, L.INDEX_PAGE_BYTES, dtype=torch.uint8), page_size=64)
    C.compress_norm_rope_store(x, plan, **kw)
    with pytest.raises(NotImplementedError):
        C.compress_norm_rope_store(x, plan, **kw, use_fp4=True)
    with pytest.raises(NotImplementedError):
        C.compress_norm_rope_store(x, plan, **{**kw, "page_size": 32})
    with pytest.raises(NotImplementedError):
        C.compress_norm_rope_store(x, plan, **kw, layout="V41")
    with pytest.raises(IndexError):                        # slot past the pool
        C.compress_norm_rope_store(x, plan, **{**kw, "out_loc": torch.tensor([64])})


def test_index_key_codec_multiplies_by_the_reciprocal_scale():
    """SGLang's index-key writers store e4m3(k * (1/scale)) (fused_norm_rope_v2.cuh:208-217,
    store.cuh:175-184). At amax 3 the element 2.892857... gives k/scale = 432.0 exactly (a tie
    that rounds up to 448) but k * (1/scale) = 431.99997 (rounds down to 416)."""
    k = torch.zeros(1, 128)
    k[0, 0], k[0, 1] = 3.0, 2.892857074737549
    scale = torch.tensor(3.0) / 448
    assert (k[0, 1] / scale).item() == 432.0 and (k[0, 1] * (1.0 / scale)).item() < 432.0
    pool = L.index_pool(1)
    L.write_index_keys(pool, torch.tensor([5]), k)
    flat = L.index_pool_pages(pool)
    assert flat[0, 5 * 128 + 1].item() == 0x7D              # 416 = 0 1111 101
    # negative control: the division rule gives the other byte
    div = (k[0, 1] / scale).to(torch.float8_e4m3fn).view(torch.uint8).item()
    assert div == 0x7E


# ------------------------------------------------------------------------------------------
# SGLang's real compressor_v2 on its real pool and SWA allocator, the stand-ins patched in

HIDDEN, EPS = 64, 1e-6
ROPE = dict(dim=64, seqlen=1024, original_seq_len=256, base=160000.0, factor=4.0, beta_fast=32,
            beta_slow=1)
COMPRESSORS = (("c4", 0, 4, 512, False), ("c4_index", 0, 4, 128, True), ("c128", 1, 128, 512, False))


@pytest.fixture(scope="module")
def sgl():
    from types import SimpleNamespace

    from helpers.sglang_cpu import init_sglang_cpu

    init_sglang_cpu()
    import sglang.kernels.ops.attention.dsv4.compress as ck
    import sglang.srt.layers.attention.dsv4.compressor_v2 as cv2
    from sglang.kernels.ops.attention.dsv4.rope import precompute_freqs_cis
    from sglang.srt.layers.attention.dsv4.compressor import Compressor
    from sglang.srt.mem_cache.allocator.swa import SWATokenToKVPoolAllocator
    from sglang.srt.mem_cache.base_prefix_cache import InsertParams, MatchPrefixParams
    from sglang.srt.mem_cache.cache_init_params import CacheInitParams
    from sglang.srt.mem_cache.deepseek_v4_memory_pool import DeepSeekV4TokenToKVPool
    from sglang.srt.mem_cache.memory_pool import ReqToTokenPool
    from sglang.srt.mem_cache.radix_cache import RadixKey
    from sglang.srt.mem_cache.unified_cache.components.base import ComponentType
    from sglang.srt.mem_cache.unified_radix_cache import UnifiedRadixCache
    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    def radix_cache(r2t, alloc):
        """SGLang's radix cache with full-attention and sliding-window components (as DSV4)."""
        return UnifiedRadixCache(CacheInitParams(
            req_to_token_pool=r2t, token_to_kv_pool_allocator=alloc, page_size=256, disable=False,
            sliding_window_size=128, tree_components=(ComponentType.FULL, ComponentType.SWA)))

    return SimpleNamespace(ck=ck, cv2=cv2, Compressor=Compressor, Alloc=SWATokenToKVPoolAllocator,
                           Pool=DeepSeekV4TokenToKVPool, R2T=ReqToTokenPool, Mode=ForwardMode,
                           freqs=precompute_freqs_cis(**ROPE), radix_cache=radix_cache,
                           Insert=InsertParams, Match=MatchPrefixParams, Key=RadixKey)


class _World:
    """One layer of ratio 4 (main + indexer compressor) and one of ratio 128, on SGLang's pool
    (page 256) with its SWA allocator, and the stand-ins patched into compressor_v2."""

    def __init__(self, sgl, gen, monkeypatch, perturb=None):
        from types import SimpleNamespace

        self.sgl, self.perturb = sgl, perturb
        self.pool = sgl.Pool(
            max_num_reqs=4, swa_size=1024, c4_size=2048 // 4, c128_size=2048 // 128,
            c4_state_pool_size=1024 // 256 * 8, c128_state_pool_size=0, page_size=256,
            swa_page_size=256, dtype=torch.float8_e4m3fn, c4_state_dtype=torch.float32,
            c128_state_dtype=torch.float32, qk_nope_head_dim=448, qk_rope_head_dim=64,
            indexer_head_dim=128, layer_num=2, device="cpu", enable_memory_saver=False,
            compression_ratios=[4, 128], full_size=2048)
        self.r2t = sgl.R2T(size=4, max_context_len=1024, device="cpu", enable_memory_saver=False)
        self.alloc = sgl.Alloc(2048, 1024, page_size=256, dtype=torch.float8_e4m3fn, device="cpu",
                               kvcache=self.pool, need_sort=False, req_to_token_pool=self.r2t)
        self.alloc.full_attn_allocator.alloc(256)      # full pages != SWA pages from here on
        for layer in (0, 1):                           # never-written state reads as NaN
            self.pool.get_attention_compress_states(layer).kv_score_buffer.kv_score.fill_(
                float("nan"))
        self.pool.get_indexer_compress_states(0).kv_score_buffer.kv_score.fill_(float("nan"))
        cfg = SimpleNamespace(hidden_size=HIDDEN, rms_norm_eps=EPS, qk_rope_head_dim=64)
        self.comp, self.w = {}, {}
        for name, layer, ratio, hd, index in COMPRESSORS:
            c = sgl.Compressor(cfg, layer, index, sgl.freqs, ratio, hd, rotate=index)
            coff = 2 if ratio == 4 else 1
            W = (torch.randn(2 * coff * hd, HIDDEN, generator=gen) * 0.2).to(torch.bfloat16)
            ape = torch.randn(ratio, coff * hd, generator=gen) * 0.5
            norm = torch.rand(hd, generator=gen) + 0.5
            c.wkv_gate.weight.data.copy_(W)
            if perturb == "no_ape_reorder":
                c.ape.data.copy_(ape)
            else:
                c.load_ape_weight(c.ape, ape)          # SGLang's load-time reorder
            c.norm.weight.data.copy_(norm)
            self.comp[name], self.w[name] = c, (W, ape, norm)

        class Backend(sgl.cv2.CompressorBackendMixin):
            pass

        self.backend = Backend()
        self.backend.token_to_kv_pool = self.pool
        self.backend.enable_deepseek_v4_fp4_indexer = False
        self.hist: dict[int, torch.Tensor] = {}
        self.seq: dict[int, int] = {}
        self._patch(monkeypatch)

    def _patch(self, mp):
        ck, cv2, perturb = self.sgl.ck, self.sgl.cv2, self.perturb

        def shifted(ratio, rids, f2s):
            if perturb != "ring":
                return rids, f2s
            return (rids + 1, f2s) if ratio == 128 else (rids, f2s + 1)

        def prefill(compress_ratio, req_pool_indices, seq_lens, extend_lens, req_to_token,
                    full_to_state, swa_page_size, ring_size, num_q_tokens, use_cuda_graph=False,
                    use_req_ring=False):
            rids, f2s = shifted(compress_ratio, req_pool_indices, full_to_state)
            c, w = C.plan_prefill(compress_ratio, rids, seq_lens, extend_lens, req_to_token, f2s,
                                  swa_page_size, ring_size, num_q_tokens, use_cuda_graph,
                                  use_req_ring or (perturb == "req_ring" and compress_ratio == 4))
            return ck.CompressorPrefillPlan(compress_ratio, c, w)

        def decode(compress_ratio, req_pool_indices, req_to_token, full_to_state, seq_lens,
                   swa_page_size, ring_size, use_req_ring=False):
            rids, f2s = shifted(compress_ratio, req_pool_indices, full_to_state)
            d = C.plan_decode(compress_ratio, rids, req_to_token, f2s, seq_lens, swa_page_size,
                              ring_size,
                              use_req_ring or (perturb == "req_ring" and compress_ratio == 4))
            return ck.CompressorDecodePlan(compress_ratio, d)

        mp.setattr(ck.CompressorPrefillPlan, "generate", staticmethod(prefill))
        mp.setattr(ck.CompressorDecodePlan, "generate", staticmethod(decode))
        mp.setattr(cv2, "compress_forward", C.compress_forward_for_plan)
        mp.setattr(cv2, "compress_norm_rope_store", C.compress_norm_rope_store_for_plan)

    def _out_loc(self, pos, locs, ratio):
        # what SGLang's compressed-attention metadata stores (metadata_kernel.py:100-110)
        o = torch.where((pos + 1) % ratio == 0, locs // ratio, torch.zeros_like(locs))
        return o + 1 if self.perturb == "out_loc" else o

    def forward(self, rids, ext=None, hist=None):
        """An extend (``ext`` tokens per request) or, with ``ext=None``, one decode step."""
        from types import SimpleNamespace

        sgl, r2t = self.sgl, self.r2t.req_to_token
        for rid, h in (hist or {}).items():
            self.hist[rid] = h
        decode = ext is None
        ext = [1] * len(rids) if decode else ext
        pre = [self.seq.get(r, 0) for r in rids]
        seqs = [p + e for p, e in zip(pre, ext)]
        last = torch.tensor([int(r2t[r, p - 1]) if p else -1 for r, p in zip(rids, pre)])
        if decode:
            locs = self.alloc.alloc_decode(torch.tensor(seqs), torch.tensor(seqs), last)
        else:
            locs = self.alloc.alloc_extend(torch.tensor(pre), torch.tensor(pre), torch.tensor(seqs),
                                           torch.tensor(seqs), last, sum(ext))
        assert locs is not None
        pos, k = [], 0
        for r, p, s in zip(rids, pre, seqs):
            r2t[r, p:s] = locs[k: k + s - p].to(torch.int32)
            pos.append(torch.arange(p, s))
            k += s - p
            self.seq[r] = s
        pos = torch.cat(pos)
        x = torch.cat([self.hist[r][p:s] for r, p, s in zip(rids, pre, seqs)])
        rid_t = torch.tensor(rids)
        meta = {}
        for ratio in (4, 128):
            meta[ratio] = sgl.cv2.create_paged_compressor_data(
                ratio, is_prefill=not decode, token_to_kv_pool=self.pool, req_to_token=r2t,
                req_pool_indices=rid_t, seq_lens=torch.tensor(seqs),
                extend_lens=None if decode else torch.tensor(ext),
                seq_lens_cpu=None if decode else seqs, extend_lens_cpu=None if decode else ext)
        self.backend.forward_metadata = SimpleNamespace(
            c4_compress_metadata=meta[4], c128_compress_metadata=meta[128],
            core_metadata=SimpleNamespace(c4_out_loc=self._out_loc(pos, locs, 4),
                                          c128_out_loc=self._out_loc(pos, locs, 128)))
        fb = SimpleNamespace(forward_mode=sgl.Mode.DECODE if decode else sgl.Mode.EXTEND,
                             attn_cp_metadata=None)
        for name, layer, *_ in COMPRESSORS:
            self.backend.forward_unified(x, fb, layer, self.comp[name])

    def stored(self, name, rid):
        """The rows the caches hold for request ``rid``'s complete entries, decoded with
        kv_layout's torch-FP8 readers (main: [C, 512]; indexer: keys * scale [C, 128])."""
        _, layer, ratio, hd, index = next(c for c in COMPRESSORS if c[0] == name)
        n = self.seq[rid] // ratio
        slots = self.r2t.req_to_token[rid, torch.arange(n) * ratio + ratio - 1].long() // ratio
        if index:
            keys, scales = L.read_index_keys_reference(self.pool.get_index_k_with_scale_buffer(0))
            return keys.reshape(-1, 128)[slots] * scales.reshape(-1)[slots, None]
        buf = self.pool.get_extra_key_buffer(layer).view(torch.uint8)
        return L.read_rows_reference(buf, slots, self.pool.get_extra_key_page_size(layer))

    def state_holds(self, name, rid, positions) -> bool:
        """Whether the compress-state rows that SGLang's own pool code addresses for these
        positions (``translate_from_swa_loc_to_state_loc`` of the SWA slot for ratio 4,
        ``translate_from_req_position_to_state_loc`` for 128) hold the positions' kv/score."""
        _, layer, ratio, hd, index = next(c for c in COMPRESSORS if c[0] == name)
        states = (self.pool.get_indexer_compress_states(layer) if index
                  else self.pool.get_attention_compress_states(layer))
        pos = torch.tensor(positions)
        if ratio == 4:
            full = self.r2t.req_to_token[rid, pos].long()
            loc = states.translate_from_swa_loc_to_state_loc(
                self.pool.full_to_swa_index_mapping[full].clone())
        else:
            loc = states.translate_from_req_position_to_state_loc(torch.full_like(pos, rid), pos)
        got = states.kv_score_buffer.kv_score[loc].double()
        want = self.hist[rid][pos].double() @ self.w[name][0].double().t()
        return torch.allclose(got, want, rtol=1e-4, atol=1e-4)

    def expected(self, name, rid):
        """float64: kv/score projections of the whole history, pooling, norm, RoPE (Hadamard)."""
        _, layer, ratio, hd, index = next(c for c in COMPRESSORS if c[0] == name)
        W, ape, norm = self.w[name]
        h = self.hist[rid][: self.seq[rid]].double() @ W.double().t()
        n = self.seq[rid] // ratio
        if n == 0:
            return torch.zeros(0, hd, dtype=torch.float64)
        pooled = torch.stack([_oracle_pool(h, ape, j * ratio + ratio - 1, ratio, hd)
                              for j in range(n)])
        return _oracle_store(pooled, norm, EPS, self.sgl.freqs, torch.arange(n) * ratio)


def _rows_ok(got, want, index) -> bool:
    if got.shape != want.shape or not torch.isfinite(got).all():
        return False
    if index:
        return all(_fp8_ok(g, e, e.abs().max().clamp(min=1e-4) / 448) for g, e in zip(got, want))
    for g, e in zip(got, want):
        amax = e[:448].view(7, 64).abs().amax(-1)
        scale = torch.exp2(torch.ceil(torch.log2(amax.clamp(min=1e-4) / 448)))[:, None]
        if not _fp8_ok(g[:448].view(7, 64), e[:448].view(7, 64), scale):
            return False
        if not torch.allclose(g[448:].double(), e[448:], rtol=2 ** -8, atol=1e-5):
            return False
    return True


def _reference_entries(world, name, rid) -> torch.Tensor:
    """The reference forward's compressor (``reference/model.py`` ``compress``, float32 mode) on
    the request's whole history: separate wkv / wgate, the checkpoint-layout ape."""
    import dataclasses

    from sglang_ampere.reference import model as M

    _, _, ratio, hd, _ = next(c for c in COMPRESSORS if c[0] == name)
    W, ape, norm = world.w[name]
    coff = 2 if ratio == 4 else 1
    raw = {"wkv.weight": W[: coff * hd].float(), "wgate.weight": W[coff * hd:].float(),
           "ape": ape, "norm.weight": norm}

    class _Weights:
        def cached(self, key):
            return raw[key]

    cfg = M.ModelConfig(**{f.name: 0 for f in dataclasses.fields(M.ModelConfig)})
    cfg = dataclasses.replace(cfg, eps=EPS, rope_dim=64, compress_rope_theta=ROPE["base"],
                              yarn_factor=ROPE["factor"], yarn_orig=ROPE["original_seq_len"],
                              beta_fast=float(ROPE["beta_fast"]), beta_slow=float(ROPE["beta_slow"]))
    x = world.hist[rid][: world.seq[rid]].float()
    return M.compress(x, _Weights(), "", ratio, hd, 0, M.CompressorState(), cfg, False, torch.float32)


def _near_reference(got, ref) -> bool:
    """Stored rows vs the reference's fake-quantized entries: the e4m3 codes may differ by one
    step (the store rounds the normed values to bf16 first), RoPE dims by bf16 rounding."""
    if got.shape != ref.shape:
        return False
    r = ref.double()
    amax = r[:, :448].reshape(-1, 7, 64).abs().amax(-1, keepdim=True).clamp(min=1e-4)
    scale = torch.exp2(torch.ceil(torch.log2(amax / 448)))
    tol = torch.maximum(r[:, :448].reshape(-1, 7, 64).abs() / 8, scale * 2.0 ** -8) + 1e-6
    nope_ok = ((got[:, :448].double().reshape(-1, 7, 64) - r[:, :448].reshape(-1, 7, 64)).abs()
               <= tol).all()
    return bool(nope_ok) and torch.allclose(got[:, 448:].double(), r[:, 448:], rtol=2 ** -7,
                                            atol=1e-5)


def _world_ok(world, rids) -> bool:
    return all(_rows_ok(world.stored(name, r), world.expected(name, r), name == "c4_index")
               for name, *_ in COMPRESSORS for r in rids)


def _hist(gen, n):
    return torch.randn(n, HIDDEN, generator=gen).to(torch.bfloat16)


def _prefill_world(sgl, gen, mp, perturb=None, chunks=None):
    """Two requests (rids 2 and 0) of 300 and 141 tokens: whole prompts, or ``chunks``."""
    world = _World(sgl, gen, mp, perturb)
    hist = {2: _hist(gen, 300), 0: _hist(gen, 141)}
    if chunks is None:
        world.forward([2, 0], [300, 141], hist)
    else:
        world.forward([2, 0], chunks[0], hist)
        world.forward([2, 0], chunks[1])
    return world


def test_sglang_compressor_prefill(sgl, gen, monkeypatch):
    seed = int(torch.randint(0, 2**31, (1,), generator=gen))
    world = _prefill_world(sgl, torch.Generator().manual_seed(seed), monkeypatch)
    assert world.seq == {2: 300, 0: 141}
    for name, *_ in COMPRESSORS:
        for r in (2, 0):
            got, want = world.stored(name, r), world.expected(name, r)
            assert got.shape[0] == world.seq[r] // (4 if name != "c128" else 128)
            assert _rows_ok(got, want, name == "c4_index"), (name, r)
            if name != "c4_index":                     # the reference indexer is FP4, not FP8
                ref = _reference_entries(world, name, r)
                assert _near_reference(got, ref), (name, r)
                # negative control: the reference entries one window later
                if got.shape[0] > 1:
                    assert not _near_reference(got[:-1], ref[1:]), (name, r)
    # the state the next chunk / decode / a prefix match reads sits where SGLang's pool code
    # looks for it: C4 the last window and the SWA page tails, C128 the open window
    tails = {"c4": ([*range(252, 256), *range(296, 300)], [*range(136, 141)]),
             "c128": ([*range(256, 300)], [*range(128, 141)])}
    for name, (two, zero) in tails.items():
        for n in (name, "c4_index") if name == "c4" else (name,):
            assert world.state_holds(n, 2, two) and world.state_holds(n, 0, zero), n
    # the same prompts as two chunks (SGLang's chunked prefill: the second chunk's first
    # windows come from the state ring) store the same rows
    chunked = _prefill_world(sgl, torch.Generator().manual_seed(seed), monkeypatch,
                             chunks=([150, 62], [150, 79]))
    assert _world_ok(chunked, [2, 0])
    for name, *_ in COMPRESSORS:
        for r in (2, 0):
            assert torch.equal(chunked.stored(name, r), world.stored(name, r)), (name, r)
    # negative controls: rows stored one slot off; the ape without SGLang's load-time reorder;
    # the state ring offset by one (only the chunked run reads it)
    assert not _world_ok(_prefill_world(sgl, torch.Generator().manual_seed(seed), monkeypatch,
                                        "out_loc"), [2, 0])
    bad = _prefill_world(sgl, torch.Generator().manual_seed(seed), monkeypatch, "no_ape_reorder")
    assert not _rows_ok(bad.stored("c4", 2), bad.expected("c4", 2), False)
    ring = _prefill_world(sgl, torch.Generator().manual_seed(seed), monkeypatch, "ring")
    assert _world_ok(ring, [2, 0])
    assert not ring.state_holds("c4", 2, [*range(296, 300)])
    assert not ring.state_holds("c128", 2, [*range(256, 300)])
    assert not _world_ok(_prefill_world(sgl, torch.Generator().manual_seed(seed), monkeypatch,
                                        "ring", chunks=([150, 62], [150, 79])), [2, 0])


def _decode_world(sgl, gen, mp, perturb=None):
    """Prefill 250 and 37 tokens, then 8 batched decode steps (crossing 252, 256, 40, 44)."""
    world = _World(sgl, gen, mp, perturb)
    world.forward([1, 3], [250, 37], {1: _hist(gen, 258), 3: _hist(gen, 45)})
    for _ in range(8):
        world.forward([1, 3])
    return world


def test_sglang_compressor_decode(sgl, gen, monkeypatch):
    seed = int(torch.randint(0, 2**31, (1,), generator=gen))
    world = _decode_world(sgl, torch.Generator().manual_seed(seed), monkeypatch)
    assert world.seq == {1: 258, 3: 45}
    assert world.stored("c128", 1).shape[0] == 2          # the second one made in decode
    for name, *_ in COMPRESSORS:
        for r in (1, 3):
            assert _rows_ok(world.stored(name, r), world.expected(name, r), name == "c4_index"), \
                (name, r)
    # negative control: the state ring offset by one
    assert not _world_ok(_decode_world(sgl, torch.Generator().manual_seed(seed), monkeypatch,
                                       "ring"), [1, 3])


def _prefix_world(sgl, gen, mp, perturb=None):
    """Request A (rid 0): 300-token prefill and 3 decode steps; when it finishes, SGLang's radix
    cache takes its first page (256 tokens, full and SWA KV) and A's other pages are freed.
    Request B (rid 1) shares those 256 tokens: the cache's match gives their KV locations, B
    extends 140 tokens and decodes 2."""
    from array import array

    world = _World(sgl, gen, mp, perturb)
    tree = sgl.radix_cache(world.r2t, world.alloc)
    a = _hist(gen, 303)
    ids_a = torch.randint(0, 1000, (303,), generator=gen).tolist()
    world.forward([0], [300], {0: a})
    for _ in range(3):
        world.forward([0])
    r2t = world.r2t.req_to_token
    tree.insert(sgl.Insert(key=sgl.Key(array("q", ids_a[:256])), value=r2t[0, :256].long().clone()))
    world.alloc.free(r2t[0, 256:303].long())               # A's pages past the cached prefix
    r2t[0] = -1                                            # A's request slot is reused
    del world.seq[0]
    ids_b = ids_a[:256] + torch.randint(1000, 2000, (142,), generator=gen).tolist()
    match = tree.match_prefix(sgl.Match(key=sgl.Key(array("q", ids_b))))
    assert match.device_prefix_len == 256
    r2t[1, :256] = tree.path_device_indices(match.last_device_node)[:256].to(torch.int32)
    world.seq[1] = 256
    b = torch.cat([a[:256], _hist(gen, 142)])
    world.forward([1], [140], {1: b})
    for _ in range(2):
        world.forward([1])
    return world


def test_sglang_compressor_prefix_reuse(sgl, gen, monkeypatch):
    seed = int(torch.randint(0, 2**31, (1,), generator=gen))
    world = _prefix_world(sgl, torch.Generator().manual_seed(seed), monkeypatch)
    assert world.seq == {1: 398}
    for name, *_ in COMPRESSORS:
        assert _rows_ok(world.stored(name, 1), world.expected(name, 1), name == "c4_index"), name
    # negative controls: C4 state kept per request (the prototype's rule) cannot find the
    # prefix's page-tail rows; the state ring offset by one
    for perturb in ("req_ring", "ring"):
        bad = _prefix_world(sgl, torch.Generator().manual_seed(seed), monkeypatch, perturb)
        assert not _rows_ok(bad.stored("c4", 1), bad.expected("c4", 1), False), perturb


@pytest.mark.parametrize("ratio", [4, 128])
def test_compress_forward_padded_plans(gen, ratio, monkeypatch):
    """use_cuda_graph pads plan_c / plan_w with invalid rows: the same entries and state writes,
    the padded output rows untouched (and pooled 3 plans at a time: the same values)."""
    hd, sps, ring = 128, (16 if ratio == 4 else 256), (8 if ratio == 4 else 128)
    last = hd * (4 if ratio == 4 else 2)
    r2t, f2s, n_pages = _tables(gen, 3, 400, sps)
    rows = (n_pages * ring if ratio == 4 else 3 * ring) + ring
    rows = -(-rows // ratio) * ratio
    seqs, exts = [263, 140], [263, 140]
    x = torch.randn(sum(exts), last, generator=gen)
    ape = torch.randn(2 * ratio if ratio == 4 else ratio, hd, generator=gen)
    outs, states = [], []
    for graph in (False, True):
        if graph:
            monkeypatch.setattr(C, "_CHUNK_VALUES", 3 * last * (2 * ratio if ratio == 4 else ratio))
        state = torch.zeros(rows, last)
        plan = C.plan_prefill(ratio, torch.tensor([1, 2]), torch.tensor(seqs), torch.tensor(exts),
                              r2t, f2s, sps, ring, sum(exts), use_cuda_graph=graph)
        outs.append(C.compress_forward(state.view(-1, ratio, last), x, ape, *plan, head_dim=hd,
                                       compress_ratio=ratio, is_decode=False))
        states.append(state)
    n = outs[0].shape[0]
    assert n == 263 // ratio + 140 // ratio and outs[1].shape[0] == sum(exts)
    assert torch.equal(outs[1][:n], outs[0]) and not outs[1][n:].any()
    assert torch.equal(states[1], states[0]) and states[0].any()
