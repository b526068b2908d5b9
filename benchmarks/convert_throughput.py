"""Converter throughput vs the I/O floor, and SNR of the scale modes, on one synthetic model.

    python benchmarks/convert_throughput.py [--experts 6 --layers 2 --shards 4] [--write-results]

1. ``synth`` a native checkpoint with the real expert shapes (hidden 4096, moe_inter 2048:
   routed experts [2048, 4096] / [4096, 2048], 4.2 MB of MXFP4 bytes each);
2. the I/O floor: read every source shard and write a file of each output shard's size with the
   same temp-file + fsync + rename the converter does, no conversion;
3. ``convert`` (default options) with 1 and 2 workers into fresh folders;
   the ratio conversion / floor is the number the issue targets (<= 2x on 2 cores);
4. SNR (dB, over all routed-expert / dense tensors) of absmax / mse / optimal and of dense
   INT8 block / channel on the same weights, plus an i.i.d. Gaussian control for the dense modes.

Both timings run in the same process against the same page-cache state (the source was just
written, so reads come mostly from memory; writes go to disk with fsync). ``--write-results``
replaces the "## Converter" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

from sglang_ampere.convert.engine import convert
from sglang_ampere.convert.jobs import make_plan
from sglang_ampere.convert.options import Options
from sglang_ampere.convert.safetensors_out import fsync_dir
from sglang_ampere.synth import SynthSpec, write_checkpoint

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def io_floor(src: Path, dst: Path, plan) -> float:
    """Read all source bytes, write each output shard's byte count (temp + fsync + rename)."""
    dst.mkdir(parents=True)
    t0 = time.perf_counter()
    for sp in plan.shards:
        data = bytearray()
        with open(src / sp.name, "rb") as f:
            while True:
                b = f.read(64 << 20)
                if not b:
                    break
                data += b
        out = sp.out_bytes
        payload = (bytes(data) * (out // max(len(data), 1) + 1))[:out]
        tmp = dst / f".{sp.name}.partial"
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dst / sp.name)
        fsync_dir(dst)
    return time.perf_counter() - t0


def snr_table(src: Path) -> dict[str, float]:
    from safetensors import safe_open

    from sglang_ampere.convert.dense import convert_dense
    from sglang_ampere.convert.experts import ExpertStats, requantize
    from sglang_ampere.inventory import DENSE, EXPERT, classify

    acc = {m: ExpertStats() for m in ("absmax", "mse", "optimal")}
    dense = {m: [0.0, 0.0] for m in ("block", "channel")}
    for shard in sorted(src.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            names = list(f.keys())
            for n in names:
                r = classify(n)
                if r is None or r.part != "weight" or r.role not in (EXPERT, DENSE):
                    continue
                w = f.get_tensor(n)
                s = f.get_tensor(r.base + ".scale")
                if r.role == EXPERT:
                    for m, st in acc.items():
                        requantize(w.view(torch.uint8), s, m, n, stats=st)
                else:
                    for m in dense:
                        st: list = []
                        for _ in convert_dense(w, s, m, n, stats=st):
                            pass
                        dense[m][0] += st[0]
                        dense[m][1] += st[1]

    def db(sig, noise):
        return 10 * math.log10(sig / noise)

    out = {f"experts {m}": db(st.signal, st.noise) for m, st in acc.items()}
    out.update({f"dense INT8 {m}": db(*v) for m, v in dense.items()})
    # Control: i.i.d. Gaussian FP8 weights (no per-row spread), as the anchors measured.
    from sglang_ampere.formats import fp8_block_quantize

    g = torch.Generator().manual_seed(0)
    w, s = fp8_block_quantize(torch.randn(2048, 4096, generator=g))
    for m in ("block", "channel"):
        st = []
        for _ in convert_dense(w, s, m, "gaussian", stats=st):
            pass
        out[f"dense INT8 {m} (i.i.d. Gaussian control)"] = db(*st)
    # Control: the same absmax and mse rules on float Gaussian groups that never went through
    # MXFP4, to show how much of the mse gain comes from the MXFP4 source grid.
    x = torch.randn(2048 * 64, 32, generator=g, dtype=torch.float64)
    amax = x.abs().amax(dim=1, keepdim=True)

    def deq(d: float) -> torch.Tensor:
        scale = (amax / d).to(torch.bfloat16).double().clamp(min=2.0**-126)
        return torch.round(x / scale).clamp(-8, 7) * scale

    err = {d: ((deq(d) - x) ** 2).sum(dim=1) for d in (5.0 + 0.25 * i for i in range(19))}
    best = torch.stack(list(err.values())).amin(dim=0)
    signal = float((x**2).sum())
    out["experts absmax (float Gaussian control)"] = db(signal, float(err[7.0].sum()))
    out["experts mse (float Gaussian control)"] = db(signal, float(best.sum()))
    return out


_HWM = """
import sys
if sys.argv[1:]:
    from sglang_ampere.cli import main
    assert main(sys.argv[1:]) == 0
else:
    import torch
for line in open("/proc/self/status"):
    if line.startswith("VmHWM"):
        print(int(line.split()[1]) // 1024)
"""


def _peak_rss_mb(cli_args) -> float:
    """Peak resident memory (VmHWM, MB) of a fresh process running the CLI (or just ``import torch``).

    VmHWM belongs to the process's own address space; ``ru_maxrss`` from wait4 would also count
    the parent's memory at fork time.
    """
    import subprocess

    out = subprocess.run([sys.executable, "-c", _HWM, *(cli_args or [])], check=True, capture_output=True, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1")).stdout
    return float(out.strip().splitlines()[-1])


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores visible, {platform.system()} {platform.release()}, torch {torch.__version__}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experts", type=int, default=6)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="where to write (default: a temp folder under /tmp)")
    ap.add_argument(
        "--write-results", action="store_true", help="update the Converter section of benchmarks/RESULTS.md"
    )
    args = ap.parse_args()
    torch.set_num_threads(1)

    work = Path(tempfile.mkdtemp(prefix="convert-bench-", dir=args.workdir))
    try:
        spec = SynthSpec(layers=args.layers, experts=args.experts, hidden=4096, moe_inter=2048,
                         hash_layers=min(2, args.layers), mtp=0)
        t = time.perf_counter()
        src = write_checkpoint(work / "native", spec, seed=args.seed, shards=args.shards, progress=False)
        print(f"synth: {time.perf_counter() - t:.1f} s", file=sys.stderr)
        plan = make_plan(src, Options())
        src_bytes, out_bytes = plan.source_bytes, plan.output_bytes
        floors, runs = [], {}
        for rep in range(3):
            floors.append(io_floor(src, work / f"floor{rep}", plan))
            shutil.rmtree(work / f"floor{rep}")
            for workers in (1, 2):
                dst = work / f"out{workers}-{rep}"
                t = time.perf_counter()
                convert(src, dst, Options(), workers=workers, progress=False, log=lambda m: None)
                runs.setdefault(workers, []).append(time.perf_counter() - t)
                shutil.rmtree(dst)
        # Peak memory of a real CLI run (fresh process, one worker).
        t = time.perf_counter()
        peak_mb = _peak_rss_mb(["convert", str(src), str(work / "cli"), "--quiet"])
        cli_s = time.perf_counter() - t
        torch_mb = _peak_rss_mb(None)
        largest_out = max(sp.out_bytes for sp in plan.shards) / 1e6
        shutil.rmtree(work / "cli")
        floor = min(floors)
        best = {w: min(v) for w, v in runs.items()}
        snr = snr_table(src)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    n_exp = plan.counts()["expert_int4"]
    lines = [
        "## Converter",
        "",
        f"`python benchmarks/convert_throughput.py --experts {args.experts} --layers {args.layers} --shards "
        f"{args.shards}`"
        f" — {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"Machine: {machine()}; shared with other jobs while measured.",
        "",
        f"Synthetic native checkpoint with the real expert shapes (hidden 4096, moe_inter 2048): "
        f"{n_exp} routed-expert tensors, {src_bytes / 1e6:.0f} MB in, {out_bytes / 1e6:.0f} MB out, {args.shards} "
        "shards. "
        "Best of 3 runs each; source in page cache, output written with fsync.",
        "",
        "| what | seconds | MB/s (source) | x I/O floor |",
        "|---|---|---|---|",
        f"| I/O floor (read source + write output bytes, fsync, no conversion) | {floor:.2f} | "
        f"{src_bytes / 1e6 / floor:.0f} | 1.00 |",
    ]
    for w, s in sorted(best.items()):
        lines.append(
            f"| convert, default options (mse, block), --workers {w} | {s:.2f} | {src_bytes / 1e6 / s:.0f} | "
            f"{s / floor:.2f} |"
        )
    lines += ["", "`--workers 2` starts two fresh Python + torch processes (spawn) inside the timed region; with 4 "
              "small shards on this shared 2-core machine that start-up and the competition for the cores "
              "dominate. On the real checkpoint (46 shards of about 3.4 GB, minutes each) it is amortised, but "
              "this run does not measure that."]
    lines += [
        "",
        f"Peak RSS of a fresh `sglang-ampere convert` process (1 worker, {cli_s:.1f} s including Python/torch "
        "start-up): "
        f"{peak_mb:.0f} MB, of which {torch_mb:.0f} MB is `import torch` alone; output shards of up to "
        f"{largest_out:.0f} MB (tensors stream one at a time, "
        "so the peak follows the largest tensor, not the shard).",
    ]
    lines += [
        "",
        "SNR over all tensors of the same checkpoint (dB, total signal / total error vs the native dequantized "
        "values):",
        "",
        "| mode | SNR dB |",
        "|---|---|",
    ]
    for k, v in snr.items():
        lines.append(f"| {k} | {v:.2f} |")
    gain_mse = snr["experts mse"] - snr["experts absmax"]
    gain_opt = snr["experts optimal"] - snr["experts mse"]
    lines += ["", f"mse gains {gain_mse:+.2f} dB over absmax; optimal gains {gain_opt:+.3f} dB over mse. "
              "Synthetic weights are as `synth` makes them (Gaussian by fan-in, per-row log-normal "
              "magnitudes with sigma 0.2, 0.01% outliers x4; see sglang_ampere/synth.py), not shaped for "
              "these numbers; the per-row spread inside 128x128 blocks is what holds dense block INT8 "
              "slightly below the i.i.d. Gaussian control. The float Gaussian control shows that most of the "
              "expert gain of mse over absmax comes from the MXFP4 source: its values sit on a 15-value grid "
              "per group that absmax/7 maps badly and a searched divisor maps well.", ""]
    text = "\n".join(lines)
    print(text)
    if args.write_results:
        write_section(text)
    return 0


def write_section(section: str) -> None:
    """Replace (or append) the '## Converter' section of RESULTS.md, leaving the others alone."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pat = re.compile(r"^## Converter\n.*?(?=^## |\Z)", re.S | re.M)
    new = (
        pat.sub(lambda m: section.rstrip() + "\n\n", old)
        if pat.search(old)
        else old.rstrip() + "\n\n" + section.rstrip() + "\n"
    )
    RESULTS.write_text(new)


if __name__ == "__main__":
    sys.exit(main())
