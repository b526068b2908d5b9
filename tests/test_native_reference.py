"""The torch references of the native methods (what the GPU self-checks compare SGLang's FP8 Marlin
linear and MXFP4 Marlin MoE against) checked against float64 math written here from the formats'
definitions: random inputs from fresh seeds, odd sizes, never all zeros."""

from __future__ import annotations

import torch

from sglang_ampere.formats import fp8_block_dequantize, mxfp4_dequantize
from sglang_ampere.quant.native_linear import reference_fp8_linear, weight_copies
from sglang_ampere.quant.native_moe import reference_mxfp4_moe


def e2m1_f64(code: torch.Tensor) -> torch.Tensor:
    """E2M1 from its definition: sign bit 3, exponent bits 2..1 (bias 1), mantissa bit 0; exponent 0 is
    subnormal (m * 0.5)."""
    c = code.long()
    sign = 1.0 - 2.0 * ((c >> 3) & 1).double()
    exp, man = (c >> 1) & 3, (c & 1).double()
    normal = (1.0 + man / 2) * torch.pow(2.0, (exp - 1).double())
    return sign * torch.where(exp == 0, man * 0.5, normal)


def mxfp4_f64(packed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    b = packed.view(torch.uint8).long()
    codes = torch.stack((b & 15, b >> 4), dim=-1).flatten(-2)          # low nibble = even K
    s = torch.pow(2.0, scale.view(torch.uint8).double() - 127)
    return e2m1_f64(codes) * s.repeat_interleave(32, dim=-1)


def random_mxfp4(n, k, gen, low=118, high=126):
    packed = torch.randint(-128, 128, (n, k // 2), generator=gen, dtype=torch.int8)
    scale = torch.randint(low, high + 1, (n, k // 32), generator=gen, dtype=torch.int32).to(torch.uint8)
    return packed, scale.view(torch.float8_e8m0fnu)


def random_fp8(n, k, gen):
    b = torch.randint(0, 256, (n, k), generator=gen, dtype=torch.int32).to(torch.uint8)
    b[(b & 0x7F) == 0x7F] = 0x41                                          # no NaN bytes
    nb, kb = -(-n // 128), -(-k // 128)
    e = torch.randint(118, 130, (nb, kb), generator=gen, dtype=torch.int32).to(torch.uint8)
    return b.view(torch.float8_e4m3fn), e.view(torch.float8_e8m0fnu)


def fp8_f64(w, s):
    """e4m3fn from its definition (bias 7, exponent 0 subnormal) times 2^(byte-127) per 128x128 block."""
    b = w.view(torch.uint8).long()
    sign = 1.0 - 2.0 * ((b >> 7) & 1).double()
    exp, man = (b >> 3) & 15, (b & 7).double()
    val = torch.where(exp == 0, man / 8 * 2.0 ** -6, (1 + man / 8) * torch.pow(2.0, (exp - 7).double()))
    full = torch.pow(2.0, s.view(torch.uint8).double() - 127).repeat_interleave(128, 0).repeat_interleave(128, 1)
    return sign * val * full[: w.shape[0], : w.shape[1]]


def rel(a, b):
    return float((a.double() - b).norm() / b.norm())


def test_mxfp4_expert_dequant_is_exact(gen):
    n = int(torch.randint(3, 40, (1,), generator=gen))
    packed, scale = random_mxfp4(n, 96, gen)
    got = mxfp4_dequantize(packed, scale)
    want = mxfp4_f64(packed, scale)
    assert want.abs().sum() > 0 and torch.equal(got.double(), want)


def test_fp8_block_dequant_is_exact_on_odd_sizes(gen):
    n, k = (int(v) for v in torch.randint(130, 300, (2,), generator=gen))
    w, s = random_fp8(n, k, gen)
    want = fp8_f64(w, s)
    assert want.abs().sum() > 0 and torch.equal(fp8_block_dequantize(w, s).double(), want)


def test_fp8_reference_linear_matches_float64(gen):
    n, k, m = 257, 389, 7
    w, s = random_fp8(n, k, gen)
    x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
    bias = torch.randn(n, generator=gen).to(torch.bfloat16)
    got = reference_fp8_linear(x, w, s, bias)
    want = x.double() @ fp8_f64(w, s).T + bias.double()
    assert got.dtype == torch.bfloat16 and got.shape == (m, n)
    assert rel(got, want) < 1e-2
    # A wrong block scale (the grid transposed where it matters) is far off, so the bound means something.
    s_bad = s.view(torch.uint8).flip(0).view(torch.float8_e8m0fnu)
    assert rel(reference_fp8_linear(x, w, s_bad, bias), want) > 0.1


def moe_f64(x, w13, s13, w2, s2, weights, ids, limit, scaling):
    out = torch.zeros(x.shape[0], w2.shape[1], dtype=torch.float64)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            if e < 0:
                continue
            h = mxfp4_f64(w13[e], s13[e]) @ x[t].double()
            g, u = h.chunk(2)
            if limit:
                g, u = g.clamp(max=limit), u.clamp(-limit, limit)
            act = g * torch.sigmoid(g) * u
            out[t] += float(weights[t, j]) * (mxfp4_f64(w2[e], s2[e]) @ act)
    return out * (scaling if scaling is not None else 1.0)


def test_mxfp4_reference_moe_matches_float64(gen):
    e, h, i, topk, m = 5, 96, 64, 3, 11
    w13, s13 = zip(*(random_mxfp4(2 * i, h, gen, 123, 125) for _ in range(e)))
    w2, s2 = zip(*(random_mxfp4(h, i, gen, 122, 124) for _ in range(e)))
    w13, s13, w2, s2 = (torch.stack(t) for t in (w13, s13, w2, s2))
    x = (3 * torch.randn(m, h, generator=gen)).to(torch.bfloat16)
    ids = torch.rand(m, e, generator=gen).topk(topk, dim=1).indices.to(torch.int32)
    ids[0, -1] = -1                                                      # an expert on another rank
    weights = torch.rand(m, topk, generator=gen) + 0.1
    limit, scaling = 7.0, 1.5
    got = reference_mxfp4_moe(x, w13, s13, w2, s2, weights, ids, limit, scaling)
    want = moe_f64(x, w13, s13, w2, s2, weights, ids, limit, scaling)
    assert got.dtype == torch.bfloat16 and rel(got, want) < 1e-2
    # Each factor the reference must apply (clamp, routed scaling) is visible at this bound.
    assert rel(got, moe_f64(x, w13, s13, w2, s2, weights, ids, None, scaling)) > 5e-2
    assert rel(got, moe_f64(x, w13, s13, w2, s2, weights, ids, limit, None)) > 0.3


def test_weight_copies_finds_a_dequantized_weight():
    layer = torch.nn.Module()
    layer.weight = torch.nn.Parameter(torch.zeros(64, 32, dtype=torch.int32), requires_grad=False)
    assert weight_copies(layer, 64, 128) == []
    layer.register_buffer("_block_fp8_bf16_weight", torch.zeros(64, 128, dtype=torch.bfloat16))
    assert weight_copies(layer, 64, 128) == ["_block_fp8_bf16_weight"]
