"""The DeepSeek-V4 torch stand-ins (sglang_ampere.kernels.dsv4_ops_torch) against float64 math
written here, with one negative control each (a plausible mistake that must fail the same
comparison). Where SGLang ships a torch version (``hc_head_torch``, ``_mhc_pre_torch``), the
stand-ins are also compared with it; those functions are compiled from SGLang's installed
source file alone (importing their modules costs 15-20 s of CPU here)."""

import ast
import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sglang_ampere.kernels import dsv4_ops_torch as ops

BF16_REL = 2.0 ** -8          # one bf16 rounding (half ulp 2^-9) plus float32 noise
E4M3_REL = 2.0 ** -4          # one e4m3 rounding (half ulp 2^-4 of the binade's bottom)


# ------------------------------------------------------------------------------------------
# helpers


def _sglang_function(relpath: str, name: str):
    """SGLang's own function ``name`` from ``site-packages/sglang/<relpath>``, compiled alone."""
    spec = importlib.util.find_spec("sglang")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("sglang is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / relpath
    tree = ast.parse(path.read_text())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    node.decorator_list = []
    from typing import Optional, Tuple

    ns = {"torch": torch, "F": F, "Tuple": Tuple, "Optional": Optional}
    exec(compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec"), ns)
    return ns[name]


def _freqs_cis(max_pos: int, rd: int, gen) -> torch.Tensor:
    """A complex64 table like SGLang's ``precompute_freqs_cis`` (random base and scaling)."""
    base = 10000.0 * (1 + torch.rand((), generator=gen).item())
    f = 1.0 / base ** (torch.arange(0, rd, 2, dtype=torch.float64) / rd)
    f = f / (1 + 3 * torch.rand(rd // 2, generator=gen, dtype=torch.float64))
    ang = torch.outer(torch.arange(max_pos, dtype=torch.float64), f)
    return torch.polar(torch.ones_like(ang), ang).to(torch.complex64)


def _rope64(x: torch.Tensor, freqs_cis: torch.Tensor, pos: torch.Tensor, inverse=False) -> torch.Tensor:
    """float64 rotation of the last ``2 * freqs_cis.shape[-1]`` dims of ``x [B, ..., d]``."""
    rd = 2 * freqs_cis.shape[-1]
    f = freqs_cis[pos.long()].to(torch.complex128)
    if inverse:
        f = f.conj()
    f = f.reshape((x.shape[0],) + (1,) * (x.dim() - 2) + (rd // 2,))
    z = torch.view_as_complex(x[..., -rd:].double().contiguous().unflatten(-1, (-1, 2)))
    return torch.cat((x[..., :-rd].double(), torch.view_as_real(z * f).flatten(-2)), dim=-1)


def _pair_mag(x: torch.Tensor) -> torch.Tensor:
    """|(x[2i], x[2i+1])| repeated on both elements of each pair."""
    p = x.double().unflatten(-1, (-1, 2)).square().sum(-1).sqrt()
    return p.repeat_interleave(2, dim=-1)


def _close(got: torch.Tensor, want: torch.Tensor, tol: torch.Tensor) -> bool:
    return bool(((got.double() - want.double()).abs() <= tol).all())


def _decode_v4(cache: torch.Tensor, slots: torch.Tensor, page_size: int) -> torch.Tensor:
    """float64 rows [n, 512] of the V4 layout (448 e4m3 * 2^(s-127), 64 bf16), decoded here."""
    rows = []
    for loc in slots.tolist():
        p, j = divmod(loc, page_size)
        data = cache[p, j * 576:(j + 1) * 576]
        sb = cache[p, page_size * 576 + j * 8: page_size * 576 + j * 8 + 7].long()
        nope = data[:448].view(torch.float8_e4m3fn).double().view(7, 64)
        nope = nope * torch.pow(2.0, (sb - 127).double())[:, None]
        rope = data[448:].clone().view(torch.bfloat16).double()
        rows.append(torch.cat((nope.flatten(), rope)))
    return torch.stack(rows)


def _v4_tol(want: torch.Tensor) -> torch.Tensor:
    """Per element: e4m3 rounding for the NoPE groups (scale >= amax/448, subnormal spacing
    2^-9 * scale), bf16 rounding for the RoPE part."""
    nope = want[:, :448].view(-1, 7, 64)
    s = torch.pow(2.0, torch.ceil(torch.log2(nope.abs().amax(-1).clamp(min=1e-4) / 448)))
    tn = (E4M3_REL * nope.abs() + s[..., None] * 2.0 ** -9).flatten(1)
    tr = BF16_REL * _pair_mag(want[:, 448:]) + 1e-30
    return torch.cat((tn, tr), dim=1)


# ------------------------------------------------------------------------------------------
# row 4: fused_rope_inplace


@pytest.mark.parametrize("pos_dtype", [torch.int32, torch.int64])
def test_fused_rope_inplace(gen, pos_dtype):
    b, hq, hk, max_pos = 7, 5, 3, 301
    fc = _freqs_cis(max_pos, 64, gen)
    pos = torch.randint(0, max_pos, (b,), generator=gen, dtype=pos_dtype)
    # q as the caller passes it: the rope tail view of [B, H, 96]
    qfull = (torch.randn(b, hq, 96, generator=gen) * 3).bfloat16()
    k = (torch.randn(b, hk, 64, generator=gen) * 0.1).bfloat16()
    q0, k0 = qfull.clone(), k.clone()
    for inverse in (False, True):
        qf, kk = q0.clone(), k0.clone()
        ops.fused_rope_inplace(qf[..., -64:], kk, fc, pos, inverse=inverse)
        assert torch.equal(qf[..., :32], q0[..., :32])            # outside the view untouched
        for got, x in ((qf[..., -64:], q0[..., -64:]), (kk, k0)):
            want = _rope64(x, fc, pos, inverse)
            tol = BF16_REL * _pair_mag(want) + 1e-30
            assert _close(got, want, tol)
            # negative control: the other direction
            assert not _close(got, _rope64(x, fc, pos, not inverse), tol)
    ops.fused_rope_inplace(qf[:0, :, -64:], None, fc, pos[:0])  # empty batch is a no-op


# ------------------------------------------------------------------------------------------
# row 3: fused_q_norm_rope


def _q_norm_rope64(x, eps, fc, pos):
    x = x.double()
    if eps is not None:
        x = x / torch.sqrt(x.square().mean(-1, keepdim=True) + eps)
    return _rope64(x, fc, pos)


def test_fused_q_norm_rope(gen):
    b, h, d, max_pos = 5, 3, 512, 97
    fc = _freqs_cis(max_pos, 64, gen)
    pos = torch.randint(0, max_pos, (b,), generator=gen)
    x = (torch.randn(b, h, d, generator=gen) * 0.05).bfloat16()
    x0 = x.clone()
    eps = 1e-6
    out = torch.empty_like(x)
    ops.fused_q_norm_rope(x, out, eps, fc, pos)
    assert torch.equal(x, x0)
    want = _q_norm_rope64(x, eps, fc, pos)
    # normed value rounded to bf16, then the tail rotated and rounded again: 2 roundings
    tol = 2 * BF16_REL * _pair_mag(want)
    assert _close(out, want, tol)
    assert not _close(out, _q_norm_rope64(x, 1e-2, fc, pos), tol)      # wrong eps
    # the kernel's rounding point: RoPE of the bf16-rounded normed value
    xf = x.float()
    normed = (xf * torch.rsqrt(xf.square().sum(-1, keepdim=True) / d + eps)).bfloat16()
    assert torch.equal(out[..., :448], normed[..., :448])
    # eps None: copy + RoPE only
    out2 = torch.empty_like(x)
    ops.fused_q_norm_rope(x, out2, None, fc, pos)
    want2 = _q_norm_rope64(x, None, fc, pos)
    assert torch.equal(out2[..., :448], x[..., :448])
    assert _close(out2, want2, BF16_REL * _pair_mag(want2))
    # FP8 output: the bf16 result converted by torch
    out8 = torch.empty(x.shape, dtype=torch.float8_e4m3fn)
    ops.fused_q_norm_rope(x, out8, eps, fc, pos)
    assert torch.equal(out8.view(torch.uint8), out.to(torch.float8_e4m3fn).view(torch.uint8))


# ------------------------------------------------------------------------------------------
# row 5: fused_k_norm_rope_flashmla (and fused_store_cache)


def _k_norm_rope64(kv, w, eps, fc, pos):
    x = kv.double()
    y = x / torch.sqrt(x.square().mean(-1, keepdim=True) + eps) * w.double()
    return _rope64(y, fc, pos)


def test_fused_k_norm_rope_flashmla(gen):
    b, page_size, pages, max_pos = 9, 256, 3, 1000
    from sglang_ampere.kernels.kv_layout import page_bytes

    fc = _freqs_cis(max_pos, 64, gen)
    pos = torch.randint(0, max_pos, (b,), generator=gen)
    # kv as the caller passes it: a row-strided slice of qkv_a
    qkv = (torch.randn(b, 100 + 512, generator=gen) * 2).bfloat16()
    kv = qkv[:, 100:]
    w = (1 + 0.5 * torch.randn(512, generator=gen)).bfloat16()
    eps = 1e-6
    slots = torch.randperm(pages * page_size, generator=gen)[:b].to(torch.int32)
    slots[3] = -1                                                       # no write target
    cache = torch.randint(0, 256, (pages, page_bytes(page_size)), generator=gen, dtype=torch.uint8)
    before = cache.clone()
    ops.fused_k_norm_rope_flashmla(kv, w, eps, fc, pos, slots, cache, page_size)
    keep = slots >= 0
    want = _k_norm_rope64(kv, w, eps, fc, pos)[keep]
    got = _decode_v4(cache, slots[keep], page_size)
    tol = _v4_tol(want)
    assert _close(got, want, tol)
    assert not _close(got, _k_norm_rope64(kv, torch.ones(512), eps, fc, pos)[keep], tol)  # no weight
    # exactly the written bytes changed (576 data + 7 scale bytes per row; not the pad byte)
    assert int((cache != before).sum()) <= int(keep.sum()) * (576 + 7)
    changed = torch.zeros_like(cache, dtype=torch.bool)
    for loc in slots[keep].tolist():
        p, j = divmod(loc, page_size)
        changed[p, j * 576:(j + 1) * 576] = True
        changed[p, page_size * 576 + j * 8: page_size * 576 + j * 8 + 7] = True
    assert torch.equal(cache[~changed], before[~changed])


def test_fused_store_cache(gen):
    from sglang_ampere.kernels.kv_layout import page_bytes

    # flashmla: the c4 cache (64 per page) fed the compressor's bf16 rows
    n, page_size, pages = 11, 64, 2
    x = (torch.randn(n, 512, generator=gen) * torch.rand(n, 1, generator=gen) * 4).bfloat16()
    slots = torch.randperm(pages * page_size, generator=gen)[:n]
    cache = torch.zeros(pages, page_bytes(page_size), dtype=torch.uint8)
    ops.fused_store_cache(x, cache, slots, page_size=page_size, type="flashmla")
    got = _decode_v4(cache, slots, page_size)
    tol = _v4_tol(x.double())
    assert _close(got, x.double(), tol)
    assert not _close(got, x.double().roll(1, 0), tol)                 # rows at the wrong slots
    # the RoPE part is the input's bf16 bytes
    assert torch.equal(got[:, 448:], x[:, 448:].double())

    # indexer: 128-wide keys, float32 scale per key, pages of 64 x 132 bytes
    n, page_size, pages = 13, 64, 3
    k = (torch.randn(n, 128, generator=gen) * 3).bfloat16()
    slots = torch.randperm(pages * page_size, generator=gen)[:n]
    pool = torch.zeros(pages, page_size * 132, dtype=torch.uint8)
    ops.fused_store_cache(k, pool, slots, page_size=page_size, type="indexer")
    got, scales = [], []
    for loc in slots.tolist():
        p, j = divmod(loc, page_size)
        q = pool[p, j * 128:(j + 1) * 128].view(torch.float8_e4m3fn).double()
        s = pool[p, page_size * 128 + 4 * j: page_size * 128 + 4 * j + 4].clone().view(torch.float32)
        got.append(q * s.double())
        scales.append(s)
    got, scales = torch.stack(got), torch.cat(scales)
    want_s = k.double().abs().amax(-1).clamp(min=1e-4) / 448
    assert torch.allclose(scales.double(), want_s, rtol=2e-7, atol=0)
    tol = E4M3_REL * k.double().abs() + want_s[:, None] * 2.0 ** -9
    assert _close(got, k.double(), tol)
    assert not _close(got, k.double().roll(1, 0), tol)


# ------------------------------------------------------------------------------------------
# row 7: fused_q_indexer_rope_hadamard_quant


def _sylvester64(n):
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.kron(torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64), h)
    return h


def test_fused_q_indexer_rope_hadamard_quant(gen):
    b, h, max_pos = 6, 5, 333
    fc = _freqs_cis(max_pos, 64, gen)
    pos = torch.randint(0, max_pos, (b,), generator=gen, dtype=torch.int32)
    x = (torch.randn(b, h, 128, generator=gen) * torch.rand(b, h, 1, generator=gen) * 5).bfloat16()
    wfull = torch.randn(b, h + 7, generator=gen).bfloat16()
    weight = wfull[:, :h]                                  # row-strided, as the caller's slice
    ws = 0.37 / math.sqrt(h)
    q8, wout = ops.fused_q_indexer_rope_hadamard_quant(x, weight, ws, fc, pos)
    assert q8.dtype == torch.float8_e4m3fn and q8.shape == x.shape
    assert wout.dtype == torch.float32 and wout.shape == (b, h, 1)

    def want(inverse=False):
        y = _rope64(x, fc, pos, inverse) @ _sylvester64(128) / math.sqrt(128)
        return y, y.abs().amax(-1).clamp(min=1e-4) / 448

    y, s = want()
    # weights_out = weight * weight_scale * s; q * s reproduces y to e4m3 precision
    assert torch.allclose(wout[..., 0].double(), weight.double() * ws * s, rtol=1e-5, atol=0)
    got = q8.double() * (wout[..., 0].double() / (weight.double() * ws))[..., None]
    tol = E4M3_REL * y.abs() + s[..., None] * 2.0 ** -9
    assert _close(got, y, tol)
    assert q8.double().abs().amax(-1).eq(448).all()        # the row max lands on 448
    y_bad, _ = want(inverse=True)
    assert not _close(got, y_bad, tol)                     # RoPE the wrong way


# ------------------------------------------------------------------------------------------
# rows 8-10: mHC


def _sinkhorn64(mixes, scale, base, hc, iters, eps, swap=False):
    m, a, c = mixes.double().reshape(-1, (2 + hc) * hc), scale.double(), base.double()
    lo, hi = (hc, 0) if swap else (0, hc)
    pre = 1 / (1 + torch.exp(-(m[:, lo:lo + hc] * a[0] + c[lo:lo + hc]))) + eps
    post = 2 / (1 + torch.exp(-(m[:, hi:hi + hc] * a[1] + c[hi:hi + hc])))
    cm = m[:, 2 * hc:].reshape(-1, hc, hc) * a[2] + c[2 * hc:].reshape(hc, hc)
    cm = torch.softmax(cm, -1) + eps
    cm = cm / (cm.sum(1, keepdim=True) + eps)
    for _ in range(iters - 1):
        cm = cm / (cm.sum(2, keepdim=True) + eps)
        cm = cm / (cm.sum(1, keepdim=True) + eps)
    return pre, post, cm


def test_hc_split_sinkhorn(gen):
    hc, iters, eps, t = 4, 20, 1e-6, 13
    mix_hc = (2 + hc) * hc
    mixes = torch.randn(t, 1, mix_hc, generator=gen) * 2
    scale = torch.rand(3, generator=gen) + 0.5
    base = torch.randn(mix_hc, generator=gen)
    pre, post, comb = ops.hc_split_sinkhorn(mixes, scale, base, hc, iters, eps)
    assert pre.shape == (t, 1, hc) and post.shape == (t, 1, hc) and comb.shape == (t, 1, hc, hc)
    assert pre.dtype == post.dtype == comb.dtype == torch.float32
    wp, wq, wc = _sinkhorn64(mixes, scale, base, hc, iters, eps)
    got = torch.cat((pre.flatten(1), post.flatten(1), comb.flatten(1)), 1)
    want = torch.cat((wp, wq, wc.flatten(1)), 1)
    tol = 1e-5 * want.abs() + 1e-7
    assert _close(got, want, tol)
    bp, bq, _ = _sinkhorn64(mixes, scale, base, hc, iters, eps, swap=True)    # pre/post swapped
    assert not _close(got, torch.cat((bp, bq, wc.flatten(1)), 1), tol)
    # other hc_mult / iteration count, batch dim > 1
    m2 = torch.randn(2, 3, 3 * 5 + 5 * 2, generator=gen)[..., :(2 + 3) * 3]
    p2, q2, c2 = ops.hc_split_sinkhorn(m2, scale, torch.randn(15, generator=gen), 3, 5, 1e-4)
    assert p2.shape == (2, 3, 3) and c2.shape == (2, 3, 3, 3)


def test_mhc_pre_matches_sglang_torch(gen):
    """hc_split_sinkhorn + mhc_combine on the hc_pre path equal SGLang's _mhc_pre_torch."""
    mhc_pre_torch = _sglang_function("kernels/ops/layernorm/mhc.py", "_mhc_pre_torch")
    t, hc, d, iters, eps, rms_eps = 5, 4, 96, 20, 1e-6, 1e-6
    res = (torch.randn(t, hc, d, generator=gen)).bfloat16()
    fn = torch.randn((2 + hc) * hc, hc * d, generator=gen) * 0.02
    scale = torch.rand(3, generator=gen) + 0.5
    base = torch.randn((2 + hc) * hc, generator=gen) * 0.3
    post_s, comb_s, y_s = mhc_pre_torch(res, fn, scale, base, rms_eps, eps, eps, 2.0, iters)
    # deepseek_v4.py hc_pre_torch_impl + hc_split_sinkhorn + mhc_combine
    x_flat = res.flatten(1).float()
    mixes = (F.linear(x_flat, fn) * torch.rsqrt(x_flat.square().mean(-1, keepdim=True) + rms_eps)).unsqueeze(1)
    pre, post, comb = ops.hc_split_sinkhorn(mixes, scale, base, hc, iters, eps)
    y = ops.mhc_combine(x_flat, pre.squeeze(1), hc, torch.bfloat16)
    assert torch.allclose(post.squeeze(1), post_s.squeeze(-1), rtol=1e-5, atol=1e-6)
    assert torch.allclose(comb.squeeze(1), comb_s, rtol=1e-5, atol=1e-6)
    assert _close(y, y_s, BF16_REL * y_s.double().abs() + 1e-6)


def test_mhc_combine(gen):
    m, hc, h = 7, 4, 1030                                   # h not a multiple of 1024
    x = torch.randn(m, hc * h, generator=gen)
    pre_full = torch.rand(m, hc + 2, generator=gen) + 0.1
    pre = pre_full[:, 1:hc + 1]                             # strided, as pre.squeeze(1) can be
    y = ops.mhc_combine(x, pre, hc, torch.bfloat16)
    assert y.shape == (m, h) and y.dtype == torch.bfloat16
    want = (pre.double()[:, :, None] * x.double().view(m, hc, h)).sum(1)
    tol = BF16_REL * want.abs() + 1e-6
    assert _close(y, want, tol)
    bad = (pre.double().flip(1)[:, :, None] * x.double().view(m, hc, h)).sum(1)
    assert not _close(y, bad, tol)
    y32 = ops.mhc_combine(x.bfloat16(), pre, hc, torch.float32)
    want32 = (pre.double()[:, :, None] * x.bfloat16().double().view(m, hc, h)).sum(1)
    assert torch.allclose(y32.double(), want32, rtol=1e-6, atol=1e-6)


def test_fused_hc_head(gen):
    hc_head_torch = _sglang_function("srt/models/deepseek_v4.py", "hc_head_torch")
    t, hc, d, norm_eps, hc_eps = 3, 4, 200, 1e-6, 1e-6
    x = (torch.randn(t, hc, d, generator=gen) * 2).bfloat16()
    fn = torch.randn(hc, hc * d, generator=gen) * 0.05
    scale = torch.rand(1, generator=gen) + 0.5
    base = torch.randn(hc, generator=gen) * 0.5
    y = ops.fused_hc_head(x, fn, scale, base, norm_eps, hc_eps)
    assert y.shape == (t, d) and y.dtype == torch.bfloat16

    def want(eps):
        v = x.double().flatten(1)
        mix = v @ fn.double().t() / torch.sqrt(v.square().mean(-1, keepdim=True) + norm_eps)
        pre = 1 / (1 + torch.exp(-(mix * scale.double() + base.double()))) + eps
        return (pre[:, :, None] * x.double()).sum(1)

    w = want(hc_eps)
    tol = BF16_REL * w.abs() + 1e-6
    assert _close(y, w, tol)
    assert not _close(y, want(0.1), tol)                    # wrong hc_eps
    ys = hc_head_torch(x, fn, scale, base, norm_eps=norm_eps, hc_eps=hc_eps)
    assert _close(y, ys.double(), 2 * BF16_REL * ys.double().abs() + 1e-6)


# ------------------------------------------------------------------------------------------
# row 11: silu_and_mul_clamp


def _swiglu64(gu, limit, gate_both=False):
    n = gu.shape[-1] // 2
    g, u = gu[:, :n].double(), gu[:, n:].double()
    g = g.clamp(-limit, limit) if gate_both else g.clamp(max=limit)
    u = u.clamp(-limit, limit)
    return g * torch.sigmoid(g) * u


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_silu_and_mul_clamp(gen, dtype):
    m, n, limit = 5, 72, 7.0
    gu = (torch.randn(m, 2 * n, generator=gen) * 8).to(dtype)
    gu[0, :4] = torch.tensor([-20.0, -7.5, 7.5, 30.0])         # both sides of the gate clamp
    gu[1, :2] = torch.tensor([-80.0, -100.0])                  # silu ~1e-33; __fdividef gives 0
    out = torch.empty(m, n, dtype=dtype)
    ops.silu_and_mul_clamp(gu, out, limit)
    src = gu.float().bfloat16() if dtype == torch.float16 else gu        # bf16 clamp domain
    want = _swiglu64(src, limit)
    rel = BF16_REL if dtype == torch.bfloat16 else 2.0 ** -10
    tol = rel * want.abs() + 1e-7
    assert out[1, 1] == 0                                      # the fast-math division rule
    assert out[1, 0] != 0 or dtype == torch.float16            # (fp16 cannot hold ~1e-33)
    assert _close(out, want, tol)
    assert not _close(out, _swiglu64(src, limit, gate_both=True), tol)    # gate clamped below too


# ------------------------------------------------------------------------------------------
# row 1: init_compression_metadata


def _metadata_loops(seq_lens, positions, raw_out_loc, page_table, page_size, compute):
    bs, nw = len(seq_lens), len(raw_out_loc)
    res = {}
    for r in (4, 128):
        res[r] = (
            [raw_out_loc[i] // r if seq_lens[i] % r == 0 else 0 for i in range(nw)],
            [positions[i] - positions[i] % r for i in range(bs)],
            [seq_lens[i] // r for i in range(bs)],
            [max(seq_lens[i] // r, 1) for i in range(bs)],
        )
    pages = None
    if compute:
        cps = page_size // 128
        width = cps * len(page_table[0])
        pages = [[page_table[i][j // cps] * cps + j % cps if j < seq_lens[i] // 128 else -1
                  for j in range(width)] for i in range(bs)]
    return res, pages


@pytest.mark.parametrize("compute", [True, False])
def test_init_compression_metadata(gen, compute):
    bs, nw, max_pages, page_size = 9, 7, 5, 256
    seq_lens = torch.randint(1, max_pages * page_size, (bs,), generator=gen, dtype=torch.int32)
    seq_lens[0], seq_lens[1], seq_lens[2] = 128, 512, 3                      # exact multiples, short
    positions = (seq_lens - 1).to(torch.int64)
    raw = torch.randint(0, 100000, (nw,), generator=gen, dtype=torch.int64)
    page_table = torch.randint(0, 1000, (bs, max_pages), generator=gen, dtype=torch.int32)
    got = ops.init_compression_metadata(seq_lens, positions, raw, page_table, page_size, compute)
    want, pages = _metadata_loops(seq_lens.tolist(), positions.tolist(), raw.tolist(),
                                  page_table.tolist(), page_size, compute)
    assert len(got) == 9
    for i, r in enumerate((4, 128)):
        part = got[4 * i: 4 * i + 4]
        assert [t.dtype for t in part] == [torch.int64, torch.int32, torch.int32, torch.int32]
        assert part[0].shape == (nw,) and part[1].shape == (bs,)
        assert [t.tolist() for t in part] == list(want[r])
    if compute:
        assert got[8].dtype == torch.int32 and got[8].tolist() == pages
    else:
        assert got[8] is None
    # negative control: out_loc without the "compress only at a multiple of the ratio" mask
    assert got[0].tolist() != [x // 4 for x in raw.tolist()]


# ------------------------------------------------------------------------------------------
# signatures: the stand-ins take the same parameters as the SGLang functions they replace

SIGNATURES = [
    ("kernels/ops/attention/dsv4/norm_rope.py", "fused_q_norm_rope"),
    ("kernels/ops/attention/dsv4/norm_rope.py", "fused_rope_inplace"),
    ("kernels/ops/attention/dsv4/norm_rope.py", "fused_k_norm_rope_flashmla"),
    ("kernels/ops/attention/dsv4/norm_rope.py", "fused_q_indexer_rope_hadamard_quant"),
    ("kernels/ops/attention/dsv4/attn.py", "fused_store_cache"),
    ("kernels/ops/attention/dsv4/metadata_kernel.py", "init_compression_metadata"),
    ("kernels/ops/layernorm/mhc.py", "hc_split_sinkhorn"),
    ("kernels/ops/layernorm/mhc.py", "mhc_combine"),
    ("kernels/ops/layernorm/mhc_head.py", "fused_hc_head"),
    ("kernels/ops/activation/silu_and_mul_clamp.py", "silu_and_mul_clamp"),
]


def _params(fn: ast.FunctionDef):
    a = fn.args
    pos = [x.arg for x in a.posonlyargs + a.args]
    defaults = [None] * (len(pos) - len(a.defaults)) + [ast.unparse(d) for d in a.defaults]
    kwd = [(x.arg, None if d is None else ast.unparse(d)) for x, d in zip(a.kwonlyargs, a.kw_defaults)]
    return list(zip(pos, defaults)), kwd


@pytest.mark.parametrize("relpath,name", SIGNATURES, ids=[n for _, n in SIGNATURES])
def test_signature_matches_sglang(relpath, name):
    import inspect
    import textwrap

    spec = importlib.util.find_spec("sglang")
    if spec is None:
        pytest.skip("sglang is not installed")
    tree = ast.parse((Path(list(spec.submodule_search_locations)[0]) / relpath).read_text())
    theirs = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    ours = ast.parse(textwrap.dedent(inspect.getsource(getattr(ops, name)))).body[0]
    (tp, tk), (op, ok) = _params(theirs), _params(ours)
    # KVLayout.V4 is a str enum with value "v4"; the stand-ins take either
    norm = {"KVLayout.V4": "'v4'"}
    assert [(n, norm.get(d, d)) for n, d in tp] == op
    assert [(n, norm.get(d, d)) for n, d in tk] == ok


# ------------------------------------------------------------------------------------------
# SGLang's own Triton kernels, run on the CPU by Triton's interpreter, against the stand-ins

_INTERPRETER_SCRIPT = r'''
import ast, importlib.util, json, sys
from pathlib import Path

import torch

from sglang_ampere.kernels import dsv4_ops_torch as T

root = Path(list(importlib.util.find_spec("sglang").submodule_search_locations)[0])
tmp, seed = Path(sys.argv[1]), int(sys.argv[2])


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def extract(relpath, names, modname):
    """The named top-level functions of a SGLang file (with their decorators), in a file of their
    own: mhc.py's module-level imports (TileLang) cost 20 s and are not needed by these."""
    src = (root / relpath).read_text()
    lines = src.splitlines()
    parts = ["import torch", "import triton", "import triton.language as tl"]
    for n in ast.parse(src).body:
        if isinstance(n, ast.FunctionDef) and n.name in names:
            first = n.decorator_list[0].lineno if n.decorator_list else n.lineno
            parts.append("\n".join(lines[first - 1: n.end_lineno]))
    path = tmp / (modname + ".py")
    path.write_text("\n\n\n".join(parts) + "\n")
    return load(path, modname)


def stats(got, want):
    g, w = got.double(), want.double()
    rel = ((g - w).abs() / w.abs().clamp(min=1e-30)).max().item() if g.numel() else 0.0
    return {"equal": bool(torch.equal(got, want)), "n_diff": int((g != w).sum()), "n": g.numel(),
            "max_rel": rel, "shape_ok": got.shape == want.shape, "dtype_ok": got.dtype == want.dtype}


mhc = extract("kernels/ops/layernorm/mhc.py", {"_mhc_combine_kernel", "mhc_combine",
              "_hc_split_sinkhorn_triton_kernel", "_hc_split_sinkhorn_triton"}, "sglang_mhc_part")
head = load(root / "kernels/ops/layernorm/mhc_head.py", "sglang_mhc_head")
meta = load(root / "kernels/ops/attention/dsv4/metadata_kernel.py", "sglang_metadata_kernel")
g = torch.Generator().manual_seed(seed)
res = {}

x = torch.randn(5, 4 * 1100, generator=g)                  # float32 x_flat, as hc_pre passes it
pre = torch.rand(5, 4, generator=g) + 0.1
res["mhc_combine"] = stats(T.mhc_combine(x, pre, 4, torch.float32), mhc.mhc_combine(x, pre, 4, torch.float32))

mixes = torch.randn(6, 1, 24, generator=g) * 2
scale, base = torch.rand(3, generator=g) + 0.5, torch.randn(24, generator=g)
for name, a, b in zip(("pre", "post", "comb"), T.hc_split_sinkhorn(mixes, scale, base, 4, 20, 1e-6),
                      mhc._hc_split_sinkhorn_triton(mixes, scale, base, 4, 20, 1e-6)):
    res["sinkhorn_" + name] = stats(a, b)

# fp16 x (the interpreter rounds fp32 -> bf16 by truncation; fp16 stores round correctly)
xh = (torch.randn(3, 4, 700, generator=g) * 2).half()
fn = torch.randn(4, 4 * 700, generator=g) * 0.05
sc, bs = torch.rand(1, generator=g) + 0.5, torch.randn(4, generator=g) * 0.5
theirs = head.fused_hc_head(xh, fn, sc, bs, norm_eps=1e-6, hc_eps=1e-6)
# Bound: one fp16 rounding apart (2^-10 of the value), plus float32 error in the weighted sum of
# the hc rows, which near cancellation is relative to the magnitudes summed, not to the result
# (weights sigmoid + eps <= ~1; 2^-20 is 16 float32 ulps of them). A 2^-10 bound alone failed
# seed 2128834887: 3.8505e-5 vs 3.8624e-5, two subnormal fp16 ulps.
tol = 2.0 ** -10 * theirs.double().abs() + 2.0 ** -20 * xh.double().abs().sum(1)
for name, eps in (("hc_head", 1e-6), ("hc_head_wrong_eps", 1e-3)):
    ours = T.fused_hc_head(xh, fn, sc, bs, 1e-6, eps)
    res[name] = stats(ours, theirs)
    res[name]["tol_ratio"] = ((ours.double() - theirs.double()).abs() / tol).max().item()

bsz, mp = 9, 5
lens = torch.randint(1, mp * 256, (bsz,), generator=g, dtype=torch.int32)
lens[:3] = torch.tensor([128, 512, 3], dtype=torch.int32)
pos = (lens - 1).long()
raw = torch.randint(0, 100000, (7,), generator=g)
table = torch.randint(0, 1000, (bsz, mp), generator=g, dtype=torch.int32)
for compute in (True, False):
    a = T.init_compression_metadata(lens, pos, raw, table, 256, compute)
    b = meta.init_compression_metadata(lens, pos, raw, table, 256, compute_page_indices=compute)
    for i, (u, v) in enumerate(zip(a, b)):
        res[f"metadata_{compute}_{i}"] = {"equal": True} if u is None and v is None else stats(u, v)
print("RESULT " + json.dumps(res))
'''


def test_against_sglang_triton_kernels_in_the_interpreter(tmp_path, seed):
    """mhc_combine, hc_head, the metadata kernel and the Triton port of the Sinkhorn split (which
    SGLang keeps "numerically identical" to the TileLang kernel), run by TRITON_INTERPRET=1."""
    import json
    import os
    import subprocess
    import sys

    if importlib.util.find_spec("sglang") is None or importlib.util.find_spec("triton") is None:
        pytest.skip("sglang / triton not installed")
    script = tmp_path / "interp.py"
    script.write_text(_INTERPRETER_SCRIPT)
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), str(seed)], capture_output=True,
                          text=True, timeout=240, env=env)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    res = json.loads(line[-1][len("RESULT "):])
    for name, r in res.items():
        assert r.get("shape_ok", True) and r.get("dtype_ok", True), (name, r)
    # same float32 operations in the same order: bit-equal
    assert res["mhc_combine"]["equal"], res["mhc_combine"]
    assert all(r["equal"] for k, r in res.items() if k.startswith("metadata_")), res
    # exp / sigmoid implementations (numpy vs torch) differ by ulps, iterated 20 times
    for k in ("sinkhorn_pre", "sinkhorn_post", "sinkhorn_comb"):
        assert res[k]["max_rel"] <= 1e-5, (k, res[k])
    # fp16 output: float32 sums in another order may flip a rounding (bound in the script)
    assert res["hc_head"]["tol_ratio"] <= 1 and res["hc_head"]["n_diff"] <= 0.01 * res["hc_head"]["n"], res["hc_head"]
    assert res["hc_head_wrong_eps"]["tol_ratio"] > 1, res["hc_head_wrong_eps"]    # the bound can fail
