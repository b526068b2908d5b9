"""C4 indexer logits on CPU: peak memory and time of sglang-ampere's torch path vs SGLang's.

    python benchmarks/indexer_memory.py [--rows 4096] [--contexts 4096,16384,65536] [--budget 256]

One prefill chunk of ``--rows`` query rows over each context (tokens; the c4 layer sees
``tokens / 4`` index entries, 64 per page), 64 heads, every row scoring the whole context.
Each measurement runs in a fresh child process: peak RSS growth during the one call (VmHWM
after resetting it, with glibc's mmap threshold fixed so freed blocks are returned, the way a
GPU caching allocator reuses them) and wall time, one torch thread.

SGLang's ``fp8_paged_mqa_logits_torch`` needs about 57 KB per row per page, so where that
exceeds ``--sglang-cap-gb`` it runs on fewer rows and the figure is scaled linearly to
``--rows`` (marked "scaled" in the table): its memory is linear in rows by construction.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys

CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(1)
from sglang_ampere.kernels import indexer as I, selfchecks as G
which, rows, entries, budget = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
q, pool, w, seq, table = G.indexer_full_case(rows, entries, 1)
if which == "sglang":
    from sglang.srt.layers.attention.dsv4.indexer import fp8_paged_mqa_logits_torch as fn
else:
    fn = lambda *a: I.paged_mqa_logits_torch(*a, budget_mb=budget)
fn(q[:2], pool, w[:2], seq[:2], table[:2], None, entries, False)           # warm up
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
open("/proc/self/clear_refs", "w").write("5")
base = status("VmRSS:")
t0 = time.perf_counter()
out = fn(q, pool, w, seq, table, None, entries, False)
dt_s = time.perf_counter() - t0
print("RESULT" + json.dumps({"peak": status("VmHWM:") - base, "seconds": dt_s, "out": out.numel() * 4}))
"""

PER_ROW_PAGE_SGLANG = 8448 + 8192 + 16384 + 8192 + 16384      # its five live copies per row per page


def measure(which: str, rows: int, entries: int, budget: float) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", CHILD, which, str(rows), str(entries), str(budget)],
                       capture_output=True, text=True, env=env, timeout=3600)
    line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT")), None)
    if line is None:
        raise RuntimeError(f"{which} rows={rows} entries={entries} failed:\n{p.stderr[-3000:]}")
    return json.loads(line[len("RESULT"):])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--contexts", default="4096,16384,65536", help="context lengths in tokens")
    ap.add_argument("--budget", type=float, default=256.0, help="SGLANG_AMPERE_INDEXER_BUDGET_MB")
    ap.add_argument("--sglang-cap-gb", type=float, default=4.0,
                    help="largest expected peak to run SGLang's function at (fewer rows beyond it)")
    args = ap.parse_args(argv)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{dt.date.today()}; one torch thread; rows={args.rows}; budget {args.budget:g} MB")
    print("| context | entries | ours: peak MB | ours: output MB | ours: s | SGLang: peak MB | SGLang: s |")
    print("|---|---|---|---|---|---|---|")
    for ctx in (int(c) for c in args.contexts.split(",")):
        entries = ctx // 4
        ours = measure("ours", args.rows, entries, args.budget)
        pages = entries // 64
        fit = int(args.sglang_cap_gb * 2**30 // (PER_ROW_PAGE_SGLANG * pages))
        sg_rows = max(1, min(args.rows, fit))
        sg = measure("sglang", sg_rows, entries, args.budget)
        k = args.rows / sg_rows
        tag = "" if sg_rows == args.rows else f" (scaled from {sg_rows} rows)"
        print(f"| {ctx} | {entries} | {ours['peak'] / 2**20:.0f} | {ours['out'] / 2**20:.0f} | "
              f"{ours['seconds']:.1f} | {sg['peak'] * k / 2**20:.0f}{tag} | {sg['seconds'] * k:.1f}{tag} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
