"""The host side of the TileLang C4-indexer kernel, on the CPU: its decode rule, its tile walk
(emulated in torch with the kernel's exact split/block/clamp rules) against the torch path,
the split choice, the pool view, and the kernel list kernel-report compiles.

The kernel itself only runs on a GPU (tests/gpu, ``sglang-ampere selftest``); its sm_86/sm_80
machine code is checked by tests/test_kernel_report.py.
"""

from __future__ import annotations

import pytest
import torch

from sglang_ampere.kernels import indexer as I
from sglang_ampere.kernels import kv_layout as L
from sglang_ampere.kernels import tilelang_indexer as TI


def _ceildiv(a: int, b: int) -> int:
    return -(-a // b)


def emulate(spec: TI.KernelSpec, q, pool, weight, lens, table, width):
    """What the kernel computes and writes, CTA by CTA (row b, split sp), in float64.

    Returns (out, writes): the result and how many times each column was stored.
    """
    B, H = weight.shape
    flat = pool.view(torch.uint8).reshape(pool.shape[0], L.INDEX_PAGE_BYTES)
    npages, max_pages = flat.shape[0], table.shape[1]
    BN, PPI, NS = spec.plan.block_n, spec.plan.pages_per_iter, spec.num_splits
    out = torch.full((B, width), float("nan"), dtype=torch.float64)
    writes = torch.zeros(B, width, dtype=torch.int32)
    for b in range(B):
        qs = TI.fp16_of_e4m3_torch(q[b, 0].view(torch.uint8)).double()          # [H, 128]
        n = max(min(int(lens[b]), max_pages * L.INDEX_PAGE_SIZE, width), 0)
        nblk = _ceildiv(n, BN)
        for sp in range(NS):
            n_mine = _ceildiv(max(nblk - sp, 0), NS)
            n_all = _ceildiv(_ceildiv(width, BN) - sp, NS)
            for it in range(n_mine):
                blk = sp + it * NS
                keys, scales = [], []
                for t in range(PPI):
                    pg = min(max(int(table[b, min(blk * PPI + t, max_pages - 1)]), 0), npages - 1)
                    kb = flat[pg, : L.INDEX_SCALE_OFFSET].reshape(L.INDEX_PAGE_SIZE, L.INDEX_DIM)
                    keys.append(TI.fp16_of_e4m3_torch(kb).double())
                    scales.append(flat[pg, L.INDEX_SCALE_OFFSET:].contiguous().view(torch.float32).double())
                k, sc = torch.cat(keys), torch.cat(scales) * TI.UNDO_DECODE
                tot = ((k @ qs.T).clamp(min=0) * weight[b].double()).sum(1) * sc
                for j in range(BN):
                    col = blk * BN + j
                    if col < width:
                        out[b, col] = tot[j] if col < n else 0.0
                        writes[b, col] += 1
            for it in range(max(n_all - n_mine, 0)):
                blk = sp + (n_mine + it) * NS
                for j in range(BN):
                    col = blk * BN + j
                    if col < width:
                        out[b, col] = 0.0
                        writes[b, col] += 1
    return out, writes


def _case(gen, rows, entries, pages, width, minus_one=True):
    pool = L.index_pool(pages)
    n = pages * L.INDEX_PAGE_SIZE
    keys = torch.randn(n, L.INDEX_DIM, generator=gen) * torch.exp(torch.randn(n, 1, generator=gen))
    L.write_index_keys(pool, torch.arange(n), keys)
    q = (torch.randn(rows, 1, 64, L.INDEX_DIM, generator=gen) * 3).to(torch.float8_e4m3fn)
    weight = torch.randn(rows, 64, generator=gen) / 8
    lens = torch.randint(0, entries + 1, (rows,), generator=gen, dtype=torch.int32)
    lens[0] = entries
    max_pages = _ceildiv(entries, 64) + 1
    table = torch.stack([torch.randperm(pages, generator=gen)[:max_pages] for _ in range(rows)]).int()
    if minus_one:
        used = -(-lens.long() // 64)
        table[torch.arange(max_pages)[None, :] >= used[:, None]] = -1
    return q, pool, weight, lens, table, width


def test_decode_rule_is_exact_for_every_byte():
    b = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    want = b.view(torch.float8_e4m3fn).float()
    got = TI.fp16_of_e4m3_torch(b).float() * 2.0 ** 8
    finite = ~torch.isnan(want)                       # 0x7F / 0xFF: NaN, never written
    assert finite.sum() == 254
    assert torch.equal(got[finite], want[finite])     # normals, subnormals, both zeros, +-448
    assert torch.equal(got[finite], L.e4m3_bytes_to_float(b)[finite])


@pytest.mark.parametrize("ns,rows,entries,width", [
    (1, 5, 300, 300),        # prefill kernel; odd rows, partial last page
    (4, 3, 700, 700),        # split kernel: blocks interleaved over splits
    (16, 2, 200, 200),       # more splits than blocks: most CTAs only zero-fill
    (2, 3, 257, 450),        # max_seq_len past the page table
    (8, 2, 513, 400),        # max_seq_len narrower than the table
])
def test_tile_walk_matches_the_torch_path(gen, ns, rows, entries, width):
    q, pool, weight, lens, table, W = _case(gen, rows, entries, pages=_ceildiv(entries, 64) * rows + 4, width=width)
    spec = TI.KernelSpec(num_splits=ns)
    got, writes = emulate(spec, q, pool, weight, lens, table, W)
    want = I.paged_mqa_logits_torch(q, pool, weight, lens, table, None, W)
    assert torch.equal(writes, torch.ones_like(writes)), "every column is stored exactly once"
    assert torch.allclose(got, want.double(), rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    past = torch.arange(W)[None, :] >= lens[:, None].long()
    assert (got[past] == 0).all()


def test_minus_one_and_stray_pages_are_clamped_like_the_torch_path(gen):
    q, pool, weight, lens, table, W = _case(gen, 2, 130, pages=8, width=130, minus_one=False)
    table[1, 1] = -1                                 # inside the length: read as page 0
    table[0, 2] = 99                                 # past the pool: read as the last page
    got, _ = emulate(TI.KernelSpec(num_splits=2), q, pool, weight, lens, table, W)
    want = I.paged_mqa_logits_torch(q, pool, weight, lens, table, None, W)
    assert torch.allclose(got, want.double(), rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def test_splits_come_from_shapes_and_fill_the_gpu():
    plan = TI.PLANS[86]
    assert TI.choose_splits(4096, 256, 82) == 1                 # prefill: rows fill the GPU
    assert TI.choose_splits(16, 1024, 82) == 16                 # decode at 256k: 256 CTAs
    assert TI.choose_splits(1, 512, 82) == 64                   # one row over 128k
    assert TI.choose_splits(1, 4, 82) == 2                      # never more splits than blocks
    assert TI.choose_splits(3, 0, 82) == 1
    for rows in (1, 2, 3, 7, 16, 64, 200, 4096):
        for pages in (1, 17, 64, 512):
            ns = TI.choose_splits(rows, pages, 82, plan)
            assert ns in TI.SPLITS and ns <= max(1, _ceildiv(pages, plan.pages_per_iter))


def test_pool_view_is_zero_copy_and_checked():
    pool = L.index_pool(5)
    flat, st = TI._flat_pool(pool.view(torch.float8_e4m3fn))
    assert st == L.INDEX_PAGE_BYTES and flat.numel() == 5 * L.INDEX_PAGE_BYTES
    assert flat.data_ptr() == pool.data_ptr()
    buf = torch.zeros(5, L.INDEX_PAGE_BYTES + 64, dtype=torch.uint8)     # padded page stride
    view = buf[:, : L.INDEX_PAGE_BYTES].view(5, 64, 1, 132)
    flat, st = TI._flat_pool(view)
    assert st == L.INDEX_PAGE_BYTES + 64 and flat.numel() == 4 * st + L.INDEX_PAGE_BYTES
    with pytest.raises(ValueError, match="index-K pool"):
        TI._flat_pool(torch.zeros(5, 64, 1, 128, dtype=torch.uint8))


def test_wrapper_is_cuda_only():
    q = torch.zeros(1, 1, 64, 128, dtype=torch.float8_e4m3fn)
    with pytest.raises(RuntimeError, match="CUDA only"):
        TI.paged_mqa_logits_tilelang(q, L.index_pool(1), torch.zeros(1, 64), torch.ones(1, dtype=torch.int32),
                                     torch.zeros(1, 1, dtype=torch.int32), None, 64)


def test_plans_fit_the_shared_memory_and_kernel_lists():
    for arch, limit in ((86, 99 * 1024), (80, 163 * 1024)):
        plan = TI.plan_for(arch)
        assert plan.shared_bytes() == 49920 <= limit          # kernel-report measures 49920 B
        assert plan.threads // 32 * 16 == plan.block_n       # FullRow: 16 entries per warp
        names = [s.name for s in TI.report_specs(arch)]
        assert names == ["indexer_logits_prefill_h64", "indexer_logits_decode_s16_h64"]
        assert [s.num_splits for s in TI.serving_specs(arch)] == list(TI.SPLITS)
    assert TI.plan_for(89) == TI.PLANS[86]
    with pytest.raises(ValueError, match="sm_90"):
        TI.plan_for(90)
