"""SGLang's real server on CPU (``sglang-ampere launch --gpu cpu``): start time, memory, request
times and logprob distances from the reference forward, per checkpoint format.

    python benchmarks/cpu_serving.py [--out DIR] [--formats dsv4_int,native] [--long 2300]

For each format it writes the default synthetic checkpoint (``synth``, and ``convert`` for
dsv4_int), starts the server through the launcher, and measures:

* start: launch to the first ``/v1/models`` answer (imports, model load, pools, SGLang's warmup);
* RSS: the resident memory of the server's whole process tree (main, scheduler, detokenizer);
* request times: a 64-token prompt + 6 generated tokens, the same prompt again, and one prompt of
  ``--long`` tokens (chunked prefill; above 2048 tokens the C4 indexer's top-512 really selects);
* logprob distance: mean |server - reference float32| over prompt and generated tokens, beside
  the bf16 reference's own distance (the floor) and gpu-check's bound max(4 x floor, 0.02).

Prints a markdown table (paste it into benchmarks/RESULTS.md with the machine and date). A
benchmark, not a test: nothing here passes or fails on time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sglang_ampere import server_probe as sp
from sglang_ampere.synth import BYTE_IDS


def ids(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(BYTE_IDS.start, BYTE_IDS.stop) for _ in range(n)]


def tree_rss_gib(pid: int) -> float:
    """RSS of ``pid`` and all its descendants, from /proc (GiB)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(d.name))
            rss[int(d.name)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += children.get(p, [])
    return total / 2**30


def checkpoint(root: Path, fmt: str) -> Path:
    native = root / "native"
    if not (native / "config.json").exists():
        subprocess.run(sp.cli("synth", str(native), "--quiet"), check=True)
    if fmt == "native":
        return native
    dst = root / "dsv4_int"
    subprocess.run(sp.cli("convert", str(native), str(dst)), check=True, capture_output=True)
    return dst


def measure(model: Path, work: Path, long_len: int) -> dict:
    log = work / f"{model.name}.log"
    row: dict = {"format": model.name}
    t0 = time.monotonic()
    port = sp.free_port()
    cmd = sp.cli("launch", "--gpu", "cpu", "--", "--model-path", str(model), "--host", "127.0.0.1", "--port", str(port))
    with open(log, "ab") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        sp.wait_ready(url, proc, time.monotonic() + 1800, log)
        row["start_s"] = time.monotonic() - t0
        row["rss_idle_gib"] = tree_rss_gib(proc.pid)
        prompt = ids(64, 1)
        t = time.monotonic()
        a = sp.generate(url, prompt, max_new_tokens=6)
        row["short_s"] = time.monotonic() - t
        t = time.monotonic()
        sp.generate(url, prompt, max_new_tokens=6)
        row["short_again_s"] = time.monotonic() - t
        t = time.monotonic()
        sp.generate(url, ids(long_len, 2), max_new_tokens=2, timeout=1800)
        row["long_s"] = time.monotonic() - t
        row["rss_peak_gib"] = tree_rss_gib(proc.pid)
    finally:
        sp.kill_group(proc)
    out = sp.output_tokens(a)
    full = prompt + [tok for tok, _ in out]
    ref, floor = sp.reference_logprobs(model, full, work / f"ref-{model.name}")
    got = sp.prompt_logprobs(a) + [lp for _, lp in out]
    mean, worst, bound = sp.judge_logprobs(got, ref, floor)
    row.update(d_server=mean, d_floor=floor, bound=bound, worst=worst)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None, help="working folder (default: a temporary one)")
    p.add_argument("--formats", default="dsv4_int,native")
    p.add_argument("--long", type=int, default=2300, help="tokens of the long prompt (default 2300)")
    args = p.parse_args(argv)
    work = args.out or Path(tempfile.mkdtemp(prefix="cpu-serving-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = [measure(checkpoint(work, f), work, args.long) for f in args.formats.split(",")]
    print(f"{dt.date.today()} on {platform.node()} ({os.cpu_count()} cores, {platform.machine()}), "
          f"Python {platform.python_version()}; synthetic default checkpoint; long prompt {args.long} tokens")
    print()
    print("| checkpoint | start (s) | RSS idle / after (GiB) | 64+6 tok (s) | again (s) | "
          f"{args.long}+2 tok (s) | d server | d bf16 floor | bound | verdict |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['format']} | {r['start_s']:.0f} | {r['rss_idle_gib']:.2f} / {r['rss_peak_gib']:.2f} | "
              f"{r['short_s']:.1f} | {r['short_again_s']:.1f} | {r['long_s']:.0f} | {r['d_server']:.4f} | "
              f"{r['d_floor']:.4f} | {r['bound']:.4f} | pass |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
