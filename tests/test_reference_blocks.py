"""Each block of the reference forward against float64 math written from the definitions.

The float64 side is written from the formulas (loops over blocks, heads, streams, candidates),
not by calling the reference's own helpers.
"""

from __future__ import annotations

import math

import pytest
import torch

from sglang_ampere.reference import model as M
from sglang_ampere.reference import ops
from sglang_ampere.reference.weights import Weights

F64 = torch.float64


def _e4m3_values() -> list[tuple[float, int]]:
    """Every finite non-negative e4m3fn value with its byte, from the bit layout (bias 7)."""
    out = []
    for b in range(0x7F):
        e, m = b >> 3, b & 7
        v = (m / 8) * 2.0**-6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7)
        out.append((v, b))
    return out


def _nearest_even(v: float, table: list[tuple[float, int]]) -> float:
    """Nearest grid value to |v| (saturating), ties to the even code; sign restored."""
    a = min(abs(v), table[-1][0])
    best = min(table, key=lambda t: (abs(a - t[0]), t[1] % 2))
    return math.copysign(best[0], v) if best[0] else 0.0


def _pow2_ceil(x: float) -> float:
    return 2.0 ** math.ceil(math.log2(x))


def test_fp8_fake_quant_rounds_to_e4m3_with_pow2_block_scales(gen):
    x = torch.randn(3, 448, generator=gen) * torch.exp(torch.randn(3, 1, generator=gen))
    got = ops.fp8_fake_quant(x).double()
    table = _e4m3_values()
    want = torch.empty_like(got)
    for r in range(3):
        for b0 in range(0, 448, 64):
            blk = x[r, b0 : b0 + 64].double().tolist()
            s = _pow2_ceil(max(max(abs(v) for v in blk), 1e-4) / 448)
            for i, v in enumerate(blk):
                want[r, b0 + i] = _nearest_even(v / s, table) * s
    assert torch.equal(got, want)
    assert not torch.equal(got, x.double())  # it really rounds (a clamp-only port is the identity)


def test_fp4_fake_quant_rounds_to_e2m1_ties_to_even(gen):
    table = [(v, i) for i, v in enumerate((0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0))]
    x = torch.randn(2, 128, generator=gen) * 3
    got = ops.fp4_fake_quant(x).double()
    want = torch.empty_like(got)
    for r in range(2):
        for b0 in range(0, 128, 32):
            blk = x[r, b0 : b0 + 32].double().tolist()
            s = _pow2_ceil(max(max(abs(v) for v in blk), 6 * 2.0**-126) / 6)
            for i, v in enumerate(blk):
                want[r, b0 + i] = _nearest_even(v / s, table) * s
    assert torch.equal(got, want)
    # Exact ties (block absmax 6 -> scale 1): 0.25->0, 0.75->1, 1.25->1, 1.75->2, 2.5->2, 3.5->4, 5->4.
    ties = torch.tensor([6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.75, -5.0] + [0.0] * 22)
    assert ops.fp4_fake_quant(ties)[:10].tolist() == [6.0, 0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, -1.0, -4.0]


def test_hadamard_is_the_normalised_sylvester_transform(gen):
    n = 128
    x = torch.randn(5, n, generator=gen, dtype=torch.float32)
    h = torch.tensor([[(-1.0) ** bin(i & j).count("1") for j in range(n)] for i in range(n)], dtype=F64)
    want = x.double() @ h / math.sqrt(n)
    assert torch.allclose(ops.hadamard(x).double(), want, rtol=0, atol=1e-6)


def test_rope_yarn_frequencies_and_rotation(gen):
    dim, base, orig, factor = 64, 160000.0, 65536, 16.0
    f = ops.rope_frequencies(dim, base, orig, factor, 32, 1).double()

    def cd(rot):
        return dim * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(base))

    low, high = max(math.floor(cd(32)), 0), min(math.ceil(cd(1)), dim - 1)
    for i in range(dim // 2):
        f0 = base ** (-2 * i / dim)
        ramp = min(max((i - low) / (high - low), 0.0), 1.0)
        assert f[i].item() == pytest.approx(f0 / factor * ramp + f0 * (1 - ramp), rel=1e-6)
    plain = ops.rope_frequencies(dim, 10000.0, 0, factor, 32, 1).double()
    assert torch.allclose(
        plain, torch.tensor([10000.0 ** (-2 * i / dim) for i in range(dim // 2)], dtype=F64), rtol=1e-6
    )
    x = torch.randn(7, 3, 96, generator=gen)
    pos = torch.tensor([0, 1, 5, 100, 4095, 70000, 1 << 19])
    got = ops.rope(x, pos, f.float())
    z = torch.complex(x[..., 32:].double()[..., 0::2], x[..., 32:].double()[..., 1::2])
    # the angle is a float32 product, as DeepSeek's precompute_freqs_cis makes it; the rest float64
    ang = (pos.float()[:, None] * f.float()[None]).double()
    rot = z * torch.polar(torch.ones(7, 32, dtype=F64), ang)[:, None]
    want = torch.cat((x[..., :32].double(), torch.stack((rot.real, rot.imag), -1).flatten(-2)), -1)
    assert torch.allclose(got.double(), want, rtol=0, atol=2e-5)
    assert torch.equal(got[..., :32], x[..., :32])
    back = ops.rope(got, pos, f.float(), inverse=True)
    assert torch.allclose(back, x, atol=2e-5)


def _sinkhorn64(m, scale, base, hc, iters, eps):
    pre = [1 / (1 + math.exp(-(m[i] * scale[0] + base[i]))) + eps for i in range(hc)]
    post = [2 / (1 + math.exp(-(m[hc + i] * scale[1] + base[hc + i]))) for i in range(hc)]
    c = [[m[2 * hc + j * hc + k] * scale[2] + base[2 * hc + j * hc + k] for k in range(hc)] for j in range(hc)]
    for j in range(hc):
        mx = max(c[j])
        e = [math.exp(v - mx) for v in c[j]]
        c[j] = [v / sum(e) + eps for v in e]

    def colnorm():
        for k in range(hc):
            s = sum(c[j][k] for j in range(hc))
            for j in range(hc):
                c[j][k] /= s + eps

    colnorm()
    for _ in range(iters - 1):
        for j in range(hc):
            s = sum(c[j])
            c[j] = [v / (s + eps) for v in c[j]]
        colnorm()
    return pre, post, c


def test_hyper_connections_pre_post_head(gen):
    T, hc, D, iters, eps, heps = 3, 4, 32, 20, 1e-6, 1e-6
    R = torch.randn(T, hc, D, generator=gen)
    fn = torch.randn((2 + hc) * hc, hc * D, generator=gen) * 0.05
    scale, base = torch.rand(3, generator=gen) + 0.5, torch.randn((2 + hc) * hc, generator=gen)
    out = torch.randn(T, D, generator=gen)
    y, post, comb = ops.hc_pre(R, fn, scale, base, hc, iters, eps, heps)
    R2 = ops.hc_post(out, R, post, comb)
    hfn, hscale, hbase = (
        torch.randn(hc, hc * D, generator=gen) * 0.05,
        torch.rand(1, generator=gen) + 0.5,
        torch.randn(hc, generator=gen),
    )
    head = ops.hc_head(R, hfn, hscale, hbase, eps, heps)
    for t in range(T):
        flat = R[t].double().flatten()
        rs = 1 / math.sqrt(float((flat**2).mean()) + eps)
        mix = (fn.double() @ flat * rs).tolist()
        p, q, c = _sinkhorn64(mix, scale.double().tolist(), base.double().tolist(), hc, iters, heps)
        want_y = sum(p[i] * R[t, i].double() for i in range(hc))
        assert torch.allclose(y[t].double(), want_y, rtol=1e-5, atol=1e-5)
        assert torch.allclose(comb[t].double(), torch.tensor(c, dtype=F64), rtol=1e-5, atol=1e-6)
        for k in range(hc):
            want = q[k] * out[t].double() + sum(c[j][k] * R[t, j].double() for j in range(hc))
            assert torch.allclose(R2[t, k].double(), want, rtol=1e-5, atol=1e-5)
        hm = (hfn.double() @ flat * rs).tolist()
        w = [1 / (1 + math.exp(-(hm[i] * hscale.item() + hbase[i].item()))) + heps for i in range(hc)]
        assert torch.allclose(head[t].double(), sum(w[i] * R[t, i].double() for i in range(hc)), rtol=1e-5, atol=1e-5)
    # Sinkhorn output is (nearly) doubly stochastic.
    assert torch.allclose(comb.sum(-1), torch.ones(T, hc), atol=1e-3) and torch.allclose(
        comb.sum(-2), torch.ones(T, hc), atol=1e-4
    )


def test_sink_attention_matches_explicit_softmax(gen):
    T, H, N, d = 4, 3, 9, 16
    q, kv = torch.randn(T, H, d, generator=gen), torch.randn(N, d, generator=gen)
    sink = torch.randn(H, generator=gen)
    mask = torch.rand(T, N, generator=gen) < 0.6
    mask[:, 0] = True
    got = ops.sink_attention(q, kv, mask, sink, d**-0.5).double()
    for t in range(T):
        for h in range(H):
            ks = [k for k in range(N) if mask[t, k]]
            s = [float(q[t, h].double() @ kv[k].double()) * d**-0.5 for k in ks]
            den = sum(math.exp(v) for v in s) + math.exp(sink[h].item())
            want = sum(math.exp(v) / den * kv[k].double() for v, k in zip(s, ks, strict=True))
            assert torch.allclose(got[t, h], want, rtol=1e-5, atol=1e-6)


def _cfg(**kw) -> M.ModelConfig:
    base = dict(
        vocab=50,
        hidden=32,
        layers=1,
        mtp=0,
        heads=2,
        head_dim=128,
        rope_dim=64,
        q_lora=32,
        o_groups=1,
        o_lora=32,
        window=8,
        ratios=(4,),
        index_heads=2,
        index_dim=128,
        index_topk=2,
        experts=4,
        topk=2,
        hash_layers=0,
        route_scale=1.5,
        swiglu_limit=1.0,
        hc=4,
        hc_iters=20,
        hc_eps=1e-6,
        eps=1e-6,
        rope_theta=10000.0,
        compress_rope_theta=160000.0,
        yarn_factor=16.0,
        yarn_orig=65536,
        beta_fast=32.0,
        beta_slow=1.0,
        max_positions=1 << 20,
    )
    base.update(kw)
    return M.ModelConfig(**base)


@pytest.mark.parametrize("ratio", [4, 128])
def test_compressor_entries_and_decode_state(gen, ratio):
    cfg, D, d = _cfg(), 32, 128
    coff = 2 if ratio == 4 else 1
    T = 2 * ratio + 3
    raw = {
        "c.wkv.weight": torch.randn(coff * d, D, generator=gen) * 0.2,
        "c.wgate.weight": torch.randn(coff * d, D, generator=gen),
        "c.ape": torch.randn(ratio, coff * d, generator=gen),
        "c.norm.weight": 1 + 0.1 * torch.randn(d, generator=gen),
    }
    w = Weights(raw, "native")
    x = torch.randn(T, D, generator=gen)
    ent = M.compress(x, w, "c.", ratio, d, 0, M.CompressorState(), cfg, False, torch.float32).double()
    assert ent.shape == (T // ratio, d)
    a = x.double() @ raw["c.wkv.weight"].double().t()
    b = x.double() @ raw["c.wgate.weight"].double().t() + raw["c.ape"].double()[torch.arange(T) % ratio]
    f = cfg.freqs(ratio).double()
    for j in range(T // ratio):
        cand = [(a[p, d:], b[p, d:]) if ratio == 4 else (a[p], b[p]) for p in range(j * ratio, (j + 1) * ratio)]
        if ratio == 4 and j > 0:
            cand = [(a[p, :d], b[p, :d]) for p in range((j - 1) * ratio, j * ratio)] + cand
        sc = torch.stack([c[1] for c in cand])
        wts = torch.exp(sc - sc.max(0).values) / torch.exp(sc - sc.max(0).values).sum(0)
        e = (wts * torch.stack([c[0] for c in cand])).sum(0)
        e = raw["c.norm.weight"].double() * e / torch.sqrt((e**2).mean() + cfg.eps)
        z = torch.complex(e[64:][0::2], e[64:][1::2]) * torch.polar(torch.ones(32, dtype=F64), j * ratio * f)
        e = torch.cat((e[:64], torch.stack((z.real, z.imag), -1).flatten()))
        # the no-RoPE part is fp8-rounded: within half an e4m3 step (2^-4 relative to the block scale)
        blk_s = 2.0 ** math.ceil(math.log2(float(e[:64].abs().max()) / 448))
        assert torch.allclose(ent[j, 64:], e[64:], rtol=0, atol=1e-5)
        assert (ent[j, :64] - e[:64]).abs().max().item() <= 16 * blk_s + 1e-6
    # Feeding the same tokens one at a time gives the same entries (the decode-time state).
    st = M.CompressorState()
    for p in range(T):
        inc = M.compress(x[p : p + 1], w, "c.", ratio, d, p, st, cfg, False, torch.float32)
    assert torch.equal(inc.double(), ent)
    assert st.kv.shape[0] == T % ratio + (ratio if ratio == 4 else 0)


def test_moe_routing_and_clamped_swiglu(gen):
    cfg, D, Fi, E = _cfg(hash_layers=1, swiglu_limit=0.5), 32, 16, 4
    raw = {
        "ffn.gate.weight": torch.randn(E, D, generator=gen),
        "ffn.gate.bias": torch.randn(E, generator=gen),
        "ffn.gate.tid2eid": torch.tensor([[0, 1], [2, 3], [3, 1]]),
    }
    for e in range(E):
        for n, shape in (("w1", (Fi, D)), ("w3", (Fi, D)), ("w2", (D, Fi))):
            raw[f"ffn.experts.{e}.{n}.weight"] = torch.randn(shape, generator=gen)
    for n, shape in (("w1", (Fi, D)), ("w3", (Fi, D)), ("w2", (D, Fi))):
        raw[f"ffn.shared_experts.{n}.weight"] = torch.randn(shape, generator=gen)
    w = Weights(raw, "native")
    x = torch.randn(3, D, generator=gen)
    ids = torch.tensor([2, 0, 1])
    L = cfg.swiglu_limit

    def ffn(xx, p):
        g, u = xx @ raw[p + "w1.weight"].double().t(), xx @ raw[p + "w3.weight"].double().t()
        g, u = g.clamp(max=L), u.clamp(-L, L)
        return g * torch.sigmoid(g) * u

    for layer, hashed in ((0, True), (1, False)):
        got = M.moe(x, ids, w, cfg, layer, torch.float32).double()
        for t in range(3):
            xx = x[t].double()
            s = torch.sqrt(torch.log1p(torch.exp(raw["ffn.gate.weight"].double() @ xx)))
            sel = (
                raw["ffn.gate.tid2eid"][ids[t]].tolist()
                if hashed
                else sorted(range(E), key=lambda e: -(s[e] + raw["ffn.gate.bias"][e].double()).item())[:2]
            )
            wsum = sum(s[e] for e in sel)
            want = sum(
                (s[e] / wsum * 1.5) * ffn(xx, f"ffn.experts.{e}.") @ raw[f"ffn.experts.{e}.w2.weight"].double().t()
                for e in sel
            )
            want = want + ffn(xx, "ffn.shared_experts.") @ raw["ffn.shared_experts.w2.weight"].double().t()
            assert torch.allclose(got[t], want, rtol=1e-4, atol=1e-4)


def test_indexer_scores_and_topk_selection(gen):
    T, Hh, C, d = 5, 3, 7, 128
    qi, keys, wts = (
        torch.randn(T, Hh, d, generator=gen),
        torch.randn(C, d, generator=gen),
        torch.randn(T, Hh, generator=gen),
    )
    got = M.index_scores(qi, keys, wts).double()
    for t in range(T):
        for j in range(C):
            want = sum(wts[t, h].item() * max(float(qi[t, h].double() @ keys[j].double()), 0.0) for h in range(Hh))
            assert got[t, j].item() == pytest.approx(want, rel=1e-5, abs=1e-5)
    vis = torch.arange(C)[None] < torch.tensor([1, 3, 5, 7, 7])[:, None]
    sel = M._topk_mask((qi, keys, wts), 0, T, vis, 2) & vis
    for t in range(T):
        cands = [j for j in range(C) if vis[t, j]]
        best = sorted(cands, key=lambda j: (-got[t, j].item(), j))[:2]
        assert sorted(torch.nonzero(sel[t]).flatten().tolist()) == sorted(best)


def _rope64(v, pos, f):
    """float64 interleaved RoPE of the last 2*len(f) dims (angle as the float32 product)."""
    rd = 2 * f.numel()
    ang = (torch.tensor(float(pos), dtype=torch.float32) * f.float()).double()
    z = torch.complex(v[..., -rd:][..., 0::2], v[..., -rd:][..., 1::2]) * torch.polar(torch.ones_like(ang), ang)
    return torch.cat((v[..., :-rd], torch.stack((z.real, z.imag), -1).flatten(-2)), -1)


@pytest.mark.parametrize("ratio,T,groups", [(0, 21, 2), (128, 140, 1)])
def test_attention_layer_against_float64(gen, ratio, T, groups):
    D, H, hd, ql, ol, win = 32, 2, 128, 32, 32, 8
    cfg = _cfg(ratios=(ratio,), window=win, o_groups=groups, o_lora=ol)
    r = {
        "attn.wq_a.weight": torch.randn(ql, D, generator=gen) / 6,
        "attn.q_norm.weight": 1 + 0.1 * torch.randn(ql, generator=gen),
        "attn.wq_b.weight": torch.randn(H * hd, ql, generator=gen) / 6,
        "attn.wkv.weight": torch.randn(hd, D, generator=gen) / 6,
        "attn.kv_norm.weight": 1 + 0.1 * torch.randn(hd, generator=gen),
        "attn.wo_a.weight": torch.randn(groups * ol, H * hd // groups, generator=gen) / 16,
        "attn.wo_b.weight": torch.randn(D, groups * ol, generator=gen) / 6,
        "attn.attn_sink": torch.randn(H, generator=gen),
    }
    if ratio:
        r |= {
            "attn.compressor.wkv.weight": torch.randn(hd, D, generator=gen) / 6,
            "attn.compressor.wgate.weight": torch.randn(hd, D, generator=gen),
            "attn.compressor.ape": torch.randn(ratio, hd, generator=gen),
            "attn.compressor.norm.weight": 1 + 0.1 * torch.randn(hd, generator=gen),
        }
    x = torch.randn(T, D, generator=gen)
    cache = M.LayerCache()
    got = M.attention(x, Weights(r, "native"), cfg, ratio, 0, cache, torch.float32).double()
    d = {k: v.double() for k, v in r.items()}
    f = cfg.freqs(ratio)
    if ratio:
        assert torch.equal(f, ops.rope_frequencies(64, 160000.0, 65536, 16.0, 32.0, 1.0))  # YaRN, compress theta
    else:
        assert torch.equal(f, ops.rope_frequencies(64, 10000.0, 0, 1.0, 32.0, 1.0))  # plain rope_theta

    def rms(v, w=None):
        v = v / torch.sqrt((v**2).mean(-1, keepdim=True) + cfg.eps)
        return v if w is None else w * v

    xd = x.double()
    rows = cache.rows.double()
    for t in range(T):
        kv = _rope64(rms(xd[t] @ d["attn.wkv.weight"].t(), d["attn.kv_norm.weight"]), t, f)
        assert torch.allclose(rows[t, 64:], kv[64:], rtol=0, atol=1e-5)  # RoPE dims unquantized
        step = 2.0 ** math.ceil(math.log2(float(kv[:64].abs().max()) / 448)) * 32  # e4m3 step in [256, 448]
        assert (rows[t, :64] - kv[:64]).abs().max().item() <= step / 2 + 1e-6  # no-RoPE dims FP8-rounded
    comp = cache.comp.entries.double() if ratio else torch.zeros(0, hd, dtype=F64)
    for t in range(T):
        qr = rms(xd[t] @ d["attn.wq_a.weight"].t(), d["attn.q_norm.weight"])
        q = _rope64(rms((qr @ d["attn.wq_b.weight"].t()).view(H, hd)), t, f)
        cands = [rows[s] for s in range(max(0, t - win + 1), t + 1)]
        cands += [comp[j] for j in range(comp.shape[0]) if (j + 1) * ratio <= t + 1]
        K = torch.stack(cands)
        o = torch.empty(H, hd, dtype=F64)
        for h in range(H):
            s = (K @ q[h]) * hd**-0.5
            e = torch.exp(s - s.max())
            o[h] = (e / (e.sum() + torch.exp(d["attn.attn_sink"][h] - s.max()))) @ K
        o = _rope64(o, -t, f)  # inverse RoPE = rotation by -t
        og = o.reshape(groups, -1)
        wo_a = d["attn.wo_a.weight"].view(groups, ol, -1)
        mid = torch.cat([wo_a[g] @ og[g] for g in range(groups)])
        want = mid @ d["attn.wo_b.weight"].t()
        assert torch.allclose(got[t], want, rtol=1e-4, atol=1e-5), (t, (got[t] - want).abs().max())
    if ratio:
        assert comp.shape[0] == T // ratio and T > ratio  # the last queries attend a compressed entry


def test_indexer_queries_and_head_weights_against_float64(gen):
    cfg, D, ql, ih, T = _cfg(index_heads=3), 32, 32, 3, 6
    r = {
        "attn.indexer.wq_b.weight": torch.randn(ih * 128, ql, generator=gen) / 6,
        "attn.indexer.weights_proj.weight": torch.randn(ih, D, generator=gen),
    }
    x, qr = torch.randn(T, D, generator=gen), torch.randn(T, ql, generator=gen)
    pos = torch.arange(100, 100 + T)
    qi, wts = M.indexer_query(x, qr, Weights(r, "native"), cfg, pos, torch.float32)
    h = torch.tensor([[(-1.0) ** bin(i & j).count("1") for j in range(128)] for i in range(128)], dtype=F64)
    f = ops.rope_frequencies(64, 160000.0, 65536, 16.0, 32.0, 1.0)
    grid = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
    for t in range(T):
        want_w = (x[t].double() @ r["attn.indexer.weights_proj.weight"].double().t()) / math.sqrt(128 * ih)
        assert torch.allclose(wts[t].double(), want_w, rtol=1e-5, atol=1e-6)
        q = _rope64((qr[t].double() @ r["attn.indexer.wq_b.weight"].double().t()).view(ih, 128), int(pos[t]), f)
        q = q @ h / math.sqrt(128)
        for hh in range(ih):
            for b0 in range(0, 128, 32):
                blk, got = q[hh, b0 : b0 + 32], qi[t, hh, b0 : b0 + 32].double()
                s = 2.0 ** math.ceil(math.log2(float(blk.abs().max()) / 6))
                assert all(abs(v) / s in grid for v in got.tolist())  # on the FP4 grid of its block scale
                # within half a grid step (largest step 2) of the exact value, allowing float32 rounding
                assert (got - blk).abs().max().item() <= s + 1e-5
