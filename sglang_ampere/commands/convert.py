"""``sglang-ampere convert SRC DST``: native DeepSeek-V4-Flash (MXFP4/FP8) -> dsv4_int (INT4/INT8)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..convert.experts import MODES
from ..convert.options import DENSE_MODES, Options


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Requantize a native DeepSeek-V4-Flash checkpoint (routed experts MXFP4, dense FP8) into a "
        "dsv4_int checkpoint (experts INT4 W4A16 group 32, dense INT8 W8A16) that Ampere GPUs can serve. "
        "Every tensor is classified from the shard headers first; anything unexpected is refused "
        "before a byte is written. Re-running on the same DST resumes: finished shards are verified "
        "(SHA-256) and kept, missing or damaged ones are redone."
    )
    p.add_argument("src", type=Path, help="folder of the native checkpoint (config.json + *.safetensors)")
    p.add_argument("dst", type=Path, help="output folder (new, empty, or an earlier run of this command to resume)")
    p.add_argument("--expert-scale", choices=MODES, default="mse",
                   help="INT4 group-scale search: absmax (absmax/7), mse (19 divisors 5.0..9.5, default), "
                        "optimal (wider BF16 search, never worse than mse, slower)")
    p.add_argument("--dense-int8", choices=DENSE_MODES, default="block",
                   help="dense INT8 layout: block (int8 + 128x128 BF16 scales, default) or channel "
                        "(uint8 = q+128, one BF16 scale per output row)")
    p.add_argument("--keep-bf16", action="append", default=[], metavar="PATTERN",
                   help="write dense modules matching this glob (e.g. 'layers.*.attn.wo_a') as BF16 "
                        "instead of INT8; repeatable")
    p.add_argument("--workers", type=int, default=1, help="processes converting shards in parallel (default 1)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]: same bytes, faster where a GPU exists")
    p.add_argument("--expert-kernel", choices=("auto", "c", "torch"), default="auto",
                   help="CPU implementation of the expert requantization (same bytes): c = a small C loop "
                        "compiled on first use with the system compiler (about 3x faster), torch = torch ops; "
                        "auto (default) = c when it can be built")
    p.add_argument("--overwrite", action="store_true",
                   help="redo DST even if it was made with different options or not by this command")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..convert.engine import convert, describe
    from ..convert.manifest import ManifestError
    from ..safetensors_io import CheckpointError

    options = Options(args.expert_scale, args.dense_int8, tuple(args.keep_bf16))
    try:
        summary = convert(args.src, args.dst, options, workers=args.workers, device=args.device,
                          overwrite=args.overwrite, progress=not args.quiet, expert_kernel=args.expert_kernel)
    except (CheckpointError, ManifestError, ValueError) as e:
        print(f"sglang-ampere convert: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"sglang-ampere convert: error: {e} (check free space and permissions of {args.dst}; "
              "re-running the same command resumes)", file=sys.stderr)
        return 1
    print(describe(summary))
    print(f"next: sglang-ampere audit {args.dst} --against {args.src}")
    return 0


def main() -> None:  # pragma: no cover - for ``python -m sglang_ampere.commands.convert``
    parser = argparse.ArgumentParser(prog="sglang-ampere convert")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
