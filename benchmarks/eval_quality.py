"""KL / top-1 / perplexity of the dsv4_int scale modes against their native source, synthetic model.

    python benchmarks/eval_quality.py [--tokens 256 --decode 8 --dtype bfloat16]

Writes the quickstart-sized synthetic native checkpoint (``SynthSpec()`` defaults, seed 0), converts
it with expert scales mse and absmax and dense INT8 block and channel, and runs
``sglang-ampere eval --against native`` on each (seeded token ids). The weights are random, so the
figures say how the conversions compare with each other on Gaussian-like weights, not what the
real model loses. Prints a Markdown table (the README's "Measure your conversion" figures).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from sglang_ampere.convert.audit import audit  # noqa: E402
from sglang_ampere.convert.engine import convert  # noqa: E402
from sglang_ampere.convert.options import Options  # noqa: E402
from sglang_ampere.reference.eval import evaluate  # noqa: E402
from sglang_ampere.synth import SynthSpec, write_checkpoint  # noqa: E402

MODES = {
    "mse + block": Options(),
    "absmax + block": Options(expert_mode="absmax"),
    "mse + channel": Options(dense_mode="channel"),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--decode", type=int, default=8)
    ap.add_argument("--dtype", default="bfloat16")
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="eval-quality-"))
    try:
        spec = SynthSpec()
        native = write_checkpoint(root / "native", spec, seed=0, progress=False)
        ids = torch.randint(0, spec.vocab, (a.tokens,), generator=torch.Generator().manual_seed(0)).tolist()
        print(
            f"synthetic model: SynthSpec() defaults ({spec.layers} layers, {spec.experts} experts, hidden "
            f"{spec.hidden}), {a.tokens} seeded tokens ({a.decode} by decode steps), {a.dtype}\n"
        )
        print(
            "| checkpoint | expert SNR dB | dense SNR dB | KL mean | KL p95 | KL max | top-1 | ppl (native) "
            "| layer SNR dB |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for name, opt in MODES.items():
            out = root / name.replace(" + ", "_")
            convert(native, out, opt, progress=False, log=lambda m: None)
            rep, _ = audit(out, native, sample=0)
            fid = rep["fidelity"]
            dense = next(fid[c] for c in ("dense_int8_block", "dense_uint8_channel") if "snr_db_mean" in fid.get(c, {}))
            r = evaluate(out, ids, native, decode=a.decode, dtype=a.dtype, stream=False)
            k = r["kl"]
            print(
                f"| dsv4_int {name} | {fid['expert_int4']['snr_db_mean']:.1f} | {dense['snr_db_mean']:.1f} | "
                f"{k['mean']:.4f} | {k['p95']:.4f} | {k['max']:.4f} | {r['top1_agreement']:.3f} | "
                f"{r['model']['ppl']:.1f} ({r['against']['ppl']:.1f}) | "
                + " / ".join(f"{s:.1f}" for s in r["layer_snr_db"])
                + " |"
            )
        r = evaluate(native, ids, native, decode=a.decode, dtype=a.dtype, stream=False)
        print(
            f"| native (against itself) | - | - | {r['kl']['mean']:.4f} | {r['kl']['p95']:.4f} | "
            f"{r['kl']['max']:.4f} | "
            f"{r['top1_agreement']:.3f} | {r['model']['ppl']:.1f} | - |"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
