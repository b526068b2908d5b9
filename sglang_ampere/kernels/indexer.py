"""The C4 indexer's paged MQA logits for GPUs below sm_90: the contract and a bounded torch path.

The computation
---------------
On DeepSeek-V4's ratio-4 ("c4") layers a lightning indexer picks, for every query row, the
top-512 compressed entries the sparse attention reads. It scores every compressed entry ``i``
of the row's request with 64 index heads of width 128::

    key[i]      = e4m3(cache bytes of entry i)            [128]   (see kv_layout, IndexK pages)
    scale[i]    = float32 scale of entry i
    out[b, i]   = scale[i] * sum_h weight[b, h] * relu(<q[b, h, :], key[i]>)   i < seq_lens[b]
    out[b, i]   = 0                                                            otherwise

``q`` is the row's indexer query in e4m3fn ``[B, 1, 64, 128]``, ``weight`` ``[B, 64]`` float32
the per-head weights (SGLang folds the softmax scale and the query's own FP8 scale into them),
``seq_lens [B]`` the row's number of compressed entries, ``page_table [B, max_pages]`` int32 the
row's index-K pages (entry ``i`` is slot ``i % 64`` of page ``page_table[b, i // 64]``; columns
past the length may hold -1 or any page). The result is ``[B, max_seq_len]`` float32;
``max_seq_len`` may be narrower or wider than ``64 * max_pages`` (entries past the table are
zero). Since ``scale[i] > 0``, ``relu(x) * scale = relu(x * scale)``: the order is free.
This is the contract of SGLang 0.5.23's ``fp8_paged_mqa_logits_torch``
(``srt/layers/attention/dsv4/indexer.py``) with the same positional arguments; the top-k stage
that follows (``topk_transform_paged``) reads only ``out[b, :seq_lens[b]]``. The one difference
is precision: SGLang's torch function rounds ``<q, key>`` to bf16 (its ``bmm`` runs in bf16);
here it is accumulated in float32, as the TileLang kernel's tensor cores do.

Memory
------
SGLang's function gathers the *whole* page table for every row and keeps about 57 KB per row
per page alive (5.3 GB for a 4096-row prefill chunk over a 4096-token context). Here the rows
and pages are walked in chunks sized from the shapes alone, so that everything one chunk holds
at once (gathered page bytes, float32 keys, float32 head scores) fits in
``SGLANG_AMPERE_INDEXER_BUDGET_MB`` (default 256 MB), at any context length; beyond that only
the result itself is allocated. FP8 is decoded with torch's own e4m3 conversion here (one
elementwise kernel, no integer temporaries; torch converts in software on every GPU), and with
integer operations in the TileLang kernel (:mod:`.tilelang_indexer`).

CUDA graphs: the chunk loop depends only on tensor shapes (fixed per captured batch size), and
nothing synchronises with the host while a graph is being captured. Outside capture the walk
stops at the chunk's longest row (one host read per row chunk), which is free on CPU and
saves the work past the longest prompt on GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .. import envvars
from . import kv_layout as L

__all__ = ["paged_mqa_logits_torch", "paged_mqa_logits_tilelang", "plan_chunks", "IndexerChunkPlan"]

_F32 = 4


def budget_bytes(budget_mb: float | None = None) -> int:
    """The per-chunk memory budget in bytes (``budget_mb`` or ``SGLANG_AMPERE_INDEXER_BUDGET_MB``)."""
    return envvars.budget_bytes(envvars.INDEXER_BUDGET_MB, budget_mb)


@dataclass(frozen=True)
class IndexerChunkPlan:
    rows: int            # query rows per chunk
    pages: int           # index-K pages per chunk
    chunk_bytes: int     # what one chunk holds at once (all its intermediates together)


def bytes_per_row_page(heads: int) -> int:
    """Bytes one (row, page) pair of a chunk holds at once: its gathered page bytes, the page's
    64 keys in float32 plus their byte copy for the FP8 view, and the 64 x heads float32 scores."""
    P = L.INDEX_PAGE_SIZE
    return L.INDEX_PAGE_BYTES + P * L.INDEX_DIM * (_F32 + 1) + P * heads * _F32


def plan_chunks(rows: int, pages: int, heads: int, budget: int) -> IndexerChunkPlan:
    """Rows and pages per chunk so that one chunk's intermediates fit in ``budget`` bytes.

    Pages first (a decode row over a long context splits its pages), then as many rows as fit;
    each row also holds its float32 query (``heads * 128 * 4`` bytes). At least one of each.
    """
    per_pair = bytes_per_row_page(heads)
    per_row_q = heads * L.INDEX_DIM * _F32
    pc = max(1, min(max(pages, 1), (budget - per_row_q) // per_pair))
    rc = max(1, min(max(rows, 1), budget // (pc * per_pair + per_row_q)))
    return IndexerChunkPlan(rc, pc, rc * (pc * per_pair + per_row_q))


def _check_args(q_fp8, kvcache_fp8, weight, seq_lens, page_table, max_seq_len, clean_logits) -> None:
    if q_fp8.ndim != 4 or q_fp8.shape[1] != 1 or q_fp8.shape[3] != L.INDEX_DIM:
        raise ValueError(f"q_fp8 must be [rows, 1, heads, {L.INDEX_DIM}] (one query per row), "
                         f"got {tuple(q_fp8.shape)}")
    if q_fp8.dtype not in (torch.float8_e4m3fn, torch.uint8):
        raise ValueError(f"q_fp8 must be float8_e4m3fn (or its uint8 bytes), got {q_fp8.dtype}")
    B, _, H, _ = q_fp8.shape
    want = (L.INDEX_PAGE_SIZE, 1, L.INDEX_ENTRY_BYTES)
    if kvcache_fp8.ndim != 4 or tuple(kvcache_fp8.shape[1:]) != want or kvcache_fp8.element_size() != 1:
        raise ValueError(f"kvcache_fp8 must be the index-K pool view [pages, {want[0]}, 1, {want[2]}] of "
                         f"1-byte elements, got {tuple(kvcache_fp8.shape)} {kvcache_fp8.dtype}")
    if kvcache_fp8.shape[0] == 0:
        raise ValueError("kvcache_fp8 has no pages")
    if tuple(weight.shape) != (B, H):
        raise ValueError(f"weight must be [rows, heads] = [{B}, {H}], got {tuple(weight.shape)}")
    if tuple(seq_lens.shape) != (B,):
        raise ValueError(f"seq_lens must be [rows] = [{B}], got {tuple(seq_lens.shape)}")
    if page_table.ndim != 2 or page_table.shape[0] != B:
        raise ValueError(f"page_table must be [rows, max_pages] with {B} rows, got {tuple(page_table.shape)}")
    if int(max_seq_len) < 0:
        raise ValueError(f"max_seq_len must be >= 0, got {max_seq_len}")
    if clean_logits:
        raise ValueError("clean_logits=True is not supported (SGLang's torch path refuses it too); "
                         "entries past each row's length are always 0")


def paged_mqa_logits_torch(q_fp8: torch.Tensor, kvcache_fp8: torch.Tensor, weight: torch.Tensor,
                           seq_lens: torch.Tensor, page_table: torch.Tensor, deep_gemm_metadata: Any,
                           max_seq_len: int, clean_logits: bool = False, *,
                           budget_mb: float | None = None) -> torch.Tensor:
    """The indexer logits (module docstring) in torch, within the memory budget.

    Same positional arguments as SGLang's ``fp8_paged_mqa_logits_torch``;
    ``deep_gemm_metadata`` is accepted and ignored. Returns ``[rows, max_seq_len]`` float32.
    """
    _check_args(q_fp8, kvcache_fp8, weight, seq_lens, page_table, max_seq_len, clean_logits)
    B, _, H, D = q_fp8.shape
    W = int(max_seq_len)
    ps = L.INDEX_PAGE_SIZE
    dev = q_fp8.device
    out = torch.zeros(B, W, dtype=torch.float32, device=dev)
    pages_used = min(page_table.shape[1], -(-W // ps))
    if B == 0 or pages_used == 0:
        return out
    flat = L.index_pool_pages(kvcache_fp8)
    last_page = flat.shape[0] - 1
    plan = plan_chunks(B, pages_used, H, budget_bytes(budget_mb))
    lens_all = seq_lens.to(device=dev, dtype=torch.int64)
    trim = not L.capturing(dev)
    for r0 in range(0, B, plan.rows):
        r1 = min(B, r0 + plan.rows)
        row_pages = pages_used
        if trim:                                   # one host read per row chunk, never in a graph
            row_pages = min(pages_used, -(-int(lens_all[r0:r1].max().clamp(min=0)) // ps))
        if row_pages == 0:
            continue
        q = q_fp8[r0:r1, 0].view(torch.float8_e4m3fn).float()                 # [r, H, D]
        w = weight[r0:r1].to(torch.float32)[:, None, :]                       # [r, 1, H]
        lens = lens_all[r0:r1, None]
        for p0 in range(0, row_pages, plan.pages):
            p1 = min(row_pages, p0 + plan.pages)
            ids = page_table[r0:r1, p0:p1].to(device=dev, dtype=torch.int64).clamp(0, last_page)
            pages = flat[ids]                                                 # [r, p, 8448] uint8
            keys = pages[..., : L.INDEX_SCALE_OFFSET].contiguous().view(torch.float8_e4m3fn)
            keys = keys.float().view(r1 - r0, (p1 - p0) * ps, D)             # [r, p*64, D]
            scales = pages[..., L.INDEX_SCALE_OFFSET:].contiguous().view(torch.float32)
            scales = scales.view(r1 - r0, (p1 - p0) * ps)                     # [r, p*64]
            del pages
            scores = torch.bmm(keys, q.transpose(1, 2))                       # [r, p*64, H]
            del keys
            scores.relu_().mul_(w)
            logits = scores.sum(-1).mul_(scales)                              # [r, p*64]
            del scores
            col = torch.arange(p0 * ps, p1 * ps, device=dev)
            logits.masked_fill_(col[None, :] >= lens, 0.0)
            c1 = min(W, p1 * ps)
            out[r0:r1, p0 * ps:c1] = logits[:, : c1 - p0 * ps]
    return out


def paged_mqa_logits_tilelang(q_fp8: torch.Tensor, kvcache_fp8: torch.Tensor, weight: torch.Tensor,
                              seq_lens: torch.Tensor, page_table: torch.Tensor, deep_gemm_metadata: Any,
                              max_seq_len: int, clean_logits: bool = False) -> torch.Tensor:
    """The indexer logits on CUDA with the TileLang kernel (same contract as the torch path)."""
    _check_args(q_fp8, kvcache_fp8, weight, seq_lens, page_table, max_seq_len, clean_logits)
    from . import tilelang_indexer

    return tilelang_indexer.paged_mqa_logits_tilelang(q_fp8, kvcache_fp8, weight, seq_lens, page_table,
                                                      deep_gemm_metadata, max_seq_len, clean_logits)


#: The implementations by the name ``SGLANG_AMPERE_INDEXER_BACKEND`` gives them.
IMPLEMENTATIONS = {"torch": paged_mqa_logits_torch, "tilelang": paged_mqa_logits_tilelang}
