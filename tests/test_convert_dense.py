"""FP8 -> INT8: block (int8 + 128x128 BF16) and channel (uint8 q+128 + BF16 per row), BF16 keep."""

import math

import pytest
import torch

from sglang_ampere.convert.dense import convert_dense, int8_block, uint8_channel
from sglang_ampere.formats import FormatError, fp8_block_dequantize, fp8_block_quantize, int8_block_dequantize
from sglang_ampere.formats.constants import ABSMAX_FLOOR


def _plain_block(x):
    """The rule written per block with Python loops (the oracle)."""
    n, k = x.shape
    nb, kb = -(-n // 128), -(-k // 128)
    q = torch.empty(n, k, dtype=torch.int8)
    s = torch.empty(nb, kb, dtype=torch.bfloat16)
    for i in range(nb):
        for j in range(kb):
            blk = x[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128]
            a = max(float(blk.abs().max()), ABSMAX_FLOOR)
            sc = torch.tensor(a, dtype=torch.float32) / 127
            sc = max(float(sc.to(torch.bfloat16)), ABSMAX_FLOOR)
            s[i, j] = sc
            q[i * 128 : (i + 1) * 128, j * 128 : (j + 1) * 128] = torch.clamp(
                torch.round(blk / torch.tensor(sc, dtype=torch.float32)), -127, 127
            ).to(torch.int8)
    return q, s


def _run(w, s, mode, **kw):
    """convert_dense's chunks joined: (weight, scale or None)."""
    parts = list(convert_dense(w, s, mode, "t", **kw))
    weight = torch.cat([t for p, t in parts if p == "weight"])
    scales = [t for p, t in parts if p == "scale"]
    return weight, (scales[0] if scales else None)


def _fp8(gen, n, k, spread=1.0):
    x = torch.randn(n, k, generator=gen) * torch.exp(spread * torch.randn(n, 1, generator=gen))
    w, s = fp8_block_quantize(x)
    return w, s, fp8_block_dequantize(w, s)


@pytest.mark.parametrize("shape", [(300, 200), (256, 384)])   # padded blocks / whole blocks (view path)
def test_block_matches_the_plain_rule(gen, shape):
    w, s, x = _fp8(gen, *shape)
    x[:128, 128:] = 0                                   # one all-zero block
    q, sc = int8_block(x)
    pq, ps = _plain_block(x)
    assert torch.equal(q, pq) and torch.equal(sc.view(torch.int16), ps.view(torch.int16))
    assert float(sc[0, 1]) == ABSMAX_FLOOR and bool((q[:128, 128:] == 0).all())
    assert int(q.min()) >= -127


def test_block_snr_on_gaussian_is_about_40_db(gen):
    w, s, x = _fp8(gen, 512, 512, spread=0.0)
    q, sc = int8_block(x)
    y = int8_block_dequantize(q, sc)
    snr = 10 * math.log10(float((x.double() ** 2).sum() / ((x.double() - y.double()) ** 2).sum()))
    assert 38 < snr < 42


def test_channel_rule(gen):
    w, s, x = _fp8(gen, 260, 384, spread=2.0)
    x[7] = 0
    u, sc = uint8_channel(x)
    assert u.dtype == torch.uint8 and sc.shape == (260,)
    a = x.abs().amax(dim=1).clamp(min=ABSMAX_FLOOR)
    want = (a / 127).to(torch.bfloat16).float().clamp(min=ABSMAX_FLOOR)
    assert torch.equal(sc.float(), want)
    q = torch.clamp(torch.round(x / want.unsqueeze(1)), -127, 127)
    assert torch.equal(u.to(torch.int16) - 128, q.to(torch.int16))
    assert bool((u[7] == 128).all()) and int(u.min()) >= 1


def test_row_chunks_do_not_change_bytes_and_match_the_formats_codec(gen):
    w, s, x = _fp8(gen, 640, 256)
    qw, qs = _run(w, s, "block")
    q, sc = _plain_block(fp8_block_dequantize(w, s))
    assert torch.equal(qw, q) and torch.equal(qs.view(torch.int16), sc.view(torch.int16))
    for mode in ("block", "channel", "bf16"):
        a = list(convert_dense(w, s, mode, "t", rows=128))
        b = list(convert_dense(w, s, mode, "t", rows=4096))
        wa = torch.cat([t for p, t in a if p == "weight"])
        wb = torch.cat([t for p, t in b if p == "weight"])
        assert torch.equal(wa.view(torch.uint8), wb.view(torch.uint8))
        sa = [t for p, t in a if p == "scale"]
        sb = [t for p, t in b if p == "scale"]
        assert len(sa) == len(sb) == (0 if mode == "bf16" else 1)
        if sa:
            assert torch.equal(sa[0].view(torch.int16), sb[0].view(torch.int16))


def test_stats_are_the_dequantized_error(gen):
    w, s, x = _fp8(gen, 256, 256)
    st = []
    qw, qs = _run(w, s, "block", stats=st)
    y = int8_block_dequantize(qw, qs)
    assert st[1] == pytest.approx(float(((x.double() - y.double()) ** 2).sum()), rel=1e-4)
    assert st[0] == pytest.approx(float((x.double() ** 2).sum()), rel=1e-4)


def test_nan_fp8_byte_is_an_error_naming_the_tensor(gen):
    w, s, _ = _fp8(gen, 128, 128)
    b = w.view(torch.uint8).clone()
    b[5, 9] = 0x7F
    with pytest.raises(FormatError, match=r"layers\.0\.attn\.wkv\.weight.*NaN"):
        list(convert_dense(b.view(torch.float8_e4m3fn), s, "block", "layers.0.attn.wkv.weight"))
