"""MXFP4 -> INT4: the table fast path is bit-identical to the plain float rule, and the rule is
the one issue 3 specifies (absmax / mse / optimal, floors, ties, errors)."""

import math

import pytest
import torch

from sglang_ampere.convert.experts import MSE_DIVISORS, ExpertStats, _candidates, reference_requantize, requantize
from sglang_ampere.formats import FormatError, int4_group_dequantize, mxfp4_dequantize, mxfp4_quantize, unpack_uint4b8
from sglang_ampere.formats.constants import ABSMAX_FLOOR

MODES = ("absmax", "mse", "optimal")


def _random_mxfp4(gen, n, k, emin=0, emax=254):
    packed = torch.randint(0, 256, (n, k // 2), generator=gen, dtype=torch.int32).to(torch.uint8)
    scale = torch.randint(emin, emax + 1, (n, k // 32), generator=gen, dtype=torch.int32).to(torch.uint8)
    return packed, scale


def _no_overflow(packed, scale):
    """Clear the codes that would overflow BF16 at the two top exponents (an error case of its own)."""
    n, hk = packed.shape
    b = packed.view(n, -1, 16).clone()
    e = scale.view(n, -1, 1).to(torch.int32) - 127
    lo, hi = b & 0xF, b >> 4
    lim = torch.where(e == 127, 3, torch.where(e == 126, 5, 7))   # largest magnitude code allowed
    lo = torch.where((lo & 7) > lim, lo & 8, lo)
    hi = torch.where((hi & 7) > lim, hi & 8, hi)
    return (lo | (hi << 4)).view(n, hk).to(torch.uint8), scale


def _edge_groups():
    """Hand-made groups (16 bytes + 1 exponent byte each) covering the corners of the rule."""
    rows = []

    def add(codes, ebyte):
        codes = list(codes) + [0] * (32 - len(codes))
        b = [codes[2 * i] | (codes[2 * i + 1] << 4) for i in range(16)]
        rows.append((b, ebyte))

    for e in (0, 1, 2, 3, 4, 5, 6, 127, 200, 253, 254):
        add([0] * 32, e)                       # all zero
        add([8] * 32, e)                       # all -0
        add([1], e)                            # single smallest non-zero
        add([9], e)                            # single smallest negative
        add([3, 11] * 16, e)
        if e < 253:
            add([7] * 32, e)                   # all max positive
            add([15] * 32, e)                  # all max negative
            add([7, 15, 1, 9, 2, 10], e)      # max codes and small ones
            add(list(range(16)) * 2, e)        # every code
        else:
            add([5, 13, 3] if e == 253 else [3, 11, 2], e)   # 3.0 * 2^126 and 1.5 * 2^127 still fit BF16
    add([1, 2, 3], 0)                          # 2^-127 exponent, floors bind
    add([7], 1)
    add([7, 7, 7, 1], 6)                       # partially floored candidates
    add([4, 12, 6], 7)
    packed = torch.tensor([r[0] for r in rows], dtype=torch.uint8)
    scale = torch.tensor([[r[1]] for r in rows], dtype=torch.uint8)
    return packed, scale


def _same(a, b):
    assert torch.equal(a[0].view(torch.uint8), b[0].view(torch.uint8)), "codes differ"
    assert torch.equal(a[1].view(torch.int16), b[1].view(torch.int16)), "scales differ"


from sglang_ampere.convert import native_kernel  # noqa: E402

HAVE_CC = native_kernel.load() is not None
#: The compiled CPU loop (where a C compiler exists, as in CI) and the torch table path.
KERNELS = ("c", "torch") if HAVE_CC else ("torch",)


@pytest.mark.parametrize("mode", MODES)
def test_fast_paths_equal_reference_on_random_groups(gen, mode):
    n = 48 if mode == "optimal" else 160
    packed, scale = _no_overflow(*_random_mxfp4(gen, n, 96))          # K=96: three groups per row
    ref = reference_requantize(packed, scale, mode)
    for kernel in KERNELS:
        _same(requantize(packed, scale, mode, kernel=kernel), ref)


@pytest.mark.parametrize("mode", MODES)
def test_fast_paths_equal_reference_on_realistic_and_edge_groups(gen, mode):
    x = torch.randn(64, 128, generator=gen) * torch.exp(2 * torch.randn(64, 1, generator=gen))
    packed, scale = mxfp4_quantize(x)
    ep, es = _edge_groups()
    ref, eref = reference_requantize(packed, scale, mode), reference_requantize(ep, es, mode)
    for kernel in KERNELS:
        _same(requantize(packed, scale, mode, kernel=kernel), ref)
        _same(requantize(ep, es, mode, kernel=kernel), eref)


@pytest.mark.skipif(not HAVE_CC, reason="no C compiler: the compiled kernel is not built here")
@pytest.mark.parametrize("mode", MODES)
def test_compiled_and_torch_paths_agree_on_a_large_tensor_with_stats(gen, mode):
    n = 256 if mode == "optimal" else 1024
    packed, scale = _no_overflow(*_random_mxfp4(gen, n, 512, emin=90, emax=160))
    x = torch.randn(n, 512, generator=gen) * torch.exp(torch.randn(n, 1, generator=gen))
    rp, rs = mxfp4_quantize(x)
    packed[: n // 2], scale[: n // 2] = rp[: n // 2], rs[: n // 2].view(torch.uint8)
    sc, st = ExpertStats(), ExpertStats()
    _same(
        requantize(packed, scale, mode, stats=sc, kernel="c"), requantize(packed, scale, mode, stats=st, kernel="torch")
    )
    assert (sc.signal, sc.noise, sc.noise_mse) == pytest.approx((st.signal, st.noise, st.noise_mse), rel=1e-12)


def test_fast_path_chunking_does_not_change_bytes(gen, monkeypatch):
    import sglang_ampere.convert.experts as ex

    packed, scale = _no_overflow(*_random_mxfp4(gen, 96, 64, emin=100, emax=150))
    whole = requantize(packed, scale, "mse", kernel="torch")
    monkeypatch.setattr(ex, "CHUNK_GROUPS", 7)
    _same(requantize(packed, scale, "mse", kernel="torch"), whole)


def test_int8_view_of_packed_bytes_is_accepted(gen):
    packed, scale = _no_overflow(*_random_mxfp4(gen, 8, 64, emin=120, emax=135))
    _same(
        requantize(packed.view(torch.int8), scale.view(torch.float8_e8m0fnu), "mse"), requantize(packed, scale, "mse")
    )


def test_all_zero_group_stores_floor_scale_and_code_zero():
    packed = torch.zeros(2, 16, dtype=torch.uint8)
    packed[1] = 0x88                                                    # -0.0 codes
    scale = torch.tensor([[3], [250]], dtype=torch.uint8)
    for mode in MODES:
        q, s = requantize(packed, scale, mode)
        assert torch.all(q == 0x88)
        assert torch.all(s.float() == ABSMAX_FLOOR)


def test_mse_picks_the_exact_divisor_and_absmax_uses_seven():
    # Every value 6 * 2^0: mse must find d = 6 (scale 1.0, code 6, stored 14) with zero error.
    packed = torch.full((1, 16), 0x77, dtype=torch.uint8)
    scale = torch.tensor([[127]], dtype=torch.uint8)
    q, s = requantize(packed, scale, "mse")
    assert float(s) == 1.0 and torch.all(q == 0xEE)
    q, s = requantize(packed, scale, "absmax")                         # bf16(6/7) = 0.857421875 -> code 7
    assert float(s) == float(torch.tensor(6 / 7, dtype=torch.bfloat16)) and torch.all(q == 0xFF)


def test_candidate_order_is_the_published_grid_then_wider():
    assert MSE_DIVISORS == tuple(5.0 + 0.25 * i for i in range(19)) and len(MSE_DIVISORS) == 19
    c = _candidates(6.0, ABSMAX_FLOOR, "optimal")
    mse = _candidates(6.0, ABSMAX_FLOOR, "mse")
    assert c[:19] == mse and mse == sorted(mse, reverse=True)           # d ascending = scale descending
    wide = c[19:]
    assert wide == sorted(wide) and len(wide) > 200
    assert all(6.0 / 12 <= v <= 6.0 / 2 for v in wide)
    assert all(float(torch.tensor(v).to(torch.bfloat16)) == v for v in wide)


def _group_errors(packed, scale, q, s):
    x = mxfp4_dequantize(packed, scale).double()
    y = int4_group_dequantize(q, s).double()
    return ((x - y) ** 2).view(x.shape[0], -1, 32).sum(-1)


def test_optimal_is_never_worse_than_mse_and_mse_never_worse_than_absmax_in_total(gen):
    x = torch.randn(256, 256, generator=gen)
    packed, scale = mxfp4_quantize(x)
    errs = {m: _group_errors(packed, scale, *requantize(packed, scale, m)) for m in MODES}
    assert torch.all(errs["optimal"] <= errs["mse"])
    assert float(errs["optimal"].sum()) < float(errs["mse"].sum()) < float(errs["absmax"].sum())


def test_stats_match_dequantized_error_and_mse_gains_over_absmax(gen):
    x = torch.randn(512, 256, generator=gen)
    packed, scale = mxfp4_quantize(x)
    snr = {}
    for m in MODES:
        st = ExpertStats()
        q, s = requantize(packed, scale, m, stats=st)
        ref = mxfp4_dequantize(packed, scale).double()
        noise = float(((ref - int4_group_dequantize(q, s).double()) ** 2).sum())
        assert st.noise == pytest.approx(noise, rel=1e-9)
        assert st.signal == pytest.approx(float((ref ** 2).sum()), rel=1e-9)
        snr[m] = 10 * math.log10(st.signal / st.noise)
    assert 18 < snr["absmax"] < 22                                      # the anchor reports about 20 dB
    assert snr["mse"] > snr["absmax"] + 2.0
    assert snr["optimal"] > snr["mse"]


def test_codes_are_in_range_and_scales_positive(gen):
    packed, scale = _no_overflow(*_random_mxfp4(gen, 32, 64))
    q, s = requantize(packed, scale, "optimal")
    c = unpack_uint4b8(q)
    assert int(c.min()) >= -8 and int(c.max()) <= 7
    assert bool(torch.all(s.float() >= ABSMAX_FLOOR)) and bool(torch.all(torch.isfinite(s.float())))


def test_nan_scale_byte_is_an_error_naming_the_tensor(gen):
    packed, scale = _no_overflow(*_random_mxfp4(gen, 4, 64, emin=120, emax=130))
    scale[2, 1] = 255
    with pytest.raises(FormatError, match=r"layers\.0\.ffn\.experts\.1\.w2\.weight.*NaN"):
        requantize(packed, scale, "mse", name="layers.0.ffn.experts.1.w2.weight")
    with pytest.raises(FormatError, match="NaN"):
        reference_requantize(packed, scale, "mse", name="x")


def test_bf16_overflow_is_an_error_naming_the_tensor():
    packed = torch.zeros(1, 16, dtype=torch.uint8)
    packed[0, 3] = 0x04                                                 # magnitude 2.0 at e = 127 -> 2^128
    scale = torch.tensor([[254]], dtype=torch.uint8)
    for f in [lambda *a, k=k, **kw: requantize(*a, kernel=k, **kw) for k in KERNELS] + [reference_requantize]:
        with pytest.raises(FormatError, match=r"w1\.weight.*overflow"):
            f(packed, scale, "mse", name="layers.2.ffn.experts.0.w1.weight")
    packed[0, 3] = 0x05                                                 # 3.0 * 2^126 fits
    scale[0, 0] = 253
    _same(requantize(packed, scale, "mse"), reference_requantize(packed, scale, "mse"))


def test_shape_mismatch_is_an_error():
    with pytest.raises(FormatError, match="does not fit"):
        requantize(torch.zeros(4, 16, dtype=torch.uint8), torch.zeros(4, 2, dtype=torch.uint8), "mse", name="w")
