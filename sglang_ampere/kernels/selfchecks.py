"""GPU self-checks of the TileLang sparse-MLA kernels against the torch fallback (real shapes).

``gpu_checks()`` returns ``[(name, check)]``; each ``check()`` runs on the current CUDA device,
returns a one-line detail (the error it measured) and raises
:class:`~sglang_ampere.checking.CheckFailed` when the TileLang result is off (never ``assert``,
so ``python -O`` cannot turn a failure into a pass). ``sglang-ampere selftest`` and ``tests/gpu/`` call them.

Shapes are DeepSeek-V4-Flash's: 64 heads, 512-wide rows, a 128-token window plus the top-512
compressed entries (ratio-4 layers) or every compressed entry (ratio-128 layers), contexts of
4k to 64k tokens; decode (a few tokens, split-K kernel) and prefill (many tokens, one CTA per
token and head block). Paged checks write SGLang's FP8 cache layout with the independent
encoder in :mod:`.kv_layout`.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..checking import require, require_close, require_cuda_sm80, worst_slice_max_rel
from . import indexer as I
from . import kv_layout as L
from . import sparse_mla as S
from . import tilelang_indexer as TI

HEADS = 64
WINDOW = 128
TOPK = 512
SCALE = L.HEAD_DIM ** -0.5
#: Largest allowed max|tilelang - torch| / max|torch| of any head. The kernel rounds the softmax weights
#: and K/V to bf16 for the tensor cores (relative 2^-9 each) and returns bf16.
TOL = 2e-2


#: Largest allowed max|lse_tilelang - lse_torch| (natural-log units) of the paged kernels.
LSE_TOL = 5e-2


def _require_cuda() -> torch.device:
    return require_cuda_sm80("the TileLang sparse-MLA checks")


def _sinks(g, device) -> torch.Tensor:
    """Per-head sinks from negligible to dominant (so a kernel that drops the sink fails)."""
    return torch.randn(HEADS, generator=g, device=device) + torch.linspace(-4, 12, HEADS, device=device)


def _gen(seed: int, device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def _dense_case(tokens: int, ctx: int, seed: int, device):
    g = _gen(seed, device)
    n = max(ctx // 4, TOPK) + WINDOW
    q = (torch.randn(tokens, HEADS, L.HEAD_DIM, generator=g, device=device) * 2).to(torch.bfloat16)
    kv = torch.randn(n, L.HEAD_DIM, generator=g, device=device).to(torch.bfloat16)
    k = TOPK + WINDOW
    idx = torch.randint(0, n, (tokens, k), generator=g, device=device, dtype=torch.int32)
    idx[:, -7:] = -1                                                    # padding slots
    lens = torch.randint(k // 2, k + 1, (tokens,), generator=g, device=device, dtype=torch.int32)
    sink = _sinks(g, device)
    return q, kv, idx, sink, lens


def check_dense(tokens: int, ctx: int, seed: int = 1) -> str:
    device = _require_cuda()
    q, kv, idx, sink, lens = _dense_case(tokens, ctx, seed, device)
    got = S.sparse_mla_tilelang(q, kv, idx, sink, SCALE, topk_length=lens)
    want = S.sparse_mla_torch(q.float(), kv.float(), idx, sink, SCALE, topk_length=lens)
    # worst head: a head whose sink dominates has small outputs, one global norm would hide it
    err = worst_slice_max_rel(got, want, dim=1)
    require_close(f"dense T={tokens} ctx={ctx}", "max rel err", err, TOL)
    return f"max rel err {err:.2e}"


def paged_case(tokens: int, ctx: int, ratio: int, seed: int, device, decode: bool = True) -> dict:
    """FlashMLA keyword arguments shaped like the DeepSeek-V4 backend's, on fresh FP8 caches.

    decode: every token sits at position ``ctx - 1`` of its own sequence; prefill: the tokens
    are consecutive positions ending at ``ctx - 1`` of one sequence.
    """
    g = _gen(seed, device)
    pos = (torch.full((tokens,), ctx - 1, device=device) if decode
           else torch.arange(ctx - tokens, ctx, device=device)).long()
    seq_len = pos + 1
    # window cache: one page set big enough for every token's window
    swa_slots = (tokens if decode else 1) * WINDOW + tokens
    swa_pages = -(-swa_slots // L.SWA_PAGE_SIZE) + 1
    swa = L.new_pool(swa_pages, L.SWA_PAGE_SIZE, device)
    n_swa = swa_pages * L.SWA_PAGE_SIZE
    L.write_rows(swa, torch.arange(n_swa, device=device),
                 torch.randn(n_swa, L.HEAD_DIM, generator=g, device=device), L.SWA_PAGE_SIZE)
    swa_len = seq_len.clamp(max=WINDOW).int()
    swa_idx = torch.randint(0, n_swa, (tokens, WINDOW), generator=g, device=device, dtype=torch.int32)
    swa_idx[torch.arange(WINDOW, device=device)[None, :] >= swa_len[:, None]] = -1
    kw = dict(q=(torch.randn(tokens, 1, HEADS, L.HEAD_DIM, generator=g, device=device) * 2).to(torch.bfloat16),
              k_cache=L.pool_view(swa, L.SWA_PAGE_SIZE), block_table=None, cache_seqlens=None,
              head_dim_v=L.HEAD_DIM, tile_scheduler_metadata=None, softmax_scale=SCALE, is_fp8_kvcache=True,
              indices=swa_idx[:, None], topk_length=swa_len,
              attn_sink=_sinks(g, device), use_legacy=True)
    if ratio:
        ps = L.SWA_PAGE_SIZE // ratio
        n_comp = ctx // ratio
        seqs = tokens if decode else 1
        pages = -(-(seqs * max(n_comp, 1)) // ps) + 1
        pool = L.new_pool(pages, ps, device)
        n = pages * ps
        L.write_rows(pool, torch.arange(n, device=device),
                     torch.randn(n, L.HEAD_DIM, generator=g, device=device), ps)
        if ratio == 4:
            width = TOPK
            ext_len = (seq_len // 4).clamp(min=1, max=TOPK).int()
        else:
            width = 64 * -(-(2 * -(-ctx // 256)) // 64)
            ext_len = (seq_len // 128).clamp(min=1).int()
        ext_idx = torch.randint(0, n, (tokens, width), generator=g, device=device, dtype=torch.int32)
        ext_idx[torch.arange(width, device=device)[None, :] >= ext_len[:, None]] = -1
        kw.update(extra_k_cache=L.pool_view(pool, ps), extra_indices_in_kvcache=ext_idx[:, None],
                  extra_topk_length=ext_len)
    return kw


def check_paged(tokens: int, ctx: int, ratio: int, decode: bool = True, seed: int = 2) -> str:
    device = _require_cuda()
    kw = paged_case(tokens, ctx, ratio, seed, device, decode)
    got, got_lse = S.sparse_mla_paged_tilelang(**kw)
    want, want_lse = S.sparse_mla_paged_torch(**{**kw, "q": kw["q"].float()})
    case = f"paged ratio {ratio} T={tokens} ctx={ctx}"
    require(got.shape == want.shape and got.dtype == torch.bfloat16,
            f"{case}: output {tuple(got.shape)} {got.dtype}, expected {tuple(want.shape)} torch.bfloat16")
    err = worst_slice_max_rel(got, want, dim=2)
    lse_err = float((got_lse.double() - want_lse.double()).abs().max())
    require_close(case, "max rel err", err, TOL)
    require_close(case, "lse max abs err", lse_err, LSE_TOL)
    return f"max rel err {err:.2e}, lse err {lse_err:.2e}"


def gpu_checks() -> list[tuple[str, Callable[[], str]]]:
    checks: list[tuple[str, Callable[[], str]]] = [
        ("sparse-mla dense decode (4 tokens, ctx 16k)", lambda: check_dense(4, 16384)),
        ("sparse-mla dense prefill (512 tokens, ctx 4k)", lambda: check_dense(512, 4096)),
    ]
    for ctx in (4096, 16384, 65536):
        checks.append((f"sparse-mla paged decode c4 (8 seqs, ctx {ctx // 1024}k)",
                       lambda ctx=ctx: check_paged(8, ctx, 4)))
        checks.append((f"sparse-mla paged decode c128 (8 seqs, ctx {ctx // 1024}k)",
                       lambda ctx=ctx: check_paged(8, ctx, 128)))
    checks += [
        ("sparse-mla paged decode window only (1 seq, ctx 4k)", lambda: check_paged(1, 4096, 0)),
        ("sparse-mla paged prefill c4 (256 tokens, ctx 16k)", lambda: check_paged(256, 16384, 4, decode=False)),
        ("sparse-mla paged prefill c128 (256 tokens, ctx 64k)", lambda: check_paged(256, 65536, 128, decode=False)),
    ]
    return checks + indexer_checks()


# ---------------------------------------------------------------------------------------------
# C4 indexer logits: TileLang kernel vs the bounded torch path

#: Largest allowed max|tilelang - torch| / max|torch| of any row. Both multiply exact e4m3
#: values and accumulate in float32 (the kernel as exact float16 on the tensor cores), so only
#: the summation order differs; a wrong page, scale, weight or head is off by O(1).
INDEXER_TOL = 1e-3


def indexer_case(rows: int, ctx: int, seed: int, device, decode: bool = True, width_pad: int = 0) -> tuple:
    """SGLang-shaped positional arguments of the indexer logits on a fresh index-K pool.

    ``ctx`` tokens give ``ctx // 4`` compressed entries. decode: ``rows`` sequences, lengths
    from about half the context to all of it (row 1 has length 1), each on its own randomly
    permuted pages, -1 past each length and in a spare column; prefill: ``rows`` consecutive
    query positions ending at ``ctx - 1`` of one sequence (entries ``(pos + 1) // 4``, so every
    partial last page occurs), all rows sharing one page-table row. Keys get per-entry scales
    spread over a factor of ~20, so a kernel that drops or misplaces them fails. ``width_pad``
    widens ``max_seq_len`` past the page table (those columns must be 0).
    """
    g = _gen(seed, device)
    entries = ctx // 4
    pages_per_seq = -(-entries // L.INDEX_PAGE_SIZE)
    if decode:
        lens = torch.randint(max(1, entries // 2), entries + 1, (rows,), generator=g, device=device)
        lens[0] = entries
        if rows > 1:
            lens[1] = 1
        seqs = rows
    else:
        lens = (torch.arange(ctx - rows, ctx, device=device) + 1) // 4
        seqs = 1
    total_pages = seqs * pages_per_seq + 3                              # a few pages nobody owns
    perm = torch.randperm(total_pages, generator=g, device=device).to(torch.int32)
    table = torch.full((seqs, pages_per_seq + 1), -1, dtype=torch.int32, device=device)
    table[:, :pages_per_seq] = perm[: seqs * pages_per_seq].view(seqs, pages_per_seq)
    if decode:
        used = -(-lens // L.INDEX_PAGE_SIZE)
        table[torch.arange(pages_per_seq + 1, device=device)[None, :] >= used[:, None]] = -1
    else:
        table = table.expand(rows, -1).contiguous()
    pool = L.index_pool(total_pages, device)
    n = total_pages * L.INDEX_PAGE_SIZE
    keys = torch.randn(n, L.INDEX_DIM, generator=g, device=device)
    keys *= torch.exp(torch.randn(n, 1, generator=g, device=device))
    L.write_index_keys(pool, torch.arange(n, device=device), keys)
    del keys
    q = (torch.randn(rows, 1, HEADS, L.INDEX_DIM, generator=g, device=device) * 3).to(torch.float8_e4m3fn)
    weight = torch.randn(rows, HEADS, generator=g, device=device) / 8
    return q, pool, weight, lens.to(torch.int32), table, None, entries + width_pad, False


def indexer_full_case(rows: int, entries: int, seed: int) -> tuple:
    """``(q, pool, weights, seq_lens, block_table)`` on CPU for the indexer logits' memory and time
    worst case: ``rows`` query rows each scoring all ``entries`` index entries of one page-table row
    (``benchmarks/indexer_memory.py`` and the torch path's peak-memory test measure it)."""
    pages = entries // L.INDEX_PAGE_SIZE
    g = torch.Generator().manual_seed(seed)
    pool = L.index_pool(pages)
    L.write_index_keys(pool, torch.arange(pages * 64), torch.randn(pages * 64, 128, generator=g))
    q = torch.randn(rows, 1, 64, 128, generator=g).to(torch.float8_e4m3fn)
    w = torch.rand(rows, 64, generator=g)
    seq = torch.full((rows,), entries, dtype=torch.int32)
    return q, pool, w, seq, torch.arange(pages, dtype=torch.int32).repeat(rows, 1)


def check_indexer(rows: int, ctx: int, decode: bool = True, width_pad: int = 0, seed: int = 3) -> str:
    device = _require_cuda()
    args = indexer_case(rows, ctx, seed, device, decode, width_pad)
    case = f"indexer {'decode' if decode else 'prefill'} rows={rows} ctx={ctx}"
    got = I.paged_mqa_logits_tilelang(*args)
    want = I.paged_mqa_logits_torch(*args)
    require(got.shape == want.shape and got.dtype == torch.float32,
            f"{case}: logits {tuple(got.shape)} {got.dtype}, expected {tuple(want.shape)} torch.float32")
    require(bool(torch.isfinite(got).all()), f"{case}: non-finite logits")
    past = torch.arange(got.shape[1], device=device)[None, :] >= args[3][:, None].long()
    stray = int((got[past] != 0).sum())
    require(stray == 0, f"{case}: {stray} nonzero logits past the rows' lengths (must be exactly 0)")
    err = worst_slice_max_rel(got, want, dim=0)
    require_close(case, "worst-row max rel err", err, INDEXER_TOL)
    return f"worst-row max rel err {err:.2e}, splits {_indexer_splits(args)}"


def _indexer_splits(args) -> int:
    """The split count the wrapper picks for these arguments (reported in the detail line)."""
    q, table = args[0], args[4]
    if q.device.type != "cuda":
        return 1
    arch, sms = TI._device_arch(q.device.index or 0)
    return TI.choose_splits(q.shape[0], table.shape[1], sms, TI.plan_for(arch))


def indexer_checks() -> list[tuple[str, Callable[[], str]]]:
    """64 heads, contexts 4k..128k tokens (1k..32k entries); decode batches (split kernels) and
    4096-row prefill chunks (one CTA per row)."""
    checks: list[tuple[str, Callable[[], str]]] = []
    for rows, ctx in ((16, 4096), (16, 65536), (4, 131072), (1, 131072), (3, 16384)):
        checks.append((f"indexer decode ({rows} row{'s' if rows > 1 else ''}, ctx {ctx // 1024}k)",
                       lambda rows=rows, ctx=ctx: check_indexer(rows, ctx)))
    checks += [
        ("indexer prefill (4096 rows, ctx 4k)", lambda: check_indexer(4096, 4096, decode=False)),
        ("indexer prefill (4096 rows, ctx 64k)", lambda: check_indexer(4096, 65536, decode=False)),
        ("indexer prefill (512 rows, ctx 128k, max_seq_len past the table)",
         lambda: check_indexer(512, 131072, decode=False, width_pad=200)),
    ]
    return checks
