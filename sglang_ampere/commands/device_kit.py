"""``sglang-ampere device-kit``: build the folder that checks every GPU kernel on a bare GPU machine
(:mod:`sglang_ampere.device_kit`, ``docs/device-kit.md``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..gpus import add_gpu_flag

DEFAULT_OUT = "device-kit"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"kit folder (default: ./{DEFAULT_OUT}, ignored by git); "
                        "replaced if it holds a kit")
    add_gpu_flag(parser, "sm90", "the GPU machine's arch for the SASS (default: sm90)")
    add_gpu_flag(parser, "sm86", "tile plans and source (default: sm86, a 3090)", flag="--source-gpu",
                 old="--source-arch")
    parser.add_argument("--own-arch", action="store_true", help="also the kernels lowered for --gpu itself")
    parser.add_argument("--only", default=None,
                        help="only TileLang kernels whose name contains one of these (comma-separated)")
    parser.add_argument("--marlin-module", action="append", default=None,
                        help="only these Marlin modules (repeat: gptq_marlin, moe_gemm1, moe_gemm2, repack, moe_align)")
    parser.add_argument("--no-tilelang", action="store_true", help="skip the TileLang kernels")
    parser.add_argument("--no-marlin", action="store_true", help="skip the Marlin modules")
    parser.add_argument("--no-wheel", action="store_true", help="do not add the tvm-ffi wheel")
    parser.add_argument("--tvm-ffi-wheel", type=Path, default=None,
                        help="the apache-tvm-ffi cp312 wheel to carry (default: cache, else pip download)")
    parser.add_argument("--lineinfo", action="store_true", help="compile the cubins with -lineinfo (larger)")
    parser.add_argument("--max-mb", type=float, default=40.0, help="refuse a kit larger than this (default 40)")


def run(args: argparse.Namespace) -> int:
    import sys

    try:
        import sglang  # noqa: F401
        import tilelang  # noqa: F401
    except ImportError as e:
        print(f"device-kit needs the serve install (SGLang 0.5.23, TileLang 0.1.12): {e}", file=sys.stderr)
        return 2
    from ..device_kit.builder import KitBuildError, build_kit

    try:
        build_kit(Path(args.out), arch=args.gpu.number, source_arch=args.source_gpu.number, own_arch=args.own_arch,
                  tilelang=not args.no_tilelang, marlin=not args.no_marlin, only=args.only,
                  marlin_modules=args.marlin_module, tvm_ffi_wheel_path=args.tvm_ffi_wheel, wheel=not args.no_wheel,
                  lineinfo=args.lineinfo, max_mb=args.max_mb)
    except (KitBuildError, FileNotFoundError) as e:
        print(f"device-kit: {e}", file=sys.stderr)
        return 1
    return 0
