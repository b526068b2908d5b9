"""Paged form (SGLang's FP8 DeepSeek-V4 cache) against the dense form.

Caches are written by ``kv_layout.write_rows`` (an encoder of SGLang's layout that uses torch's
FP8 conversion) and read back by the kernels' integer-only decoder; the dense reference reads
the same rows with torch's FP8 conversion (``read_rows_reference``).
"""

from __future__ import annotations

import secrets

import pytest
import torch

from sglang_ampere.kernels import kv_layout as L
from sglang_ampere.kernels import sparse_mla as S


def _seed() -> int:
    s = secrets.randbits(31)
    torch.manual_seed(s)
    return s


def _rows(n):
    rows = torch.randn(n, 512) * torch.exp(torch.randn(n, 1))      # varied magnitudes
    rows[:, :448] *= torch.exp(torch.randn(1, 448) * 2)              # and per-channel outliers
    return rows.to(torch.bfloat16)


def _pool(pages, page_size, fill):
    buf = L.new_pool(pages, page_size)
    slots = torch.randperm(pages * page_size)[:fill]
    L.write_rows(buf, slots, _rows(fill), page_size)
    return buf, slots


def test_layout_constants_match_sglang():
    kvl = pytest.importorskip("sglang.kernels.ops.attention.dsv4.kv_layout")
    v4 = kvl.KVLayout.V4
    assert (v4.data_bytes, v4.scale_bytes, v4.tile_size) == (L.DATA_ROW_BYTES, L.SCALE_ROW_BYTES, L.QUANT_GROUP)
    for ps in (L.SWA_PAGE_SIZE, L.C4_PAGE_SIZE, L.C128_PAGE_SIZE):
        assert v4.page_bytes(ps) == L.page_bytes(ps)
        assert v4.row_addressing(ps) == (L.DATA_ROW_BYTES, ps * L.DATA_ROW_BYTES, L.SCALE_ROW_BYTES)


def test_integer_decoder_is_exact_for_every_byte_and_scale():
    data = torch.zeros(256, 576, dtype=torch.uint8)
    codes = torch.arange(256, dtype=torch.uint8)
    codes = torch.where((codes == 0x7F) | (codes == 0xFF), torch.zeros_like(codes), codes)   # NaN bytes never written
    # row r holds every code at a different column and under a different scale group
    data[:, :448] = torch.stack([codes.roll(r).repeat(2)[:448] for r in range(256)])
    data[:, 448:] = torch.randint(0, 256, (256, 128), dtype=torch.uint8)
    data[:, 449::2] &= 0x3F                                              # bf16 RoPE: finite values only
    scale = torch.zeros(256, 8, dtype=torch.uint8)
    scale[:, :7] = torch.randint(1, 255, (256, 7), dtype=torch.uint8)
    scale[:3, :7] = torch.tensor([1, 127, 254], dtype=torch.uint8)[:, None]
    got = S.decode_kv_rows(data, scale)
    nope = data[:, :448].view(torch.float8_e4m3fn).float().reshape(256, 7, 64)
    want = torch.cat([(nope * scale[:, :7].view(torch.float8_e8m0fnu).float()[..., None]).reshape(256, 448),
                      data[:, 448:].contiguous().view(torch.bfloat16).float()], 1)
    torch.testing.assert_close(got, want, rtol=0, atol=0)   # bit-exact, incl. subnormal products


def test_table_decoder_gives_the_integer_decoders_bits():
    """e4m3_bytes_to_float looks the byte up in e4m3_bits_to_float's 256 values: the same bits for
    every code, in any shape, NaN bytes included (480, as the sm_86 kernels' integer decode)."""
    codes = torch.arange(256, dtype=torch.uint8)
    table = L.e4m3_bytes_to_float(codes)
    assert torch.equal(table.view(torch.int32), L.e4m3_bits_to_float(codes).view(torch.int32))
    assert table[0x7F].item() == 480.0 and table[0xFF].item() == -480.0
    b = torch.randint(0, 256, (3, 37, 5), dtype=torch.uint8)
    assert torch.equal(L.e4m3_bytes_to_float(b), L.e4m3_bits_to_float(b))
    # the check can fail: torch's own e4m3fn conversion reads the NaN bytes as NaN
    assert not torch.equal(codes.view(torch.float8_e4m3fn).float(), table)


def test_encoder_follows_the_writer_rules():
    seed = _seed()
    rows = _rows(50)
    data, scale = L.encode_rows(rows)
    amax = rows[:, :448].float().reshape(50, 7, 64).abs().amax(-1).clamp(min=1e-4)
    s = torch.ldexp(torch.ones(50, 7), scale[:, :7].int() - 127)
    assert (amax / s <= 448).all() and (amax / s > 224).all(), f"seed {seed}"   # smallest power of two
    assert (scale[:, 7] == 0).all()
    back = L.read_rows_reference(*_as_pool(data, scale))
    assert torch.equal(back[:, 448:], rows[:, 448:].float())
    err = (back[:, :448] - rows[:, :448].float()).reshape(50, 7, 64).abs().amax(-1)
    assert (err <= amax * 2 ** -4).all(), f"seed {seed}"                          # e4m3: 3 mantissa bits


def _as_pool(data, scale):
    n = data.shape[0]
    buf = L.new_pool(1, n)
    buf[0, : n * 576] = data.reshape(-1)
    buf[0, n * 576: n * 584] = scale.reshape(-1)
    return buf, torch.arange(n), n


def _backend_like_inputs(T, H, ratio, swa_pages=3, extra_pages=None):
    """Indices and lengths shaped like the DeepSeek-V4 backend's (widths multiples of 64)."""
    swa, swa_slots = _pool(swa_pages, 256, swa_pages * 256 - 17)
    L_tok = torch.randint(1, 3000, (T,))
    L_tok[0] = 1                                                             # the first token
    swa_len = L_tok.clamp(max=128).int()
    swa_idx = swa_slots[torch.randint(0, swa_slots.numel(), (T, 128))].int()
    swa_idx[torch.arange(128)[None, :] >= swa_len[:, None]] = -1
    if T > 2:
        swa_idx[-1, :] = 0                                                   # a padded query row
        swa_len[-1] = 1
    q = (torch.randn(T, 1, H, 512) * 2).to(torch.bfloat16)
    sink = torch.randn(H) * 2
    kw = dict(q=q, k_cache=L.pool_view(swa, 256), indices=swa_idx[:, None], topk_length=swa_len,
              attn_sink=sink, softmax_scale=512 ** -0.5, head_dim_v=512, is_fp8_kvcache=True,
              block_table=None, cache_seqlens=None, tile_scheduler_metadata=None, use_legacy=True)
    pools = [(swa, 256, swa_idx, swa_len)]
    if ratio:
        ps = 256 // ratio
        pages = extra_pages or (40 if ratio == 4 else 700)
        ext, ext_slots = _pool(pages, ps, pages * ps - 3)
        if ratio == 4:
            W = 512
            ext_len = (L_tok // 4).clamp(min=1, max=512).int()
        else:
            W = 64 * ((2 * ((3000 + 255) // 256) + 63) // 64)
            ext_len = (L_tok // 128).clamp(min=1).int()
        ext_idx = ext_slots[torch.randint(0, ext_slots.numel(), (T, W))].int()
        ext_idx[torch.arange(W)[None, :] >= ext_len[:, None]] = -1
        ext_idx[torch.rand(T, W) < 0.05] = -1                                # holes inside the length
        kw.update(extra_k_cache=L.pool_view(ext, ps), extra_indices_in_kvcache=ext_idx[:, None],
                  extra_topk_length=ext_len)
        pools.append((ext, ps, ext_idx, ext_len))
    return kw, pools


def _dense_equivalent(pools):
    """Decode every used row with torch's FP8 conversion and build the dense-form arguments."""
    kvs, idxs, base = [], [], 0
    for buf, ps, idx, lens in pools:
        n = buf.shape[0] * ps
        kvs.append(L.read_rows_reference(buf, torch.arange(n), ps))
        i = idx.clone().long()
        i[torch.arange(i.shape[1])[None, :] >= lens[:, None].long()] = -1
        idxs.append(torch.where(i >= 0, i + base, i))
        base += n
    return torch.cat(kvs), torch.cat(idxs, 1).int()


@pytest.mark.parametrize("ratio", [0, 4, 128])
def test_paged_matches_dense(ratio):
    seed = _seed()
    kw, pools = _backend_like_inputs(6, 8, ratio)
    out, lse = S.sparse_mla_paged_torch(**kw)
    assert out.shape == (6, 1, 8, 512) and out.dtype == torch.bfloat16 and lse.shape == (6, 8, 1)
    kv, idx = _dense_equivalent(pools)
    q32 = kw["q"][:, 0].float()
    want = S.sparse_mla_torch(q32, kv, idx, kw["attn_sink"], kw["softmax_scale"])
    err = float((out[:, 0].float() - want).abs().max() / want.abs().max())
    assert err <= 1e-2, f"seed {seed}: {err}"                                 # bf16 output rounding
    out32, lse32 = S.sparse_mla_paged_torch(**{**kw, "q": kw["q"].float()})
    err32 = float((out32[:, 0] - want).abs().max() / want.abs().max())
    assert err32 <= 1e-5, f"seed {seed}: {err32}"


def test_paged_matches_sglang_reference():
    """SGLang's own pure-torch FlashMLA stand-in (the sm120 fallback) on the same caches."""
    ref_mod = pytest.importorskip("sglang.kernels.ops.attention.flash_mla_sm120")
    seed = _seed()
    kw, _ = _backend_like_inputs(5, 16, 4)
    out, lse = S.sparse_mla_paged_torch(**kw)
    ref_out, ref_lse = ref_mod._sm120_sparse_decode_fwd(
        kw["q"], kw["k_cache"], kw["indices"], kw["topk_length"], kw["attn_sink"], 512, kw["softmax_scale"],
        kw["extra_k_cache"], kw["extra_indices_in_kvcache"], kw["extra_topk_length"])
    err = float((out.float() - ref_out.float()).abs().max() / ref_out.float().abs().max())
    assert err <= 2e-2, f"seed {seed}: {err}"                                 # SGLang rounds K/V to bf16
    assert torch.allclose(lse[..., 0], ref_lse[:, :, 0], atol=2e-2), f"seed {seed}"


def test_paged_chunking_and_no_extra_lists():
    seed = _seed()
    kw, pools = _backend_like_inputs(4, 4, 128, extra_pages=300)
    a, _ = S.sparse_mla_paged_torch(**kw, budget_mb=0.05)
    b, _ = S.sparse_mla_paged_torch(**kw, budget_mb=512)
    assert float((a.float() - b.float()).abs().max()) <= 1e-2 * float(b.float().abs().max()), f"seed {seed}"


def test_paged_rejects_what_it_cannot_do():
    kw, _ = _backend_like_inputs(2, 4, 0)
    with pytest.raises(ValueError, match="causal=False"):
        S.sparse_mla_paged_torch(**{**kw, "causal": True})
    with pytest.raises(ValueError, match="sparse mode"):
        S.sparse_mla_paged_torch(**{**kw, "indices": None})
    bad = torch.zeros(2, 256, 1, 528, dtype=torch.uint8)
    with pytest.raises(ValueError, match="KVLayout.V4"):
        S.sparse_mla_paged_torch(**{**kw, "k_cache": bad})
