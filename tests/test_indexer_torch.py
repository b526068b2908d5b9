"""The C4 indexer logits: the bounded torch path against float64 math written from the layout.

The oracle decodes the pool's bytes with the integer e4m3 decoder and ``struct`` for the float32
scales, and does the arithmetic in float64; the torch path under test uses torch's own FP8
conversion and float32, in chunks. Pools are written with ``kv_layout.write_index_keys``.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import pytest
import torch

from sglang_ampere.kernels import indexer as I
from sglang_ampere.kernels import kv_layout as L

HEADS = 64


def _case(gen, rows, lens, pages_in_pool, table_width, heads=HEADS, pad=-1):
    """A pool with keys of varied magnitude, and rows whose page tables are random permutations."""
    pool = L.index_pool(pages_in_pool)
    n = pages_in_pool * L.INDEX_PAGE_SIZE
    keys = torch.randn(n, L.INDEX_DIM, generator=gen) * torch.exp(torch.randn(n, 1, generator=gen))
    L.write_index_keys(pool, torch.randperm(n, generator=gen), keys)
    table = torch.stack([torch.randperm(pages_in_pool, generator=gen)[:table_width] for _ in range(rows)]).int()
    seq = torch.tensor(lens, dtype=torch.int32)
    for r, n_r in enumerate(lens):                  # columns past the length: padding
        table[r, -(-n_r // L.INDEX_PAGE_SIZE):] = pad
    q = (torch.randn(rows, 1, heads, L.INDEX_DIM, generator=gen) * 3).to(torch.float8_e4m3fn)
    w = torch.rand(rows, heads, generator=gen) - 0.3            # some negative head weights too
    return q, pool, w, seq, table


def _oracle(q, pool, w, seq, table, width):
    flat = pool.view(torch.uint8).reshape(pool.shape[0], L.INDEX_PAGE_BYTES)
    keys = L.e4m3_bytes_to_float(flat[:, : L.INDEX_SCALE_OFFSET]).double().reshape(-1, L.INDEX_PAGE_SIZE, L.INDEX_DIM)
    raw = bytes(flat[:, L.INDEX_SCALE_OFFSET:].contiguous().flatten().tolist())
    scales = torch.tensor(struct.unpack(f"<{len(raw) // 4}f", raw), dtype=torch.float64).reshape(-1, L.INDEX_PAGE_SIZE)
    qd = L.e4m3_bytes_to_float(q.view(torch.uint8)).double()[:, 0]            # [B, H, D]
    out = torch.zeros(q.shape[0], width, dtype=torch.float64)
    for b in range(q.shape[0]):
        n = min(int(seq[b]), width, table.shape[1] * L.INDEX_PAGE_SIZE)
        for i in range(n):
            page = int(table[b, i // L.INDEX_PAGE_SIZE])
            dots = qd[b] @ keys[page, i % L.INDEX_PAGE_SIZE]                   # [H]
            out[b, i] = scales[page, i % L.INDEX_PAGE_SIZE] * (w[b].double() * dots.clamp(min=0)).sum()
    return out


def _rel(got, want):
    return float((got.double() - want).abs().max() / want.abs().max().clamp(min=1e-300))


@pytest.mark.parametrize("lens,pages,width,max_seq", [
    ([1], 3, 3, 192),                          # one row, one entry
    ([64, 65, 1, 130, 191], 5, 3, 192),        # page edges, partial last pages, -1 padding
    ([200, 7, 129], 6, 4, 150),                # max_seq_len narrower than the table
    ([70, 3, 1, 64, 100, 33, 128], 4, 2, 300),  # wider than the table: zeros past 128
    ([0, 5, 0], 2, 1, 64),                     # rows with no entry at all
])
def test_matches_float64_oracle(gen, lens, pages, width, max_seq):
    q, pool, w, seq, table = _case(gen, len(lens), lens, pages, width)
    got = I.paged_mqa_logits_torch(q, pool, w, seq, table, None, max_seq, False)
    want = _oracle(q, pool, w, seq, table, max_seq)
    assert got.dtype == torch.float32 and got.shape == (len(lens), max_seq)
    assert want.abs().max() > 0
    assert _rel(got, want) < 1e-5
    for b, n in enumerate(lens):                   # exactly zero past each length
        assert not got[b, n:].any()


def test_chunking_changes_nothing(gen):
    lens = [300, 1, 257, 64, 190, 5, 320, 100, 2]
    q, pool, w, seq, table = _case(gen, len(lens), lens, 8, 5)
    whole = I.paged_mqa_logits_torch(q, pool, w, seq, table, None, 320, budget_mb=1024)
    plan = I.plan_chunks(len(lens), 5, HEADS, I.budget_bytes(0.2))
    assert plan.rows < len(lens) and plan.pages < 5                  # really chunked both ways
    tiny = I.paged_mqa_logits_torch(q, pool, w, seq, table, None, 320, budget_mb=0.2)
    assert _rel(tiny, whole.double()) < 1e-6


def test_untrimmed_graph_path_is_the_same_and_reads_nothing_back(gen, monkeypatch):
    """Under CUDA-graph capture the walk must not depend on data: force that path, compare it,
    then run it on the meta device, where any host read of a tensor value raises."""
    lens = [3, 130, 64]
    q, pool, w, seq, table = _case(gen, 3, lens, 4, 4)
    trimmed = I.paged_mqa_logits_torch(q, pool, w, seq, table, None, 256, budget_mb=0.3)
    monkeypatch.setattr(L, "capturing", lambda device: True)
    full = I.paged_mqa_logits_torch(q, pool, w, seq, table, None, 256, budget_mb=0.3)
    assert torch.equal(trimmed, full)
    meta = [t.to("meta") for t in (q, pool, w, seq, table)]
    out = I.paged_mqa_logits_torch(*meta[:4], meta[4], None, 256, budget_mb=0.3)
    assert out.device.type == "meta" and out.shape == (3, 256)


def test_same_result_as_sglang_torch_function(gen):
    sg = pytest.importorskip("sglang.srt.layers.attention.dsv4.indexer")
    lens = [1, 64, 100, 250, 37]
    q, pool, w, seq, table = _case(gen, 5, lens, 6, 4, pad=0)          # SGLang clamps -1 itself too
    w = w.abs()
    ours = I.paged_mqa_logits_torch(q, pool, w, seq, table, None, 256, False)
    theirs = sg.fp8_paged_mqa_logits_torch(q, pool, w, seq, table, None, 256, False)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    assert ours.is_contiguous() and theirs.is_contiguous()
    assert torch.equal(ours == 0, theirs == 0)                         # zeros in the same places
    # SGLang rounds each q.k to bf16 before the ReLU (its bmm runs in bf16): 2^-8 relative.
    assert _rel(theirs, ours.double()) < 1e-2


def test_plan_fits_the_budget_at_any_context():
    for rows in (1, 16, 4096, 8192):
        for ctx_tokens in (4096, 65536, 131072, 1 << 20):
            pages = ctx_tokens // 4 // L.INDEX_PAGE_SIZE
            plan = I.plan_chunks(rows, pages, HEADS, I.budget_bytes(256))
            assert plan.chunk_bytes <= 256 * 2**20, (rows, ctx_tokens, plan)
            assert 1 <= plan.rows <= rows and 1 <= plan.pages <= pages


def test_bad_input_is_named(gen, monkeypatch):
    q, pool, w, seq, table = _case(gen, 2, [5, 9], 2, 1)
    with pytest.raises(ValueError, match="weight must be"):
        I.paged_mqa_logits_torch(q, pool, w[:1], seq, table, None, 64)
    with pytest.raises(ValueError, match="kvcache_fp8 must be"):
        I.paged_mqa_logits_torch(q, pool.view(2, 64, 132), w, seq, table, None, 64)
    with pytest.raises(ValueError, match="q_fp8 must be"):
        I.paged_mqa_logits_torch(q.float(), pool, w, seq, table, None, 64)
    with pytest.raises(ValueError, match="clean_logits"):
        I.paged_mqa_logits_torch(q, pool, w, seq, table, None, 64, True)
    monkeypatch.setenv("SGLANG_AMPERE_INDEXER_BUDGET_MB", "lots")
    with pytest.raises(ValueError, match="SGLANG_AMPERE_INDEXER_BUDGET_MB"):
        I.paged_mqa_logits_torch(q, pool, w, seq, table, None, 64)


_PEAK = r"""
import json, sys, torch
torch.set_num_threads(1)
from sglang_ampere.kernels import indexer as I, selfchecks as G
rows, entries, budget = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
q, pool, w, seq, table = G.indexer_full_case(rows, entries, int(sys.argv[4]))
I.paged_mqa_logits_torch(q[:2], pool, w[:2], seq[:2], table[:2], None, 64, budget_mb=budget)   # warm up
def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
open("/proc/self/clear_refs", "w").write("5")           # reset the high-water mark
base = rss("VmRSS:")
out = I.paged_mqa_logits_torch(q, pool, w, seq, table, None, entries, budget_mb=budget)
print("PEAK" + json.dumps({"growth": rss("VmHWM:") - base, "out": out.numel() * 4,
                           "nonzero": bool(out.abs().sum() > 0)}))
"""


@pytest.mark.parametrize("rows,ctx_tokens", [(4096, 4096), (256, 65536)])
def test_peak_memory_stays_within_budget_plus_output(rows, ctx_tokens, seed):
    """A 4096-row prefill chunk over 4K context (SGLang's function: about +5 GB), and a long
    context; measured as the child process's peak RSS growth during the call."""
    entries = ctx_tokens // 4
    # A fixed mmap threshold: glibc otherwise raises it after the first large free and keeps
    # later freed chunks in its heap, so RSS would count the allocator's cache, not what the
    # function holds (on a GPU the caching allocator reuses those blocks the same way).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    p = subprocess.run([sys.executable, "-c", _PEAK, str(rows), str(entries), "256", str(seed)],
                       capture_output=True, text=True, timeout=600, env=env)
    line = next((x for x in p.stdout.splitlines() if x.startswith("PEAK")), None)
    assert line, p.stdout[-2000:] + p.stderr[-3000:]
    res = json.loads(line[4:])
    assert res["nonzero"]
    assert res["growth"] <= 256 * 2**20 + res["out"], res
