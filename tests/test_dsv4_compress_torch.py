"""The torch stand-ins for SGLang's DeepSeek-V4 compressor kernels (``kernels/dsv4_compress_torch``).

* the planner against plans written here from ``c_plan.cuh``'s rules (scalar Python, packed
  with ``struct``), including a literal hand-computed plan;
* ``compress_forward`` driven through chunked prefill and decode against float64 pooling over
  each request's whole history (the state buffer is NaN-poisoned, so reading a row that was
  never written shows up);
* ``compress_norm_rope_store`` against float64 RMSNorm/RoPE/Hadamard, decoded with
  ``kv_layout``'s torch-FP8 readers, within FP8 rounding;
* the index-key codec's rounding rule (SGLang's writers multiply by the reciprocal scale);
* SGLang's real ``compressor_v2`` + ``DeepSeekV4TokenToKVPool`` + SWA allocator on CPU with the
  stand-ins patched in (prefill, chunked prefill, decode, prefix reuse), against float64 math and
  the reference forward's ``compress``.
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
