"""Sparse MLA: the decode-step traffic/compute floor on an RTX 3090, and the torch fallback's CPU time.

    python benchmarks/sparse_mla_cpu.py            # both tables (markdown)
    python benchmarks/sparse_mla_cpu.py --floor    # only the paper model (no timing)

The floor counts the bytes one decode step of one layer must move for one sequence (64 heads,
512-wide rows, FP8 V4 cache rows of 584 B, bf16 q/out, int32 indices) and the tensor-core
FLOPs (QK^T and PV, 2 * 2 * 64 * 512 per candidate). The CPU timing runs
``sparse_mla_torch`` (bf16 rows already decoded) and ``sparse_mla_paged_torch`` (FP8 cache,
integer decode included) for one decode token with 4k and 16k candidates.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from sglang_ampere.kernels import kv_layout as L
from sglang_ampere.kernels import sparse_mla as S

HEADS, DIM, WINDOW, TOPK = 64, 512, 128, 512
BW_3090 = 936e9               # bytes/s
TC_3090 = 71e12 / 2           # bf16 mma with fp32 accumulate: half the fp16-accumulate rate on GeForce


def layer_floor(kind: str, ctx: int) -> dict:
    comp = {"swa": 0, "c4": min(ctx // 4, TOPK), "c128": ctx // 128}[kind]
    width = {"swa": 0, "c4": TOPK, "c128": 64 * -(-(2 * -(-ctx // 256)) // 64)}[kind]
    rows = WINDOW + comp
    kv = rows * L.TOKEN_BYTES
    qo = 2 * HEADS * DIM * 2
    idx = (WINDOW + width) * 4 + 8
    flops = 2 * 2 * HEADS * DIM * rows
    total = kv + qo + idx
    return dict(kind=kind, ctx=ctx, rows=rows, kv=kv, qo=qo, idx=idx, total=total,
                t_mem=total / BW_3090 * 1e6, flops=flops, t_tc=flops / TC_3090 * 1e6)


def floor_table() -> str:
    out = [
        "| layer | context | candidate rows | KV bytes | q+out bytes | index bytes | total | memory floor (3090) | "
        "tensor-core floor (3090) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for ctx in (16384, 65536):
        for kind in ("swa", "c4", "c128"):
            f = layer_floor(kind, ctx)
            out.append(f"| {kind} | {ctx // 1024}k | {f['rows']} | {f['kv']:,} | {f['qo']:,} | {f['idx']:,} | "
                       f"{f['total'] / 1024:.0f} KiB | {f['t_mem']:.2f} µs | {f['t_tc']:.2f} µs |")
    return "\n".join(out)


def _time(fn, reps: int) -> float:
    fn()
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    t.sort()
    return t[len(t) // 2] * 1e3


def cpu_table(reps: int) -> str:
    torch.manual_seed(0)
    rows = ["| candidates | dense form (bf16 rows) | paged form (FP8 cache, integer decode) |", "|---|---|---|"]
    for k in (4096, 16384):
        q = torch.randn(1, HEADS, DIM).to(torch.bfloat16)
        kv = torch.randn(k + 7, DIM).to(torch.bfloat16)
        idx = torch.randperm(k + 7)[:k].int()[None]
        sink = torch.randn(HEADS)
        dense = _time(lambda q=q, kv=kv, idx=idx, sink=sink: S.sparse_mla_torch(q, kv, idx, sink, DIM ** -0.5), reps)
        ps = L.C4_PAGE_SIZE
        pages = -(-(k + 7) // ps)
        buf = L.new_pool(pages, ps)
        L.write_rows(buf, torch.arange(pages * ps), torch.randn(pages * ps, DIM), ps)
        swa = L.new_pool(1, L.SWA_PAGE_SIZE)
        L.write_rows(swa, torch.arange(256), torch.randn(256, DIM), L.SWA_PAGE_SIZE)
        kw = dict(q=q[:, None], k_cache=L.pool_view(swa, L.SWA_PAGE_SIZE),
                  indices=torch.arange(WINDOW, dtype=torch.int32)[None, None],
                  topk_length=torch.tensor([WINDOW], dtype=torch.int32), attn_sink=sink,
                  softmax_scale=DIM ** -0.5, extra_k_cache=L.pool_view(buf, ps),
                  extra_indices_in_kvcache=idx[:, None], extra_topk_length=torch.tensor([k], dtype=torch.int32))
        paged = _time(lambda kw=kw: S.sparse_mla_paged_torch(**kw), reps)
        rows.append(f"| {k // 1024}k (+128 window in the paged form) | {dense:.1f} ms | {paged:.1f} ms |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--floor", action="store_true", help="only print the traffic/compute floor")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    print(floor_table())
    if args.floor:
        return
    print()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d', time.gmtime())}, median of {args.reps}"
    )
    print(cpu_table(args.reps))


if __name__ == "__main__":
    main()
