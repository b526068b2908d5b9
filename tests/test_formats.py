"""Codecs against values computed independently from the bit fields, round trips, errors."""

import math

import pytest
import torch

from sglang_ampere import formats as F

# ---- independent bit-field decoders (plain Python, no torch casts) ----------------------

def e2m1_from_bits(c: int) -> float:
    s, e, m = c >> 3, (c >> 1) & 3, c & 1
    mag = m * 0.5 if e == 0 else 2.0 ** (e - 1) * (1 + m / 2)
    return -mag if s else mag


def e4m3fn_from_bits(b: int) -> float:
    s, e, m = b >> 7, (b >> 3) & 0xF, b & 7
    if e == 0xF and m == 7:
        return math.nan
    mag = (m / 8) * 2.0**-6 if e == 0 else 2.0 ** (e - 7) * (1 + m / 8)
    return -mag if s else mag


def test_all_16_e2m1_codes():
    got = F.e2m1_decode(torch.arange(16))
    for c in range(16):
        want = e2m1_from_bits(c)
        assert got[c].item() == want, (c, got[c].item(), want)
        assert math.copysign(1, got[c].item()) == math.copysign(1, want) or want != 0 or c in (0, 8)
    assert F.e2m1_table()[8].item() == 0.0 and math.copysign(1, F.e2m1_table()[8].item()) == -1


def test_all_256_e4m3fn_bytes():
    got = F.e4m3_to_float(torch.arange(256, dtype=torch.uint8))
    for b in range(256):
        want = e4m3fn_from_bits(b)
        if math.isnan(want):
            assert b in F.E4M3_NAN_BYTES and math.isnan(got[b].item())
        else:
            assert got[b].item() == want, (hex(b), got[b].item(), want)
    assert got[0x7E].item() == F.E4M3_MAX


def test_all_256_e8m0_bytes():
    b = torch.arange(255, dtype=torch.uint8)
    got = F.e8m0_to_float(b)
    for i in range(255):
        assert got[i].item() == math.ldexp(1.0, i - 127), i
    # the torch dtype view decodes identically
    assert torch.equal(F.e8m0_to_float(b.view(F.E8M0_DTYPE)), got)


def test_e8m0_nan_byte_names_the_tensor():
    s = torch.tensor([127, 255, 3], dtype=torch.uint8)
    with pytest.raises(F.FormatError, match=r"layers\.7\.ffn\.experts\.3\.w2\.scale.*NaN"):
        F.e8m0_to_float(s, "layers.7.ffn.experts.3.w2.scale")


def test_e8m0_exponent_round_trip(gen):
    e = torch.randint(-127, 128, (97,), generator=gen)
    assert torch.equal(F.e8m0_to_float(F.e8m0_from_exponent(e)), torch.ldexp(torch.ones(97), e.int()))
    with pytest.raises(F.FormatError):
        F.e8m0_from_exponent(torch.tensor([128]))


@pytest.mark.parametrize("shape", [(1, 2), (7, 34), (33, 130)])
def test_nibble_round_trip_and_order(gen, shape):
    codes = torch.randint(0, 16, shape, generator=gen, dtype=torch.uint8)
    packed = F.pack_nibbles(codes)
    assert packed.shape == (shape[0], shape[1] // 2)
    assert torch.equal(packed & 0xF, codes[:, 0::2]) and torch.equal(packed >> 4, codes[:, 1::2])
    assert torch.equal(F.unpack_nibbles(packed), codes)
    assert torch.equal(F.unpack_nibbles(packed.view(torch.int8)), codes)  # safetensors I8 storage


def test_nibble_errors():
    with pytest.raises(F.FormatError, match="odd"):
        F.pack_nibbles(torch.zeros(2, 3, dtype=torch.uint8), "w")
    with pytest.raises(F.FormatError, match="0..15"):
        F.pack_nibbles(torch.tensor([[16, 1]]), "w")
    with pytest.raises(F.FormatError, match="w: packed tensor must be uint8 or int8, got float32"):
        F.unpack_nibbles(torch.zeros(2, 2), "w")


@pytest.mark.parametrize("shape", [(3, 32), (17, 96), (5, 160)])
def test_mxfp4_dequantize_matches_bit_fields(gen, shape):
    n, k = shape
    codes = torch.randint(0, 16, (n, k), generator=gen, dtype=torch.uint8)
    exps = torch.randint(0, 253, (n, k // 32), generator=gen, dtype=torch.uint8)  # 6 * 2^126 fits float32
    got = F.mxfp4_dequantize(F.pack_nibbles(codes), exps.view(F.E8M0_DTYPE))
    for i in range(n):
        for j in range(0, k, 7):
            want = e2m1_from_bits(int(codes[i, j])) * math.ldexp(1.0, int(exps[i, j // 32]) - 127)
            assert got[i, j].item() == want


def test_mxfp4_overflow_is_an_error():
    packed = F.pack_nibbles(torch.full((1, 32), 7, dtype=torch.uint8))  # 6.0 everywhere
    with pytest.raises(F.FormatError, match="e.w1.weight: MXFP4 values overflow"):
        F.mxfp4_dequantize(packed, torch.tensor([[254]], dtype=torch.uint8), "e.w1.weight")


def test_mxfp4_quantize_is_nearest_and_in_range(gen):
    x = torch.randn(9, 96, generator=gen) * torch.exp(2 * torch.randn(9, 1, generator=gen))
    packed, scale = F.mxfp4_quantize(x)
    deq = F.mxfp4_dequantize(packed, scale)
    s = F.e8m0_to_float(scale).repeat_interleave(32, dim=1)
    grid = F.e2m1_table()
    # every value decodes to the nearest grid point of its group (no closer code exists)
    dist = (x.unsqueeze(-1) / s.unsqueeze(-1) - grid).abs().amin(-1)
    assert torch.allclose((x / s - deq / s).abs(), dist, atol=1e-6)
    # the scale is the smallest power of two that fits the group's absmax under 6
    amax = x.view(9, 3, 32).abs().amax(-1)
    sc = F.e8m0_to_float(scale)
    assert bool(((amax / sc) <= 6).all()) and bool(((amax / (sc / 2)) > 6).all())


@pytest.mark.parametrize("shape", [(4, 8), (33, 66), (201, 300)])
def test_int4_uint4b8_round_trip(gen, shape):
    q = torch.randint(-8, 8, shape, generator=gen, dtype=torch.int8)
    packed = F.pack_uint4b8(q)
    assert packed.dtype == torch.uint8
    assert torch.equal((packed & 0xF).to(torch.int16) - 8, q[:, 0::2].to(torch.int16))
    assert torch.equal(F.unpack_uint4b8(packed), q)
    with pytest.raises(F.FormatError, match="-8..7"):
        F.pack_uint4b8(torch.tensor([[8, 0]]), "x")


def test_int4_group_dequantize(gen):
    q = torch.randint(-8, 8, (6, 64), generator=gen, dtype=torch.int8)
    s = (torch.rand(6, 2, generator=gen) + 0.1).bfloat16()
    got = F.int4_group_dequantize(F.pack_uint4b8(q), s)
    want = q.double() * s.double().repeat_interleave(32, dim=1)
    assert torch.equal(got.double(), want)
    with pytest.raises(F.FormatError, match="must be bfloat16"):
        F.int4_group_dequantize(F.pack_uint4b8(q), s.float(), "e")
    with pytest.raises(F.FormatError, match=r"e: INT4 scale shape \(6, 3\)"):
        F.int4_group_dequantize(F.pack_uint4b8(q), torch.ones(6, 3, dtype=torch.bfloat16), "e")


@pytest.mark.parametrize("shape", [(128, 128), (130, 257), (1, 5), (300, 129)])
@pytest.mark.parametrize("scale_dtype", [F.E8M0_DTYPE, torch.float32])
def test_fp8_block_round_trip_any_shape(gen, shape, scale_dtype):
    x = torch.randn(shape, generator=gen) * torch.exp(torch.randn(shape[0], 1, generator=gen))
    w, s = F.fp8_block_quantize(x, scale_dtype)
    assert s.shape == F.block_scale_shape(*shape) and s.dtype == scale_dtype
    deq = F.fp8_block_dequantize(w, s)
    # independent dequantization: element-wise bit-field decode times its block's scale
    sf = F.scale_to_float(s)
    b = w.view(torch.uint8)
    for (i, j) in [(0, 0), (shape[0] - 1, shape[1] - 1), (shape[0] // 2, shape[1] // 3)]:
        want = torch.tensor(e4m3fn_from_bits(int(b[i, j])), dtype=torch.float32) * sf[i // 128, j // 128]
        assert deq[i, j].item() == want.item()  # one float32 product, like the codec
    sf = sf.double()
    # relative error of e4m3 (3 mantissa bits): at most 2^-4 of the value, plus subnormal slack
    step = F.expand_block_scale(sf, *shape) * 2.0**-9
    assert bool(((deq.double() - x.double()).abs() <= x.double().abs() * 2.0**-4 + step).all())


def test_expand_block_scale_matches_loop(gen):
    s = torch.rand(3, 2, generator=gen)
    full = F.expand_block_scale(s, 300, 150)
    for i in (0, 127, 128, 255, 256, 299):
        for j in (0, 127, 128, 149):
            assert full[i, j] == s[i // 128, j // 128]


def test_fp8_errors():
    w = torch.zeros(128, 256).to(F.E4M3_DTYPE)
    good = torch.full((1, 2), 127, dtype=torch.uint8).view(F.E8M0_DTYPE)
    with pytest.raises(
        F.FormatError, match=r"wq_a.weight: block scale shape \(2, 2\) does not fit weight \(128, 256\)"
    ):
        F.fp8_block_dequantize(w, torch.ones(2, 2), "wq_a.weight")
    with pytest.raises(F.FormatError, match="must be float8_e4m3fn, got bfloat16"):
        F.fp8_block_dequantize(w.float().bfloat16(), good, "wq_a.weight")
    with pytest.raises(F.FormatError, match="must be float8_e8m0fnu or float32, got bfloat16"):
        F.fp8_block_dequantize(w, torch.ones(1, 2, dtype=torch.bfloat16), "s")
    bad = w.view(torch.uint8).clone()
    bad[5, 5] = 0x7F
    with pytest.raises(F.FormatError, match="1 FP8 weight byte"):
        F.fp8_block_dequantize(bad.view(F.E4M3_DTYPE), good, "x")


@pytest.mark.parametrize("shape", [(128, 128), (129, 131), (7, 300)])
def test_int8_block_and_channel(gen, shape):
    q = torch.randint(-127, 128, shape, generator=gen, dtype=torch.int8)
    nb, kb = F.block_scale_shape(*shape)
    s = (torch.rand(nb, kb, generator=gen) + 0.01).bfloat16()
    got = F.int8_block_dequantize(q, s)
    assert torch.equal(got.double(), q.double() * F.expand_block_scale(s.double(), *shape))
    u = F.pack_uint8b128(q)
    assert u.dtype == torch.uint8 and torch.equal(u.to(torch.int16) - 128, q.to(torch.int16))
    assert torch.equal(F.unpack_uint8b128(u), q)
    rs = (torch.rand(shape[0], generator=gen) + 0.01).bfloat16()
    assert torch.equal(F.uint8_channel_dequantize(u, rs).double(), q.double() * rs.double()[:, None])
    with pytest.raises(F.FormatError, match="found -128"):
        F.pack_uint8b128(torch.tensor([-128], dtype=torch.int8), "w")
    with pytest.raises(F.FormatError, match="must be int8, got uint8"):
        F.int8_block_dequantize(u, s, "w")
    with pytest.raises(F.FormatError, match="channel scale shape"):
        F.uint8_channel_dequantize(u, rs[:-1], "w")


def test_format_error_pickles():
    import pickle

    e = pickle.loads(pickle.dumps(F.FormatError("layers.1.attn.wkv.scale", "bad")))
    assert (
        isinstance(e, F.FormatError)
        and e.tensor == "layers.1.attn.wkv.scale"
        and str(e) == "layers.1.attn.wkv.scale: bad"
    )


def test_codecs_follow_the_input_device():
    """`convert --device cuda` decodes on the GPU: a table built on the host would meet CUDA codes
    and fail. Without a GPU here, the meta device plays the other device for the table-driven
    codecs, and every tensor factory call in formats/ and the dense converter must name a device."""
    import ast
    from pathlib import Path

    import sglang_ampere

    meta = torch.zeros(3, 8, dtype=torch.uint8, device="meta")
    assert F.e2m1_decode(F.unpack_nibbles(meta)).device.type == "meta"
    assert F.e2m1_encode(torch.zeros(5, device="meta")).device.type == "meta"
    assert F.e2m1_table(device="meta").device.type == "meta"

    root = Path(sglang_ampere.__file__).parent
    factories = {"tensor", "ones", "zeros", "full", "empty", "arange", "linspace", "rand", "randn"}
    hostbound = []
    for f in [*sorted((root / "formats").glob("*.py")), root / "convert" / "dense.py"]:
        for node in ast.walk(ast.parse(f.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in factories
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"
                    and not any(k.arg == "device" for k in node.keywords)):
                hostbound.append(f"{f.name}:{node.lineno} torch.{node.func.attr}")
    assert hostbound == [], f"tensor factories without device= (they build on the host): {hostbound}"
